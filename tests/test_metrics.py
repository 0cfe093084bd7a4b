"""Evaluation metrics and plots, checked against values computed by hand on a small fixed set.

Convention under test: label 1 = abnormal (positive), predicted abnormal iff score >= threshold.
"""

from __future__ import annotations

import math
import subprocess
import sys
import warnings

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from sklearn.metrics import roc_auc_score

from pipelines.reporting.metrics import (
    DEGENERATE_THRESHOLD,
    METRIC_FIELDS,
    BinaryMetrics,
    binary_metrics,
    bootstrap_ci,
    calibration_bins,
    choose_threshold,
    expected_calibration_error,
    metrics_by_group,
)
from pipelines.reporting.plots import (
    confusion_figure,
    loss_figure,
    pr_figure,
    reliability_figure,
    roc_figure,
    save_figure,
    score_histogram_figure,
)

# The hand set. index:   0     1     2     3     4     5     6     7     8     9
Y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 0, 1])
S = np.array([0.1, 0.2, 0.35, 0.6, 0.4, 0.7, 0.8, 0.6, 0.05, 0.9])
# normals  (5): 0.05, 0.1, 0.2, 0.35, 0.6
# abnormal (5): 0.4, 0.6, 0.7, 0.8, 0.9
#
# AUROC = concordant pairs / 25 pairs (ties 1/2); normals scoring below each abnormal:
#   0.4 -> 4 (0.05, 0.1, 0.2, 0.35)   0.6 -> 4 + 0.5 (tie with the normal 0.6)
#   0.7 -> 5   0.8 -> 5   0.9 -> 5    total 23.5 / 25 = 0.94
HAND_AUROC = 23.5 / 25
#
# ROC by threshold (distinct scores, descending), TP / FP with score >= t, J = TPR - FPR:
#   t=0.9: 1/0 J=.2 | 0.8: 2/0 J=.4 | 0.7: 3/0 J=.6 | 0.6: 4/1 J=.6 | 0.4: 5/1 J=.8 | 0.35: 5/2 J=.6 | ...
#   -> Youden threshold 0.4 (unique maximum); sensitivity >= 0.9 first reached at 0.4,
#      >= 0.8 at 0.6 (exactly 4/5), >= 0.6 at 0.7 (exactly 3/5).
#
# Average precision = sum over thresholds of (recall step) * precision:
#   0.9, 0.8, 0.7: precision 1, recall .2 each; 0.6: precision 4/5, recall +.2; 0.4: precision 5/6, +.2
#   -> 0.2 * (1 + 1 + 1 + 0.8 + 5/6) = 0.92666...
HAND_AUPRC = 0.2 * (3 + 0.8 + 5 / 6)
#
# ECE with 10 equal-width bins ([k/10, (k+1)/10), cases per bin, |fraction abnormal - mean score|):
#   bin0 {0.05 n} .05 | bin1 {0.1 n} .1 | bin2 {0.2 n} .2 | bin3 {0.35 n} .35 | bin4 {0.4 a} .6
#   bin6 {0.6 n, 0.6 a}: |.5 - .6| = .1 (weight 2) | bin7 {0.7 a} .3 | bin8 {0.8 a} .2 | bin9 {0.9 a} .1
#   -> (.05 + .1 + .2 + .35 + .6 + 2 * .1 + .3 + .2 + .1) / 10 = 2.1 / 10 = 0.21
HAND_ECE = 0.21


def _nan_equal(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    return all((isinstance(a[k], float) and math.isnan(a[k]) and math.isnan(b[k])) or a[k] == pytest.approx(b[k])
               for k in a)


def _synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]
    return y, rng.normal(y * 1.2, 1.0)


# ------------------------------------------------------------------------------------------------ threshold


def test_youden_threshold_is_the_hand_computed_one():
    assert choose_threshold(Y, S) == pytest.approx(0.4)
    assert choose_threshold(Y, S, method="youden") == pytest.approx(0.4)


