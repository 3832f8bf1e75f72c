"""The evaluation's trust: test-time augmentation, the pairs of runs compared, a second test set in
any layout, and the sentences that call a difference one only when its interval excludes 0."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lib.config import ParameterError, run_config
from lib.data.layouts import LayoutError
from lib.metrics import score_predictions, scores_text
from lib.report import results
from lib.report.evaluate import DIHEDRAL, compared_pairs, dihedral, predict_tiles, resolve_second_test, second_test_tiles
from lib.training.speed import speed_settings
from tests.helpers import class_folders, write_tile


def test_the_eight_symmetries_of_a_tile_are_eight_different_tiles():
    tile = torch.arange(9, dtype=torch.float32).view(1, 1, 3, 3)
    turned = [dihedral(tile, k, mirrored) for k, mirrored in DIHEDRAL]
    assert len({tuple(t.flatten().tolist()) for t in turned}) == 8
    assert torch.equal(turned[0], tile)  # the first is the tile itself: the plain prediction
    # A quarter turn counter-clockwise takes the top-right corner to the top-left.
    assert dihedral(tile, 1, False)[0, 0, 0, 0] == tile[0, 0, 0, 2]


class TopLeft(torch.nn.Module):
    """Logits (0, v) where v is the top-left pixel's red value times 4: the class-1 probability is
    sigmoid(4 v), which depends on the tile's orientation."""

    def forward(self, x):
        v = x[:, 0, 0, 0] * 4
        return torch.stack([torch.zeros_like(v), v], dim=1)


class MeanColour(torch.nn.Module):
    def forward(self, x):
        v = x.mean(dim=(1, 2, 3)) * 4 - 2
        return torch.stack([torch.zeros_like(v), v], dim=1)


def _tiles(n=3, size=6, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, 3, size, size), dtype=np.uint8))


def test_test_time_augmentation_averages_the_probabilities_of_the_eight_symmetries():
    tiles = _tiles()
    settings = speed_settings(torch.device("cpu"), "fp32")
    predictions, scores, tta_predictions, tta_scores = predict_tiles(TopLeft(), tiles, torch.device("cpu"), settings, batch_size=2, tta=True)
    corners = tiles[:, 0, [0, 0, -1, -1], [0, -1, 0, -1]].float() / 255  # each corner comes to the top left twice in the 8
    by_hand = torch.sigmoid(4 * corners).mean(dim=1)
    assert np.allclose(tta_scores, by_hand.numpy(), atol=1e-6)
    assert np.allclose(scores, torch.sigmoid(4 * tiles[:, 0, 0, 0].float() / 255).numpy(), atol=1e-6)
    assert (tta_predictions == (by_hand.numpy() > 0.5)).all()


def test_test_time_augmentation_changes_nothing_for_a_network_blind_to_orientation():
    tiles = _tiles(5)
    settings = speed_settings(torch.device("cpu"), "fp32")
    _, scores, _, tta_scores = predict_tiles(MeanColour(), tiles, torch.device("cpu"), settings, tta=True)
    assert np.allclose(scores, tta_scores, atol=1e-6)
    assert predict_tiles(MeanColour(), tiles, torch.device("cpu"), settings)[2:] == (None, None)


def test_each_run_is_compared_with_the_one_before_it_and_with_the_baseline():
    runs = ["baseline", "resnet50-10ep", "resnet50-100ep", "resnet50-150ep", "resnet50-stain"]
    models = {"baseline": "baseline"} | {run: "resnet50" for run in runs[1:]}
    assert compared_pairs(runs, models) == [
        ("baseline", "resnet50-10ep"), ("resnet50-10ep", "resnet50-100ep"), ("baseline", "resnet50-100ep"),
        ("resnet50-100ep", "resnet50-150ep"), ("baseline", "resnet50-150ep"), ("resnet50-150ep", "resnet50-stain"),
        ("baseline", "resnet50-stain")]  # fmt: skip
    assert compared_pairs(["a", "b"], {}) == [("a", "b")]  # no baseline: neighbours only


