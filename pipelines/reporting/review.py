"""What a reviewer reads in the MLflow UI: the headline metrics a runs table compares, and one-line run notes.

The headline is the same set everywhere it is logged (the evaluate run, the parent of ``medvit run``, the logged
model and, as tags, the registered version), so one column of the runs table compares them all.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

TEST_HEADLINE = ("auroc", "auroc_ci_low", "auroc_ci_high", "auprc", "sensitivity", "specificity")
GROUP_COLUMNS = ("modality", "manufacturer")


def metric_key(*parts: object) -> str:
    """An MLflow metric name from free text (a manufacturer): runs of anything but ``A-Za-z0-9_-`` become ``_``."""
    return ".".join(re.sub(r"[^A-Za-z0-9_\-]+", "_", str(part).strip()).strip("_") or "unknown" for part in parts)


def _finite(values: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items() if isinstance(v, int | float) and math.isfinite(v)}


def group_metrics(report: Mapping[str, Any]) -> dict[str, float]:
    """``auroc.modality.CR``, ``auroc.manufacturer.GE_MEDICAL_SYSTEMS`` ... from evaluate's ``metrics.json``."""
    out: dict[str, Any] = {}
    for column in GROUP_COLUMNS:
        for row in report.get(f"by_{column}", []):
            out[metric_key("auroc", column, row.get(column))] = row.get("auroc")
            out[metric_key("n", column, row.get(column))] = row.get("n")
    return _finite(out)


def train_minutes(history: Sequence[Mapping[str, Any]]) -> float:
    """Wall time of the epochs trained (resumed runs included: the history is part of the training state)."""
    return sum(float(h.get("epoch_seconds", 0.0)) for h in history) / 60


def duration(minutes: float) -> str:
    """``42 s`` under a minute, else ``7.2 min``; ``-`` when unknown."""
    if minutes != minutes:
        return "-"
    return f"{minutes * 60:.0f} s" if minutes < 1 else f"{minutes:.1f} min"


def headline_metrics(report: Mapping[str, Any], train_summary: Mapping[str, Any] | None = None) -> dict[str, float]:
    """Test metrics at the threshold, the threshold, group AUROCs and (with a train summary) the training ones."""
    test = report["test"]
    out: dict[str, Any] = {k: test.get(k) for k in TEST_HEADLINE}
    out |= {"threshold": report["threshold"], "n_test_studies": test.get("n")}
    if train_summary:
        out |= {"best_val_auroc": train_summary.get("best_val_auroc"), "best_epoch": train_summary.get("best_epoch"),
                "epochs_run": train_summary.get("epochs_run"),
                "train_minutes": train_minutes(train_summary.get("history", []))}
    return _finite(out) | group_metrics(report)


def number(value: Any, digits: int = 3, missing: str = "n/a") -> str:
    """A metric as text; ``missing`` for None or NaN (notes, the model card and `medvit compare` alike)."""
    return missing if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def auroc_ci(metrics: Mapping[str, Any], missing: str = "n/a") -> str:
    """``0.979 (0.933-1.000)``: AUROC and its bootstrap CI from a mapping with ``auroc``, ``auroc_ci_low/high``."""
    low, high = (number(metrics.get(k), missing=missing) for k in ("auroc_ci_low", "auroc_ci_high"))
    return f"{number(metrics.get('auroc'), missing=missing)} ({low}-{high})"


def ingest_note(kind: str, n_files: int, manifest_counts: Mapping[str, int], n_rejected: int) -> str:
    splits = "/".join(str(manifest_counts.get(f"series_{s}", 0)) for s in ("train", "val", "test"))
    return (f"ingest: {manifest_counts['series']} {kind} series of {manifest_counts['studies']} studies "
            f"({manifest_counts['patients']} patients) from {n_files} files; train/val/test series {splits}; "
            f"{n_rejected} items rejected (errors_summary.json)")


def train_note(model: str, input_size: Sequence[int], n_train_series: int, summary: Mapping[str, Any]) -> str:
    size = "x".join(str(s) for s in input_size)
    stop = ", stopped early" if summary.get("stopped_early") else ""
    return (f"train: {model} at {size} px, {n_train_series} training series, best val AUROC "
            f"{number(summary.get('best_val_auroc'))} at epoch {summary.get('best_epoch')} of "
            f"{summary.get('epochs_run')}{stop}, {duration(train_minutes(summary.get('history', [])))}")


def evaluate_note(report: Mapping[str, Any]) -> str:
    m = report["test"]
    return (f"evaluate: test AUROC {number(m.get('auroc'))} (95% CI {number(m.get('auroc_ci_low'))}-"
            f"{number(m.get('auroc_ci_high'))}) on {m.get('n')} studies ({m.get('n_pos')} abnormal); sensitivity "
            f"{number(m.get('sensitivity'))}, specificity {number(m.get('specificity'))} at threshold "
            f"{number(report.get('threshold'), 4)} ({report.get('threshold_method')})")


def register_note(name: str, version: str, alias: str, report: Mapping[str, Any]) -> str:
    return (f"register: {name} version {version} (alias {alias}), test AUROC {number(report['test'].get('auroc'))}, "
            f"threshold {number(report.get('threshold'), 4)}; the model card is the version's description")


def pipeline_note(model: str, config_name: str, report: Mapping[str, Any], summary: Mapping[str, Any],
                  registered: str) -> str:
    m = report["test"]
    return (f"{model} on {config_name}: test AUROC {auroc_ci(m)}, sensitivity {number(m.get('sensitivity'))} / specificity "
            f"{number(m.get('specificity'))}; best val AUROC {number(summary.get('best_val_auroc'))} at epoch "
            f"{summary.get('best_epoch')} of {summary.get('epochs_run')}, "
            f"{duration(train_minutes(summary.get('history', [])))} training; registered {registered}")


def pretrain_note(kind: str, model: str, input_size: Sequence[int], n_series: int, mask_ratio: float,
                  epochs: int, final_loss: float) -> str:
    size = "x".join(str(s) for s in input_size)
    return (f"pretrain: MAE of a {model} encoder at {size} px on {n_series} unlabelled {kind} series, mask ratio "
            f"{mask_ratio:g}, {epochs} epochs, final reconstruction loss {number(final_loss, 4)}")


def plan_note(rows: Sequence[tuple[str, str, str, str]]) -> str:
    planned = sum(source == "planned" for _, _, source, _ in rows)
    return (f"plan: {planned} keys planned from the dataset and machine, {len(rows) - planned} kept from the config "
            "(plan.json has the reasons)")


def score_note(model: str, summary: Mapping[str, Any]) -> str:
    c = summary["counts"]
    return (f"score: {c['studies_scored']} studies ({c['series_scored']} series) with {model}, "
            f"{c['studies_skipped_already_scored']} already scored, {c['rejected_items']} items rejected, "
            f"{c['failures']} failures; {summary['studies_per_sec']} studies/s ({summary['engine']} engine)")
