"""The submission file in the original's exact format, and the test metrics."""

import numpy as np

from lib.evaluate import TilePredictions, first_five_line, score_test_predictions, write_submission


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
