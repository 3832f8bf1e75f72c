"""Every accuracy beside its floor: class counts, majority-class rate, balanced accuracy, a one-class
predictor named; every run scored; the submission in the form the data set's competition expects."""

import json

import numpy as np
import pytest

from lib.metrics import class_counts, majority_rate, one_class_flag, score_predictions, scores_text
from lib.report.evaluate import TilePredictions, evaluate_runs, score_test_predictions, submission_form, write_submission_file
from lib.data.layouts import LayoutError
from tests.helpers import write_tile


def test_an_all_zero_predictor_on_a_90_10_set_is_named_beside_its_majority_rate():
    labels = np.array([0] * 90 + [1] * 10)
    metrics = score_predictions(labels, np.zeros(100, dtype=np.int64), np.full(100, 0.2, dtype=np.float32))
    assert metrics["accuracy"] == pytest.approx(0.9) and metrics["majority_rate"] == pytest.approx(0.9)
    assert metrics["class_counts"] == [90, 10] and metrics["majority_class"] == 0 and metrics["predicted_counts"] == [100, 0]
    assert metrics["balanced_accuracy"] == pytest.approx(0.5) and metrics["roc_auc"] == pytest.approx(0.5)
    assert metrics["one_class"] == "predicts class 0 for every tile"
    text = scores_text(metrics)
    assert "accuracy 90.00 % (majority-class rate 90.00 %: 90 tiles of class 0, 10 of class 1)" in text
    assert "balanced accuracy 50.00 %" in text and text.endswith("it predicts class 0 for every tile")


def test_balanced_accuracy_is_the_mean_of_the_two_recalls_and_a_learner_is_not_flagged():
    labels, predictions = np.array([0, 0, 0, 1]), np.array([0, 0, 1, 1])
    metrics = score_predictions(labels, predictions, np.array([0.1, 0.2, 0.7, 0.9]))
    assert metrics["balanced_accuracy"] == pytest.approx((2 / 3 + 1) / 2)
    assert metrics["accuracy"] == 0.75 and metrics["majority_rate"] == 0.75 and metrics["roc_auc"] == 1.0
    assert metrics["confusion_matrix"] == [[2, 1], [0, 1]] and metrics["one_class"] == ""
    assert "predicts class" not in scores_text(metrics)
    assert one_class_flag(np.ones(5, dtype=np.int64)) == "predicts class 1 for every tile"


def test_one_class_of_labels_leaves_roc_auc_undefined_and_bad_input_fails_by_name():
    metrics = score_predictions(np.zeros(4), np.array([0, 1, 0, 0]), np.array([0.1, 0.6, 0.2, 0.3]))
    assert metrics["roc_auc"] is None and metrics["majority_rate"] == 1.0 and "ROC-AUC undefined" in scores_text(metrics)
    with pytest.raises(ValueError, match="no labels"):
        majority_rate([])
    with pytest.raises(ValueError, match="0 or 1"):
        class_counts([0, 2, 1])
    with pytest.raises(ValueError, match="one each per tile"):
        score_predictions([0, 1], [0], [0.5, 0.5])
    assert score_test_predictions(TilePredictions(["1"], np.array([0]), np.array([0.2]), None, "x", 0, "test")) is None


def _predictions(data_dir, ids, scores) -> TilePredictions:
    scores = np.asarray(scores, dtype=np.float32)
    return TilePredictions(ids=ids, predictions=(scores > 0.5).astype(np.int64), scores=scores, labels=None,
                           checkpoint="best.pt", best_epoch=0, scored_on="test", data_dir=str(data_dir))  # fmt: skip


def test_a_sample_submission_sets_the_header_the_id_order_and_probabilities(tmp_path):
    (tmp_path / "sample_submission.csv").write_text("id,label\nc3,0\na1,0\nb2,0\n")
    record = write_submission_file(tmp_path / "out" / "submission.csv", _predictions(tmp_path, ["a1", "b2", "c3", "d4"], [0.1, 0.75, 0.5, 0.9]))
    assert (tmp_path / "out" / "submission.csv").read_text() == "id,label\nc3,0.500000\na1,0.100000\nb2,0.750000\n"
    assert record["form"] == "competition" and record["rows"] == 3 and record["left_out"] == 1
    assert "sample_submission.csv" in record["why"] and "probability of class 1" in record["values"]


def test_without_a_sample_the_course_form_is_the_originals(tmp_path):
    record = write_submission_file(tmp_path / "submission.csv", _predictions(tmp_path, ["1", "2", "3"], [0.2, 0.8, 0.6]))
    assert (tmp_path / "submission.csv").read_text() == "# Id,Values\n1,0\n2,1\n3,1\n"
    assert record["form"] == "course" and "no sample_submission.csv" in record["why"]


def test_a_sample_that_does_not_fit_the_test_tiles_fails_by_name(tmp_path):
    (tmp_path / "sample_submission.csv").write_text("id,label\na1,0\nzz,0\n")
    with pytest.raises(ValueError, match="1 id.*no test tile.*zz"):
        write_submission_file(tmp_path / "s.csv", _predictions(tmp_path, ["a1"], [0.3]))
    (tmp_path / "sample_submission.csv").write_text("id,label\na1,0\na1,0\n")
    with pytest.raises(LayoutError, match="more than once: a1"):
        submission_form(tmp_path)
    (tmp_path / "sample_submission.csv").write_text("id;label\na1;0\n")
    with pytest.raises(LayoutError, match="two-column header"):
        submission_form(tmp_path)
    with pytest.raises(ValueError, match="a submission is of test tiles"):
        write_submission_file(tmp_path / "s.csv", TilePredictions(["a1"], np.array([0]), np.array([0.3]), np.array([0]), "x", 0, "validation split of x"))


