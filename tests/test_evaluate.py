"""The submission file in the original's exact format, and the test metrics."""

import numpy as np

from lib.report.evaluate import TilePredictions, first_five_line, score_test_predictions, write_submission


def test_submission_has_the_original_format(tmp_path):
    path = write_submission(tmp_path / "submission.csv", [1, 2, 3], np.array([0, 1, 1]))
    assert path.read_text() == "# Id,Values\n1,0\n2,1\n3,1\n"


def test_first_five_line():
    assert first_five_line(np.array([0, 0, 1, 1, 1, 0])) == "Example prediction, 5 items from front : [0, 0, 1, 1, 1]"


def test_scores_from_known_labels():
    result = TilePredictions(ids=[1, 2, 3, 4], predictions=np.array([0, 1, 1, 0]), scores=np.array([0.1, 0.8, 0.6, 0.4]),
                             labels=np.array([0, 1, 0, 0]), checkpoint="x", best_epoch=0, scored_on="test")  # fmt: skip
    metrics = score_test_predictions(result)
    assert metrics["accuracy"] == 0.75 and metrics["roc_auc"] == 1.0
    assert metrics["confusion_matrix"] == [[2, 1], [0, 1]]
    assert score_test_predictions(TilePredictions([1], np.array([0]), np.array([0.2]), None, "x", 0, "test")) is None


def test_a_data_set_without_test_tiles_is_scored_on_the_validation_split_and_says_so(tmp_path):
    from lib.config import run_config
    from lib.report.evaluate import predict_test_tiles, save_evaluation
    from lib.report.results import decode_test_tiles, load_evaluation, submission_head
    from lib.training.loop import fit
    from tests.helpers import class_folders

    root = class_folders(tmp_path / "classes", {"benign": 20, "tumour": 20})
    config = run_config("baseline", profile="quick", data_dir=str(root), runs_dir=str(tmp_path / "runs"), model="small",
                        tile_size=32, epochs=1, batch_size=4, subset=0, device="cpu", positive_class="tumour", cache_dir="")  # fmt: skip
    fit(config)
    result = predict_test_tiles(config.run_dir, device="cpu", batch_size=4)
    assert result.scored_on.startswith("validation split of baseline (4 tiles)") and "optimistic" in result.scored_on
    assert len(result.ids) == 4 and all(i.startswith(("benign/", "tumour/")) for i in result.ids)
    assert result.labels.tolist() == [int(i.startswith("tumour/")) for i in result.ids]  # tumour is 1, as asked
    save_evaluation(result, score_test_predictions(result), "baseline", tmp_path / "reports")
    evaluation = load_evaluation(tmp_path / "reports")
    assert evaluation["scored_on"] == result.scored_on and evaluation["positive_class"] == "tumour"
    assert decode_test_tiles(evaluation, result.ids[:2]).shape == (2, 3, 256, 256)
    assert submission_head(tmp_path / "reports").startswith("No submission file")
