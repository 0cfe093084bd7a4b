"""Figures of a normal / abnormal classifier: ROC, PR, reliability, confusion matrix, score histogram, loss curves.

Each function takes numbers only (labels, scores, counts) and returns a :class:`matplotlib.figure.Figure`
built directly, without pyplot, so no GUI backend is ever selected; :func:`save_figure` writes it as PNG.
Titles and labels therefore never carry identifiers. Same conventions as :mod:`pipelines.reporting.metrics`: labels
0 = normal, 1 = abnormal, predicted abnormal iff ``score >= threshold``. Degenerate data (one class only,
no cases) gives a figure with a note instead of a curve, never an exception.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from pipelines.reporting.metrics import as_binary_arrays, calibration_bins, expected_calibration_error

NORMAL_COLOR = "tab:blue"
ABNORMAL_COLOR = "tab:red"


def save_figure(fig: Figure, path: str | Path, dpi: int = 120) -> Path:
    """Write ``fig`` as PNG to ``path`` (parent folders created) and close it; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=dpi)
    pyplot = sys.modules.get("matplotlib.pyplot")  # only if someone else imported it: never import it here
    if pyplot is not None:
        pyplot.close(fig)
    return path


def _note(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=11, color="0.3")


def _unit_figure(xlabel: str, ylabel: str, title: str) -> tuple[Figure, Any]:
    """A square figure with one [0, 1] x [0, 1] axes (ROC, PR)."""
    fig = Figure(figsize=(5, 5), layout="constrained")
    ax = fig.add_subplot()
    _unit_axes(ax, xlabel, ylabel)
    ax.set_title(title)
    return fig, ax


def _unit_axes(ax, xlabel: str, ylabel: str) -> None:
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)


def _operating_point(y: np.ndarray, s: np.ndarray, threshold: float) -> tuple[float, float, float]:
    """(sensitivity, 1 - specificity, PPV) at ``score >= threshold``; NaN where undefined."""
    pred = s >= threshold
    pos, neg = y == 1, y == 0
    tpr = pred[pos].mean() if pos.any() else np.nan
    fpr = pred[neg].mean() if neg.any() else np.nan
    ppv = pos[pred].mean() if pred.any() else np.nan
    return float(tpr), float(fpr), float(ppv)


def roc_figure(y_true, y_score, threshold: float | None = None) -> Figure:
    """ROC curve with AUROC in the legend, the chance diagonal and (if given) the operating point."""
    y, s = as_binary_arrays(y_true, y_score)
    fig, ax = _unit_figure("1 - specificity (false positive rate)", "sensitivity (true positive rate)",
                           f"ROC (n={len(y)}, abnormal={int(y.sum())})")
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", label="chance")
    if len(y) == 0 or y.min() == y.max():
        _note(ax, "ROC undefined: one class only")
    else:
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, color=ABNORMAL_COLOR, lw=2, label=f"AUROC = {roc_auc_score(y, s):.3f}")
        if threshold is not None:
            sens, one_minus_spec, _ = _operating_point(y, s, threshold)
            ax.plot([one_minus_spec], [sens], "o", color="black", ms=8,
                    label=f"threshold {threshold:.3g}: sens {sens:.2f}, spec {1 - one_minus_spec:.2f}")
    ax.legend(loc="lower right", fontsize=8)
    return fig


def pr_figure(y_true, y_score, threshold: float | None = None) -> Figure:
    """Precision-recall curve with AUPRC (average precision) in the legend, the prevalence line, operating point."""
    y, s = as_binary_arrays(y_true, y_score)
    fig, ax = _unit_figure("recall (sensitivity)", "precision (PPV)",
                           f"Precision-recall (n={len(y)}, abnormal={int(y.sum())})")
    if len(y) == 0 or y.sum() == 0:
        _note(ax, "PR curve undefined: no abnormal cases")
    else:
        prevalence = float(y.mean())
        ax.axhline(prevalence, linestyle="--", color="0.6", label=f"prevalence = {prevalence:.3f}")
        precision, recall, _ = precision_recall_curve(y, s)
        ax.step(recall, precision, where="post", color=ABNORMAL_COLOR, lw=2,
                label=f"AUPRC = {average_precision_score(y, s):.3f}")
        if threshold is not None:
            sens, _, ppv = _operating_point(y, s, threshold)
            if np.isfinite(ppv):
                ax.plot([sens], [ppv], "o", color="black", ms=8,
                        label=f"threshold {threshold:.3g}: recall {sens:.2f}, precision {ppv:.2f}")
        ax.legend(loc="lower left", fontsize=8)
    return fig


