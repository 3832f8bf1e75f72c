"""The quick profile measures something: every run validates on at least 128 tiles, the ResNet50
runs keep the original's relation, and ImageNet weights are used when present, as in the full profile."""

import math

import pytest

from lib import registry
from lib.config import run_config
from lib.data import crop_for

DEFAULT_LABELLED = 4096  # the default data set's labelled tiles (lib/data/synthetic.py)


@pytest.mark.parametrize("run", registry.run_names())
def test_every_quick_run_scores_at_least_128_validation_tiles_each_epoch(run):
    config = run_config(run, profile="quick")
    tiles = config.subset or DEFAULT_LABELLED
    n_valid = tiles - math.floor((1 - config.valid_fraction) * tiles)  # lib/data/'s seeded_split
    scored = n_valid // config.batch_size * config.batch_size  # drop_last, as the original
    assert scored >= 128, (run, n_valid, config.batch_size)


def test_the_quick_resnet50_runs_keep_the_originals_relation():
    resnets = [run for run in registry.run_names() if run_config(run, profile="full").model == "resnet50"
               and not registry.reported(run).get("beyond_original")]  # the original's relation, among its own runs
    quick = [run_config(run, profile="quick") for run in resnets]
    full = [run_config(run, profile="full") for run in resnets]
    assert [c.epochs for c in full] == [10, 100, 150]
    assert quick[0].epochs < quick[1].epochs < quick[2].epochs, "the shortest; longer; the longest"
    assert [c.scheduler for c in quick] == [c.scheduler for c in full] == ["none", "plateau", "plateau"]
    assert all(c.augment and c.crop_size <= c.tile_size for c in quick)
    # The crop follows the tile (the original's 200 of 256), so a user's TILE_SIZE=96 crops 75, as the README says.
    assert [crop_for(c.tile_size, c.crop_size) for c in quick] == [50] * 3
    assert {crop_for(96, run_config(run, profile="quick", tile_size=96).crop_size) for run in resnets} == {75}


def test_quick_resnet50_runs_take_imagenet_weights_when_present_like_the_full_ones(tmp_path):
    for run in registry.run_names():
        quick, full = run_config(run, profile="quick"), run_config(run, profile="full")
        assert (quick.weights, quick.head, quick.weights_strict) == (full.weights, full.head, full.weights_strict), run
    assert run_config("resnet50-10ep", profile="quick", weights_path=str(tmp_path / "r.pth")).weights_path == str(tmp_path / "r.pth")
