"""`make bench-scale`: does cost grow linearly, and memory not at all, with the data set's size?

For each size (default about 20,000, 60,000 and 220,025 tiles, the last PatchCamelyon's Kaggle
form) it generates a PatchCamelyon-like set of 96x96 tiles twice, as the original HDF5 release
(pcam-h5 layout) and as a Kaggle-form folder of .tif files (pcam layout), and for each form, in a
fresh process: reads the layout, builds the decoded-tile cache (time, tiles decoded per second),
then trains one epoch of the small CNN from that cache through `fit` (tiles per second), and
reports the process's peak resident memory. Then the growth from one size to the next, per tile.
Writes reports/bench_scale.json. Measured, never asserted: the machine is shared. The generated
sets and their caches live under --work and are removed as each size ends.

    python -m lib.bench.scale [--sizes 20000,60000,220025] [--forms h5,folder] [--out reports/bench_scale.json]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from lib.paths import PROJECT_ROOT, REPORTS_DIR

TILE = 96  # pixels: PatchCamelyon's tiles
PCAM_H5_PARTS = {"train": 8, "valid": 1}  # PatchCamelyon's own proportions of train to valid (262,144 : 32,768)


def _tile_pool(seed: int, count: int = 64) -> np.ndarray:
    """(count, 96, 96, 3) uint8 H&E-coloured textures; the generated tiles are drawn from these
    (decoding costs the same whatever the pixels, and drawing stays cheap at 220,000 tiles)."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((count, 12, 12, 1))
    field = np.kron(coarse, np.ones((1, 8, 8, 1)))  # blotches, as nuclei and stroma
    pink, purple = np.array([230, 160, 200]), np.array([90, 40, 140])
    tiles = pink + (purple - pink) * field + rng.normal(0, 12, (count, TILE, TILE, 3))
    return np.clip(tiles, 0, 255).astype(np.uint8)


def _labels(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed + 1).integers(0, 2, n).astype(np.uint8)


def write_pcam_folder(root: str | Path, n_tiles: int, seed: int = 0) -> Path:
    """PatchCamelyon as on Kaggle: train/<40-hex id>.tif (96x96 RGB, uncompressed) and
    train_labels.csv (id,label), `n_tiles` of them. Returns root."""
    from PIL import Image

    root = Path(root)
    (root / "train").mkdir(parents=True, exist_ok=True)
    pool, labels = _tile_pool(seed), _labels(n_tiles, seed)
    images = [Image.fromarray(tile) for tile in pool]
    rows = ["id,label"]
    for i in range(n_tiles):
        tile_id = hashlib.sha1(f"{seed}-{i}".encode()).hexdigest()
        images[(i * 7 + int(labels[i])) % len(images)].save(root / "train" / f"{tile_id}.tif")
        rows.append(f"{tile_id},{labels[i]}")
    (root / "train_labels.csv").write_text("\n".join(rows) + "\n")
    return root


