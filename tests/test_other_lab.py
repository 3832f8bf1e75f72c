"""The second test set: new tissue stained as another laboratory stains. The home set unchanged to
the byte, only the staining step differing, the stated rule's numbers, and the set on disk."""

import dataclasses
import hashlib
import json
from contextlib import contextmanager
from functools import partial

import numpy as np
import pytest

import lib.paths
from lib.config import run_config
from lib.data import LayoutError, load_tile_set, read_layout, read_run_layout
from lib.data import synthetic
from lib.data.synthetic import (EOSIN_SCALE, HAEMATOXYLIN_SCALE, HOME_LAB, LAMP_BRIGHTNESS, OTHER_LAB, OtherLabSpec, SyntheticSpec,
                                default_other_lab, ensure_default, generate, generate_other_lab, render_split, render_tile, tile_label,
                                tile_rng)  # fmt: skip

# sha256 of render_split's tiles and labels, computed on the generator before the other laboratory
# was added (commit 9f21e8a): the home set's tiles may not move by one byte, or every user's
# generated set would differ from the one its runs were trained and reported on.
HOME_HASHES = {
    ("train", 1, 5): "d04c4116e4391164f0253c1c14985fc4e7d4c5ab82519b4a30d0df3f578cc1d5",
    ("test", 1, 4): "68ab7a8f8868044241db6ecaf19f3745575632e15563e6a98e3afa771fe1d53c",
}

# torchstain 1.4.1, torchstain/numpy/normalizers/macenko.py: HERef, columns haematoxylin and eosin.
MACENKO_HEREF = np.array([[0.5626, 0.2159], [0.7201, 0.8012], [0.4062, 0.5581]])


@pytest.mark.parametrize("split, first, stop", [(split, first, stop) for split, first, stop in HOME_HASHES])
def test_home_lab_tiles_unchanged(split, first, stop):
    tiles, labels = render_split(SyntheticSpec(), split, range(first, stop))
    assert hashlib.sha256(tiles.tobytes() + labels.tobytes()).hexdigest() == HOME_HASHES[split, first, stop]


def test_home_set_record_and_version_unchanged(tmp_path):
    """A user's generated set is reused: its DATASET.json holds the same keys and version as before."""
    data_dir = generate(tmp_path / "home", SyntheticSpec(n_train=2, n_test=2, seed=11), workers=1)
    record = json.loads((data_dir / "DATASET.json").read_text())
    assert record["version"] == synthetic.GENERATOR_VERSION == 2
    assert set(record) == {"n_train", "n_test", "tile_size", "seed", "normal_atypia", "tumour_atypia", "jpeg_quality", "version", "origin"}


def test_other_lab_differs_only_in_staining(monkeypatch):
    """From one tile stream, both laboratories stain the same densities and leave the stream in the
    same state (same orientation, same draws); only the colours differ."""
    seen = []

    def recording(rng, haem, eosin, staining=HOME_LAB):
        seen.append((haem.copy(), eosin.copy()))
        return stain_tile(rng, haem, eosin, staining)

    stain_tile = synthetic.stain_tile
    monkeypatch.setattr(synthetic, "stain_tile", recording)
    spec = SyntheticSpec(tile_size=128)
    for index in (1, 2, 3):
        label = tile_label(spec.seed, "other_lab", index)
        home_rng, other_rng = tile_rng(spec.seed, "other_lab", index), tile_rng(spec.seed, "other_lab", index)
        home = render_tile(home_rng, label, spec, HOME_LAB)
        other = render_tile(other_rng, label, spec, OTHER_LAB)
        (home_haem, home_eosin), (other_haem, other_eosin) = seen[-2:]
        assert np.array_equal(home_haem, other_haem) and np.array_equal(home_eosin, other_eosin)
        assert home_rng.bit_generator.state == other_rng.bit_generator.state
        assert np.abs(home.astype(int) - other.astype(int)).mean() > 5, "the other laboratory should stain visibly differently"