@pytest.mark.parametrize(("target", "expected"), [(0.9, 0.4), (1.0, 0.4), (0.8, 0.6), (0.7, 0.6),
                                                  (0.6, 0.7), (0.5, 0.7), (0.2, 0.9)])
def test_target_sensitivity_threshold(target, expected):
    threshold = choose_threshold(Y, S, method="sensitivity", target=target)
    assert threshold == pytest.approx(expected)
    # the chosen threshold does reach the target, and the next higher score would not
    m = binary_metrics(Y, S, threshold, n_boot=0)
    assert m.sensitivity >= target - 1e-12
    scores = np.asarray(S)
    higher = scores[scores > threshold]
    if higher.size:
        assert binary_metrics(Y, S, higher.min(), n_boot=0).sensitivity < target


def test_threshold_convention_matches_roc_point():
    # at the Youden threshold (0.4) with score >= t: TP 5, FP 1 -> sensitivity 1, specificity 0.8 (J = 0.8)
    m = binary_metrics(Y, S, choose_threshold(Y, S), n_boot=0)
    assert (m.tp, m.fp, m.tn, m.fn) == (5, 1, 4, 0)
    assert m.sensitivity - (1 - m.specificity) == pytest.approx(0.8)


def test_youden_tie_prefers_highest_threshold():
    # 3 abnormal (.9 .8 .3), 3 normal (.6 .2 .1); J = TPR - FPR is 2/3 at both t=0.8 and t=0.3 (in floating
    # point 1 - 1/3 is one ulp above 2/3: the tie must still go to the higher threshold)
    y = [1, 1, 0, 0, 1, 0]
    s = [0.9, 0.8, 0.6, 0.2, 0.3, 0.1]
    # t=0.9: 1/0 J .333 | 0.8: 2/0 J .667 | 0.6: 2/1 J .333 | 0.3: 3/1 J .667 | 0.2: 3/2 | 0.1: 3/3
    assert choose_threshold(y, s) == pytest.approx(0.8)


def test_degenerate_threshold_is_half_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert choose_threshold([0, 0, 0], [0.1, 0.7, 0.9]) == DEGENERATE_THRESHOLD == 0.5
        assert choose_threshold([1, 1], [0.1, 0.7], method="sensitivity") == 0.5
        assert choose_threshold([], []) == 0.5


def test_threshold_rejects_bad_input():
    with pytest.raises(ValueError):
        choose_threshold(Y, S, method="f1")
    with pytest.raises(ValueError):
        choose_threshold(Y, S, method="sensitivity", target=0.0)
    with pytest.raises(ValueError):
        choose_threshold([0, 1, 2], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError):
        choose_threshold([0, 1], [0.1, np.nan])
    with pytest.raises(ValueError):
        choose_threshold([0, 1], [0.1])


# ------------------------------------------------------------------------------------------------ metrics


def test_binary_metrics_on_the_hand_set_at_06():
    # threshold 0.6, score >= 0.6 is abnormal: predicted abnormal = idx 3 (normal, 0.6), 5, 6, 7 (0.6), 9
    # TP = 4 (0.6, 0.7, 0.8, 0.9), FP = 1 (the normal 0.6), FN = 1 (0.4), TN = 4
    # (a ">" convention would give TP 3, FP 0: this pins ">=")
    m = binary_metrics(Y, S, 0.6, n_boot=200)
    assert isinstance(m, BinaryMetrics)
    assert (m.n, m.n_pos, m.tp, m.fp, m.tn, m.fn) == (10, 5, 4, 1, 4, 1)
    assert m.sensitivity == pytest.approx(4 / 5)
    assert m.specificity == pytest.approx(4 / 5)
    assert m.ppv == pytest.approx(4 / 5)
    assert m.npv == pytest.approx(4 / 5)
    assert m.accuracy == pytest.approx(8 / 10)
    assert m.auroc == pytest.approx(HAND_AUROC)
    assert m.auprc == pytest.approx(HAND_AUPRC)
    assert m.ece == pytest.approx(HAND_ECE)
    assert m.threshold == 0.6
    assert m.auroc_ci_low <= m.auroc <= m.auroc_ci_high


