"""One parameter path: every RunConfig field, given through make and through papermill's command line,
arrives in the run's saved config.json; an unknown name fails on both doors, naming the accepted ones."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lib.config import settable_fields
from lib.paths import NOTEBOOKS_DIR, PROJECT_ROOT

from tests.helpers import class_folders


def walk_values(tmp_path, data_dir) -> dict:
    """A value other than RunConfig's default for every settable field, chosen so that one tiny run
    (the small CNN on 24 tiles of 32x32) trains with all of them. A field added to RunConfig without
    a value here fails test_every_field_has_a_walk_value."""
    return {
        "data_dir": str(data_dir), "positive_class": "benign", "skip_bad_images": True, "subset": 20, "valid_fraction": 0.25,
        "split": "random", "tile_size": 32, "cache_dir": str(tmp_path / "tile-cache"), "profile": "quick", "epochs": 1,
        "batch_size": 4, "lr": 0.005, "scheduler": "plateau", "augment": True, "crop_size": 24, "seed": 5, "model": "small",
        "head": "binary", "weights": "none", "weights_path": str(tmp_path / "unused-by-the-small-cnn.pth"), "weights_strict": True,
        "device": "cpu", "precision": "fp32", "input_pipeline": "original", "loader_workers": 1, "runs_dir": str(tmp_path / "runs"),
        "resume": True, "checkpoint_every_s": 0.0, "title": "every parameter, walked",
        "multi_page": "first", "non_square": "pad", "hed_scale": 0.1, "hed_shift": 0.01,
        # torch.compile costs minutes on this CPU: compile goes through the same path with its default, given explicitly.
        "compile": False,
        # Two gloo processes under torchrun: the notebook's fit starts torchrun, which trains from launch.json.
        "nproc_per_node": 2,
    }  # fmt: skip


# Fields that exclude others in one run (a class_map replaces positive_class; fresh and resume are refused together;
# stain normalisation takes the tensor input path): walked in a second run, its stain reference one of the data's tiles.
ALTERNATES = {"class_map": "benign=0,tumour=1", "group_level": 1, "fresh": True, "stain_normalize": "reinhard", "input_pipeline": "tensor",
              "stain_reference": None}  # fmt: skip
REPLACED_BY_ALTERNATES = ("positive_class", "resume", "input_pipeline")


def alternate_values(tmp_path, data_dir) -> dict:
    values = {k: v for k, v in walk_values(tmp_path, data_dir).items() if k not in REPLACED_BY_ALTERNATES} | ALTERNATES
    reference = next(iter(sorted(Path(data_dir).rglob("*.png"))), None)
    return values | {"runs_dir": str(tmp_path / "runs-alternate"), "stain_reference": str(reference)}


def test_every_field_has_a_walk_value(tmp_path):
    assert set(walk_values(tmp_path, tmp_path)) | set(ALTERNATES) == set(settable_fields())


@pytest.fixture(scope="module")
def small_classes(tmp_path_factory):
    """Two class folders, each tile one level down in its patient's folder (for group_level)."""
    root = class_folders(tmp_path_factory.mktemp("walk") / "classes", {"benign": 12, "tumour": 12})
    for k, tile in enumerate(sorted(root.glob("*/*.png"))):
        (tile.parent / f"patient{k % 3}").mkdir(exist_ok=True)
        tile.rename(tile.parent / f"patient{k % 3}" / tile.name)
    return root


def _check_arrived(values: dict, run_dir):
    saved = json.loads((run_dir / "config.json").read_text())
    for name, value in values.items():
        assert saved[name] == value, f"{name}: gave {value!r}, config.json has {saved[name]!r}"
    assert json.loads((run_dir / "result.json").read_text())["n_train"] == 15  # subset 20, valid_fraction 0.25


@pytest.mark.parametrize("values_of", [walk_values, alternate_values])
def test_every_field_given_to_make_arrives_in_config_json(tmp_path, small_classes, values_of):
    values = values_of(tmp_path, small_classes)
    # Half as NAME=value (make's own variables, values with spaces included), half through SET.
    names = sorted(values)
    as_variables = [f"{n.upper()}={values[n]}" for n in names[::2]]
    as_set = " ".join(f"{n}='{values[n]}'" for n in names[1::2])
    command = ["make", "--no-print-directory", "run-all", "RUNS=baseline", f"REPORTS_DIR={tmp_path / 'reports'}", *as_variables, f"SET={as_set}"]
    done = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    _check_arrived(values, Path(values["runs_dir"]) / "baseline")

    done = subprocess.run(["make", "--no-print-directory", "run-all", "RUNS=baseline", "EPOCH=3"], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert done.returncode != 0 and "make variable EPOCH is no run parameter; accepted:" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("values_of", [walk_values, alternate_values])
def test_every_field_given_to_papermill_arrives_in_config_json(tmp_path, small_classes, values_of):
    values = values_of(tmp_path, small_classes)
    notebook = NOTEBOOKS_DIR / "01_baseline_cnn.ipynb"
    # Text on papermill's command line: -p converts numbers and True/False, -r keeps text, -y reads YAML.
    arguments = []
    for name, value in values.items():
        if name in ("positive_class", "epochs", "class_map"):
            arguments += ["-r", name, str(value)]
        elif name == "title":
            arguments += ["-y", f"{name}: {value}"]
        else:
            arguments += ["-p", name, str(value)]
    command = [sys.executable, "-m", "papermill", str(notebook), str(tmp_path / "out.ipynb"), "--cwd", str(NOTEBOOKS_DIR), *arguments]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=os.environ | {"PYTHONPATH": str(PROJECT_ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    _check_arrived(values, Path(values["runs_dir"]) / "baseline")

    command = [sys.executable, "-m", "papermill", str(notebook), str(tmp_path / "bad.ipynb"), "--cwd", str(NOTEBOOKS_DIR),
               "-p", "weights_file", "/x.pth", "-p", "data_dir", str(small_classes)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=os.environ | {"PYTHONPATH": str(PROJECT_ROOT)})
    assert done.returncode != 0
    assert "unknown parameter(s) weights_file given to this notebook; accepted:" in done.stderr and "weights_path" in done.stderr
