"""Every interval, test and calibration figure of lib.stats against a published or hand-computed
value, or against scipy and scikit-learn computing the same thing from the same draws."""

import time
import warnings

import matplotlib
import numpy as np
import pytest
from scipy import stats as scipy_stats
from sklearn.calibration import calibration_curve
from sklearn.metrics import roc_auc_score

from lib.metrics import score_predictions
from lib.stats import bootstrap_scores, calibration, compare_runs, mcnemar_exact, paired_accuracy_difference, paired_auc_difference

matplotlib.use("Agg")


def _tiles(n=512, seed=1):
    """A run's test tiles: 0/1 labels, class-1 scores with ties (two decimals), 0/1 predictions."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    scores = np.clip(0.5 + 0.3 * (labels - 0.5) + 0.25 * rng.standard_normal(n), 0, 1).round(2)
    return labels, (scores > 0.5).astype(np.int64), scores


def _rank_auc(labels, scores, axis=-1):
    """ROC-AUC along the last axis as the Mann-Whitney U from midranks: written apart from
    lib.stats' weighted form, so that agreeing checks both."""
    ranks = scipy_stats.rankdata(scores, axis=axis)
    n1 = labels.sum(axis=axis)
    return ((ranks * labels).sum(axis=axis) - n1 * (n1 + 1) / 2) / (n1 * (labels.shape[axis] - n1))


def _paired_table(both_right, a_only, b_only, both_wrong):
    """correct_a, correct_b of a paired 2x2 table [[both right, A only], [B only, both wrong]]."""
    a = [True] * both_right + [True] * a_only + [False] * b_only + [False] * both_wrong
    b = [True] * both_right + [False] * a_only + [True] * b_only + [False] * both_wrong
    return np.array(a), np.array(b)


# ---- McNemar ------------------------------------------------------------------------------------


def test_mcnemar_matches_the_published_exact_p_values():
    # Fagerland, Lydersen & Laake 2013 (BMC Med Res Methodol 13:91), Table 1: airway
    # hyper-responsiveness before and after stem cell transplantation in 21 children (Bentur et al.
    # 2009): [[1, 1], [7, 12]]; their supplement's eq. 1, exact p = 2 * binomcdf(n12 = 1, n = 8, 0.5),
    # gives 2 * 9 / 256 = 0.0703 (the table and the formula read in the supplement; the printed
    # 0.070 in the paper's results is from memory, so the test holds the formula's value).
    result = mcnemar_exact(*_paired_table(1, 1, 7, 12))
    assert (result["b"], result["c"], result["n"], result["n_discordant"]) == (1, 7, 21, 8)
    assert result["p_value"] == pytest.approx(18 / 256) and round(result["p_value"], 3) == 0.070
    # Cavo et al. 2012, complete response before and after consolidation therapy, [[59, 6], [16, 80]]:
    # "The McNemar exact conditional test: P = 0.052479", printed by contingencytables (the R
    # package of Fagerland, Lydersen & Laake 2017, Statistical Analysis of Contingency Tables, ch. 8;
    # its tests/testthat chapter 8 test).
    result = mcnemar_exact(*_paired_table(59, 6, 16, 80))
    assert (result["b"], result["c"]) == (6, 16) and round(result["p_value"], 6) == 0.052479


def test_mcnemar_by_hand_and_at_its_edges():
    # b = 1, c = 5: P(X <= 1) for X ~ Binomial(6, 1/2) is (1 + 6) / 64; two-sided, twice that.
    result = mcnemar_exact(*_paired_table(10, 1, 5, 3))
    assert result["p_value"] == pytest.approx(2 * 7 / 64) == 0.21875
    assert mcnemar_exact(*_paired_table(10, 5, 1, 3))["p_value"] == pytest.approx(0.21875)  # which run is A does not matter
    assert mcnemar_exact(*_paired_table(10, 0, 0, 3))["p_value"] == 1.0  # no discordant tile: nothing tells them apart
    assert mcnemar_exact(*_paired_table(0, 4, 4, 0))["p_value"] == 1.0
    assert "A alone is right on 1, B alone on 5" in result["method"]
    with pytest.raises(ValueError, match="3 correct_a, 2 correct_b"):
        mcnemar_exact([True, False, True], [True, False])
    with pytest.raises(ValueError, match="no tiles"):
        mcnemar_exact([], [])
    with pytest.raises(ValueError, match="correct_b must be 0 or 1"):
        mcnemar_exact([1, 0], [1, 2])