def test_binary_metrics_on_the_hand_set_at_038_and_065():
    # t=0.38: abnormal = 0.4, 0.6, 0.6, 0.7, 0.8, 0.9 -> TP 5, FP 1, TN 4, FN 0
    m = binary_metrics(Y, S, 0.38, n_boot=0)
    assert (m.tp, m.fp, m.tn, m.fn) == (5, 1, 4, 0)
    assert (m.sensitivity, m.specificity, m.ppv, m.npv, m.accuracy) == pytest.approx((1.0, 0.8, 5 / 6, 1.0, 0.9))
    # t=0.65: abnormal = 0.7, 0.8, 0.9 -> TP 3, FP 0, TN 5, FN 2
    m = binary_metrics(Y, S, 0.65, n_boot=0)
    assert (m.tp, m.fp, m.tn, m.fn) == (3, 0, 5, 2)
    assert (m.sensitivity, m.specificity, m.ppv, m.npv, m.accuracy) == pytest.approx((0.6, 1.0, 1.0, 5 / 7, 0.8))
    # no bootstrap asked -> no CI, but the point estimates are still there
    assert math.isnan(m.auroc_ci_low) and math.isnan(m.auroc_ci_high)
    assert m.auroc == pytest.approx(HAND_AUROC)


def test_as_dict_is_flat_and_json_friendly():
    d = binary_metrics(Y, S, 0.6, n_boot=50).as_dict()
    assert tuple(d) == METRIC_FIELDS
    assert all(type(v) in (int, float) for v in d.values())
    assert d["tp"] == 4 and isinstance(d["tp"], int)
    assert d["auroc"] == pytest.approx(HAND_AUROC)


