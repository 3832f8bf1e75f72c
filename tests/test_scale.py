"""PatchCamelyon-sized data, in small versions the tests generate (issue #12, and #14's small sets):
native tile size, the baseline's stated resize, subset drawn before decoding, batches read from the
memory-mapped cache without copies, the pcam-h5 layout with its own split, and small data sets
that run with what they have."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import lib.data.cache as cache
from lib import registry
from lib.bench.scale import write_pcam_folder, write_pcam_h5
from lib.config import run_config
from lib.data import PROCESS_DECODE_MIN, TileBatches, crop_for, decode_tiles, load_tile_set, make_split, read_layout
from lib.report.evaluate import predict_test_tiles
from lib.training.loop import fit


@pytest.fixture(scope="module")
def pcam96(tmp_path_factory) -> Path:
    """120 labelled 96x96 tiles in PatchCamelyon's Kaggle form (train/<id>.tif, train_labels.csv)."""
    return write_pcam_folder(tmp_path_factory.mktemp("pcam") / "kaggle", 120)


def _small_run(run: str, data_dir: Path, tmp_path: Path, **overrides) -> dict:
    values = {"data_dir": str(data_dir), "runs_dir": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "cache"), "profile": "quick",
              "device": "cpu", "epochs": 1, "weights": "none"} | overrides  # fmt: skip
    return run_config(run, **values)


def test_tiles_keep_their_native_size_unless_a_run_asks_and_the_crop_follows_the_tile(pcam96, tmp_path):
    tile_set = load_tile_set(read_layout(pcam96), 0, cache_dir=tmp_path)
    assert tile_set.size == 96 and tile_set.tiles.shape == (120, 3, 96, 96) and not tile_set.record.resized
    assert tile_set.notes[0].startswith("tile_size 96: the data set's own")
    asked = load_tile_set(read_layout(pcam96), 64, cache_dir=tmp_path)
    assert asked.size == 64 and asked.record.resized == {"96x96": 120}
    assert crop_for(96) == 75 and crop_for(256) == 200 and crop_for(96, 64) == 64  # the original's 200 of 256
    assert crop_for(256, 0, model_input=256) == 256, "a fixed-input network (the baseline) is rotated and flipped, not cropped"
    with pytest.raises(ValueError, match=r"crop_size=200 is larger than the 96x96 tiles: set crop_size to at most 96"):
        crop_for(96, 200)


def test_registry_runs_take_96_pixel_tiles_the_baseline_resizing_and_saying_so(pcam96, tmp_path):
    # The full profile: the original's defaults (the quick profile sets its ResNet50 runs' tile size itself).
    baseline = fit(_small_run("baseline", pcam96, tmp_path, subset=40, batch_size=8, profile="full"))
    assert baseline.config["tile_size"] == 256
    assert baseline.summary["data_notes"][0] == ("tile_size 256: the model takes 256x256 tiles only, so the data set's tiles (96x96) "
                                                 "are resized to it")  # fmt: skip
    assert "resized to 256x256: 40 tiles of 96x96" in baseline.summary["data_notes"]
    resnet = fit(_small_run("resnet50-10ep", pcam96, tmp_path, subset=24, batch_size=8, profile="full"))
    saved = json.loads((resnet.run_dir / "config.json").read_text())
    assert saved["tile_size"] == 96 and saved["crop_size"] == 75  # what evaluation and resume read
    with pytest.raises(ValueError, match="crop_size=200 is larger than the 96x96 tiles"):
        fit(_small_run("resnet50-100ep", pcam96, tmp_path, subset=24, batch_size=8, crop_size=200, profile="full"))
    assert not (tmp_path / "runs" / "resnet50-100ep" / "history.json").exists()  # stopped before training


def test_subset_is_drawn_before_decoding(pcam96, tmp_path, monkeypatch):
    decoded = []
    real_decode_tile = cache.decode_tile

    def counting(source, *args):
        decoded.append(source)
        return real_decode_tile(source, *args)

    monkeypatch.setattr(cache, "decode_tile", counting)  # below PROCESS_DECODE_MIN tiles, decoding runs in this process
    index = read_layout(pcam96)
    tile_set = load_tile_set(index, 0, cache_dir=tmp_path, subset=30, seed=4)
    assert len(decoded) == 30 and tile_set.n_kept == 30 and "only those are decoded" in tile_set.notes[1]
    split = make_split(tile_set, "random", 0.3, 4, subset=30)
    assert len(split.train) + len(split.valid) == 30 and tile_set.kept[split.train].all() and tile_set.kept[split.valid].all()
    again = load_tile_set(index, 0, cache_dir=tmp_path, subset=30, seed=4)
    assert len(decoded) == 30 and np.array_equal(again.kept, tile_set.kept)  # read from the cache, nothing decoded again
    everything = load_tile_set(index, 0, cache_dir=tmp_path)
    assert len(decoded) == 120 and everything.n_kept == 120  # the other 90 decoded once, into the same cache
    assert torch.equal(everything.tiles[split.valid], tile_set.tiles[split.valid])
    with pytest.raises(ValueError, match="drawn with subset=30, seed=4"):
        make_split(tile_set, "random", 0.3, 5, subset=30)


def _rss_anon_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no RssAnon in /proc/self/status")