# ---- DeLong -------------------------------------------------------------------------------------

# Five tiles, class 1 first. Structural components by hand (DeLong et al. 1988): V10 of a class-1
# tile is the fraction of class-0 tiles scored below it (ties 1/2), V01 of a class-0 tile the
# fraction of class-1 tiles scored above it.
#   A: class 1 0.9, 0.6, 0.4; class 0 0.5, 0.2. V10 = [1, 1, 1/2], V01 = [2/3, 1], AUC 5/6.
#   B: class 1 0.8, 0.7, 0.3; class 0 0.6, 0.3. V10 = [1, 1, 1/4] (0.3 ties 0.3), V01 = [2/3, 5/6], AUC 3/4.
#   Sample covariances (ddof 1): S10 = [[1/12, 1/8], [1/8, 3/16]], S01 = [[1/18, 1/36], [1/36, 1/72]];
#   S = S10 / 3 + S01 / 2 = [[1/18, 1/18], [1/18, 5/72]]; var(B - A) = 4/72 + 5/72 - 8/72 = 1/72.
#   B - A = -1/12, se = 1/sqrt(72), z = -(1/12) sqrt(72) = -1/sqrt(2), p = 2 Phi(-1/sqrt(2)) = 0.4795.
HAND_LABELS = np.array([1, 1, 1, 0, 0])
HAND_A = np.array([0.9, 0.6, 0.4, 0.5, 0.2])
HAND_B = np.array([0.8, 0.7, 0.3, 0.6, 0.3])

# 24 tiles with ties; the reference numbers were printed once by MLstatkit 0.1.91's Delong_test (a
# Sun & Xu 2014 implementation; pip-installed into a throwaway environment, not a requirement):
# z = 0.27980674571321307, p = 0.7796257760198051, var_diff = 0.0024638748597081922,
# AUC A = 0.9270833333333334 (= 133.5/144), AUC B = 0.9409722222222222 (= 135.5/144), 12 x 12 pairs.
REF_LABELS = np.array([1, 0, 1, 1, 0, 0, 1, 0, 1, 0, 0, 1, 1, 0, 1, 0, 0, 1, 0, 1, 1, 0, 0, 1])
REF_A = np.array([0.91, 0.32, 0.77, 0.55, 0.41, 0.12, 0.68, 0.55, 0.83, 0.27, 0.60, 0.49,
                  0.95, 0.08, 0.71, 0.36, 0.44, 0.58, 0.21, 0.88, 0.39, 0.50, 0.15, 0.74])  # fmt: skip
REF_B = np.array([0.85, 0.40, 0.80, 0.62, 0.62, 0.20, 0.55, 0.48, 0.90, 0.30, 0.45, 0.38,
                  0.92, 0.15, 0.80, 0.28, 0.50, 0.70, 0.25, 0.93, 0.52, 0.40, 0.10, 0.66])  # fmt: skip


def test_delong_matches_the_hand_computed_structural_components():
    result = paired_auc_difference(HAND_LABELS, HAND_A, HAND_B)
    assert result["auc_a"] == pytest.approx(5 / 6) and result["auc_b"] == pytest.approx(3 / 4)
    assert result["value"] == pytest.approx(-1 / 12) and result["se"] == pytest.approx(1 / np.sqrt(72))
    assert result["z"] == pytest.approx(-1 / np.sqrt(2)) and result["p_value"] == pytest.approx(0.4795001221869534)
    assert result["low"] == pytest.approx(-1 / 12 - 1.959963984540054 / np.sqrt(72))
    assert result["high"] == pytest.approx(-1 / 12 + 1.959963984540054 / np.sqrt(72))
    assert result["told_apart"] is False and result["unit"] == "tiles" and "DeLong" in result["method"]


def test_delong_matches_another_implementation_on_tied_scores():
    result = paired_auc_difference(REF_LABELS, REF_A, REF_B)
    assert result["auc_a"] == pytest.approx(133.5 / 144) == roc_auc_score(REF_LABELS, REF_A)
    assert result["auc_b"] == pytest.approx(135.5 / 144) == roc_auc_score(REF_LABELS, REF_B)
    assert result["se"] ** 2 == pytest.approx(0.0024638748597081922, rel=1e-12)
    assert result["z"] == pytest.approx(0.27980674571321307, rel=1e-12)
    assert result["p_value"] == pytest.approx(0.7796257760198051, rel=1e-12)