def test_the_rule_is_the_stated_one():
    """Stain vectors: Macenko's reference matrix, in place of Ruifrok & Johnston's; each centre moved
    by half the home laboratory's per-tile half-range (haematoxylin up, eosin and lamp down)."""
    assert OTHER_LAB.haematoxylin_od == tuple(MACENKO_HEREF[:, 0]) and OTHER_LAB.eosin_od == tuple(MACENKO_HEREF[:, 1])
    assert HOME_LAB.haematoxylin_od == (0.650, 0.704, 0.286) and HOME_LAB.eosin_od == (0.072, 0.990, 0.105)
    assert np.allclose(np.linalg.norm(MACENKO_HEREF, axis=0), 1, atol=1e-3), "HERef's columns are unit vectors"
    half_of_half_range = [(hi - lo) / 4 for lo, hi in (HAEMATOXYLIN_SCALE, EOSIN_SCALE, LAMP_BRIGHTNESS)]
    shifts = [OTHER_LAB.haematoxylin_shift, OTHER_LAB.eosin_shift, OTHER_LAB.brightness_shift]
    assert shifts == [0.275, -0.225, -0.03] and np.allclose(np.abs(shifts), half_of_half_range)
    assert (HOME_LAB.haematoxylin_shift, HOME_LAB.eosin_shift, HOME_LAB.brightness_shift) == (0, 0, 0)
    for words in ("Macenko", "HERef", "Ruifrok", "0.5626", "+0.275", "-0.225", "-0.03", "never tuned"):
        assert words in OTHER_LAB.rule


def test_set_is_a_labelled_test_set_of_new_tissue(tmp_path):
    spec = OtherLabSpec(n_test=8)
    data_dir = generate_other_lab(tmp_path / "other-lab", spec, workers=1)
    assert sorted(p.name for p in data_dir.iterdir()) == ["DATASET.json", "test", "test_label.csv"]
    index = read_run_layout(run_config("baseline", profile="quick", data_dir=str(data_dir)))
    assert index.layout == "course" and index.train_paths == [] and "test set only" in index.label_rule
    assert index.test_ids == [str(i) for i in range(1, 9)] and len(index.test_paths) == 8
    assert index.test_labels.tolist() == [tile_label(spec.seed, "other_lab", i) for i in range(1, 9)]
    assert set(index.test_labels.tolist()) == {0, 1}
    record = json.loads((data_dir / "DATASET.json").read_text())
    assert record["stain_rule"] == OTHER_LAB.rule and record["staining"]["haematoxylin_od"] == list(MACENKO_HEREF[:, 0])
    # 512 labels by default, a fair coin per tile from the other laboratory's own label stream, as the
    # home set's (225 of 512 are 1; within 0.4-0.6 is 4.5 standard deviations of 512 coins).
    labels = [tile_label(spec.seed, "other_lab", i) for i in range(1, OtherLabSpec().n_test + 1)]
    assert OtherLabSpec().n_test == 512 and 0.4 < np.mean(labels) < 0.6
    assert labels != [tile_label(spec.seed, "test", i) for i in range(1, 513)]


def test_tissue_streams_are_new():
    """No other-lab tile starts its stream as any home training or test tile does: its tissue is new."""
    seed = OtherLabSpec().seed

    def starts(split, count):
        return {tuple(tile_rng(seed, split, i).integers(0, 2**62, 2)) for i in range(1, count + 1)}

    other = starts("other_lab", 512)
    assert len(other) == 512 and not other & starts("train", 4096) and not other & starts("test", 512)


