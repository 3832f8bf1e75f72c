"""Scores that training, evaluation and the report share: class counts, the majority-class rate,
accuracy, balanced accuracy and ROC-AUC of 0/1 predictions, and their one-line text. Below every
other part of lib: it imports none of them."""

from __future__ import annotations

import numpy as np

def class_counts(labels) -> list[int]:
    """[tiles of class 0, tiles of class 1] of 0/1 labels (N,) of any integer dtype.
    Raises ValueError for a label other than 0 or 1."""
    labels = np.asarray(labels).astype(np.int64).ravel()
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"labels must be 0 or 1; got {sorted(set(labels.tolist()) - {0, 1})[:5]}")
    return np.bincount(labels, minlength=2).tolist()


def majority_rate(labels) -> float:
    """The accuracy of predicting the more frequent class for every tile (the "zero rule"):
    max(n0, n1) / n for 0/1 labels (N,). Raises ValueError when there are no labels."""
    counts = class_counts(labels)
    if sum(counts) == 0:
        raise ValueError("no labels: a majority-class rate needs at least one tile")
    return max(counts) / sum(counts)


def one_class_flag(predictions) -> str:
    """"predicts class 0 for every tile" (or 1) when every prediction (N,) is the same class, else ""."""
    predicted = np.unique(np.asarray(predictions))
    return f"predicts class {int(predicted[0])} for every tile" if len(predicted) == 1 else ""


def score_predictions(labels, predictions, scores) -> dict:
    """Scores of 0/1 predictions (N,) and class-1 probabilities (N,) against 0/1 labels (N,), as
    plain numbers (for JSON):

    n, class_counts [n0, n1], majority_class, majority_rate (max(n0, n1) / n), accuracy,
    balanced_accuracy (the mean of the two classes' recalls, Brodersen et al. 2010; scikit-learn's
    balanced_accuracy_score; 0.5 for any one-class predictor on two classes), roc_auc (area under the
    ROC curve of the scores, scikit-learn's roc_auc_score; None when the labels hold one class only,
    where it is undefined), confusion_matrix [[true 0 predicted 0, true 0 predicted 1], [true 1
    predicted 0, true 1 predicted 1]], predicted_counts [p0, p1], and one_class (one_class_flag).

    Raises ValueError when the three lengths differ, there are no tiles, or a label is not 0 or 1."""
    import warnings

    from sklearn.metrics import balanced_accuracy_score, confusion_matrix, roc_auc_score

    labels, predictions, scores = (np.asarray(a).ravel() for a in (labels, predictions, scores))
    if not len(labels) == len(predictions) == len(scores):
        raise ValueError(f"{len(labels)} labels, {len(predictions)} predictions and {len(scores)} scores: one each per tile")
    counts = class_counts(labels)
    rate = majority_rate(labels)
    with warnings.catch_warnings():  # one class in the labels: its recall alone, which is what it should be
        warnings.simplefilter("ignore")
        balanced = float(balanced_accuracy_score(labels, predictions))
    return {
        "n": int(len(labels)),
        "class_counts": counts,
        "majority_class": int(np.argmax(counts)),
        "majority_rate": float(rate),
        "accuracy": float((predictions == labels).mean()),
        "balanced_accuracy": balanced,
        "roc_auc": float(roc_auc_score(labels, scores)) if min(counts) > 0 else None,
        "confusion_matrix": confusion_matrix(labels, predictions, labels=[0, 1]).tolist(),
        "predicted_counts": class_counts(predictions),
        "one_class": one_class_flag(predictions),
    }


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f} %"


def interval_text(metrics: dict, name: str, scale: float = 100, digits: int = 2) -> str:
    """" [78.71, 85.16]": the 95 % interval of `name` in `metrics["intervals"]` (lib/stats.py
    bootstrap_scores), in the unit the value is shown in (`scale` 100 for percent, 1 for ROC-AUC);
    "" when the scores carry no interval (an older evaluation, or undefined)."""
    interval = (metrics.get("intervals") or {}).get(name)
    if not interval or interval.get("low") is None or interval.get("high") is None:
        return ""
    return f" [{scale * interval['low']:.{digits}f}, {scale * interval['high']:.{digits}f}]"


def scores_text(metrics: dict, with_method: bool = True) -> str:
    """One line that puts accuracy beside its floor: accuracy, the majority-class rate and class
    counts of the same tiles, balanced accuracy, ROC-AUC, each score with its 95 % interval in
    brackets when the scores carry them (the method said at the end unless `with_method` is False:
    a report says it once for all its lines), and a one-class predictor named in words."""
    n0, n1 = metrics["class_counts"]
    auc = f"{metrics['roc_auc']:.3f}{interval_text(metrics, 'roc_auc', 1, 3)}" if metrics["roc_auc"] is not None else "undefined (one class)"
    text = (f"accuracy {percent(metrics['accuracy'])}{interval_text(metrics, 'accuracy')} (majority-class rate {percent(metrics['majority_rate'])}: "
            f"{n0} tiles of class 0, {n1} of class 1), balanced accuracy {percent(metrics['balanced_accuracy'])}"
            f"{interval_text(metrics, 'balanced_accuracy')}, ROC-AUC {auc}")  # fmt: skip
    text += f"; it {metrics['one_class']}" if metrics["one_class"] else ""
    method = (metrics.get("intervals") or {}).get("method")
    return text + (f" (in brackets: {method})" if method and with_method else "")
