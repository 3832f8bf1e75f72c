"""Tiles that are not square (BreakHis's 700x460) keep the shape of what they show: centre-cropped
(the default) or padded with white to square, then resized, never squashed; the choice is recorded,
said in the run's notes, and keys the tile cache."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from lib.config import run_config
from lib.data import FileTileDataset, TileCache, decode_tiles, load_tile_set
from lib.data.layouts import read_layout
from lib.pipeline import settings_from_make

WIDTH, HEIGHT, RADIUS = 70, 46, 15  # BreakHis's 700x460 / 10, a nucleus drawn in the middle


def _tile_with_a_circle(path, shade: int):
    """A light 70x46 tile with a dark disc of radius 15 at its centre, as PNG (exact pixels)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (WIDTH, HEIGHT), (230, 200, 220))
    centre = (WIDTH // 2, HEIGHT // 2)
    ImageDraw.Draw(image).ellipse([centre[0] - RADIUS, centre[1] - RADIUS, centre[0] + RADIUS, centre[1] + RADIUS], fill=(shade, 20, 90))
    image.save(path)
    return path


def _circle_set(root):
    """Class folders of 70x46 tiles with a drawn circle, two per class."""
    for name, shade in (("benign", 60), ("malignant", 40)):
        for i in range(2):
            _tile_with_a_circle(root / name / f"{name}{i}.png", shade + i)
    return root


def _aspect(tile: np.ndarray) -> float:
    """Width over height of the dark disc in an (H, W, 3) or (3, H, W) uint8 tile."""
    tile = tile if tile.shape[-1] == 3 else tile.transpose(1, 2, 0)
    rows, columns = np.nonzero(tile[:, :, 0] < 150)
    return (columns.max() - columns.min() + 1) / (rows.max() - rows.min() + 1)


def test_the_default_keeps_a_round_nucleus_round_and_says_what_it_did(tmp_path):
    index = read_layout(_circle_set(tmp_path / "set"))
    tile_set = load_tile_set(index, size=64, cache_dir=None)
    aspects = [_aspect(tile.numpy()) for tile in tile_set.tiles]
    assert all(abs(a - 1) < 0.05 for a in aspects), aspects  # squashed to 64x64 it would be 0.66
    assert tile_set.record.non_square == "crop" and tile_set.record.resized == {"70x46": 4}
    said = "4 tiles of 70x46 centre-cropped to 46x46 (non_square='crop'; the sides are left out), then resized to 64x64, never squashed"
    assert said in tile_set.notes and said in tile_set.record.notes(64)
    assert not any(note.startswith("resized to") for note in tile_set.notes)


def test_pad_keeps_the_whole_tile_with_white_borders(tmp_path):
    source = _tile_with_a_circle(tmp_path / "wide.png", 50)
    original = np.asarray(Image.open(source).convert("RGB"))
    tiles, _, record = decode_tiles([source], size=WIDTH, cache_dir=None, non_square="pad")
    tile = tiles[0].numpy().transpose(1, 2, 0)
    top = (WIDTH - HEIGHT) // 2
    assert (tile[:top] == 255).all() and (tile[top + HEIGHT :] == 255).all()
    assert np.array_equal(tile[top : top + HEIGHT], original)  # every pixel kept, none stretched
    assert abs(_aspect(tile) - 1) < 0.05
    assert record.notes(WIDTH) == ["1 tiles of 70x46 padded with white to 70x70 (non_square='pad'; the whole tile kept), never squashed"]
    small, _, _ = decode_tiles([source], size=32, cache_dir=None, non_square="pad")
    assert abs(_aspect(small[0].numpy()) - 1) < 0.1  # 32 pixels: a pixel of rounding either way


def test_square_tiles_are_the_same_whatever_the_choice(tmp_path):
    square = tmp_path / "square.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(square)
    cropped, _, record = decode_tiles([square], size=24, cache_dir=None, non_square="crop")
    padded, _, _ = decode_tiles([square], size=24, cache_dir=None, non_square="pad")
    assert torch.equal(cropped, padded) and record.notes(24) == ["resized to 24x24: 1 tiles of 40x40"]


def test_the_cache_keeps_crop_and_pad_apart(tmp_path):
    sources = sorted((_circle_set(tmp_path / "set")).rglob("*.png"))
    cache_dir = tmp_path / "cache"
    assert TileCache(sources, cache_dir, non_square="crop").key != TileCache(sources, cache_dir, non_square="pad").key
    cropped, _, _ = decode_tiles(sources, size=32, cache_dir=cache_dir, non_square="crop")
    padded, _, record = decode_tiles(sources, size=32, cache_dir=cache_dir, non_square="pad")
    assert "wrote" in record.cache and record.non_square == "pad"  # decoded anew, not the cropped rows
    assert (padded[:, :, 0, :] == 255).all() and not (cropped[:, :, 0, :] == 255).all()
    with pytest.raises(ValueError, match="non_square='squash' is not one of crop, pad"):
        TileCache(sources, cache_dir, non_square="squash")


def test_the_original_input_path_crops_as_the_cache_does(tmp_path):
    sources = sorted((_circle_set(tmp_path / "set")).rglob("*.png"))
    for how in ("crop", "pad"):
        tiles, _, _ = decode_tiles(sources, size=32, cache_dir=None, non_square=how)
        item, _ = FileTileDataset(sources, torch.zeros(4, dtype=torch.int64), 32, non_square=how)[0]
        assert torch.equal((item * 255).round().to(torch.uint8), tiles[0])


def test_non_square_is_a_run_parameter_at_every_door():
    assert run_config("baseline", profile="quick").non_square == "crop"
    settings = settings_from_make(" -- NON_SQUARE=pad")
    assert settings == {"non_square": "pad"} and run_config("baseline", profile="quick", **settings).non_square == "pad"
    with pytest.raises(ValueError, match="parameter non_square='squash' is not one of crop, pad"):
        run_config("baseline", profile="quick", non_square="squash")


def test_a_run_prints_and_records_what_was_done_to_non_square_tiles(tmp_path, capsys):
    import json

    from lib.training.loop import fit

    root = tmp_path / "set"
    for name, shade in (("benign", 60), ("malignant", 40)):
        for i in range(6):
            _tile_with_a_circle(root / name / f"{name}{i}.png", shade + i)
    fit(run_config("baseline", data_dir=str(root), runs_dir=str(tmp_path / "runs"), model="small", tile_size=32, epochs=1, batch_size=2,
                   valid_fraction=0.5, device="cpu", profile="quick", cache_dir="", non_square="pad"))  # fmt: skip
    said = "12 tiles of 70x46 padded with white to 70x70 (non_square='pad'; the whole tile kept), then resized to 32x32, never squashed"
    assert f"data: {said}" in capsys.readouterr().out
    summary = json.loads((tmp_path / "runs" / "baseline" / "result.json").read_text())
    assert said in summary["data_notes"] and summary["decoding"]["non_square"] == "pad"  # the report's input notes are these data_notes