def _mapped_file(address: int) -> str:
    """The file whose mapping holds `address` in this process, or "" for anonymous memory."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split()
        low, high = (int(x, 16) for x in fields[0].split("-"))
        if low <= address < high:
            return fields[5] if len(fields) > 5 else ""
    return ""


def test_batches_read_the_memory_mapped_cache_without_a_copy_of_it(tmp_path):
    n = PROCESS_DECODE_MIN + 1500  # enough to decode in worker processes, and a cache of 0.1 GB
    root = write_pcam_folder(tmp_path / "big", n)
    index = read_layout(root)
    cache_bytes = n * 3 * 96 * 96
    before = _rss_anon_mib()
    tile_set = load_tile_set(index, 0, cache_dir=tmp_path / "cache")
    split = make_split(tile_set, "random", 0.1, 0)
    cpu = torch.device("cpu")
    train = TileBatches(tile_set.tiles, tile_set.labels, 64, True, 0, cpu, None, "training", rows=split.train)
    valid = TileBatches(tile_set.tiles, tile_set.labels, 64, False, 0, cpu, None, "validation", rows=split.valid)
    seen = sum(len(labels) for loader in (train, valid) for _, labels in loader)
    grown = _rss_anon_mib() - before
    assert seen > 0.9 * n
    # The tile set is the cache file's mapping, and both loaders read it in place: no copy for the split.
    cache_file = _mapped_file(tile_set.tiles.data_ptr())
    assert cache_file.endswith("-96.npy") and Path(cache_file).parent == tmp_path / "cache"
    assert train.tiles.data_ptr() == valid.tiles.data_ptr() == tile_set.tiles.data_ptr()
    # A whole copy would add cache_bytes of anonymous memory; reading batches adds a few of them.
    assert grown < 0.5 * cache_bytes / 2**20, f"anonymous memory grew {grown:.0f} MiB for a {cache_bytes / 2**20:.0f} MiB cache"
    # Decoded in worker processes, written straight into the cache: the same pixels as decoding here.
    for row in (0, n // 2, n - 1):
        tile, _, _, _ = cache.decode_tile(index.train_paths[row], 96)
        assert np.array_equal(tile_set.tiles[row].numpy(), tile.transpose(2, 0, 1))


def test_the_pcam_h5_release_is_read_lazily_with_its_own_split(tmp_path):
    import h5py

    root = write_pcam_h5(tmp_path / "pcam-h5", 63, n_test=12)
    index = read_layout(root)
    assert index.layout == "pcam-h5" and len(index.train_paths) == 63 and index.given_valid.sum() == 7
    assert len(index.test_paths) == 12 and index.test_labels is not None and len(set(index.train_groups)) > 2
    with h5py.File(root / "camelyonpatch_level_2_split_valid_x.h5") as f:
        valid_x = f["x"][:]
    drawn = load_tile_set(index, 0, cache_dir=tmp_path / "cache", subset=20, seed=1)
    assert drawn.n_kept == 20 and drawn.size == 96  # only the drawn rows read
    tile_set = load_tile_set(index, 0, cache_dir=tmp_path / "cache")
    split = make_split(tile_set, "auto", 0.1, 0)
    assert split.description.startswith("given") and list(split.valid) == list(range(56, 63))
    assert np.array_equal(tile_set.tiles[split.valid].numpy(), valid_x.transpose(0, 3, 1, 2))  # nothing decoded: the arrays as stored
    assert "own split ignored" in make_split(tile_set, "random", 0.1, 0).description
    test_tiles, _, _ = decode_tiles(index.test_paths, 96, cache_dir=None)
    with h5py.File(root / "camelyonpatch_level_2_split_test_x.h5") as f:
        assert np.array_equal(test_tiles.numpy(), f["x"][:].transpose(0, 3, 1, 2))
    # A run trains on train and valid only; the test labels score its predictions.
    result = fit(_small_run("baseline", root, tmp_path, model="small", batch_size=8, subset=0))
    assert result.summary["n_train"] == 56 and result.summary["n_valid"] == 7 and result.summary["data_layout"] == "pcam-h5"
    predicted = predict_test_tiles(result.run_dir, root, device="cpu")
    assert predicted.scored_on == "test" and np.array_equal(predicted.labels, index.test_labels) and len(predicted.ids) == 12


def test_a_small_data_set_runs_with_what_it_has_and_says_so(tmp_path):
    root = write_pcam_folder(tmp_path / "kaggle24", 24, seed=3)
    subset = 1280  # a ceiling, as the quick ResNet50 runs' subset is; the batch size is the quick baseline's, from the registry
    result = fit(_small_run("baseline", root, tmp_path, subset=subset))
    quick = registry.run_parameters("baseline", "quick")
    batch = quick.get("batch_size", registry.run_parameters("baseline", "full")["batch_size"])
    notes = result.summary["data_notes"]
    assert f"subset={subset} asks for more than the data set's 24 labelled tiles: all 24 are used" in notes
    assert f"the training split holds 21 tiles, fewer than batch_size={batch}: one batch of 21 per epoch" in notes
    assert f"the validation split holds 3 tiles, fewer than batch_size={batch}: one batch of 3 per epoch" in notes
    assert result.summary["n_train"] == 21 and result.summary["n_valid"] == 3 and len(result.history) == 1


def test_a_set_too_small_to_train_is_refused_with_its_counts(tmp_path):
    root = write_pcam_folder(tmp_path / "kaggle12", 12, seed=3)
    rows = (root / "train_labels.csv").read_text().splitlines()
    labels = ["id,label"] + [f"{row.split(',')[0]},{int(k == 0)}" for k, row in enumerate(rows[1:])]  # one tile of class 1
    (root / "train_labels.csv").write_text("\n".join(labels) + "\n")
    with pytest.raises(ValueError, match=r"too few tiles to train: training \d+ \(class 0: \d+, class 1: [01]\)"):
        fit(_small_run("baseline", root, tmp_path))
    assert not (tmp_path / "runs" / "baseline" / "history.json").exists()
