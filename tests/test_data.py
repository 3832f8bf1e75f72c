"""Decoding (modes, sizes, bad files, the cache), the splits and the batches."""

import json
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from lib.config import run_config
from lib.data import (BadImagesError, streamed, FileTileDataset, TileBatches, decode_tiles, grouped_split, load_tile_set, make_loader, make_split,
                      read_layout, seeded_split)  # fmt: skip
from lib.training.loop import fit
from tests.helpers import class_folders, write_tile


def test_every_image_mode_becomes_rgb_and_other_sizes_are_resized(tmp_path):
    sources = [write_tile(tmp_path / f"{mode}.{ext}", k, size=40, mode=mode)
               for k, (mode, ext) in enumerate([("L", "png"), ("P", "png"), ("RGBA", "png"), ("CMYK", "jpg"), ("RGB", "jpg")])]  # fmt: skip
    tiles, ok, record = decode_tiles(sources, size=64, cache_dir=None)
    assert tiles.shape == (5, 3, 64, 64) and tiles.dtype == torch.uint8 and ok.all()
    assert record.converted == {"L": 1, "P": 1, "RGBA": 1, "CMYK": 1} and record.resized == {"40x40": 5}
    grey = tiles[0]
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])  # grey stays grey in RGB


def test_transparent_pixels_become_white_not_black(tmp_path):
    Image.new("RGBA", (8, 8), (10, 20, 30, 0)).save(tmp_path / "clear.png")
    tiles, _, _ = decode_tiles([tmp_path / "clear.png"], size=8, cache_dir=None)
    assert (tiles == 255).all()


