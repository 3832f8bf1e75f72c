"""How far the scores on the test tiles can be trusted: bootstrap intervals of accuracy, balanced
accuracy and ROC-AUC, paired comparisons of two runs on the same tiles, and the calibration of the
class-1 probability. Below every other part of lib but lib.metrics, whose scores it puts intervals on."""

from __future__ import annotations

import numpy as np
from scipy import stats as scipy_stats

from lib.metrics import score_predictions

METRICS = ("accuracy", "balanced_accuracy", "roc_auc")
MIN_RESAMPLES = 1000  # fewer leave each 2.5 % tail of a 95 % interval on a couple of dozen resamples
MAX_DROPPED = 0.05  # share of one-class resamples above which no interval is given for AUC and balanced accuracy
GROUPS_WORDS = "groups (patients, slides or source tiles)"
_BATCH_CELLS = 2**22  # resamples x tiles held at once: 32 MiB per float64 array, whatever the test set's size


# ---- input checks -------------------------------------------------------------------------------


def _zero_one(values, name: str) -> np.ndarray:
    values = np.asarray(values).ravel()
    if values.dtype == bool:
        return values.astype(np.int64)
    if not np.isin(values, (0, 1)).all():
        bad = sorted({v for v in values.tolist() if v not in (0, 1)}, key=str)[:5]
        raise ValueError(f"{name} must be 0 or 1; got {bad}")
    return values.astype(np.int64)


def _finite(values, name: str) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64).ravel()
    if not np.isfinite(values).all():
        raise ValueError(f"{name} must be finite numbers; {int((~np.isfinite(values)).sum())} are not")
    return values


def _same_length(**arrays) -> int:
    lengths = {name: len(a) for name, a in arrays.items() if a is not None}
    if len(set(lengths.values())) > 1:
        raise ValueError(", ".join(f"{n} {name}" for name, n in lengths.items()) + ": one each per tile")
    n = next(iter(lengths.values()))
    if n == 0:
        raise ValueError("no tiles: an interval, a test or a calibration needs at least one")
    return n


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie between 0 and 1 (0.95 for a 95 % interval); got {confidence}")


def _check_resampling(n_resamples: int, confidence: float) -> None:
    if int(n_resamples) != n_resamples or n_resamples < MIN_RESAMPLES:
        raise ValueError(f"n_resamples must be a whole number of at least {MIN_RESAMPLES:,}; got {n_resamples}")
    _check_confidence(confidence)


def _units(groups, n_tiles: int) -> tuple[np.ndarray, int, str]:
    """(the resampled unit of each tile (N,) int, the number of units, "tiles" or "groups")."""
    if groups is None:
        return np.arange(n_tiles), n_tiles, "tiles"
    groups = np.asarray(groups).ravel()
    _same_length(labels=np.empty(n_tiles), groups=groups)
    names, unit_of_tile = np.unique(groups, return_inverse=True)
    return unit_of_tile.ravel(), len(names), "groups"


def _percent(confidence: float) -> str:
    return f"{100 * confidence:g} %"


def _resampled_what(unit: str, n_units: int) -> str:
    if unit == "tiles":
        return f"the {n_units:,} tiles"
    return f"the {n_units:,} {GROUPS_WORDS} with all their tiles, since tiles of one group are not independent"


# ---- resampling and the statistics on weighted tiles ---------------------------------------------