def test_one_class_gives_nan_auroc_without_exception_or_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = binary_metrics([0, 0, 0, 0], [0.1, 0.4, 0.6, 0.9], 0.5, n_boot=100)
    assert math.isnan(m.auroc) and math.isnan(m.auroc_ci_low) and math.isnan(m.auroc_ci_high)
    assert math.isnan(m.auprc)  # no abnormal case
    assert math.isnan(m.sensitivity)  # no abnormal case
    assert m.specificity == pytest.approx(0.5)  # 0.1, 0.4 below 0.5
    assert (m.tp, m.fp, m.tn, m.fn) == (0, 2, 2, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = binary_metrics([1, 1, 1], [0.2, 0.5, 0.9], 0.5, n_boot=100)
    assert math.isnan(m.auroc) and math.isnan(m.specificity)
    assert m.sensitivity == pytest.approx(2 / 3)


def test_no_positive_predictions_gives_nan_ppv():
    # threshold 0.95 above every score: nothing predicted abnormal
    m = binary_metrics(Y, S, 0.95, n_boot=0)
    assert (m.tp, m.fp, m.tn, m.fn) == (0, 0, 5, 5)
    assert math.isnan(m.ppv)
    assert m.sensitivity == 0.0 and m.specificity == 1.0 and m.npv == pytest.approx(0.5)
    # and the opposite: everything predicted abnormal -> NPV undefined
    m = binary_metrics(Y, S, 0.0, n_boot=0)
    assert math.isnan(m.npv) and m.ppv == pytest.approx(0.5)


def test_scores_that_are_not_probabilities_give_nan_ece():
    m = binary_metrics(Y, S * 10 - 3, 3.0, n_boot=0)  # logits-like scores, same ranking as S at 0.6
    assert math.isnan(m.ece)
    assert m.auroc == pytest.approx(HAND_AUROC)
    assert (m.tp, m.fp, m.tn, m.fn) == (4, 1, 4, 1)


# ------------------------------------------------------------------------------------------------ ECE


def test_ece_two_bins_by_hand():
    y = [0, 0, 1, 1, 1, 0]
    p = [0.1, 0.2, 0.3, 0.6, 0.8, 0.9]
    # bins [0, .5) and [.5, 1]: {.1,.2,.3} mean .2, fraction 1/3 -> 2/15; {.6,.8,.9} mean 23/30, fraction 2/3 -> .1
    # ECE = 3/6 * 2/15 + 3/6 * 1/10 = 7/60
    assert expected_calibration_error(y, p, n_bins=2) == pytest.approx(7 / 60)
    # four bins [0,.25) [.25,.5) [.5,.75) [.75,1]: {.1,.2} .15 (w 2) | {.3} |1-.3| = .7 | {.6} .4 | {.8,.9} .35 (w 2)
    # ECE = (2*.15 + .7 + .4 + 2*.35) / 6 = 0.35
    assert expected_calibration_error(y, p, n_bins=4) == pytest.approx(0.35)


def test_ece_bin_edges_and_extremes():
    # 0.5 belongs to the upper bin of two: bins {0.4 -> y 0} and {0.5 -> y 1}: (.4 + .5) / 2 = .45
    # (0.5 in the lower bin would give |.5 - .45| = .05)
    assert expected_calibration_error([0, 1], [0.4, 0.5], n_bins=2) == pytest.approx(0.45)
    # 1.0 is in the last bin, 0.0 in the first: perfectly calibrated extremes
    assert expected_calibration_error([0, 1], [0.0, 1.0], n_bins=10) == pytest.approx(0.0)
    assert expected_calibration_error([0, 1, 0, 1], [0.5] * 4) == pytest.approx(0.0)
    bins = calibration_bins([0, 1, 1], [0.0, 0.3, 1.0], n_bins=10)
    assert bins.count.tolist() == [1, 0, 0, 1, 0, 0, 0, 0, 0, 1]
    assert math.isnan(bins.mean_prob[1])
    assert math.isnan(expected_calibration_error([], []))
    with pytest.raises(ValueError):
        expected_calibration_error([0, 1], [0.2, 1.3])


# ------------------------------------------------------------------------------------------------ bootstrap


def test_bootstrap_ci_contains_estimate_and_is_reproducible():
    y, s = _synthetic(120, seed=3)
    auc = roc_auc_score(y, s)
    low, high = bootstrap_ci(y, s, n_boot=500, seed=7)
    assert 0 <= low < auc < high <= 1
    assert bootstrap_ci(y, s, n_boot=500, seed=7) == (low, high)
    assert bootstrap_ci(y, s, n_boot=500, seed=8) != (low, high)
    # a narrower interval with smaller alpha would be a bug
    low90, high90 = bootstrap_ci(y, s, n_boot=500, seed=7, alpha=0.1)
    assert low <= low90 < high90 <= high


def test_bootstrap_ci_narrows_with_more_data():
    y_small, s_small = _synthetic(60, seed=1)
    y_large, s_large = _synthetic(3000, seed=1)
    low_s, high_s = bootstrap_ci(y_small, s_small, n_boot=400)
    low_l, high_l = bootstrap_ci(y_large, s_large, n_boot=400)
    assert high_l - low_l < 0.5 * (high_s - low_s)
    assert low_l < roc_auc_score(y_large, s_large) < high_l


def test_vectorised_auroc_bootstrap_equals_the_plain_loop():
    # integer-rounded scores: many ties, which the vectorised AUROC must count as 1/2
    y, s = _synthetic(80, seed=5)
    s = np.round(s)
    fast = bootstrap_ci(y, s, roc_auc_score, n_boot=300, seed=2)
    slow = bootstrap_ci(y, s, lambda a, b: roc_auc_score(a, b), n_boot=300, seed=2)
    assert fast == pytest.approx(slow, abs=1e-12)


def test_bootstrap_skips_one_class_resamples_and_handles_degenerate_data():
    # 1 abnormal in 8: many resamples miss it; they are skipped, not counted as errors
    y = [0, 0, 0, 0, 0, 0, 0, 1]
    s = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.65]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        low, high = bootstrap_ci(y, s, n_boot=300)
        assert 0 <= low <= high <= 1
        # a generic metric that would raise on one class is never called on such a resample
        assert bootstrap_ci(y, s, lambda a, b: roc_auc_score(a, b), n_boot=300) == pytest.approx((low, high))
        assert all(math.isnan(v) for v in bootstrap_ci([1, 1, 1], [0.1, 0.2, 0.3]))
    from sklearn.metrics import average_precision_score

    low, high = bootstrap_ci(Y, S, average_precision_score, n_boot=200)
    assert 0 < low <= HAND_AUPRC <= high <= 1
    with pytest.raises(ValueError):
        bootstrap_ci(Y, S, n_boot=0)