def test_auc_difference_edges_and_errors():
    same = paired_auc_difference(REF_LABELS, REF_A, REF_A ** 2)  # same order, same AUC: nothing to tell apart
    assert (same["value"], same["se"], same["p_value"], same["low"], same["high"]) == (0.0, 0.0, 1.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="at least two of each"):
        paired_auc_difference([1, 0, 0, 0], [0.9, 0.1, 0.2, 0.3], [0.8, 0.2, 0.1, 0.3])
    with pytest.raises(ValueError, match="5 labels, 5 scores_a, 4 scores_b"):
        paired_auc_difference(HAND_LABELS, HAND_A, HAND_B[:4])
    with pytest.raises(ValueError, match="scores_b must be finite"):
        paired_auc_difference(HAND_LABELS, HAND_A, [0.8, np.nan, 0.3, 0.6, 0.3])


def test_a_grouped_auc_difference_is_a_paired_cluster_bootstrap_checked_against_scipy():
    labels, _, scores_a = _tiles(120, seed=4)
    scores_b = np.clip(scores_a + 0.2 * np.random.default_rng(5).standard_normal(120), 0, 1)
    groups = np.repeat(np.arange(30), 4)
    result = paired_auc_difference(labels, scores_a, scores_b, groups=groups, seed=3)
    assert result["unit"] == "groups" and result["n_units"] == 30 and result["p_value"] is None
    assert "paired percentile bootstrap" in result["method"] and "30 groups" in result["method"]

    def difference(drawn_groups, axis=-1):  # drawn groups -> all their tiles (4 each, in a row), both runs on the same ones
        tiles = (4 * drawn_groups[..., None] + np.arange(4)).reshape(*drawn_groups.shape[:-1], -1)
        return _rank_auc(labels[tiles], scores_b[tiles]) - _rank_auc(labels[tiles], scores_a[tiles])

    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy_stats.DegenerateDataWarning)
        direct = scipy_stats.bootstrap((np.arange(30),), difference, n_resamples=2000, method="percentile",
                                       rng=np.random.default_rng(3)).bootstrap_distribution  # fmt: skip
    kept = direct[~np.isnan(direct)]
    assert result["n_dropped"] == len(direct) - len(kept)
    assert (result["low"], result["high"]) == pytest.approx(tuple(np.percentile(kept, [2.5, 97.5])), rel=1e-12)
    assert result["se"] == pytest.approx(np.std(kept, ddof=1))


# ---- bootstrap intervals ------------------------------------------------------------------------


def test_bootstrap_values_are_the_reported_scores_and_the_intervals_hold_them():
    labels, predictions, scores = _tiles()
    result = bootstrap_scores(labels, predictions, scores)
    point = score_predictions(labels, predictions, scores)
    for metric in ("accuracy", "balanced_accuracy", "roc_auc"):
        assert result[metric]["value"] == point[metric]
        assert result[metric]["low"] < result[metric]["value"] < result[metric]["high"]
    assert (result["n_resamples"], result["confidence"], result["seed"], result["unit"], result["n_units"], result["n_dropped"]) == \
        (2000, 0.95, 0, "tiles", 512, 0)  # fmt: skip
    assert result["method"] == "95 % percentile bootstrap, 2,000 resamples of the 512 tiles, seed 0"


def test_bootstrap_is_fast_on_a_test_set():
    labels, predictions, scores = _tiles()
    started = time.perf_counter()
    bootstrap_scores(labels, predictions, scores)
    assert time.perf_counter() - started < 2.0  # about 0.15 s on one shared core


def test_the_same_seed_gives_the_same_interval_and_another_seed_a_close_one():
    labels, predictions, scores = _tiles()
    first, again = bootstrap_scores(labels, predictions, scores, seed=0), bootstrap_scores(labels, predictions, scores, seed=0)
    other = bootstrap_scores(labels, predictions, scores, seed=1)
    assert first == again
    for metric in ("accuracy", "balanced_accuracy", "roc_auc"):
        ends, other_ends = (first[metric]["low"], first[metric]["high"]), (other[metric]["low"], other[metric]["high"])
        assert ends != other_ends and np.allclose(ends, other_ends, atol=0.02)


