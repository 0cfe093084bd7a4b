"""Study-level evaluation of a normal (0) / abnormal (1) classifier: threshold choice, metrics, bootstrap CIs.

Pure numpy / pandas / scikit-learn: no torch, MONAI or MLflow, so it imports fast and is easy to test.

Conventions used everywhere in this module (and in :mod:`pipelines.reporting.plots`):

* Labels are 0 = normal, 1 = abnormal (the positive class); a higher score means "more abnormal".
* A case is **predicted abnormal iff ``score >= threshold``**. This is also scikit-learn's ``roc_curve``
  convention, so a threshold returned by :func:`choose_threshold` reproduces, on the same data, exactly the
  sensitivity / specificity of the ROC point it was picked from.
* Undefined values are ``NaN``, never an exception: AUROC, its CI and AUPRC with one class only (AUPRC needs
  at least one positive), sensitivity without positives, specificity without negatives, PPV without positive
  predictions, NPV without negative predictions, ECE when scores are not probabilities in [0, 1].
* Malformed input is an error (``ValueError``): labels other than 0/1, non-finite scores, arrays of different
  lengths or not one-dimensional.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields
from typing import Literal

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, confusion_matrix, roc_auc_score, roc_curve

DEGENERATE_THRESHOLD = 0.5
"""What :func:`choose_threshold` returns when the data has one class only (no ROC curve to choose from)."""

_BOOT_CHUNK_ELEMENTS = 2_000_000  # bootstrap resamples are drawn in blocks of about this many indices
_TPR_TOLERANCE = 1e-12  # rates equal up to rounding count as equal (target reached, Youden tie)


def as_binary_arrays(y_true, y_score) -> tuple[np.ndarray, np.ndarray]:
    """Validated ``(labels as int64 in {0, 1}, scores as float64)`` 1-D arrays of the same length."""
    y = np.asarray(y_true)
    s = np.asarray(y_score, dtype=np.float64)
    if y.ndim != 1 or s.ndim != 1:
        raise ValueError(f"y_true and y_score must be 1-D, got shapes {y.shape} and {s.shape}")
    if len(y) != len(s):
        raise ValueError(f"y_true and y_score differ in length: {len(y)} != {len(s)}")
    if y.dtype == bool:
        y = y.astype(np.int64)
    try:
        y_num = y.astype(np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError("y_true must hold 0 (normal) / 1 (abnormal) labels") from error
    if not np.all((y_num == 0) | (y_num == 1)):
        bad = sorted({str(v) for v in y[(y_num != 0) & (y_num != 1)]})[:5]
        raise ValueError(f"y_true must hold 0 (normal) / 1 (abnormal) labels only, found {bad}")
    if not np.all(np.isfinite(s)):
        raise ValueError("y_score holds NaN or infinite values")
    return y_num.astype(np.int64), s


def _one_class(y: np.ndarray) -> bool:
    return len(y) == 0 or y.min() == y.max()


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator > 0 else math.nan


# --------------------------------------------------------------------------------------------- threshold


def choose_threshold(y_true, y_score, method: Literal["youden", "sensitivity"] = "youden",
                     target: float = 0.9) -> float:
    """The operating threshold (predicted abnormal iff ``score >= threshold``), chosen on validation data.

    Candidates are the distinct scores (scikit-learn ``roc_curve`` thresholds without the ``inf`` one that
    predicts nothing abnormal), so the result is always one of the observed scores.

    * ``"youden"``: maximise Youden's J = sensitivity - (1 - specificity) = TPR - FPR; on ties, the highest
      threshold (fewest abnormal predictions) wins.
    * ``"sensitivity"``: the highest threshold whose sensitivity is >= ``target`` (0 < target <= 1), i.e. the
      most specific threshold that still finds that fraction of abnormal studies.

    Degenerate input with one class only (or no cases) has no ROC curve: :data:`DEGENERATE_THRESHOLD` (0.5)
    is returned, without an exception or warning.
    """
    if method not in ("youden", "sensitivity"):
        raise ValueError(f"method must be 'youden' or 'sensitivity', got {method!r}")
    if method == "sensitivity" and not 0 < target <= 1:
        raise ValueError(f"target sensitivity must be in (0, 1], got {target}")
    y, s = as_binary_arrays(y_true, y_score)
    if _one_class(y):
        return DEGENERATE_THRESHOLD
    fpr, tpr, thresholds = roc_curve(y, s, drop_intermediate=False)
    # thresholds are decreasing; index 0 is "+inf" (nothing predicted abnormal): never a useful choice.
    fpr, tpr, thresholds = fpr[1:], tpr[1:], thresholds[1:]
    if method == "youden":
        youden = tpr - fpr
        # first maximum = highest threshold among ties (ties up to rounding: 1 - 1/3 vs 2/3 - 0)
        best = int(np.argmax(youden >= youden.max() - _TPR_TOLERANCE))
    else:
        # tpr is non-decreasing and ends at 1.0, so some index always qualifies.
        best = int(np.argmax(tpr >= target - _TPR_TOLERANCE))
    return float(thresholds[best])


# --------------------------------------------------------------------------------------------- bootstrap


def _resample_blocks(n: int, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """``n_boot`` rows of ``n`` case indices drawn with replacement, in blocks (same draws for any metric)."""
    rng = np.random.default_rng(seed)
    rows = max(1, _BOOT_CHUNK_ELEMENTS // max(n, 1))
    done = 0
    while done < n_boot:
        take = min(rows, n_boot - done)
        yield rng.integers(0, n, size=(take, n))
        done += take


def _bootstrap_auroc(y: np.ndarray, s: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """AUROC of each resample (row of ``idx``), vectorised; NaN for resamples with one class only.

    A resample is the original cases with multiplicities ``c``; AUROC = sum over positive cases of
    c * (weight of negatives scoring lower + 0.5 * weight of negatives with the same score) / (W+ * W-).
    """
    b, n = idx.shape
    order = np.argsort(s, kind="stable")
    s_sorted, pos_sorted = s[order], y[order] == 1
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    counts = np.bincount((np.arange(b)[:, None] * n + rank[idx]).ravel(), minlength=b * n)
    counts = counts.reshape(b, n).astype(np.float64)  # multiplicity of each case, cases sorted by score
    neg = np.where(pos_sorted, 0.0, counts)
    pos = np.where(pos_sorted, counts, 0.0)
    cum_neg = np.cumsum(neg, axis=1)
    # tie groups of equal scores: [first, last] column of the group each sorted case belongs to
    new_group = np.r_[True, s_sorted[1:] != s_sorted[:-1]]
    first = np.maximum.accumulate(np.where(new_group, np.arange(n), 0))
    last_of_group = np.r_[np.flatnonzero(new_group)[1:] - 1, n - 1]
    last = last_of_group[np.cumsum(new_group) - 1]
    below = cum_neg[:, first] - neg[:, first]
    tied = cum_neg[:, last] - below
    n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = (pos * (below + 0.5 * tied)).sum(axis=1) / (n_pos * n_neg)
    auc[(n_pos == 0) | (n_neg == 0)] = np.nan
    return auc


def bootstrap_ci(y_true, y_score, metric: Callable = roc_auc_score, n_boot: int = 1000, alpha: float = 0.05,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap ``(1 - alpha)`` confidence interval of ``metric(y_true, y_score)``.

    Cases (studies) are resampled with replacement, ``n_boot`` times, with ``numpy.random.default_rng(seed)``
    (same seed -> same interval). Resamples holding one class only are skipped, as are resamples where
    ``metric`` is not finite; the bounds are the ``alpha/2`` and ``1 - alpha/2`` quantiles (linear
    interpolation) of the remaining values. ``(nan, nan)`` when the data has one class only or no resample
    is usable. ``metric=roc_auc_score`` (the default) uses an exact vectorised AUROC (ties count 1/2); any
    other ``metric(y_true, y_score) -> float`` is called once per resample.
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    y, s = as_binary_arrays(y_true, y_score)
    if _one_class(y):
        return math.nan, math.nan
    values = []
    for idx in _resample_blocks(len(y), n_boot, seed):
        if metric is roc_auc_score:
            values.append(_bootstrap_auroc(y, s, idx))
            continue
        block = np.full(len(idx), np.nan)
        for i, row in enumerate(idx):
            y_b = y[row]
            if not _one_class(y_b):
                block[i] = metric(y_b, s[row])
        values.append(block)
    stats = np.concatenate(values)
    stats = stats[np.isfinite(stats)]
    if stats.size == 0:
        return math.nan, math.nan
    low, high = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


# --------------------------------------------------------------------------------------------- calibration


@dataclass(frozen=True)
class CalibrationBins:
    """Equal-width bins of predicted probability: bin k holds [k/n_bins, (k+1)/n_bins), the last includes 1."""

    edges: np.ndarray  # (n_bins + 1,)
    count: np.ndarray  # (n_bins,) cases per bin
    mean_prob: np.ndarray  # (n_bins,) mean predicted probability (confidence); NaN for empty bins
    frac_pos: np.ndarray  # (n_bins,) observed fraction abnormal (accuracy of the probability); NaN if empty


def calibration_bins(y_true, y_prob, n_bins: int = 10) -> CalibrationBins:
    """Per-bin counts, mean probability and observed frequency (the data of a reliability diagram)."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    y, p = as_binary_arrays(y_true, y_prob)
    if p.size and (p.min() < 0 or p.max() > 1):
        raise ValueError("y_prob must be probabilities in [0, 1]")
    bins = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_prob = np.bincount(bins, weights=p, minlength=n_bins) / count
        frac_pos = np.bincount(bins, weights=y.astype(np.float64), minlength=n_bins) / count
    return CalibrationBins(np.linspace(0.0, 1.0, n_bins + 1), count, mean_prob, frac_pos)