def test_generated_once_regenerated_on_a_new_spec_and_never_half_written(tmp_path, monkeypatch):
    spec = OtherLabSpec(n_test=4)
    data_dir = generate_other_lab(tmp_path / "other-lab", spec, workers=1)
    stamp = (data_dir / "test" / "1.jpg").stat().st_mtime_ns
    generate_other_lab(data_dir, spec, workers=1)
    assert (data_dir / "test" / "1.jpg").stat().st_mtime_ns == stamp, "the same spec is reused, not rendered again"
    before = (data_dir / "test" / "1.jpg").read_bytes()

    import lib.progress

    real_progress = lib.progress.progress

    def ctrl_c(n: int) -> None:
        raise KeyboardInterrupt

    @contextmanager
    def stopped(*args, **kwargs):  # Ctrl-C once the first chunk's tiles are written
        with real_progress(*args, **kwargs) as bar:
            bar.update = ctrl_c
            yield bar

    monkeypatch.setattr(lib.progress, "progress", stopped)
    changed = OtherLabSpec(n_test=4, staining=dataclasses.replace(OTHER_LAB, brightness_shift=-0.05))
    with pytest.raises(KeyboardInterrupt):
        generate_other_lab(data_dir, changed, workers=1)
    assert (data_dir / "test" / "1.jpg").read_bytes() == before, "an interrupted regeneration leaves the old set whole"
    with pytest.raises(KeyboardInterrupt):
        generate_other_lab(tmp_path / "fresh", spec, workers=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other-lab"], "no half-written set, no staging folder left"
    monkeypatch.setattr(lib.progress, "progress", real_progress)
    generate_other_lab(data_dir, changed, workers=1)
    assert (data_dir / "test" / "1.jpg").read_bytes() != before, "a changed spec regenerates the set"
    assert json.loads((data_dir / "DATASET.json").read_text())["staining"]["brightness_shift"] == -0.05


def test_foreign_folder_refused_and_class_folders_still_read_as_such(tmp_path, tiny_data):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="mine"):
        generate_other_lab(foreign, OtherLabSpec(n_test=2), workers=1)
    # Class folders beside a test/ folder and test_label.csv remain class folders, not a test set alone.
    for name in ("normal", "tumour", "test"):
        (tmp_path / "classes" / name).mkdir(parents=True)
    for k in range(2):
        for name, source in (("normal", "1.jpg"), ("tumour", "2.jpg"), ("test", f"{k + 1}.jpg")):
            (tmp_path / "classes" / name / f"{k}{source}").write_bytes((tiny_data / "train" / source).read_bytes())
    (tmp_path / "classes" / "test_label.csv").write_text("id,label\n01,0\n12,1\n")
    assert read_layout(tmp_path / "classes").layout == "class-folders"


def test_training_refuses_a_test_set_alone(tmp_path):
    data_dir = generate_other_lab(tmp_path / "other-lab", OtherLabSpec(n_test=2), workers=1)
    with pytest.raises(LayoutError, match="test tiles only"):
        load_tile_set(read_layout(data_dir), cache_dir=tmp_path / "cache")


def test_ensure_default_makes_both_sets(tmp_path, monkeypatch):
    home, other = tmp_path / "synthetic", tmp_path / "synthetic-other-lab"
    monkeypatch.setattr(lib.paths, "DEFAULT_DATA_DIR", home)
    monkeypatch.setattr(lib.paths, "DEFAULT_OTHER_LAB_DIR", other)
    # The default specs' sizes (4096 + 512 + 512 tiles) are too slow here: the same calls, smaller.
    monkeypatch.setattr(synthetic, "generate", partial(generate, spec=SyntheticSpec(n_train=4, n_test=2), workers=1))
    monkeypatch.setattr(synthetic, "generate_other_lab", partial(generate_other_lab, spec=OtherLabSpec(n_test=4), workers=1))
    assert ensure_default(home) == home
    assert len(read_layout(home).train_paths) == 4 and len(read_layout(other).test_paths) == 4
    assert default_other_lab(home) == other and default_other_lab(other) is None and default_other_lab(tmp_path / "user") is None
    ensure_default(tmp_path / "user")
    assert not (tmp_path / "user").exists()