def test_a_second_test_set_of_class_folders_is_scored_on_every_labelled_tile(tmp_path):
    class_folders(tmp_path / "other", {"normal": 3, "tumour": 2})
    config = run_config("baseline", profile="quick", data_dir=str(tmp_path), positive_class="tumour")
    tiles = second_test_tiles(config, tmp_path / "other")
    assert len(tiles.ids) == 5 and sorted(tiles.labels.tolist()) == [0, 0, 0, 1, 1]
    assert "other" in tiles.scored_on and "5 labelled tiles" in tiles.scored_on


def test_a_second_test_set_in_the_course_layout_is_scored_on_its_test_tiles(tmp_path):
    root = tmp_path / "lab2"
    for i in range(1, 4):
        write_tile(root / "train" / f"{i}.png", i)
        write_tile(root / "test" / f"{i}.png", 10 + i)
    (root / "train_label.csv").write_text("id,label\n1,0\n2,1\n3,0\n")
    (root / "test_label.csv").write_text("id,label\n1,1\n2,1\n3,0\n")
    config = run_config("baseline", profile="quick", data_dir=str(tmp_path))
    tiles = second_test_tiles(config, root)
    assert tiles.labels.tolist() == [1, 1, 0] and "3 test tiles" in tiles.scored_on
    with pytest.raises(ValueError, match="is the runs' own data set"):
        second_test_tiles(run_config("baseline", profile="quick", data_dir=str(root)), root)


def test_a_second_set_whose_labels_would_be_guessed_against_its_folder_names_is_refused(tmp_path):
    class_folders(tmp_path / "other", {"cancer": 2, "normal": 2})  # alphabetically, cancer would become class 0
    config = run_config("baseline", profile="quick", data_dir=str(tmp_path / "home"))
    with pytest.raises(LayoutError, match="its labels are not certain: .*path,label"):
        second_test_tiles(config, tmp_path / "other")


def test_a_missing_second_test_set_is_named(tmp_path):
    config = run_config("baseline", profile="quick", data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="second_test=.*nowhere"):
        second_test_tiles(config, tmp_path / "nowhere")


def test_the_second_test_set_is_the_generated_other_laboratory_only_for_the_generated_data(tmp_path):
    from lib.paths import DEFAULT_DATA_DIR

    assert resolve_second_test("", DEFAULT_DATA_DIR) is None and resolve_second_test("none", DEFAULT_DATA_DIR) is None
    assert resolve_second_test("auto", tmp_path) is None  # a user's data: no second set unless named
    assert resolve_second_test("auto", DEFAULT_DATA_DIR) is not None
    assert resolve_second_test(str(tmp_path), DEFAULT_DATA_DIR) == tmp_path


def test_scores_carry_their_intervals_in_the_line_people_read():
    metrics = score_predictions([0, 0, 1, 1], [0, 1, 1, 1], [0.1, 0.6, 0.8, 0.9]) | {
        "intervals": {"accuracy": {"low": 0.5, "high": 1.0}, "balanced_accuracy": {"low": 0.5, "high": 1.0},
                      "roc_auc": {"low": 0.75, "high": 1.0}, "method": "95 % percentile bootstrap"}}  # fmt: skip
    text = scores_text(metrics)
    assert "accuracy 75.00 % [50.00, 100.00]" in text and "ROC-AUC 1.000 [0.750, 1.000]" in text
    assert "in brackets: 95 % percentile bootstrap" in text


def _comparison(told_apart: bool, value: float = 0.05):
    return {"a": "run-a", "b": "run-b", "on": "test", "n": 512,
            "accuracy": {"value": value, "low": value - 0.03, "high": value + 0.03, "told_apart": told_apart,
                         "mcnemar": {"b": 10, "c": 36, "p_value": 0.0002}},
            "roc_auc": {"value": 0.02, "low": -0.01 if not told_apart else 0.005, "high": 0.05, "told_apart": told_apart}}  # fmt: skip