def write_pcam_h5(root: str | Path, n_labelled: int, n_test: int = 0, seed: int = 0, slides: int = 20) -> Path:
    """PatchCamelyon's original release: camelyonpatch_level_2_split_{train,valid}_{x,y}.h5 holding
    `n_labelled` tiles between them (8:1, as the release), _test_ with `n_test` tiles, and _meta.csv
    files naming each tile's slide (wsi). x is (N, 96, 96, 3) uint8, y (N, 1, 1, 1) uint8. Returns root."""
    import h5py

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    pool = _tile_pool(seed)
    n_valid = round(n_labelled * PCAM_H5_PARTS["valid"] / sum(PCAM_H5_PARTS.values()))
    counts = {"train": n_labelled - n_valid, "valid": n_valid, "test": n_test}
    start = 0
    for part, count in counts.items():
        if not count:
            continue
        labels = _labels(start + count, seed)[start:]
        with h5py.File(root / f"camelyonpatch_level_2_split_{part}_x.h5", "w") as f:
            x = f.create_dataset("x", (count, TILE, TILE, 3), dtype=np.uint8)
            for block in range(0, count, 4096):  # written in blocks: a 220,000-tile array is 6 GB
                rows = np.arange(block, min(block + 4096, count))
                x[block : block + len(rows)] = pool[(rows * 7 + labels[rows]) % len(pool)]
        with h5py.File(root / f"camelyonpatch_level_2_split_{part}_y.h5", "w") as f:
            f.create_dataset("y", data=labels.reshape(-1, 1, 1, 1))
        with open(root / f"camelyonpatch_level_2_split_{part}_meta.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["", "coord_y", "coord_x", "tumor_patch", "center_tumor_patch", "wsi"])
            for i in range(count):
                writer.writerow([i, 0, 0, bool(labels[i]), bool(labels[i]), f"{part}_slide_{(start + i) % slides:03d}"])
        start += count
    return root


class _PeakMemory:
    """Samples this process's resident memory (anonymous and file-backed) every 0.2 s: ru_maxrss
    gives the peak of the sum only, and the file-backed part is the memory-mapped cache's pages,
    which the system can drop whenever it needs the room."""

    def __init__(self):
        self.peak = {"RssAnon": 0, "RssFile": 0, "VmRSS": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(0.2):
            self.sample()

    def sample(self):
        for line in Path("/proc/self/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in self.peak:
                self.peak[name] = max(self.peak[name], int(value.split()[0]) // 1024)  # kB -> MiB

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        self.sample()
        return {f"peak_{k.lower()}_mb": v for k, v in self.peak.items()}


def measure(data_dir: Path, work: Path, batch_size: int, train: bool) -> dict:
    """In a fresh process: layout, cache build, and one epoch of the small CNN through fit."""
    import torch

    from lib.config import run_config
    from lib.data import load_tile_set, read_layout
    from lib.training.loop import fit

    memory = _PeakMemory()
    record = {"threads": torch.get_num_threads(), "cpus": os.cpu_count()}
    start = time.perf_counter()
    index = read_layout(data_dir)
    record["layout"], record["n_labelled"] = index.layout, len(index.train_paths)
    record["layout_s"] = time.perf_counter() - start
    start = time.perf_counter()
    tile_set = load_tile_set(index, 0, cache_dir=work / "cache")
    record["cache_build_s"] = time.perf_counter() - start
    record["tiles_decoded_per_s"] = record["n_labelled"] / record["cache_build_s"]
    record["tile_size"], record["cache_note"] = tile_set.size, tile_set.record.cache
    record["cache_gib_on_disk"] = sum(os.stat(f).st_blocks * 512 for f in (work / "cache").glob("*-*.npy")) / 2**30
    del tile_set, index
    if train:
        # The ResNet runs' data path (augmented, crop following the tile) with the small CNN, whose
        # epoch over 200,000 tiles takes minutes on 2 cores, not hours.
        config = run_config("resnet50-10ep", profile="full", model="small", data_dir=str(data_dir), runs_dir=str(work / "runs"),
                            cache_dir=str(work / "cache"), epochs=1, batch_size=batch_size, subset=0, device="cpu", seed=0)  # fmt: skip
        start = time.perf_counter()
        result = fit(config)
        record["fit_s"] = time.perf_counter() - start
        row = result.history[0]
        record["n_train"], record["n_valid"] = result.summary["n_train"], result.summary["n_valid"]
        record["epoch_tiles_per_s"] = row["train_images_per_s"]
        record["epoch_s"] = result.summary["n_train"] // batch_size * batch_size / row["train_images_per_s"]
        record["crop_size"] = result.config["crop_size"]
    record |= memory.stop()
    record["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    return record


def _growth(records: list[dict], key: str) -> list[dict]:
    """Seconds per tile of `key`'s stage at each size against the size before it and the smallest."""
    rows = [r for r in records if key in r]
    per_tile = [(r["n_labelled"], r[key] / r["n_labelled"]) for r in rows]
    return [{"from": a[0], "to": b[0], "per_tile_ratio": b[1] / a[1], "vs_smallest": b[1] / per_tile[0][1]}
            for a, b in zip(per_tile, per_tile[1:])]  # fmt: skip


def run_sizes(sizes: list[int], forms: list[str], epoch_forms: list[str], batch_size: int, work_root: Path) -> list[dict]:
    records = []
    for size in sizes:
        work = work_root / str(size)
        try:
            for form in forms:
                shutil.rmtree(work, ignore_errors=True)
                start = time.perf_counter()
                data_dir = write_pcam_h5(work / "data", size) if form == "h5" else write_pcam_folder(work / "data", size)
                generated_s = time.perf_counter() - start
                print(f"bench-scale: {size} tiles as {form}: generated in {generated_s:.0f} s; measuring in a fresh process ...", flush=True)
                child = subprocess.run([sys.executable, "-m", "lib.bench.scale", "--child", str(data_dir), "--work", str(work),
                                        "--batch-size", str(batch_size)] + (["--train"] if form in epoch_forms else []),
                                       cwd=PROJECT_ROOT, capture_output=True, text=True)  # fmt: skip
                if child.returncode != 0:
                    raise RuntimeError(f"measuring {size} tiles as {form} failed:\n{child.stdout[-3000:]}\n{child.stderr[-3000:]}")
                record = json.loads(child.stdout.strip().splitlines()[-1]) | {"size": size, "form": form, "generated_s": generated_s}
                records.append(record)
                epoch = (f"; epoch {record['epoch_tiles_per_s']:.0f} tiles/s ({record['epoch_s']:.0f} s for {record['n_train']} tiles, "
                         f"crop {record['crop_size']})") if "epoch_s" in record else ""  # fmt: skip
                print(f"  cache build {record['cache_build_s']:.1f} s ({record['tiles_decoded_per_s']:.0f} tiles/s, "
                      f"{record['cache_gib_on_disk']:.2f} GiB at {record['tile_size']}x{record['tile_size']}){epoch}; peak resident "
                      f"{record['peak_rss_mb']:.0f} MiB (at most {record['peak_rssanon_mb']} MiB anonymous, {record['peak_rssfile_mb']} MiB "
                      "file-backed: libraries and the cache's pages)", flush=True)  # fmt: skip
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lib.bench.scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="20000,60000,220025", help="labelled tiles per generated set, comma-separated")
    parser.add_argument("--forms", default="h5,folder", help="h5 (the original release), folder (Kaggle's .tif files), or both")
    parser.add_argument("--epoch-forms", default=None, help="forms that also train an epoch (default: every form)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--work", default=str(PROJECT_ROOT / "data" / "bench_scale"), help="where the sets are generated (removed after)")
    parser.add_argument("--out", default=str(REPORTS_DIR / "bench_scale.json"))
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--train", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:  # one measurement, in its own process so that its peak memory is its own
        record = measure(Path(args.child), Path(args.work), args.batch_size, args.train)
        print(json.dumps(record))
        return 0
    sizes = [int(s) for s in args.sizes.split(",")]
    forms = args.forms.split(",")
    epoch_forms = args.epoch_forms.split(",") if args.epoch_forms else forms
    work_root = Path(args.work)
    try:
        records = run_sizes(sizes, forms, epoch_forms, args.batch_size, work_root)
    finally:
        shutil.rmtree(work_root, ignore_errors=True)
    from lib.training.environment import cpu_name

    summary = {"machine": f"{cpu_name()}, {os.cpu_count()} cores", "sizes": sizes, "records": records, "growth": {}}
    print("bench-scale: growth per tile from one size to the next (1.0 = linear cost)")
    for form in forms:
        mine = [r for r in records if r["form"] == form]
        summary["growth"][form] = {key: _growth(mine, key) for key in ("cache_build_s", "epoch_s")}
        for key, steps in summary["growth"][form].items():
            said = ", ".join(f"{s['from']}->{s['to']}: {s['per_tile_ratio']:.2f}x" for s in steps)
            print(f"  {form}, {key.removesuffix('_s').replace('_', ' ')}: {said or 'one size only'}")
        largest = mine[-1] if mine else None
        if largest:
            print(f"  {form}, largest ({largest['size']} tiles): peak resident {largest['peak_rss_mb'] / 1024:.2f} GiB")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2))
    print(f"bench-scale: wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