# ------------------------------------------------------------------------------------------------ by group


def test_metrics_by_group_matches_per_group_binary_metrics():
    frame = pd.DataFrame({
        "modality": ["CR"] * 10 + ["MR"] * 6,
        "label": [*Y, 0, 1, 0, 1, 1, 0],
        "score": [*S, 0.3, 0.8, 0.55, 0.45, 0.9, 0.2],
    }).sample(frac=1.0, random_state=0)  # order in the frame must not matter
    table = metrics_by_group(frame, "modality", threshold=0.5, n_boot=100, seed=4)
    assert table["modality"].tolist() == ["CR", "MR"]
    assert list(table.columns) == ["modality", *METRIC_FIELDS]
    for _, row in table.iterrows():
        part = frame[frame["modality"] == row["modality"]]
        expected = binary_metrics(part["label"], part["score"], 0.5, n_boot=100, seed=4).as_dict()
        assert _nan_equal({k: row[k] for k in METRIC_FIELDS}, expected)
    cr = table.set_index("modality").loc["CR"]
    assert cr["auroc"] == pytest.approx(HAND_AUROC) and cr["tp"] == 4
    # MR: abnormal .8 .45 .9, normal .3 .55 .2 -> at 0.5: TP 2, FP 1, TN 2, FN 1; AUROC = 8/9 (0.45 < 0.55)
    mr = table.set_index("modality").loc["MR"]
    assert (mr["tp"], mr["fp"], mr["tn"], mr["fn"]) == (2, 1, 2, 1)
    assert mr["auroc"] == pytest.approx(8 / 9)


def test_metrics_by_group_keeps_missing_group_and_checks_columns():
    frame = pd.DataFrame({"site": ["a", None, "a", None], "label": [0, 1, 1, 0], "score": [0.2, 0.7, 0.9, 0.1]})
    table = metrics_by_group(frame, "site", threshold=0.5, n_boot=0)
    assert table["n"].sum() == 4 and len(table) == 2
    with pytest.raises(KeyError):
        metrics_by_group(frame, "manufacturer", threshold=0.5)


# ------------------------------------------------------------------------------------------------ plots


def _check_png(fig: Figure, path) -> None:
    assert isinstance(fig, Figure)
    out = save_figure(fig, path)
    assert out.stat().st_size > 1000
    image = matplotlib.image.imread(out)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100 and image.shape[2] in (3, 4)
    assert image[..., :3].std() > 0  # not a blank canvas


def _texts(fig: Figure) -> str:
    parts = [ax.get_title() for ax in fig.axes]
    for ax in fig.axes:
        legend = ax.get_legend()
        if legend is not None:
            parts += [t.get_text() for t in legend.get_texts()]
        parts += [t.get_text() for t in ax.texts]
    return " | ".join(parts)