def test_a_difference_is_called_one_only_when_its_interval_excludes_zero():
    real = results.comparison_sentence(_comparison(True))
    assert "run-b is more accurate" in real and "run-b ranks the tiles better" in real and "+5.00 points" in real
    not_real = results.comparison_sentence(_comparison(False))
    assert "not told apart on these tiles" in not_real and "more accurate" not in not_real and "better" not in not_real
    worse = results.comparison_sentence(_comparison(True, value=-0.05))
    assert "run-b is less accurate" in worse and "\u22125.00 points" in worse


def test_a_bad_tta_choice_is_refused_by_name_before_anything_runs():
    from lib.pipeline import checked_settings

    with pytest.raises(ParameterError, match="tta='sometimes' is not one of none, final, all"):
        checked_settings({"tta": "sometimes"})
    assert checked_settings({"tta": "ALL"})[1]["tta"] == "all"


def test_a_missing_second_test_set_is_named_before_any_training(tmp_path, monkeypatch):
    from lib import pipeline

    monkeypatch.setattr(pipeline, "require_kernel", lambda: None)
    monkeypatch.setattr(pipeline, "_run_if_changed", lambda *a, **k: pytest.fail("a notebook ran"))
    with pytest.raises(FileNotFoundError, match="second_test .*elsewhere does not exist"):
        pipeline.run_all({"data_dir": str(tmp_path), "runs_dir": str(tmp_path / "runs"), "reports_dir": str(tmp_path / "reports"),
                          "second_test": str(tmp_path / "elsewhere")})  # fmt: skip
    assert not Path(tmp_path / "runs").exists() or not any(Path(tmp_path / "runs").iterdir())


def test_the_report_table_names_a_difference_only_where_its_interval_excludes_zero():
    table = results.comparisons_table([_comparison(True), _comparison(False) | {"on": "second", "n": 40}])
    rows = [line for line in table.splitlines() if line.startswith("| run-b")]
    assert len(rows) == 2
    assert "| held-out |" in rows[0] and "**more accurate, ranks better**" in rows[0] and "+5.00 [+2.00, +8.00]" in rows[0]
    assert "| second set |" in rows[1] and "**not told apart**" in rows[1]
    assert "A difference is named only where its interval excludes 0" in table and "the 512 held-out tiles" in table
    assert results.comparisons_table([]) == ""


def test_two_runs_with_the_same_predictions_are_said_to_be_the_same():
    same = {"a": "run-a", "b": "run-b", "on": "test", "n": 512,
            "accuracy": {"value": 0.0, "low": 0.0, "high": 0.0, "told_apart": False, "mcnemar": {"b": 0, "c": 0, "n_discordant": 0, "p_value": 1.0}},
            "roc_auc": {"value": 0.0, "low": 0.0, "high": 0.0, "told_apart": False}}  # fmt: skip
    assert results.verdict(same) == "the same predictions"
    assert results.verdict(_comparison(False)) == "not told apart"


def test_an_unreadable_second_test_set_is_refused_before_any_training(tmp_path, monkeypatch):
    from lib import pipeline

    (tmp_path / "nolabels" / "test").mkdir(parents=True)
    write_tile(tmp_path / "nolabels" / "test" / "1.png", 1)
    class_folders(tmp_path / "home", {"normal": 3, "tumour": 3})
    monkeypatch.setattr(pipeline, "require_kernel", lambda: None)
    monkeypatch.setattr(pipeline, "_run_if_changed", lambda *a, **k: pytest.fail("a notebook ran"))
    with pytest.raises(ParameterError, match="(?s)second_test=.*nolabels: .*matches no layout.*SECOND_TEST="):
        pipeline.run_all({"data_dir": str(tmp_path / "home"), "runs_dir": str(tmp_path / "runs"), "reports_dir": str(tmp_path / "reports"),
                          "second_test": str(tmp_path / "nolabels")})  # fmt: skip