def test_the_percentile_interval_is_scipys_on_the_same_draws():
    # scipy.stats.bootstrap resamples the tiles' indices from the same seed; its statistics are
    # written here apart from lib.stats (accuracy as a mean, ROC-AUC from ranks).
    labels, predictions, scores = _tiles(200, seed=2)
    result = bootstrap_scores(labels, predictions, scores, seed=7)
    def balanced_accuracy(i, axis=-1):
        recalls = [((predictions[i] == c) & (labels[i] == c)).sum(axis=axis) / (labels[i] == c).sum(axis=axis) for c in (0, 1)]
        return (recalls[0] + recalls[1]) / 2

    statistics = {"accuracy": lambda i, axis=-1: (predictions[i] == labels[i]).mean(axis=axis),
                  "balanced_accuracy": balanced_accuracy,
                  "roc_auc": lambda i, axis=-1: _rank_auc(labels[i], scores[i], axis=axis)}  # fmt: skip
    for metric, statistic in statistics.items():
        direct = scipy_stats.bootstrap((np.arange(200),), statistic, n_resamples=2000, method="percentile",
                                       rng=np.random.default_rng(7)).confidence_interval  # fmt: skip
        assert (result[metric]["low"], result[metric]["high"]) == pytest.approx((direct.low, direct.high), rel=1e-12)


def test_grouped_tiles_are_resampled_by_group_and_give_a_wider_interval():
    # 40 slides of 12 tiles; a slide's tiles are all right or all wrong, so 480 tiles hold 40
    # independent observations and the tile bootstrap overstates what is known.
    rng = np.random.default_rng(6)
    groups = np.repeat([f"slide-{k}" for k in range(40)], 12)
    labels = np.repeat(rng.integers(0, 2, 40), 12)
    slide_right = np.repeat(rng.random(40) < 0.75, 12)
    predictions = np.where(slide_right, labels, 1 - labels)
    scores = np.clip(np.where(predictions == 1, 0.7, 0.3) + 0.05 * rng.standard_normal(480), 0, 1)
    by_tile = bootstrap_scores(labels, predictions, scores)
    by_group = bootstrap_scores(labels, predictions, scores, groups=groups)
    assert by_group["unit"] == "groups" and by_group["n_units"] == 40
    assert "40 groups (patients, slides or source tiles)" in by_group["method"] and "not independent" in by_group["method"]
    for metric in ("accuracy", "roc_auc"):
        tile_width = by_tile[metric]["high"] - by_tile[metric]["low"]
        assert by_group[metric]["high"] - by_group[metric]["low"] > 2.5 * tile_width

    def accuracy(drawn, axis=-1):  # scipy on the groups' indices, each expanded to its tiles
        right = slide_right[::12].astype(float)
        return right[drawn].mean(axis=axis)  # 12 tiles each, so the tiles' mean is the groups' mean

    # np.unique orders the groups' names, "slide-10" before "slide-2": draw k is the k-th name in that order.
    order = np.argsort([f"slide-{k}" for k in range(40)])
    direct = scipy_stats.bootstrap((order,), accuracy, n_resamples=2000, method="percentile", rng=np.random.default_rng(0))
    ci = direct.confidence_interval
    assert (by_group["accuracy"]["low"], by_group["accuracy"]["high"]) == pytest.approx((ci.low, ci.high), rel=1e-12)


def test_resamples_missing_a_class_are_dropped_counted_and_too_many_withhold_the_interval():
    # 4 class-1 tiles in 60: a resample misses them all with probability (56/60)^60, about 1.6 %.
    rng = np.random.default_rng(8)
    labels = np.array([1] * 4 + [0] * 56)
    scores = np.clip(0.2 + 0.5 * labels + 0.2 * rng.standard_normal(60), 0, 1)
    predictions = (scores > 0.5).astype(int)
    result = bootstrap_scores(labels, predictions, scores)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy_stats.DegenerateDataWarning)  # scipy's own interval is NaN: the reason to drop
        direct = scipy_stats.bootstrap((np.arange(60),), lambda i, axis=-1: _rank_auc(labels[i], scores[i], axis=axis),
                                       n_resamples=2000, method="percentile", rng=np.random.default_rng(0)).bootstrap_distribution  # fmt: skip
    assert 0 < result["n_dropped"] == np.isnan(direct).sum() < 100
    assert (result["roc_auc"]["low"], result["roc_auc"]["high"]) == pytest.approx(tuple(np.nanpercentile(direct, [2.5, 97.5])))
    assert f"{result['n_dropped']} resamples that held one class only were left out" in result["method"]
    # One class-1 tile in 30: (29/30)^30, about 36 % of the resamples, lack it.
    few = bootstrap_scores([1] + [0] * 29, [1] + [0] * 29, np.linspace(0, 1, 30)[::-1])
    assert few["n_dropped"] > 500 and few["accuracy"]["low"] is not None
    assert few["roc_auc"]["low"] is None and few["balanced_accuracy"]["high"] is None and "none is given" in few["method"]
    one_class = bootstrap_scores([0] * 10, [0] * 9 + [1], np.linspace(0, 1, 10))
    assert one_class["roc_auc"] == {"value": None, "low": None, "high": None} and one_class["n_dropped"] == 2000