@pytest.fixture
def damaged_copy(tiny_data, tmp_path):
    """The tiny set with a zero-byte, a truncated and a not-an-image file among the training tiles."""
    copy = shutil.copytree(tiny_data, tmp_path / "damaged")
    (copy / "train" / "3.jpg").write_bytes(b"")
    data = (copy / "train" / "5.jpg").read_bytes()
    (copy / "train" / "5.jpg").write_bytes(data[: len(data) // 3])
    (copy / "train" / "8.jpg").write_text("this is not a JPEG")
    return copy


def test_bad_images_are_all_listed_before_training_and_can_be_skipped(damaged_copy, tmp_path):
    runs = tmp_path / "runs"
    tiny = {"epochs": 1, "batch_size": 8, "subset": 0, "device": "cpu", "profile": "quick", "cache_dir": str(tmp_path / "cache")}
    with pytest.raises(BadImagesError, match=r"3 file\(s\) could not be read.*nothing has been trained yet") as caught:
        fit(run_config("baseline", data_dir=str(damaged_copy), runs_dir=str(runs), **tiny))
    for name in ("3.jpg", "5.jpg", "8.jpg"):
        assert f"train/{name}" in str(caught.value)
    assert not (runs / "baseline" / "history.json").exists()  # found before the first epoch
    result = fit(run_config("baseline", data_dir=str(damaged_copy), runs_dir=str(runs), skip_bad_images=True, **tiny))
    # n_labelled counts the data set's labelled tiles; the three unreadable ones are left out of the split.
    assert result.summary["decoding"]["skipped"] == 3 and result.summary["n_labelled"] == 96
    assert result.summary["n_train"] + result.summary["n_valid"] == 93
    assert any("3 unreadable file(s) skipped" in note for note in result.summary["data_notes"])


def test_the_cache_is_reused_and_follows_changed_files(tiny_data, tmp_path):
    index = read_layout(tiny_data)
    first, _, record = decode_tiles(index.train_paths[:6], cache_dir=tmp_path)
    assert record.cache.startswith("wrote")
    again, _, record = decode_tiles(index.train_paths[:6], cache_dir=tmp_path)
    assert record.cache.startswith("read") and torch.equal(first, again)
    copy = shutil.copytree(tiny_data, tmp_path / "copy")
    changed = read_layout(copy)
    shutil.copy(copy / "train" / "9.jpg", copy / "train" / "1.jpg")
    fresh, _, record = decode_tiles(changed.train_paths[:6], cache_dir=tmp_path)
    assert record.cache.startswith("wrote") and not torch.equal(fresh[0], first[0])
    assert len(list(tmp_path.glob("*-256.npy"))) == 2  # one per data set: the copy's older cache was not kept twice


@pytest.mark.parametrize("n", [4096, 96, 11])
def test_random_split_sizes_follow_the_original(n):
    split = seeded_split(n, 0.1, seed=0)
    assert len(split.train) == math.floor(0.9 * n) and len(split.train) + len(split.valid) == n
    assert not set(split.train) & set(split.valid)
    assert sorted([*split.train, *split.valid]) == list(range(n))


def test_split_is_deterministic_per_seed_and_subset_is_drawn_first():
    a, b, c = seeded_split(500, 0.1, 1), seeded_split(500, 0.1, 1), seeded_split(500, 0.1, 2)
    assert np.array_equal(a.train, b.train) and np.array_equal(a.valid, b.valid)
    assert not np.array_equal(a.train, c.train)
    sub = seeded_split(500, 0.1, 1, subset=100)
    assert len(sub.train) == 90 and len(sub.valid) == 10 and not set(sub.train) & set(sub.valid)
    everything = seeded_split(500, 0.1, 1, subset=600)  # more than there are: all of them (issue #14)
    assert np.array_equal(everything.train, a.train) and np.array_equal(everything.valid, a.valid)


def test_grouped_split_never_shares_a_group_and_is_seeded():
    rng = np.random.default_rng(0)
    groups = np.array([f"slide-{g}" for g in rng.integers(0, 60, 1000)])
    a, b = grouped_split(groups, 0.1, seed=4), grouped_split(groups, 0.1, seed=4)
    assert np.array_equal(a.train, b.train) and np.array_equal(a.valid, b.valid)
    assert not set(groups[a.train]) & set(groups[a.valid])
    assert sorted([*a.train, *a.valid]) == list(range(1000))
    assert 0.1 <= len(a.valid) / 1000 < 0.2
    assert f"{len(set(groups[a.valid]))} validate, none on both sides" in a.description
    assert not np.array_equal(a.valid, grouped_split(groups, 0.1, seed=5).valid)
    sub = grouped_split(groups, 0.1, seed=4, subset=300)
    assert len(sub.train) + len(sub.valid) == 300 and not set(groups[sub.train]) & set(groups[sub.valid])


def test_auto_split_is_grouped_when_the_data_names_groups(tmp_path):
    root = class_folders(tmp_path / "g", {"a": 6, "b": 6})
    # Groups mix the classes, so that either side of a grouped split holds both.
    rows = ["path,label,group"] + [f"{c}/{c}{i}.png,{int(c == 'b')},g{i // 2}" for c in "ab" for i in range(6)]
    (root / "tiles.csv").write_text("\n".join(rows) + "\n")
    tile_set = load_tile_set(read_layout(root), size=32, cache_dir=None)
    assert make_split(tile_set, "auto", 0.3, 0).description.startswith("grouped")
    assert "WARNING: groups ignored" in make_split(tile_set, "random", 0.3, 0).description
    (root / "tiles.csv").unlink()
    folders = load_tile_set(read_layout(root), size=32, cache_dir=None)
    with pytest.raises(ValueError, match="split='grouped' asked for, but .* names no groups"):
        make_split(folders, "grouped", 0.3, 0)


def test_validation_batches_are_untouched_and_the_last_partial_batch_is_dropped_unless_there_is_no_full_one(tiny_data):
    index = read_layout(tiny_data)
    tiles, _, _ = decode_tiles(index.train_paths[:10], cache_dir=None)
    batches = TileBatches(tiles, torch.arange(10), 4, shuffle=False, seed=0, device=torch.device("cpu"), crop_size=None, what="validation")
    batches_seen = list(batches)
    assert len(batches) == len(batches_seen) == 2  # drop_last, as the original
    images, labels = batches_seen[0]
    assert torch.equal(images, tiles[:4].float() / 255) and labels.tolist() == [0, 1, 2, 3]  # ToTensor only
    one_batch = list(TileBatches(tiles, torch.arange(10), 16, shuffle=False, seed=0, device=torch.device("cpu"), crop_size=None, what="validation"))
    assert len(one_batch) == 1 and one_batch[0][1].tolist() == list(range(10))  # fewer than a batch: one smaller batch


def test_training_batches_are_reshuffled_each_epoch_and_augmented_per_image(tiny_data):
    index = read_layout(tiny_data)
    tiles, _, _ = decode_tiles(index.train_paths[:16], cache_dir=None)
    torch.manual_seed(0)
    batches = TileBatches(tiles, torch.arange(16), 8, shuffle=True, seed=3, device=torch.device("cpu"), crop_size=200, what="training")
    first = [labels.tolist() for _, labels in batches]
    batches.set_epoch(1)  # as the training loop does before each epoch (DistributedSampler's set_epoch)
    second = [labels.tolist() for _, labels in batches]
    assert first != second and sorted(sum(first, [])) == list(range(16))
    batches.set_epoch(0)
    assert [labels.tolist() for _, labels in batches] == first, "an epoch's order follows seed + epoch alone (resume needs no state)"
    images, _ = next(iter(batches))
    assert images.shape == (8, 3, 200, 200) and images.dtype == torch.float32


def test_the_original_input_path_reads_files_per_item(tiny_data):
    index = read_layout(tiny_data)
    dataset = FileTileDataset(index.train_paths[:10], torch.arange(10), 256)
    tiles, _, _ = decode_tiles(index.train_paths[:1], cache_dir=None)
    image, label = dataset[0]
    assert torch.equal(image, tiles[0].float() / 255) and label == 0
    assert len(make_loader(dataset, 4, shuffle=True, seed=0, what="training")) == 2
    assert [len(labels) for _, labels in make_loader(dataset, 16, shuffle=False, seed=0, what="validation")] == [10]


def test_run_record_names_layout_split_and_resizing(tmp_path):
    root = class_folders(tmp_path / "classes", {"benign": 20, "tumour": 20})
    result = fit(run_config("baseline", data_dir=str(root), runs_dir=str(tmp_path / "runs"), epochs=1, batch_size=4,
                            subset=0, device="cpu", profile="quick", positive_class="tumour", cache_dir=""))  # fmt: skip
    summary = json.loads((tmp_path / "runs" / "baseline" / "result.json").read_text())
    assert summary == result.summary and summary["data_layout"] == "class-folders"
    assert "tumour is 1 (positive_class)" in summary["label_rule"] and summary["split"].startswith("random")
    assert summary["data_notes"] == ["tile_size 256: the model takes 256x256 tiles only, so the data set's tiles (32x32) are resized to it",
                                     "resized to 256x256: 40 tiles of 32x32"]  # fmt: skip
    assert result.config["tile_size"] == 256


def test_batches_are_streamed_only_from_host_to_an_accelerator():
    # A tensor on the GPU reports cuda:0 while the run asked for "cuda"; comparing the two with `!=`
    # sent GPU-resident tiles to pin_memory() (found on the H200, 2026-11-30). torch.device needs no GPU.
    assert not streamed(torch.device("cuda:0"), torch.device("cuda"))
    assert not streamed(torch.device("cuda", 0), torch.device("cuda:0"))
    assert streamed(torch.device("cpu"), torch.device("cuda"))
    assert not streamed(torch.device("cpu"), torch.device("cpu"))


def test_tile_and_crop_sizes_are_resolved_once_before_training(tiny_data, tmp_path):
    """resolve_sizes turns 0 ("from the data") into the sizes the run uses, before any stage runs;
    fit records exactly that config, and resolving it again changes nothing."""
    from lib.data import read_run_layout, resolve_sizes
    from lib.training.run_folder import RunFolder

    config = run_config("resnet50-10ep", profile="quick", data_dir=str(tiny_data), runs_dir=str(tmp_path), model="small", tile_size=0,
                        crop_size=0, epochs=1, batch_size=8, subset=0, device="cpu", cache_dir="")  # fmt: skip
    index = read_run_layout(config)
    resolved, why = resolve_sizes(config, index)
    assert (resolved.tile_size, resolved.crop_size) == (256, 200), "the tiles' own 256, the original's 200 of 256"
    assert "the data set's own" in why
    assert resolve_sizes(resolved, index)[0] == resolved
    baseline, _ = resolve_sizes(run_config("baseline", profile="quick", data_dir=str(tiny_data), cache_dir=""), index)
    assert (baseline.tile_size, baseline.crop_size) == (256, 256), "the baseline takes 256 and, augmenting, crops nothing"

    fit(config)
    saved = RunFolder(tmp_path / "resnet50-10ep").read_config()
    assert (saved["tile_size"], saved["crop_size"]) == (256, 200)
