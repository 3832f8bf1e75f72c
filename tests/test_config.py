"""The registry and the one config object built from a notebook's parameters."""

import csv
import dataclasses
import typing
from pathlib import Path

import nbformat
import papermill
import pytest
import torch

from lib import registry
from lib.config import RunConfig, convert, field_comments, field_types, notebook_parameters, parameters_cell_source, run_config, settable_fields
from lib.paths import NOTEBOOKS_DIR

from tests.conftest import SEED_EPOCHS


def test_registry_holds_the_four_runs_faithfully_and_one_beyond_them():
    assert registry.run_names() == ["baseline", "resnet50-10ep", "resnet50-100ep", "resnet50-150ep", "resnet50-stain"]
    original = [run for run in registry.run_names() if not registry.reported(run).get("beyond_original")]
    assert original == registry.run_names()[:4]
    full = {run: registry.run_parameters(run, "full") for run in original}
    assert [full[r]["epochs"] for r in full] == [100, 10, 100, 150]
    assert full["baseline"]["model"] == "baseline" and not full["baseline"]["augment"]
    assert all(full[r]["head"] == "imagenet1000" and full[r]["batch_size"] == 100 and full[r]["augment"] for r in list(full)[1:])
    assert [full[r]["scheduler"] for r in full] == ["none", "none", "plateau", "plateau"]
    assert registry.reported("resnet50-10ep")["best_valid_accuracy"] == 0.96
    assert registry.reported("resnet50-150ep")["test_accuracy"] == 0.99346


def test_the_stain_run_is_run_4_with_stain_augmentation_alone():
    for profile in ("full", "quick"):
        final = run_config("resnet50-150ep", profile=profile)
        stain = run_config("resnet50-stain", profile=profile)
        differ = {f.name for f in dataclasses.fields(final) if getattr(final, f.name) != getattr(stain, f.name)}
        assert differ == {"run", "notebook", "order", "title", "hed_scale", "hed_shift"}, differ
        assert stain.hed_scale > 0 and stain.hed_shift > 0


@pytest.mark.skipif(not SEED_EPOCHS.exists(), reason=f"{SEED_EPOCHS} is absent (only beside the project's own checkout)")
def test_registry_logged_epochs_match_the_seed_csv():
    with open(SEED_EPOCHS) as f:
        rows = list(csv.DictReader(f))
    for run in registry.run_names():
        logged = registry.reported(run)["logged_epochs"]
        expected = [r for r in rows if r["run"] == run]
        assert len(logged) == len(expected)
        for ours, theirs in zip(logged, expected):
            assert ours["epoch"] == int(theirs["epoch"])
            for key in ("train_loss", "train_accuracy", "valid_loss", "valid_accuracy"):
                assert ours[key] == pytest.approx(float(theirs[key]))


def test_quick_profile_overrides_and_none_means_registry_value():
    config = run_config("resnet50-10ep", profile="quick", epochs=None, seed=3)
    assert config.epochs == registry.run_parameters("resnet50-10ep", "quick")["epochs"]
    assert config.seed == 3 and config.profile == "quick"
    assert run_config("resnet50-10ep", profile="full", epochs=2).epochs == 2


def test_auto_profile_says_what_it_chose():
    config = run_config("baseline", profile="auto")
    expected = "full" if torch.cuda.is_available() else "quick"
    assert config.profile == expected and "auto" in config.profile_reason and expected in config.profile_reason


def test_unknown_and_mistyped_parameters_fail_by_name():
    with pytest.raises(ValueError, match="unknown parameter.*epoch_count.*accepted:.*epochs"):
        run_config("baseline", profile="quick", epoch_count=3)
    with pytest.raises(TypeError, match=r"batch_size='64.5' should be int \(a whole number\)"):
        run_config("baseline", profile="quick", batch_size="64.5")
    with pytest.raises(TypeError, match=r"epochs=3.0 should be int"):
        run_config("baseline", profile="quick", epochs=3.0)
    with pytest.raises(TypeError, match=r"epochs=True should be int"):
        run_config("baseline", profile="quick", epochs=True)
    with pytest.raises(ValueError, match="epochs=0"):
        run_config("baseline", profile="quick", epochs=0)
    with pytest.raises(ValueError, match="unknown profile 'fast'"):
        run_config("baseline", profile="fast")
    with pytest.raises(ValueError, match=r"crop_size=128 with augment=True would crop the baseline's tiles.*leave crop_size at 0"):
        run_config("baseline", profile="quick", augment=True, crop_size=128)
    assert run_config("baseline", profile="full", augment=True).crop_size == 0, "0: the whole tile, for the baseline"
    assert run_config("baseline", profile="quick", augment=True, crop_size=256).crop_size == 256
    assert run_config("baseline", profile="quick", model="small", tile_size=32).crop_size == 0, "another model: 0 follows its tile"
    with pytest.raises(ValueError, match=r"crop_size=50 is larger than tile_size=32 for resnet50-10ep: set crop_size to at most 32 "
                                         r"\(crop_size=0 follows the tile: 25\), or tile_size to at least 50"):
        run_config("resnet50-10ep", profile="quick", tile_size=32, crop_size=50)
    with pytest.raises(ValueError, match=r"tile_size=4 must be 0 \(the data set's own\) or at least 16 pixels"):
        run_config("resnet50-10ep", profile="quick", tile_size=4)  # the tile named, not the crop it makes look too large
    with pytest.raises(KeyError, match="unknown run 'resnet18'"):
        run_config("resnet18", profile="quick")
    with pytest.raises(ValueError, match="unknown parameter.*notebook;"):
        run_config("baseline", profile="quick", notebook="other.ipynb")  # identity fields are not parameters