def reliability_figure(y_true, y_prob, n_bins: int = 10) -> Figure:
    """Reliability diagram: per non-empty equal-width bin, the observed fraction abnormal against the mean
    predicted probability, with its 95% Wilson interval (a bin of two cases is not read as 100%) and its case
    count; empty bins are left out and never bridged. Below, the cases per bin. ECE (same bins) in the title."""
    y, p = as_binary_arrays(y_true, y_prob)
    bins = calibration_bins(y, p, n_bins)
    ece = expected_calibration_error(y, p, n_bins)
    fig = Figure(figsize=(5, 6), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    _unit_axes(top, "", "observed fraction abnormal")
    top.set_title(f"Reliability (n={len(y)}, {n_bins} bins), ECE = {ece:.3f}")
    top.plot([0, 1], [0, 1], linestyle="--", color="0.6", label="perfect calibration")
    used = bins.count > 0
    if used.any():
        low, high = _wilson_intervals(np.rint(bins.frac_pos[used] * bins.count[used]), bins.count[used])
        x, frac = bins.mean_prob[used], bins.frac_pos[used]
        line_x = np.where(used, bins.mean_prob, np.nan)  # NaN at empty bins: the line breaks there
        top.plot(line_x, np.where(used, bins.frac_pos, np.nan), "-", color=ABNORMAL_COLOR, lw=1, alpha=0.6)
        top.errorbar(x, frac, yerr=[frac - low, high - frac], fmt="o", color=ABNORMAL_COLOR, ecolor="0.4",
                     capsize=3, label="model (95% Wilson interval)")
        for xi, fi, n in zip(x, frac, bins.count[used], strict=True):
            top.annotate(f"n={n}", (xi, fi), textcoords="offset points", xytext=(0, -12), ha="center", fontsize=7,
                         color="0.3")
    else:
        _note(top, "no cases")
    top.legend(loc="upper left", fontsize=8, framealpha=0.9)
    centers, width = (bins.edges[:-1] + bins.edges[1:]) / 2, bins.edges[1] - bins.edges[0]
    bars = bottom.bar(centers[used], bins.count[used], width=width * 0.9, color="0.5")
    bottom.bar_label(bars, fontsize=7)
    bottom.set_xlabel("predicted probability of abnormal")
    bottom.set_ylabel("cases")
    bottom.set_xlim(-0.01, 1.01)
    bottom.margins(y=0.25)
    return fig


def _wilson_intervals(successes: np.ndarray, trials: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """95% Wilson score interval of each binomial proportion (scipy's ``binomtest``)."""
    from scipy.stats import binomtest

    cis = [binomtest(int(k), int(n)).proportion_ci(0.95, method="wilson") for k, n in zip(successes, trials,
                                                                                            strict=True)]
    return np.array([c.low for c in cis]), np.array([c.high for c in cis])


def loss_figure(history: list[dict[str, float]], best_epoch: int | None = None) -> Figure:
    """Training and validation loss per epoch on one chart (validation AUROC on a second axis), best epoch marked."""
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (BCE)")
    ax.grid(True, alpha=0.3)
    if not history:
        _note(ax, "no epochs")
        return fig
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h.get("train_loss", np.nan) for h in history], "o-", color=NORMAL_COLOR, ms=3, label="train loss")
    ax.plot(epochs, [h.get("val_loss", np.nan) for h in history], "s-", color=ABNORMAL_COLOR, ms=3,
            label="validation loss")
    auroc = ax.twinx()
    auroc.plot(epochs, [h.get("val_auroc", np.nan) for h in history], ":", color="0.3", label="validation AUROC")
    auroc.set_ylabel("validation AUROC")
    auroc.set_ylim(0, 1.01)
    if best_epoch:
        ax.axvline(best_epoch, color="0.5", linestyle="--", lw=1, label=f"best epoch {best_epoch}")
    handles = [h for a in (ax, auroc) for h in a.get_legend_handles_labels()[0]]
    fig.legend(handles=handles, loc="outside lower center", ncols=4, fontsize=8)
    ax.set_title(f"Loss per epoch ({len(history)} epochs)")
    return fig


def confusion_figure(tn: int, fp: int, fn: int, tp: int) -> Figure:
    """Annotated 2x2 confusion matrix: rows = truth (normal, abnormal), columns = prediction; each cell shows
    its count and its share of the row (specificity / sensitivity on the diagonal)."""
    matrix = np.array([[tn, fp], [fn, tp]], dtype=np.int64)
    if (matrix < 0).any():
        raise ValueError(f"confusion counts must be >= 0, got tn={tn} fp={fp} fn={fn} tp={tp}")
    fig = Figure(figsize=(4.5, 4), layout="constrained")
    ax = fig.add_subplot()
    rows = matrix.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(rows > 0, matrix / np.maximum(rows, 1), np.nan)
    ax.imshow(np.nan_to_num(share), cmap="Blues", vmin=0, vmax=1)
    for (i, j), count in np.ndenumerate(matrix):
        text = f"{count}" if np.isnan(share[i, j]) else f"{count}\n{share[i, j]:.0%}"
        ax.text(j, i, text, ha="center", va="center", fontsize=13,
                color="white" if np.nan_to_num(share[i, j]) > 0.6 else "black")
    ax.set_xticks([0, 1], ["normal", "abnormal"])
    ax.set_yticks([0, 1], ["normal", "abnormal"])
    ax.set_xlabel("prediction")
    ax.set_ylabel("truth")
    ax.set_title(f"Confusion matrix (n={int(matrix.sum())})")
    return fig


def score_histogram_figure(y_true, y_score, threshold: float | None = None, bins: int = 30) -> Figure:
    """Histograms of the scores of normal and abnormal cases (same bins) and the threshold line."""
    y, s = as_binary_arrays(y_true, y_score)
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    if len(s):
        low, high = float(s.min()), float(s.max())
        if low >= 0 and high <= 1:
            low, high = 0.0, 1.0
        elif low == high:
            low, high = low - 0.5, high + 0.5
        edges = np.linspace(low, high, bins + 1)
        for label, name, color in ((0, "normal", NORMAL_COLOR), (1, "abnormal", ABNORMAL_COLOR)):
            values = s[y == label]
            ax.hist(values, bins=edges, alpha=0.5, color=color, label=f"{name} (n={len(values)})")
    else:
        _note(ax, "no cases")
    if threshold is not None:
        ax.axvline(threshold, color="black", linestyle="--", label=f"threshold = {threshold:.3g}")
    ax.set_xlabel("score (abnormal if score >= threshold)")
    ax.set_ylabel("cases")
    ax.set_title(f"Scores by truth (n={len(y)})")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return fig
