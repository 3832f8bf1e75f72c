"""The registry and the one config object built from a notebook's parameters."""

import csv

import pytest
import torch

from lib import registry
from lib.config import run_config

from tests.conftest import SEED_EPOCHS


def test_registry_holds_the_four_runs_faithfully():
    assert registry.run_names() == ["baseline", "resnet50-10ep", "resnet50-100ep", "resnet50-150ep"]
    full = {run: registry.run_parameters(run, "full") for run in registry.run_names()}
    assert [full[r]["epochs"] for r in full] == [100, 10, 100, 150]
    assert full["baseline"]["model"] == "baseline" and not full["baseline"]["augment"]
    assert all(full[r]["head"] == "imagenet1000" and full[r]["batch_size"] == 100 and full[r]["augment"] for r in list(full)[1:])
    assert [full[r]["scheduler"] for r in full] == ["none", "none", "plateau", "plateau"]
    assert registry.reported("resnet50-10ep")["best_valid_accuracy"] == 0.96
    assert registry.reported("resnet50-150ep")["test_accuracy"] == 0.99346


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
    with pytest.raises(TypeError, match="unknown parameter.*epoch_count.*accepted:.*epochs"):
        run_config("baseline", profile="quick", epoch_count=3)
    with pytest.raises(TypeError, match="batch_size='64'"):
        run_config("baseline", profile="quick", batch_size="64")
    with pytest.raises(ValueError, match="epochs=0"):
        run_config("baseline", profile="quick", epochs=0)
    with pytest.raises(ValueError, match="unknown profile 'fast'"):
        run_config("baseline", profile="fast")
    with pytest.raises(KeyError, match="unknown run 'resnet18'"):
        run_config("resnet18", profile="quick")