@pytest.mark.parametrize("name, given, expected", [
    ("epochs", "3", 3), ("epochs", 3, 3), ("lr", 1, 1.0), ("lr", "1e-4", 1e-4), ("compile", "true", True),
    ("compile", "False", False), ("compile", 1, True), ("positive_class", 1, "1"), ("positive_class", "1", "1"),
    ("weights_path", "None", None), ("weights_path", "", None), ("weights_path", "/x.pth", "/x.pth"), ("data_dir", Path("/d"), "/d"),
])  # fmt: skip
def test_values_are_converted_by_their_fields_type(name, given, expected):
    assert convert(name, given) == expected and type(convert(name, given)) is type(expected)


@pytest.mark.parametrize("name, given", [("epochs", 3.0), ("epochs", "3.0"), ("epochs", "three"), ("compile", "maybe"), ("compile", 2),
                                         ("lr", "fast"), ("lr", True), ("positive_class", True), ("epochs", None), ("tile_size", [96])])  # fmt: skip
def test_values_a_type_cannot_take_are_refused_with_the_field_and_type(name, given):
    with pytest.raises(TypeError, match=rf"parameter {name}=.* should be"):
        convert(name, given)


def test_precedence_is_default_then_registry_defaults_then_run_then_profile_then_user():
    assert dataclasses.fields(RunConfig)  # RunConfig's own default for a field nobody sets:
    assert run_config("baseline", profile="full").checkpoint_every_s == 60.0
    assert run_config("baseline", profile="full").lr == registry.load()["defaults"]["lr"]  # registry [defaults]
    assert run_config("baseline", profile="full").epochs == 100  # the run's own entry
    assert run_config("baseline", profile="quick").epochs == registry.load()["runs"]["baseline"]["quick"]["epochs"]  # its profile
    assert run_config("baseline", profile="quick", epochs=7, lr=None).epochs == 7  # the user; None is "not set"


def test_the_accepted_types_come_from_the_dataclass():
    hints = typing.get_type_hints(RunConfig)
    assert field_types() == hints
    assert set(settable_fields()) == {f.name for f in dataclasses.fields(RunConfig)} - {"run", "notebook", "order", "profile_reason"}
    assert all(field_comments()[name] for name in settable_fields()), "every parameter says what it means"


def test_every_run_notebook_declares_every_parameter_as_generated_from_runconfig():
    for run in registry.run_names():
        notebook = nbformat.read(str(NOTEBOOKS_DIR / registry.run_entry(run)["notebook"]), as_version=4)
        cell = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
        assert cell.source == parameters_cell_source(), f"{run}'s notebook is stale: run `python -m lib.config`"
        declared = papermill.inspect_notebook(str(NOTEBOOKS_DIR / registry.run_entry(run)["notebook"]))
        assert list(declared) == settable_fields(), "papermill reads every declared parameter"
        code = "\n".join(c.source for c in notebook.cells if c.cell_type == "code" and c is not cell)
        assert "batch_size" not in code and "notebook_parameters(globals())" in code, "code cells do not repeat parameters"


def test_notebook_parameters_reads_the_kernels_names_and_refuses_unknown_ones():
    namespace = {"epochs": 3, "lr": None, "In": [], "Out": {}, "_i1": "x", "registry": registry, "run_config": run_config,
                 "config": run_config("baseline", profile="quick")}  # fmt: skip
    assert notebook_parameters(namespace) == {"epochs": 3, "lr": None}
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) weights_file given to this notebook; accepted: .*weights_path"):
        notebook_parameters(namespace | {"weights_file": "/x.pth"})
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) runs given to this notebook; accepted: runs_dir"):
        notebook_parameters({"runs_dir": "r", "runs": "x"}, accepted=("runs_dir",))