@pytest.fixture(scope="module")
def kaggle_pcam(tmp_path_factory):
    """PatchCamelyon as Kaggle gives it: train/<hex id>.tif, train_labels.csv, test/<hex id>.tif and
    sample_submission.csv in its own (not sorted) order; no test labels."""
    root = tmp_path_factory.mktemp("pcam") / "kaggle"
    rows = ["id,label"]
    for k in range(40):
        tile_id = f"{k * 7919:08x}"
        write_tile(root / "train" / f"{tile_id}.tif", k, size=96)
        rows.append(f"{tile_id},{k % 3 == 0:d}")  # 14 of class 1, 26 of class 0: unbalanced on purpose
    (root / "train_labels.csv").write_text("\n".join(rows) + "\n")
    test_ids = [f"{k:04x}beef" for k in range(6)]
    for k, tile_id in enumerate(test_ids):
        write_tile(root / "test" / f"{tile_id}.tif", 100 + k, size=96)
    order = [test_ids[i] for i in (3, 0, 5, 1, 4, 2)]
    (root / "sample_submission.csv").write_text("id,label\n" + "".join(f"{i},0\n" for i in order))
    return root, order


def test_kaggle_pcam_gets_every_run_scored_on_its_validation_split_and_an_id_label_submission(kaggle_pcam, tmp_path, capsys):
    from lib.config import run_config
    from lib.training.loop import fit

    root, order = kaggle_pcam
    config = run_config("baseline", profile="quick", data_dir=str(root), runs_dir=str(tmp_path / "runs"), model="small", tile_size=32,
                        epochs=1, batch_size=4, subset=0, valid_fraction=0.25, device="cpu", cache_dir="")  # fmt: skip
    result = fit(config)
    # The run records (and prints) its classes and the majority-class rate of the validation tiles it scores.
    sides = [row.rsplit(",", 1) for row in (config.run_dir / "split.csv").read_text().splitlines()[1:]]
    labels = dict(row.split(",") for row in (root / "train_labels.csv").read_text().splitlines()[1:])
    label_of = {f"train/{tile_id}.tif": int(label) for tile_id, label in labels.items()}
    train = [label_of[name] for name, side in sides if side == "train"]
    scored = [label_of[name] for name, side in sides if side == "valid"][:8]  # batches of 4, drop_last: 8 of the 10
    assert result.summary["n_valid_scored"] == 8 and result.summary["n_valid"] == 10
    assert result.summary["valid_class_counts"] == [scored.count(0), scored.count(1)]
    assert result.summary["valid_majority_rate"] == pytest.approx(max(scored.count(0), scored.count(1)) / 8)
    assert result.summary["train_class_counts"] == [train.count(0), train.count(1)]
    assert result.summary["train_majority_rate"] == pytest.approx(max(train.count(0), train.count(1)) / 30)
    out = capsys.readouterr().out
    assert f"beside a majority-class rate of {result.summary['valid_majority_rate']:.4f} on the same 8 tiles" in out

    evaluations = evaluate_runs(tmp_path / "runs", ["baseline"], device="cpu", batch_size=4)
    evaluation = evaluations["baseline"]
    assert evaluation.predictions.scored_on == "test" and evaluation.predictions.labels is None
    assert evaluation.scored.scored_on.startswith("validation split of baseline (10 tiles): the test tiles' labels are unknown")
    assert evaluation.metrics["n"] == 10 and sum(evaluation.metrics["class_counts"]) == 10

    record = write_submission_file(tmp_path / "submission.csv", evaluation.predictions)
    lines = (tmp_path / "submission.csv").read_text().splitlines()
    assert lines[0] == "id,label" and [line.split(",")[0] for line in lines[1:]] == order
    by_id = dict(zip(evaluation.predictions.ids, evaluation.predictions.scores))
    assert [float(line.split(",")[1]) for line in lines[1:]] == pytest.approx([by_id[i] for i in order], abs=1e-6)
    assert record["form"] == "competition" and record["rows"] == 6


def test_save_evaluation_keeps_every_run_and_the_submission_record(tmp_path):
    from lib.report.evaluate import RunEvaluation, save_evaluation

    labels = np.array([0, 0, 0, 1])
    scored = TilePredictions(["1", "2", "3", "4"], np.zeros(4, dtype=np.int64), np.array([0.1, 0.2, 0.3, 0.4]), labels, "r/best.pt", 2, "test")
    metrics = score_test_predictions(scored)
    submission = write_submission_file(tmp_path / "submission.csv", scored)
    save_evaluation(scored, metrics, "final", tmp_path, {"base": RunEvaluation("base", scored, scored, metrics)}, submission)
    saved = json.loads((tmp_path / "evaluation.json").read_text())
    assert saved["metrics"]["one_class"] == "predicts class 0 for every tile" and saved["metrics"]["majority_rate"] == 0.75
    assert saved["runs"]["base"]["metrics"]["balanced_accuracy"] == 0.5 and saved["runs"]["base"]["scored_on"] == "test"
    assert saved["submission"]["form"] == "course"
