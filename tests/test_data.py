"""Reading the course layout and the original's seeded split."""

import math
import shutil

import numpy as np
import pytest
import torch

from lib.data import TileDataset, decode_tiles, make_loader, read_course_layout, seeded_split


def test_reads_the_course_layout(tiny_data):
    index = read_course_layout(tiny_data)
    assert len(index.train_paths) == 96 and index.train_labels.dtype == np.int64
    assert index.train_paths[0].name == "1.jpg"
    assert index.test_ids == list(range(1, 25))
    assert index.test_labels is not None and len(index.test_labels) == 24
    assert "generated" in index.origin


@pytest.mark.parametrize("n", [4096, 96, 11])
def test_split_sizes_follow_the_original(n):
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
    with pytest.raises(ValueError, match="subset=600"):
        seeded_split(500, 0.1, 1, subset=600)


def test_header_written_as_in_a_submission_is_accepted(tiny_data, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_data, copy)
    lines = (copy / "train_label.csv").read_text().splitlines()
    (copy / "train_label.csv").write_text("\n".join(["# Id,Values", *lines[1:]]) + "\n")
    assert len(read_course_layout(copy).train_paths) == 96


def test_missing_folder_and_missing_images_are_named(tiny_data, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.*does not exist"):
        read_course_layout(tmp_path / "nowhere")
    copy = tmp_path / "copy"
    shutil.copytree(tiny_data, copy)
    (copy / "train" / "7.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 id\(s\) have no image.*: 7"):
        read_course_layout(copy)
    (copy / "train_label.csv").write_text("id,label\n1,2\n")
    with pytest.raises(ValueError, match="line 2: label 2 is not 0 or 1"):
        read_course_layout(copy)


def test_decoded_tiles_are_uint8_and_validation_is_untouched(tiny_data):
    index = read_course_layout(tiny_data)
    tiles = decode_tiles(index.train_paths[:4])
    assert tiles.shape == (4, 3, 256, 256) and tiles.dtype == torch.uint8
    tile, label = TileDataset(tiles, torch.zeros(4, dtype=torch.long))[0]
    assert torch.allclose(tile, tiles[0].float() / 255)  # ToTensor only


def test_loader_drops_the_last_partial_batch_and_refuses_an_empty_one():
    data = TileDataset(torch.zeros(10, 3, 8, 8, dtype=torch.uint8), torch.zeros(10, dtype=torch.long))
    assert len(make_loader(data, 4, shuffle=True, seed=0, what="training")) == 2
    with pytest.raises(ValueError, match="validation set has 10 tiles, fewer than batch_size=16"):
        make_loader(data, 16, shuffle=False, seed=0, what="validation")