def expected_calibration_error(y_true, y_prob, n_bins: int = 10) -> float:
    """ECE = sum over bins of (n_bin / n) * |fraction abnormal - mean predicted probability|.

    ``y_prob`` is the predicted probability of "abnormal"; bins are equal-width on [0, 1]
    (see :class:`CalibrationBins`); empty bins contribute nothing. NaN for no cases; ``ValueError`` for
    probabilities outside [0, 1].
    """
    bins = calibration_bins(y_true, y_prob, n_bins)
    total = int(bins.count.sum())
    if total == 0:
        return math.nan
    used = bins.count > 0
    gap = np.abs(bins.frac_pos[used] - bins.mean_prob[used])
    return float(np.sum(bins.count[used] * gap) / total)


# --------------------------------------------------------------------------------------------- metrics


@dataclass(frozen=True)
class BinaryMetrics:
    """Study-level metrics at one threshold (predicted abnormal iff score >= threshold); NaN = undefined."""

    n: int
    n_pos: int
    auroc: float
    auroc_ci_low: float
    auroc_ci_high: float
    auprc: float
    threshold: float
    sensitivity: float
    specificity: float
    ppv: float
    npv: float
    accuracy: float
    ece: float
    tp: int
    fp: int
    tn: int
    fn: int

    def as_dict(self) -> dict[str, float]:
        """Flat ``{name: number}`` (counts as int, the rest as float, NaN where undefined) for JSON / MLflow."""
        return {key: (int(value) if isinstance(value, (int, np.integer)) else float(value))
                for key, value in asdict(self).items()}