def test_plots_save_to_png_and_show_the_numbers(tmp_path):
    roc = roc_figure(Y, S, threshold=0.4)
    assert "AUROC = 0.940" in _texts(roc)
    assert "sens 1.00, spec 0.80" in _texts(roc)
    _check_png(roc, tmp_path / "nested" / "roc.png")

    pr = pr_figure(Y, S, threshold=0.6)
    assert "AUPRC = 0.927" in _texts(pr) and "prevalence = 0.500" in _texts(pr)
    _check_png(pr, tmp_path / "pr.png")

    rel = reliability_figure(Y, S, n_bins=10)
    assert "ECE = 0.210" in _texts(rel)
    _check_png(rel, tmp_path / "reliability.png")

    m = binary_metrics(Y, S, 0.6, n_boot=0)
    cm = confusion_figure(m.tn, m.fp, m.fn, m.tp)
    ax = cm.axes[0]
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text().split("\n")[0]
             for t in ax.texts}
    assert cells == {(0, 0): "4", (0, 1): "1", (1, 0): "1", (1, 1): "4"}  # rows truth, columns prediction
    assert [t.get_text() for t in ax.get_yticklabels()] == ["normal", "abnormal"]
    _check_png(cm, tmp_path / "confusion.png")

    hist = score_histogram_figure(Y, S, threshold=0.6)
    assert "normal (n=5)" in _texts(hist) and "threshold = 0.6" in _texts(hist)
    _check_png(hist, tmp_path / "scores.png")


def test_reliability_shows_counts_leaves_empty_bins_out_and_never_reads_two_cases_as_certain(tmp_path):
    y = [0, 0, 0, 0, 1, 1]  # bins 0-0.1 (4 normal), 0.9-1 (2 abnormal); the 8 bins between are empty
    p = [0.01, 0.02, 0.03, 0.04, 0.95, 0.96]
    fig = reliability_figure(y, p, n_bins=10)
    top, bottom = fig.axes
    points = top.containers[0]  # the errorbar container: one marker per non-empty bin
    xs, ys = points.lines[0].get_data()
    assert len(xs) == 2 and list(ys) == [0.0, 1.0]
    lows = points.lines[2][0].get_segments()
    assert lows[1][0][1] < 0.5, "2 of 2 abnormal: the 95% interval reaches far below 100%"
    line = next(ln for ln in top.lines if ln.get_linestyle() == "-")
    assert np.isnan(line.get_ydata()[1:9]).all(), "the line breaks at the empty bins"
    assert {"n=4", "n=2"} <= {t.get_text() for t in top.texts}
    assert [t.get_text() for t in bottom.texts] == ["4", "2"] and len(bottom.patches) == 2
    _check_png(fig, tmp_path / "reliability.png")


def test_loss_figure_puts_train_and_validation_loss_on_one_chart(tmp_path):
    history = [{"epoch": e, "train_loss": 0.7 - 0.1 * e, "val_loss": 0.72 - 0.05 * e, "val_auroc": 0.5 + 0.1 * e}
               for e in (1, 2, 3)]
    fig = loss_figure(history, best_epoch=2)
    ax = fig.axes[0]
    labels = [line.get_label() for line in ax.lines]
    assert labels[:2] == ["train loss", "validation loss"] and "best epoch 2" in labels
    assert list(ax.lines[1].get_ydata()) == pytest.approx([0.67, 0.62, 0.57])
    _check_png(fig, tmp_path / "loss.png")
    _check_png(loss_figure([]), tmp_path / "empty.png")


def test_plots_survive_degenerate_input(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        figures = [roc_figure([0, 0, 0], [0.1, 0.5, 0.9], threshold=0.5),
                   pr_figure([0, 0, 0], [0.1, 0.5, 0.9]),
                   reliability_figure([], []),
                   confusion_figure(0, 0, 3, 0),
                   score_histogram_figure([1, 1], [2.0, 2.0])]
        for i, fig in enumerate(figures):
            _check_png(fig, tmp_path / f"degenerate_{i}.png")
    assert "one class only" in _texts(figures[0])


def test_module_imports_no_heavy_or_gui_dependency():
    code = ("import sys, pipelines.reporting.metrics, pipelines.reporting.plots; "
            "print(sorted(m for m in ('torch', 'monai', 'mlflow', 'matplotlib.pyplot') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