def _bootstrap_weights(unit_of_tile: np.ndarray, n_units: int, n_resamples: int, rng: np.random.Generator):
    """Yield each batch of resamples as weights (resamples, N) float64: how many times each tile was
    drawn. A tile drawn twice counts twice, which is what the resampled set's statistic sees, so one
    formula serves the tile and the cluster bootstrap (a drawn group brings all its tiles)."""
    per_batch = max(1, _BATCH_CELLS // max(len(unit_of_tile), n_units))
    for start in range(0, n_resamples, per_batch):
        size = min(per_batch, n_resamples - start)
        # The same call scipy.stats.bootstrap makes (rng.integers(0, n, (n_resamples, n))), so one
        # batch draws the very resamples that scipy would from the same seed; the tests check it.
        draws = rng.integers(0, n_units, (size, n_units))
        counts = np.bincount((draws + n_units * np.arange(size)[:, None]).ravel(), minlength=size * n_units)
        yield counts.reshape(size, n_units)[:, unit_of_tile].astype(np.float64)


def _weighted_accuracy(weights: np.ndarray, correct: np.ndarray) -> np.ndarray:
    return weights @ correct / weights.sum(axis=1)


def _weighted_balanced_accuracy(weights: np.ndarray, labels: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """Mean of the two recalls (Brodersen et al. 2010) per resample; NaN where a class was not drawn."""
    recalls = []
    for cls in (0, 1):
        of_class = weights[:, labels == cls]
        with np.errstate(invalid="ignore", divide="ignore"):
            recalls.append(of_class @ correct[labels == cls] / of_class.sum(axis=1))
    return (recalls[0] + recalls[1]) / 2


class _RankedScores:
    """Scores (N,) sorted once, with each tile's block of tied scores in that order, so that each
    resample's ROC-AUC needs a cumulative sum, not a sort."""

    def __init__(self, scores: np.ndarray, labels: np.ndarray):
        self.order = np.argsort(scores, kind="stable")
        ordered = scores[self.order]
        self.positive = labels == 1
        self.negative_in_order = (labels[self.order] == 0).astype(np.float64)
        self.tie_start = np.searchsorted(ordered, scores[self.positive], side="left")
        self.tie_end = np.searchsorted(ordered, scores[self.positive], side="right")

    def auc(self, weights: np.ndarray) -> np.ndarray:
        """ROC-AUC per resample (resamples,): the Mann-Whitney U statistic over the tiles counted with
        their weights, ties counting one half (Hanley & McNeil 1982: AUC = U / (n1 n0)), equal to
        scikit-learn's roc_auc_score on the resampled tiles; NaN where a class was not drawn."""
        negatives_up_to = np.zeros((len(weights), len(self.order) + 1))
        np.cumsum(weights[:, self.order] * self.negative_in_order, axis=1, out=negatives_up_to[:, 1:])
        # Weight of negatives below a positive's score plus half of those tied with it.
        credit = (negatives_up_to[:, self.tie_start] + negatives_up_to[:, self.tie_end]) / 2
        positive_weights = weights[:, self.positive]
        with np.errstate(invalid="ignore", divide="ignore"):
            return (positive_weights * credit).sum(axis=1) / (positive_weights.sum(axis=1) * negatives_up_to[:, -1])


def _interval(distribution: np.ndarray, confidence: float) -> tuple[float, float]:
    """Percentile interval (Efron & Tibshirani 1993, ch. 13) of the resampled values that are defined,
    with numpy's linear interpolation between order statistics, as scipy.stats.bootstrap takes it."""
    alpha = (1 - confidence) / 2
    low, high = np.percentile(distribution[~np.isnan(distribution)], [100 * alpha, 100 * (1 - alpha)])
    return float(low), float(high)


def _dropped_words(n_dropped: int, n_resamples: int, metrics: str) -> str:
    if not n_dropped:
        return ""
    if n_dropped > MAX_DROPPED * n_resamples:
        return (f"; {n_dropped:,} of the resamples held one class only, too many for an interval of {metrics} "
                f"(more than {100 * MAX_DROPPED:g} %), so none is given")
    return f"; {n_dropped:,} resamples that held one class only were left out of the {metrics} intervals"


# ---- intervals on one run's scores --------------------------------------------------------------


def bootstrap_scores(labels, predictions, scores, groups=None, n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0) -> dict:
    """Percentile bootstrap intervals (Efron & Tibshirani 1993) of a run's accuracy, balanced accuracy
    and ROC-AUC on its test tiles.

    labels (N,) 0/1 ints (or bools), predictions (N,) 0/1, scores (N,) float probability of class 1
    (any finite numbers: ROC-AUC uses their order only), groups (N,) of str or int naming each tile's
    patient, slide or source tile, or None when the tiles are independent.

    Without groups, tiles are drawn with replacement, N per resample; with groups, groups are drawn
    with replacement, as many as there are, each bringing all its tiles (the cluster bootstrap,
    Davison & Hinkley 1997, sec. 3.8), since tiles of one slide share their errors and a tile
    bootstrap would give too narrow an interval. The draws are those of scipy.stats.bootstrap(...,
    method="percentile", rng=np.random.default_rng(seed)) on the tiles' or groups' indices, made here
    so that one draw serves all three scores and a resample missing a class can be left out, which
    scipy's interval cannot do (a NaN there makes the interval NaN).

    A resample that holds tiles of one class only has no ROC-AUC or balanced accuracy: it is left out
    of those two intervals, and "n_dropped" counts it. When more than MAX_DROPPED (5 %) of the
    resamples are so, those two intervals are None and "method" says why: the kept resamples would
    no longer stand for the test set. Accuracy is defined on every resample.

    Returns {"accuracy": {"value", "low", "high"}, "balanced_accuracy": {...}, "roc_auc": {...},
    "n_resamples", "confidence", "seed", "unit" ("tiles" or "groups"), "n_units", "n_dropped",
    "method"}: fractions in [0, 1]; "value" is lib.metrics.score_predictions' score on all tiles;
    roc_auc's value, low and high are None when the labels hold one class only; "method" is one
    sentence for a report, e.g. "95 % percentile bootstrap, 2,000 resamples of the 512 tiles, seed 0".

    Raises ValueError when the lengths differ, there are no tiles, a label or prediction is not 0 or
    1, a score is not finite, n_resamples is below MIN_RESAMPLES or confidence is not in (0, 1)."""
    labels, predictions = _zero_one(labels, "labels"), _zero_one(predictions, "predictions")
    scores = _finite(scores, "scores")
    n_tiles = _same_length(labels=labels, predictions=predictions, scores=scores)
    _check_resampling(n_resamples, confidence)
    unit_of_tile, n_units, unit = _units(groups, n_tiles)
    point = score_predictions(labels, predictions, scores)

    correct = (predictions == labels).astype(np.float64)
    ranked = _RankedScores(scores, labels)
    distributions = {metric: [] for metric in METRICS}
    for weights in _bootstrap_weights(unit_of_tile, n_units, n_resamples, np.random.default_rng(seed)):
        distributions["accuracy"].append(_weighted_accuracy(weights, correct))
        distributions["balanced_accuracy"].append(_weighted_balanced_accuracy(weights, labels, correct))
        distributions["roc_auc"].append(ranked.auc(weights))
    distributions = {metric: np.concatenate(parts) for metric, parts in distributions.items()}

    # Both need the two classes, so they are undefined on the same resamples.
    n_dropped = int(np.isnan(distributions["roc_auc"]).sum())
    too_many_dropped = n_dropped > MAX_DROPPED * n_resamples
    result = {}
    for metric in METRICS:
        value = point[metric]
        if value is None or (metric != "accuracy" and too_many_dropped):
            low = high = None
        else:
            low, high = _interval(distributions[metric], confidence)
        result[metric] = {"value": value if value is None else float(value), "low": low, "high": high}
    method = (f"{_percent(confidence)} percentile bootstrap, {n_resamples:,} resamples of {_resampled_what(unit, n_units)}, seed {seed}"
              + _dropped_words(n_dropped, n_resamples, "balanced accuracy and ROC-AUC"))  # fmt: skip
    return result | {"n_resamples": int(n_resamples), "confidence": float(confidence), "seed": seed, "unit": unit,
                     "n_units": int(n_units), "n_dropped": n_dropped, "method": method}  # fmt: skip


# ---- paired comparisons of two runs on the same tiles -------------------------------------------


def mcnemar_exact(correct_a, correct_b) -> dict:
    """McNemar's test (McNemar 1947) of two runs scored on the same tiles, in its exact conditional
    form (Fagerland, Lydersen & Laake 2013, BMC Med Res Methodol 13:91, eq. 3): given the n_discordant
    = b + c tiles on which the runs disagree, b is Binomial(b + c, 1/2) when the runs are equally
    accurate; the two-sided p-value is scipy.stats.binomtest(b, b + c, 0.5)'s, which for p = 1/2 is
    min(1, 2 P(X <= min(b, c))). p = 1 when no tile is discordant.

    correct_a, correct_b: (N,) bool (or 0/1): whether run A, run B predicted each tile correctly.
    Returns {"b": tiles A got right and B wrong, "c": tiles A got wrong and B right, "n": N,
    "n_discordant": b + c, "p_value", "method": one sentence for a report}. Tiles are taken as
    independent pairs. Raises ValueError when the lengths differ, there are no tiles or a value is
    not 0/1 or bool."""
    correct_a, correct_b = _zero_one(correct_a, "correct_a").astype(bool), _zero_one(correct_b, "correct_b").astype(bool)
    n = _same_length(correct_a=correct_a, correct_b=correct_b)
    b, c = int((correct_a & ~correct_b).sum()), int((~correct_a & correct_b).sum())
    p_value = float(scipy_stats.binomtest(b, b + c, 0.5).pvalue) if b + c else 1.0
    method = (f"two-sided exact McNemar test: of the {b + c:,} tiles on which the runs disagree, A alone is right on {b:,}, "
              f"B alone on {c:,} (binomial test against 1/2)")  # fmt: skip
    return {"b": b, "c": c, "n": n, "n_discordant": b + c, "p_value": p_value, "method": method}


def _excludes_zero(low, high) -> bool:
    return low is not None and high is not None and (low > 0 or high < 0)


def paired_accuracy_difference(labels, predictions_a, predictions_b, groups=None, confidence: float = 0.95,
                               n_resamples: int = 2000, seed: int = 0) -> dict:  # fmt: skip
    """Accuracy of run B minus run A on the same tiles, with a paired percentile bootstrap interval:
    each resample draws tiles (or, with groups, whole groups, as in bootstrap_scores) once and scores
    both runs on them, so what the runs share cancels out of the difference.

    labels, predictions_a, predictions_b (N,) 0/1; groups (N,) str/int or None, as in bootstrap_scores.
    Returns {"value": accuracy_b - accuracy_a (a fraction, -1 to 1), "accuracy_a", "accuracy_b",
    "low", "high", "n_resamples", "confidence", "seed", "unit", "n_units", "method", "mcnemar":
    mcnemar_exact of the two runs' correct tiles, "told_apart"}. told_apart is True only when the
    interval excludes 0 and McNemar's p < 1 - confidence. McNemar's test takes tiles as independent:
    with groups its p is too small and the cluster interval is the check that allows for them.

    Raises ValueError as bootstrap_scores does."""
    labels = _zero_one(labels, "labels")
    predictions_a, predictions_b = _zero_one(predictions_a, "predictions_a"), _zero_one(predictions_b, "predictions_b")
    n_tiles = _same_length(labels=labels, predictions_a=predictions_a, predictions_b=predictions_b)
    _check_resampling(n_resamples, confidence)
    unit_of_tile, n_units, unit = _units(groups, n_tiles)
    correct_a, correct_b = predictions_a == labels, predictions_b == labels
    gained = correct_b.astype(np.float64) - correct_a
    distribution = np.concatenate([_weighted_accuracy(weights, gained) for weights in
                                   _bootstrap_weights(unit_of_tile, n_units, n_resamples, np.random.default_rng(seed))])  # fmt: skip
    low, high = _interval(distribution, confidence)
    mcnemar = mcnemar_exact(correct_a, correct_b)
    method = (f"accuracy of B minus A with a {_percent(confidence)} paired percentile bootstrap interval, {n_resamples:,} resamples "
              f"of {_resampled_what(unit, n_units)}, both runs scored on each, seed {seed}; {mcnemar['method']}"
              + ("; McNemar's test takes tiles as independent, so with groups only the interval allows for them" if unit == "groups" else ""))  # fmt: skip
    return {"value": float(gained.mean()), "accuracy_a": float(correct_a.mean()), "accuracy_b": float(correct_b.mean()),
            "low": low, "high": high, "n_resamples": int(n_resamples), "confidence": float(confidence), "seed": seed,
            "unit": unit, "n_units": int(n_units), "method": method, "mcnemar": mcnemar,
            "told_apart": bool(_excludes_zero(low, high) and mcnemar["p_value"] < 1 - confidence)}  # fmt: skip


def _delong_components(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """DeLong et al. (1988)'s structural components by midranks (Sun & Xu 2014, IEEE Signal Process.
    Lett. 21(11), the fast algorithm): scores (k, N) of k runs -> (AUC (k,), V10 (k, n1): for each
    class-1 tile, the fraction of class-0 tiles scored below it, ties one half; V01 (k, n0): for each
    class-0 tile, the fraction of class-1 tiles scored above it)."""
    positive = labels == 1
    n1, n0 = int(positive.sum()), int((~positive).sum())
    rank_all = scipy_stats.rankdata(scores, axis=1)  # midranks: ties share their mean rank
    rank_within_1 = scipy_stats.rankdata(scores[:, positive], axis=1)
    rank_within_0 = scipy_stats.rankdata(scores[:, ~positive], axis=1)
    v10 = (rank_all[:, positive] - rank_within_1) / n0
    v01 = 1 - (rank_all[:, ~positive] - rank_within_0) / n1
    auc = (rank_all[:, positive].sum(axis=1) - n1 * (n1 + 1) / 2) / (n1 * n0)
    return auc, v10, v01


def paired_auc_difference(labels, scores_a, scores_b, groups=None, confidence: float = 0.95, n_resamples: int = 2000,
                          seed: int = 0) -> dict:  # fmt: skip
    """ROC-AUC of run B minus run A on the same tiles, with a paired interval.

    Without groups: DeLong, DeLong & Clarke-Pearson (1988, Biometrics 44:837)'s variance of the
    difference of two correlated AUCs, by Sun & Xu (2014)'s fast algorithm: var = S_AA + S_BB - 2 S_AB
    with S = cov(V10) / n1 + cov(V01) / n0 (sample covariances, ddof 1); z = value / se, two-sided
    p = 2 (1 - Phi(|z|)), interval value -/+ Phi^-1(1 - (1 - confidence) / 2) se (as R's pROC
    roc.test(method="delong") gives them). When se is 0 (the runs' structural components differ by
    nothing), the interval is [value, value] and p is 1 if value is 0, else 0. With groups: a paired
    cluster bootstrap (the same resampled groups for both runs, as in bootstrap_scores), its
    percentile interval, se the resampled differences' standard deviation, and no p-value (None);
    resamples with one class only are left out and counted in "n_dropped".

    labels (N,) 0/1, scores_a and scores_b (N,) finite floats (class-1 probabilities), groups (N,)
    str/int or None. Returns {"value", "auc_a", "auc_b", "low", "high", "se", "z", "p_value",
    "confidence", "n_resamples", "seed" (both None for DeLong), "n_dropped", "unit", "n_units",
    "method", "told_apart": the interval excludes 0}; AUCs are fractions in [0, 1].

    Raises ValueError as bootstrap_scores does, and when the labels hold fewer than two tiles of
    either class (no AUC, or no DeLong variance)."""
    labels = _zero_one(labels, "labels")
    scores_a, scores_b = _finite(scores_a, "scores_a"), _finite(scores_b, "scores_b")
    n_tiles = _same_length(labels=labels, scores_a=scores_a, scores_b=scores_b)
    _check_confidence(confidence)
    counts = np.bincount(labels, minlength=2)
    if counts.min() < 2:
        raise ValueError(f"{counts[0]} tiles of class 0 and {counts[1]} of class 1: comparing ROC-AUCs needs at least two of each")
    auc, v10, v01 = _delong_components(labels, np.stack([scores_a, scores_b]))
    value = float(auc[1] - auc[0])
    result = {"value": value, "auc_a": float(auc[0]), "auc_b": float(auc[1]), "confidence": float(confidence)}
    if groups is None:
        covariance = np.cov(v10) / counts[1] + np.cov(v01) / counts[0]
        se = float(np.sqrt(max(covariance[0, 0] + covariance[1, 1] - 2 * covariance[0, 1], 0.0)))
        if se > 0:
            z = value / se
            p_value = float(2 * scipy_stats.norm.sf(abs(z)))
        else:
            z, p_value = (0.0, 1.0) if value == 0 else (float(np.sign(value) * np.inf), 0.0)
        half = float(scipy_stats.norm.ppf(1 - (1 - confidence) / 2)) * se
        method = (f"ROC-AUC of B minus A with a {_percent(confidence)} interval and two-sided test from DeLong's variance "
                  f"for two ROC curves on the same {n_tiles:,} tiles (DeLong et al. 1988; Sun & Xu 2014)")  # fmt: skip
        return result | {"low": value - half, "high": value + half, "se": se, "z": float(z), "p_value": p_value,
                         "n_resamples": None, "seed": None, "n_dropped": 0, "unit": "tiles", "n_units": n_tiles,
                         "method": method, "told_apart": _excludes_zero(value - half, value + half)}  # fmt: skip

    _check_resampling(n_resamples, confidence)
    unit_of_tile, n_units, unit = _units(groups, n_tiles)
    ranked_a, ranked_b = _RankedScores(scores_a, labels), _RankedScores(scores_b, labels)
    distribution = np.concatenate([ranked_b.auc(weights) - ranked_a.auc(weights) for weights in
                                   _bootstrap_weights(unit_of_tile, n_units, n_resamples, np.random.default_rng(seed))])  # fmt: skip
    n_dropped = int(np.isnan(distribution).sum())
    if n_dropped > MAX_DROPPED * n_resamples:
        low = high = se = None
    else:
        low, high = _interval(distribution, confidence)
        se = float(np.std(distribution[~np.isnan(distribution)], ddof=1))
    method = (f"ROC-AUC of B minus A with a {_percent(confidence)} paired percentile bootstrap interval, {n_resamples:,} resamples "
              f"of {_resampled_what(unit, n_units)}, both runs scored on each, seed {seed}"
              + _dropped_words(n_dropped, n_resamples, "ROC-AUC difference"))  # fmt: skip
    return result | {"low": low, "high": high, "se": se, "z": None, "p_value": None, "n_resamples": int(n_resamples),
                     "seed": seed, "n_dropped": n_dropped, "unit": unit, "n_units": int(n_units), "method": method,
                     "told_apart": _excludes_zero(low, high)}  # fmt: skip


def compare_runs(labels, a: tuple, b: tuple, groups=None, seed: int = 0, confidence: float = 0.95, n_resamples: int = 2000) -> dict:
    """Run B against run A on the same tiles: a and b are (predictions (N,) 0/1, scores (N,) class-1
    probabilities). Returns {"accuracy": paired_accuracy_difference(...), "roc_auc":
    paired_auc_difference(...)}, each with "told_apart" (accuracy: interval excludes 0 and McNemar's
    p < 1 - confidence; ROC-AUC: interval excludes 0). Raises ValueError as those two do."""
    (predictions_a, scores_a), (predictions_b, scores_b) = a, b
    options = {"groups": groups, "confidence": confidence, "n_resamples": n_resamples, "seed": seed}
    return {"accuracy": paired_accuracy_difference(labels, predictions_a, predictions_b, **options),
            "roc_auc": paired_auc_difference(labels, scores_a, scores_b, **options)}  # fmt: skip


# ---- calibration --------------------------------------------------------------------------------


def calibration(labels, scores, n_bins: int = 10) -> dict:
    """How well a binary classifier's class-1 probability matches the observed frequency of class 1:
    the reliability diagram of Niculescu-Mizil & Caruana (2005) in equal-width bins on [0, 1], as
    sklearn.calibration.calibration_curve(strategy="uniform") bins it: bin k holds the scores in
    (k / n_bins, (k + 1) / n_bins], the first bin also 0 (the convention of Guo et al. 2017, so a
    score of exactly 1.0 is in the last bin, and one on an inner edge in the bin below it).

    labels (N,) 0/1, scores (N,) float probabilities of class 1 in [0, 1].
    Returns {"bins": a list of n_bins {"lower", "upper", "count", "mean_predicted", "observed"} (the
    last two fractions, None in an empty bin), "ece": expected calibration error, sum over bins of
    count / N * |observed - mean_predicted| (Naeini, Cooper & Hauskrecht 2015; the binary form of
    Guo et al. 2017), "mce": maximum calibration error, the largest |observed - mean_predicted| of a
    bin with tiles (both fractions in [0, 1]), "n", "n_bins", "method": one sentence for a report}.

    Raises ValueError when the lengths differ, there are no tiles, a label is not 0 or 1, a score is
    not a finite number in [0, 1], or n_bins is not a positive whole number."""
    labels, scores = _zero_one(labels, "labels"), _finite(scores, "scores")
    n = _same_length(labels=labels, scores=scores)
    if scores.min() < 0 or scores.max() > 1:
        raise ValueError(f"scores must be probabilities in [0, 1]; they run from {scores.min():g} to {scores.max():g}")
    if int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"n_bins must be a positive whole number; got {n_bins}")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bin_of = np.searchsorted(edges[1:-1], scores, side="left")  # scikit-learn's assignment, right-closed bins
    count = np.bincount(bin_of, minlength=n_bins)
    predicted_sum = np.bincount(bin_of, weights=scores, minlength=n_bins)
    observed_sum = np.bincount(bin_of, weights=labels, minlength=n_bins)
    bins, ece, mce = [], 0.0, 0.0
    for k in range(n_bins):
        mean_predicted = observed = None
        if count[k]:
            mean_predicted, observed = float(predicted_sum[k] / count[k]), float(observed_sum[k] / count[k])
            gap = abs(observed - mean_predicted)
            ece += count[k] / n * gap
            mce = max(mce, gap)
        # k / n_bins reads 0.3 where linspace's edge is 0.30000000000000004; the assignment above used the latter.
        bins.append({"lower": k / n_bins, "upper": (k + 1) / n_bins, "count": int(count[k]),
                     "mean_predicted": mean_predicted, "observed": observed})  # fmt: skip
    method = (f"reliability of the class-1 probability in {n_bins} equal-width bins on [0, 1] over {n:,} tiles; "
              f"ECE: the bins' gaps |observed fraction of class 1 - mean predicted probability| weighted by their share "
              f"of the tiles (Naeini et al. 2015; Guo et al. 2017), MCE: the largest gap")  # fmt: skip
    return {"bins": bins, "ece": float(ece), "mce": float(mce), "n": n, "n_bins": int(n_bins), "method": method}
