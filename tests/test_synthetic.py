"""The embedded default data set: layout, determinism, and that colour alone does not solve it."""

import json
import re

import numpy as np
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from scipy import ndimage

from lib.data.synthetic import EOSIN_OD, HAEMATOXYLIN_OD, SyntheticSpec, generate, render_split, render_tile, tile_rng


def _nuclear_features(tile: np.ndarray) -> list[float]:
    """Crude morphology: unmix the stains, take the darkest haematoxylin pixels as nuclei, and
    describe their blobs (count, mean, spread and tail of sizes)."""
    od = -np.log(np.clip(tile.astype(np.float64), 1, 255) / 255)
    stains = np.stack([HAEMATOXYLIN_OD / np.linalg.norm(HAEMATOXYLIN_OD), EOSIN_OD / np.linalg.norm(EOSIN_OD), [0.27, 0.57, 0.78]])
    haem = (od.reshape(-1, 3) @ np.linalg.inv(stains))[:, 0].reshape(tile.shape[:2])
    blobs, _ = ndimage.label(haem > np.percentile(haem, 85))
    areas = np.bincount(blobs.ravel())[1:]
    areas = areas[areas > 3] if (areas > 3).any() else np.array([0])
    return [len(areas), areas.mean(), areas.std(), np.percentile(areas, 90), areas.max()]


def test_layout_is_the_course_layout(tiny_data):
    assert sorted(p.name for p in tiny_data.iterdir()) == ["DATASET.json", "test", "test_label.csv", "train", "train_label.csv"]
    assert sorted(int(p.stem) for p in (tiny_data / "train").iterdir()) == list(range(1, 97))
    assert sorted(int(p.stem) for p in (tiny_data / "test").iterdir()) == list(range(1, 25))
    lines = (tiny_data / "train_label.csv").read_text().splitlines()
    assert lines[0] == "id,label" and len(lines) == 97
    assert all(re.fullmatch(r"\d+,[01]", line) for line in lines[1:])
    with Image.open(tiny_data / "train" / "1.jpg") as image:
        assert image.size == (256, 256) and image.mode == "RGB"
    labels = [int(line.split(",")[1]) for line in lines[1:]]
    assert 0.3 < np.mean(labels) < 0.7, "the classes should be roughly balanced"


def test_same_seed_same_tiles_other_seed_other_tiles():
    spec = SyntheticSpec(seed=5)
    first, labels_first = render_split(spec, "train", range(1, 4))
    again, labels_again = render_split(spec, "train", range(1, 4))
    other, _ = render_split(SyntheticSpec(seed=6), "train", range(1, 4))
    assert np.array_equal(first, again) and np.array_equal(labels_first, labels_again)
    assert not np.array_equal(first, other)


def test_generation_is_reused_and_never_overwrites_foreign_files(tmp_path):
    spec = SyntheticSpec(n_train=4, n_test=2)
    data_dir = generate(tmp_path / "set", spec, workers=1)
    stamp = (data_dir / "train" / "1.jpg").stat().st_mtime_ns
    generate(data_dir, spec, workers=1)
    assert (data_dir / "train" / "1.jpg").stat().st_mtime_ns == stamp, "an existing set with the same spec is reused"
    assert json.loads((data_dir / "DATASET.json").read_text())["n_train"] == 4
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="mine"):
        generate(foreign, spec, workers=1)
    assert (foreign / "notes.txt").read_text() == "user data"


def test_classes_differ_in_nuclei_not_in_colour():
    """A logistic regression on per-channel means and standard deviations stays below 75 %,
    while the same classifier on crude nuclear morphology does clearly better: the signal is in
    the nuclei and their arrangement, as in real tissue."""
    tiles, labels = render_split(SyntheticSpec(seed=3), "train", range(1, 401))
    pixels = tiles.reshape(len(tiles), -1, 3).astype(np.float64)
    colour = np.concatenate([pixels.mean(1), pixels.std(1)], axis=1)
    morphology = np.log1p(np.array([_nuclear_features(t) for t in tiles]))

    def accuracy(features):
        return cross_val_score(make_pipeline(StandardScaler(), LogisticRegression()), features, labels, cv=5).mean()

    colour_accuracy, morphology_accuracy = accuracy(colour), accuracy(morphology)
    assert colour_accuracy < 0.75, f"colour statistics alone reach {colour_accuracy:.3f}"
    assert morphology_accuracy > colour_accuracy + 0.05, (colour_accuracy, morphology_accuracy)


def test_tiles_are_rgb_uint8_of_the_asked_size():
    tile = render_tile(tile_rng(1, "train", 1), 1, SyntheticSpec(tile_size=128))
    assert tile.shape == (128, 128, 3) and tile.dtype == np.uint8
    assert tile.std() > 5, "a tile should not be flat"