METRIC_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(BinaryMetrics))


def binary_metrics(y_true, y_score, threshold: float, n_boot: int = 1000, seed: int = 0) -> BinaryMetrics:
    """All :class:`BinaryMetrics` of scores ``y_score`` (higher = more abnormal) against labels ``y_true``.

    The AUROC CI is :func:`bootstrap_ci` with ``n_boot`` resamples and ``seed`` (``n_boot=0``: no CI, NaN).
    ECE is computed on ``y_score`` as probabilities (10 equal-width bins), NaN if a score is outside [0, 1].
    Undefined values are NaN (see the module docstring), never an exception.
    """
    if n_boot < 0:
        raise ValueError(f"n_boot must be >= 0, got {n_boot}")
    y, s = as_binary_arrays(y_true, y_score)
    threshold = float(threshold)
    if math.isnan(threshold):
        raise ValueError("threshold is NaN")
    n, n_pos = len(y), int(y.sum())
    pred = (s >= threshold).astype(np.int64)
    if n:
        tn, fp, fn, tp = (int(v) for v in confusion_matrix(y, pred, labels=[0, 1]).ravel())
    else:
        tn = fp = fn = tp = 0
    if _one_class(y):
        auroc = ci_low = ci_high = math.nan
        auprc = float(average_precision_score(y, s)) if n_pos > 0 else math.nan
    else:
        auroc = float(roc_auc_score(y, s))
        auprc = float(average_precision_score(y, s))
        ci_low, ci_high = bootstrap_ci(y, s, roc_auc_score, n_boot=n_boot, seed=seed) if n_boot else (
            math.nan, math.nan)
    is_prob = n > 0 and s.min() >= 0 and s.max() <= 1
    return BinaryMetrics(
        n=n, n_pos=n_pos, auroc=auroc, auroc_ci_low=ci_low, auroc_ci_high=ci_high, auprc=auprc,
        threshold=threshold,
        sensitivity=_ratio(tp, tp + fn), specificity=_ratio(tn, tn + fp),
        ppv=_ratio(tp, tp + fp), npv=_ratio(tn, tn + fn), accuracy=_ratio(tp + tn, n),
        ece=expected_calibration_error(y, s) if is_prob else math.nan,
        tp=tp, fp=fp, tn=tn, fn=fn,
    )


def metrics_by_group(frame: pd.DataFrame, group_column: str, threshold: float, label_column: str = "label",
                     score_column: str = "score", n_boot: int = 200, seed: int = 0) -> pd.DataFrame:
    """One row per value of ``group_column`` (e.g. modality, manufacturer): the group value + BinaryMetrics.

    Each group is :func:`binary_metrics` of its rows at the same ``threshold`` and ``seed``. Rows whose group
    value is missing form their own group (NaN), so no case is silently dropped. Groups are sorted by value.
    """
    missing = [c for c in (group_column, label_column, score_column) if c not in frame.columns]
    if missing:
        raise KeyError(f"metrics_by_group: column(s) {missing} not in frame (has {list(frame.columns)})")
    if group_column in METRIC_FIELDS:
        raise ValueError(f"group column {group_column!r} clashes with a metric name; rename it")
    rows = []
    for value, part in frame.groupby(group_column, dropna=False, sort=True):
        metrics = binary_metrics(part[label_column].to_numpy(), part[score_column].to_numpy(), threshold,
                                 n_boot=n_boot, seed=seed)
        rows.append({group_column: value, **metrics.as_dict()})
    return pd.DataFrame(rows, columns=[group_column, *METRIC_FIELDS])