def test_bootstrap_errors_are_named():
    labels, predictions, scores = _tiles(10)
    with pytest.raises(ValueError, match="10 labels, 9 predictions, 10 scores"):
        bootstrap_scores(labels, predictions[:9], scores)
    with pytest.raises(ValueError, match="no tiles"):
        bootstrap_scores([], [], [])
    with pytest.raises(ValueError, match=r"labels must be 0 or 1; got \[2\]"):
        bootstrap_scores(np.r_[labels[:9], 2], predictions, scores)
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        bootstrap_scores(np.r_[labels[:9], 0.5], predictions, scores)
    with pytest.raises(ValueError, match="predictions must be 0 or 1"):
        bootstrap_scores(labels, scores, scores)
    with pytest.raises(ValueError, match="10 labels, 3 groups"):
        bootstrap_scores(labels, predictions, scores, groups=["a", "b", "c"])
    with pytest.raises(ValueError, match="at least 1,000"):
        bootstrap_scores(labels, predictions, scores, n_resamples=100)
    with pytest.raises(ValueError, match="confidence must lie between 0 and 1"):
        bootstrap_scores(labels, predictions, scores, confidence=95)


# ---- paired accuracy and compare_runs -----------------------------------------------------------


def test_paired_accuracy_difference_resamples_both_runs_together_and_tells_them_apart():
    labels, predictions_a, scores = _tiles()
    predictions_b = predictions_a.copy()
    wrong_a = np.flatnonzero(predictions_a != labels)
    predictions_b[wrong_a[:50]] = labels[wrong_a[:50]]  # B fixes 50 of A's errors and adds 5
    right_a = np.flatnonzero(predictions_a == labels)
    predictions_b[right_a[:5]] = 1 - labels[right_a[:5]]
    result = paired_accuracy_difference(labels, predictions_a, predictions_b, seed=2)
    assert result["value"] == pytest.approx(45 / 512) == result["accuracy_b"] - result["accuracy_a"]
    assert result["mcnemar"]["b"] == 5 and result["mcnemar"]["c"] == 50 and result["mcnemar"]["p_value"] < 1e-9
    assert result["low"] > 0 and result["told_apart"] is True

    def difference(i, axis=-1):  # one draw of tiles, both runs scored on it
        return (predictions_b[i] == labels[i]).mean(axis=axis) - (predictions_a[i] == labels[i]).mean(axis=axis)

    direct = scipy_stats.bootstrap((np.arange(512),), difference, n_resamples=2000, method="percentile", rng=np.random.default_rng(2))
    assert (result["low"], result["high"]) == pytest.approx((direct.confidence_interval.low, direct.confidence_interval.high), rel=1e-12)
    same = paired_accuracy_difference(labels, predictions_a, predictions_a)
    assert (same["value"], same["low"], same["high"], same["mcnemar"]["p_value"], same["told_apart"]) == (0.0, 0.0, 0.0, 1.0, False)
    grouped = paired_accuracy_difference(labels, predictions_a, predictions_b, groups=np.arange(512) // 8)
    assert grouped["unit"] == "groups" and "McNemar's test takes tiles as independent" in grouped["method"]


def test_a_tiny_mcnemar_p_does_not_tell_runs_apart_when_the_cluster_interval_holds_zero():
    # B fixes A's 10 errors on each of 2 of 16 slides of 32 tiles and changes nothing else: 20
    # discordant tiles, all one way (McNemar p = 2 / 2^20), but a resample misses both slides with
    # probability (14/16)^16, about 12 %, so the 95 % cluster interval reaches 0.
    labels, predictions_a, _ = _tiles()
    groups = np.arange(512) // 32
    predictions_a[:64] = labels[:64]
    fixed = np.r_[0:10, 32:42]
    predictions_a[fixed] = 1 - labels[fixed]
    predictions_b = predictions_a.copy()
    predictions_b[:64] = labels[:64]
    result = paired_accuracy_difference(labels, predictions_a, predictions_b, groups=groups)
    assert result["mcnemar"]["p_value"] == pytest.approx(2 / 2**20) and result["low"] <= 0 < result["high"]
    assert result["told_apart"] is False
    assert paired_accuracy_difference(labels, predictions_a, predictions_b)["told_apart"] is True  # tiles taken as independent


def test_compare_runs_gives_both_comparisons_with_told_apart():
    labels, predictions_a, scores_a = _tiles()
    scores_b = np.clip(scores_a + 0.3 * (labels - 0.5), 0, 1)  # B separates the classes better
    predictions_b = (scores_b > 0.5).astype(np.int64)
    result = compare_runs(labels, (predictions_a, scores_a), (predictions_b, scores_b))
    assert set(result) == {"accuracy", "roc_auc"}
    assert result["accuracy"]["told_apart"] is True and result["roc_auc"]["told_apart"] is True
    assert result["roc_auc"]["value"] == pytest.approx(roc_auc_score(labels, scores_b) - roc_auc_score(labels, scores_a))
    assert result["roc_auc"]["low"] > 0 and result["roc_auc"]["p_value"] < 0.05


# ---- calibration --------------------------------------------------------------------------------


def test_ece_by_hand_with_a_score_on_an_edge_and_one_of_exactly_one():
    # 4 bins: [0, .25], (.25, .5], (.5, .75], (.75, 1]. 0.25 lies in the first, 1.0 in the last.
    # bin 1: 0.1, 0.2, 0.25, labels 0, 0, 1: mean predicted 0.55/3, observed 1/3, gap 0.15
    # bin 2: 0.3, label 0: gap 0.3;  bin 3: empty;  bin 4: 0.8, 0.9, 1.0, labels 1, 1, 0: 0.9 vs 2/3, gap 7/30
    # ECE = 3/7 * 0.15 + 1/7 * 0.3 + 3/7 * 7/30 = 1.45 / 7; MCE = 0.3
    result = calibration([0, 0, 1, 0, 1, 1, 0], [0.1, 0.2, 0.25, 0.3, 0.8, 0.9, 1.0], n_bins=4)
    assert result["ece"] == pytest.approx(1.45 / 7) and result["mce"] == pytest.approx(0.3)
    assert [b["count"] for b in result["bins"]] == [3, 1, 0, 3] and (result["n"], result["n_bins"]) == (7, 4)
    assert result["bins"][0] == {"lower": 0.0, "upper": 0.25, "count": 3, "mean_predicted": pytest.approx(0.55 / 3), "observed": pytest.approx(1 / 3)}
    assert result["bins"][2]["mean_predicted"] is None and result["bins"][2]["observed"] is None


def test_calibration_bins_are_scikit_learns_and_ece_tells_calibrated_from_over_confident():
    rng = np.random.default_rng(5)
    probability = rng.random(20000)
    labels = (rng.random(20000) < probability).astype(int)
    calibrated = calibration(labels, probability)
    observed, predicted = calibration_curve(labels, probability, n_bins=10, strategy="uniform")
    filled = [b for b in calibrated["bins"] if b["count"]]
    assert [b["observed"] for b in filled] == pytest.approx(observed) and [b["mean_predicted"] for b in filled] == pytest.approx(predicted)
    assert calibrated["ece"] < 0.02
    with np.errstate(divide="ignore"):
        over_confident = 1 / (1 + np.exp(-4 * np.log(probability / (1 - probability))))  # logit stretched 4 times
    assert calibration(labels, over_confident)["ece"] > 0.1


def test_calibration_errors_are_named():
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\]"):
        calibration([0, 1], [0.2, 1.2])
    with pytest.raises(ValueError, match="2 labels, 1 scores"):
        calibration([0, 1], [0.2])
    with pytest.raises(ValueError, match="n_bins must be a positive whole number"):
        calibration([0, 1], [0.2, 0.8], n_bins=0)


def test_reliability_figure_shows_the_bins_their_counts_and_ece():
    import matplotlib.pyplot as plt

    from lib.report.figures import plot_reliability

    labels, _, scores = _tiles(200)
    outside = (scores <= 0.4) | (scores > 0.5)  # (0.4, 0.5] left empty: a bin with no bar but a count of 0
    calib = calibration(labels[outside], scores[outside])
    assert calib["bins"][4]["count"] == 0
    fig = plot_reliability(calib, "run small")
    top, counts = fig.axes
    assert f"ECE {calib['ece']:.3f}" in top.get_title() and top.get_title().startswith("run small")
    assert [round(p.get_height()) for p in counts.patches] == [b["count"] for b in calib["bins"]]
    assert len(top.patches) == sum(b["count"] > 0 for b in calib["bins"])
    plt.close(fig)
