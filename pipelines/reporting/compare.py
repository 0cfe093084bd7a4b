"""`medvit compare`: the headline metrics, threshold, data and model of runs or registered versions side by side.

A reference is a run id (``runs:/ID`` too: a ``medvit run`` parent or an evaluate run) or a registered version
(``models:/NAME/VERSION``, ``models:/NAME@ALIAS``). Runs are read from their metrics and tags, versions from
the tags ``medvit register`` sets (``metric.auroc`` ...), so both compare in one table.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from matplotlib.figure import Figure

from pipelines.reporting.console import summary_table
from pipelines.reporting.review import TEST_HEADLINE, auroc_ci, duration, number

BAR_METRICS = ("auroc", "auprc", "sensitivity", "specificity")
LABELS = {"auprc": "AUPRC"}


class UnknownReference(LookupError):
    """A reference that names no run or version of the store (the message says which and how to fix it)."""


@dataclass
class Reviewed:
    """One compared item: a label for the columns and what the table shows."""

    ref: str
    label: str
    tags: dict[str, str]
    metrics: dict[str, float] = field(default_factory=dict)

    def metric(self, name: str) -> float:
        return self.metrics.get(name, math.nan)


def resolve(ref: str, client: Any) -> Reviewed:
    """The run or model version ``ref`` names, read through ``client`` (an ``MlflowClient``)."""
    from mlflow.exceptions import MlflowException

    try:
        if ref.startswith("models:/"):
            return _version(ref, client)
        return _run(ref.removeprefix("runs:/").split("/")[0], ref, client)
    except MlflowException as exc:
        reason = str(exc).splitlines()[0][:160]
        raise UnknownReference(f"{ref}: not found in the store ({reason}); give a run id from the MLflow UI or "
                              "models:/NAME/VERSION or models:/NAME@ALIAS, and --tracking-uri if the store is "
                              "not the default") from None


def _run(run_id: str, ref: str, client: Any) -> Reviewed:
    run = client.get_run(run_id)
    tags = dict(run.data.tags)
    return Reviewed(ref, run.info.run_name or run_id[:8], tags, dict(run.data.metrics))


def _version(ref: str, client: Any) -> Reviewed:
    spec = ref.removeprefix("models:/")
    if "@" in spec:
        name, alias = spec.split("@", 1)
        version = client.get_model_version_by_alias(name, alias)
    elif "/" in spec:
        name, number = spec.rsplit("/", 1)
        version = client.get_model_version(name, number)
    else:
        raise UnknownReference(f"{ref}: a model reference needs a version or an alias: models:/{spec}/1 or "
                              f"models:/{spec}@candidate")
    tags = dict(version.tags)
    metrics = {k.removeprefix("metric."): float(v) for k, v in tags.items() if k.startswith("metric.")}
    return Reviewed(ref, f"{version.name} v{version.version}", tags, metrics)


def _fmt(value: float, digits: int = 3) -> str:
    return number(value, digits, missing="-")


def table_rows(items: Sequence[Reviewed]) -> list[list[str]]:
    """Rows of the comparison: one column per item."""
    def row(label: str, values: Sequence[str]) -> list[str]:
        return [label, *values]

    commits = [it.tags.get("mlflow.source.git.commit", "")[:10] or "-" for it in items]
    rows = [row("", [it.label for it in items]),
            row("stage", [it.tags.get("medvit.stage", "model version") for it in items]),
            row("config / data", [f"{it.tags.get('medvit.config', '-')} ({it.tags.get('data.kind', '-')})"
                                  for it in items]),
            row("model", [it.tags.get("model.label", it.tags.get("model.arch", "-")) for it in items]),
            row("test studies", [_fmt(it.metric("n_test_studies"), 0) for it in items]),
            row("test AUROC (95% CI)", [auroc_ci(it.metrics, missing="-") for it in items])]
    rows += [row(LABELS.get(name, name), [_fmt(it.metric(name)) for it in items]) for name in TEST_HEADLINE[3:]]
    rows += [row("threshold", [_fmt(it.metric("threshold"), 4) for it in items]),
             row("best val AUROC", [_fmt(it.metric("best_val_auroc")) for it in items]),
             row("training", [duration(it.metric("train_minutes")) for it in items]),
             row("git commit", commits)]
    return rows


def compare_text(items: Sequence[Reviewed]) -> str:
    """The comparison as an aligned terminal table."""
    rows = table_rows(items)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return summary_table(f"compare ({len(items)} items)", [[line] for line in lines])


def compare_figure(items: Sequence[Reviewed]) -> Figure:
    """Grouped bars of test AUROC (with its CI), AUPRC, sensitivity and specificity per item."""
    import numpy as np

    fig = Figure(figsize=(max(6.0, 1.6 * len(items) + 3), 4.5), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / max(len(items), 1)
    x = np.arange(len(BAR_METRICS))
    for i, item in enumerate(items):
        values = [item.metric(m) for m in BAR_METRICS]
        offset = (i - (len(items) - 1) / 2) * width
        bars = ax.bar(x + offset, np.nan_to_num(values), width * 0.95, label=item.label)
        ax.bar_label(bars, labels=[_fmt(v, 2) for v in values], fontsize=7, padding=2)
        low, high = item.metric("auroc_ci_low"), item.metric("auroc_ci_high")
        if not (math.isnan(low) or math.isnan(high) or math.isnan(values[0])):
            ax.errorbar([x[0] + offset], [values[0]], yerr=[[values[0] - low], [high - values[0]]], fmt="none",
                        ecolor="0.2", capsize=3)
    ax.set_xticks(x, ["test AUROC (95% CI)", "AUPRC", "sensitivity", "specificity"])
    ax.set_ylim(0, 1.1)
    ax.axhline(0.5, color="0.6", linestyle="--", lw=1)
    ax.set_ylabel("test split")
    ax.set_title("medvit compare: headline metrics at each model's threshold")
    fig.legend(loc="outside lower center", ncols=min(len(items), 3), fontsize=8)
    return fig
