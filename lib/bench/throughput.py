"""`make bench`: training images per second, side by side in one process, for

  (a) seed style: the original's input and arithmetic, JPEG files decoded and PIL-transformed per
      image in a DataLoader, fp32, through the training loop (train_one_epoch);
  (b) workbook: decoded uint8 tiles, per-batch augmentation on the device, the run's precision,
      through the same training loop, progress bar, metrics and finiteness check included;
  (c) model only: bare training steps on random tensors already on the device, same model,
      precision and batch: the limit any input path and loop can reach;

for the baseline CNN and ResNet50, on the CPU and on CUDA when present. Prints b/a and b/c, peak
memory and the device. Then the distributed rows (lib/bench/distributed.py): a run trained plain,
under torchrun with one process and with N (every GPU, or 2 on a CPU), with the scaling efficiency and
torchrun's overhead. Writes reports/bench.json. Measured, never asserted: these machines are shared.

    python -m lib.bench.throughput [--steps N] [--distributed auto|none] [--out reports/bench.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import statistics
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lib.data import FileTileDataset, TileBatches, decode_tiles, original_augmentation, read_layout
from lib.models import BaselineCNN, build_resnet50
from lib.paths import DEFAULT_DATA_DIR, REPORTS_DIR
from lib.training.speed import ORIGINAL, SpeedSettings, autocast, describe, host_memory, prepare_input, prepare_model, speed_settings
from lib.training.loop import train_one_epoch


@dataclass(frozen=True)
class Case:
    model: str
    batch_size: int
    crop_size: int | None  # None: no augmentation (the baseline), tiles at full size
    steps: int


def cases(device: torch.device, steps: int | None, models: list[str], batch_size: int | None) -> list[Case]:
    """The original's batches on CUDA (64 baseline, 100 ResNet50); smaller on a CPU so one ResNet50
    step takes seconds, not minutes."""
    if device.type == "cuda":
        plan = [Case("baseline", 64, None, steps or 30), Case("resnet50", 100, 200, steps or 20)]
    else:
        plan = [Case("baseline", 64, None, steps or 4), Case("resnet50", 16, 200, steps or 4)]
    return [Case(c.model, batch_size or c.batch_size, c.crop_size, c.steps) for c in plan if c.model in models]


def _model(name: str, settings: SpeedSettings, device: torch.device) -> torch.nn.Module:
    model = BaselineCNN() if name == "baseline" else build_resnet50("imagenet1000", "none")[0]
    _, step_model = prepare_model(model.to(device).train(), settings)
    return step_model


class _Path:
    """One way of training: a model, its optimizer, an endless source of batches, and either the
    workbook's own training loop (train_one_epoch: progress bar, metrics, finiteness check) or,
    for the model-only limit, bare steps."""

    def __init__(self, model_name: str, settings: SpeedSettings, device: torch.device, batches, bare_steps: bool = False):
        self.model = _model(model_name, settings, device)
        self.optimizer = torch.optim.Adam(self.model.parameters())
        self.settings, self.device, self.batches, self.bare_steps = settings, device, _forever(batches), bare_steps

    def steps(self, count: int) -> float:
        """Images per second over `count` training steps, after one untimed step."""
        # One step first, outside the clock, in every round and on every path: it pays for what the
        # first step after a switch pays once per run in training (the kept host memory refilled,
        # caches, cuDNN's choice of kernels, DataLoader workers starting). The block ends outside
        # the clock too, so the seed-style path measured next runs under the C library's usual
        # memory handling, as the original did.
        with host_memory(self.settings):
            self._train(1)
            start = time.perf_counter()
            images = self._train(count)
            seconds = time.perf_counter() - start
        return images / seconds

    def _train(self, count: int) -> int:
        """Train `count` steps and wait for the device to finish them; returns the images used."""
        if not self.bare_steps:
            return train_one_epoch(self.model, _Take(self.batches, count), self.optimizer, self.device, "bench", settings=self.settings)["images"]
        images = 0
        for _ in range(count):
            tiles, labels = next(self.batches)
            with autocast(self.device, self.settings):
                loss = F.cross_entropy(self.model(tiles).float(), labels)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            images += len(labels)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return images


class _Take:
    """The next `count` batches of an endless source, as a loader of known length."""

    def __init__(self, batches, count: int):
        self.batches, self.count = batches, count

    def __len__(self) -> int:
        return self.count

    def __iter__(self):
        return itertools.islice(self.batches, self.count)


def _forever(batches):
    while True:
        yield from batches


def _random_batches(batch: int, size: int, device: torch.device, settings: SpeedSettings):
    tiles = prepare_input(torch.rand(batch, 3, size, size, device=device), settings)
    labels = torch.randint(0, 2, (batch,), device=device)
    while True:
        yield tiles, labels


def _peak_host_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def measure(case: Case, device: torch.device, sources, labels, tiles_uint8, rounds: int) -> dict:
    workbook_settings = speed_settings(device, "auto", compile_model=False)
    input_size = case.crop_size or tiles_uint8.shape[-1]
    needed = case.steps * case.batch_size
    record = {"model": case.model, "device": str(device), "device_name": _device_name(device),
              "precision": workbook_settings.precision, "channels_last": workbook_settings.channels_last,
              "host_memory_kept": workbook_settings.keep_host_memory, "workbook_settings": describe(workbook_settings),
              "batch_size": case.batch_size, "input_size": input_size, "steps": case.steps}  # fmt: skip
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    # (a) seed style: files decoded per image, PIL transforms, a DataLoader, fp32.
    torch.manual_seed(0)
    transform = original_augmentation(case.crop_size) if case.crop_size else None
    seed_set = FileTileDataset(sources[:needed], labels[:needed], tiles_uint8.shape[-1], transform)
    workers = 0 if device.type == "cpu" else min(8, os.cpu_count() or 1)  # on a CPU a worker would take a core from the model
    loader = torch.utils.data.DataLoader(seed_set, case.batch_size, shuffle=True, drop_last=True, num_workers=workers,
                                         pin_memory=device.type == "cuda", persistent_workers=workers > 0)  # fmt: skip
    record["seed_style_workers"] = workers
    paths = {
        "seed_style": _Path(case.model, ORIGINAL, device, loader),
        # (b) workbook: uint8 tiles, batches augmented on the device.
        "workbook": _Path(case.model, workbook_settings, device,
                          TileBatches(tiles_uint8[:needed], labels[:needed], case.batch_size, True, 0, device, case.crop_size, "bench")),
        # (c) the model alone on ready tensors: the ceiling for (b).
        "model_only": _Path(case.model, workbook_settings, device, _random_batches(case.batch_size, input_size, device, workbook_settings),
                            bare_steps=True),
    }  # fmt: skip
    # Rounds taken in turn and their median kept, so that a slow spell of a shared machine lands on
    # every path alike rather than on whichever ran during it.
    rates = {name: [] for name in paths}
    for _ in range(rounds):
        for name, path in paths.items():
            rates[name].append(path.steps(case.steps))
    for name, values in rates.items():
        record[name] = statistics.median(values)
        record[f"{name}_rounds"] = values
    record["rounds"] = rounds

    record["workbook_vs_seed"] = record["workbook"] / record["seed_style"]
    record["workbook_vs_limit"] = record["workbook"] / record["model_only"]
    record["peak_host_mb"] = _peak_host_mb()
    record["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return record


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    from lib.training.environment import cpu_name

    return f"{cpu_name()}, {torch.get_num_threads()} threads"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lib.bench.throughput", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA_DIR), help="tiles to read (default: the generated set)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per measurement (default: per device)")
    parser.add_argument("--devices", default="auto", help="auto (cpu, and cuda when present), cpu or cuda")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per path, taken in turn; the median is kept")
    parser.add_argument("--models", default="baseline,resnet50", help="comma-separated: baseline, resnet50")
    parser.add_argument("--batch-size", type=int, default=None, help="instead of each device's default batches")
    parser.add_argument("--distributed", choices=("auto", "none"), default="auto",
                        help="auto: the distributed rows for each device (the baseline on a CPU, ResNet50 on CUDA); none: skip them")
    parser.add_argument("--ddp-epochs", type=int, default=3, help="epochs of each distributed row's run")
    parser.add_argument("--ddp-subset", type=int, default=None, help="tiles of each distributed row's run (default: 512 on a CPU, 4096 on CUDA)")
    parser.add_argument("--ddp-batch-size", type=int, default=None, help="global batch of the distributed rows (default: 32 on a CPU, 100 on CUDA)")
    parser.add_argument("--out", default=str(REPORTS_DIR / "bench.json"))
    args = parser.parse_args(argv)

    from lib.data.synthetic import ensure_default

    ensure_default(args.data)
    devices = [torch.device("cpu")] if args.devices in ("auto", "cpu") else []
    if args.devices in ("auto", "cuda") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    if not torch.cuda.is_available():
        print("bench: no CUDA device here, so only the CPU is measured")
    index = read_layout(args.data)
    records = []
    for device in devices:
        plan = cases(device, args.steps, args.models.split(","), args.batch_size)
        count = max(c.steps * c.batch_size for c in plan)
        if count > len(index.train_paths):
            raise ValueError(f"the bench needs {count} tiles; {args.data} has {len(index.train_paths)}")
        sources, labels = index.train_paths[:count], torch.from_numpy(index.train_labels[:count])
        tiles, _, _ = decode_tiles(sources, desc="decoding bench tiles")
        for case in plan:
            print(f"bench: {case.model} on {device}, batch {case.batch_size}, {args.rounds} rounds of {case.steps} timed steps per path ...", flush=True)
            record = measure(case, device, sources, labels, tiles, args.rounds)
            records.append(record)
            gpu = f", peak GPU {record['peak_gpu_mb']:.0f} MiB" if record["peak_gpu_mb"] is not None else ""
            print(f"  {record['device_name']}: (a) seed style {record['seed_style']:.1f} img/s, (b) workbook {record['workbook']:.1f} "
                  f"({record['workbook_settings']}), (c) model only {record['model_only']:.1f} (medians of {args.rounds} rounds)\n"
                  f"  b/a = {record['workbook_vs_seed']:.2f}, b/c = {record['workbook_vs_limit']:.2f}; "
                  f"peak host {record['peak_host_mb']:.0f} MiB{gpu}", flush=True)  # fmt: skip
        if args.distributed == "auto":
            from lib.bench import distributed

            cuda = device.type == "cuda"
            record = distributed.distributed_record(args.data, device, "resnet50" if cuda else "baseline", args.ddp_epochs,
                                                    args.ddp_batch_size or (100 if cuda else 32), args.ddp_subset or (4096 if cuda else 512))  # fmt: skip
            records.append(record)
            print(distributed.describe(record), flush=True)
    out = os.path.abspath(args.out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(records, f, indent=2)
    print(f"bench: wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
