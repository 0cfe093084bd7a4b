"""The model card: the registered version's description in the MLflow UI and ``model_card.md`` beside the model.

Markdown written for the UI's renderer: one line per paragraph (a hard wrap inside a paragraph renders as a
broken line there), every figure in a table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pipelines.config import PipelineConfig
from pipelines.reporting.review import auroc_ci, duration, number, train_minutes


def model_card(config: PipelineConfig, report: Mapping[str, Any], train_summary: Mapping[str, Any], version: str,
               input_size: Sequence[int], plan_rows: Sequence[tuple[str, str, str, str]] | None = None) -> str:
    """The card of version ``version``: use, model, data, test metrics (overall and per group), threshold, limits."""
    m = report["test"]
    size = "x".join(str(s) for s in input_size)
    sections = [
        f"# Model card: {config.registry.name} v{version}",
        "## Intended use",
        f"Research decision support: flags {config.data.kind} studies as **abnormal** or **normal**. Not a medical "
        f"device; a clinician reads every study. Trained and evaluated on `{config.name}` data only.",
        "## Model",
        _model_table(config, size, train_summary),
        "## Data",
        f"Patient-grouped split (no patient in two splits); see the data card logged with the ingest run. Test "
        f"split: {m['n']} studies, {m['n_pos']} abnormal (logged as the evaluation dataset `test split`).",
        "## Metrics (test split)",
        _metrics_table(m),
        *_group_tables(report),
        "## Operating threshold",
        f"{report['threshold']:.4f}, chosen on the validation split by {report['threshold_method']}; series "
        f"scores are combined per study by {report['aggregate']}.",
        *_plan_section(plan_rows),
        "## Limits",
        "Metrics come from one site's split and a small test set (see the CI). Performance on other scanners, "
        "populations or protocols is unknown until measured. Scores are not calibrated probabilities unless the "
        "reliability diagram of the evaluate run says so.",
    ]
    return "\n\n".join(sections) + "\n"


def _model_table(config: PipelineConfig, size: str, summary: Mapping[str, Any]) -> str:
    rows = [("architecture", architecture(config)), ("input", f"{size} px, one logit (probability of abnormal)")]
    if summary:
        rule = "the last (train.select: last)" if summary.get("select") == "last" else "best validation AUROC"
        rows += [("kept epoch", f"{summary.get('best_epoch')} of {summary.get('epochs_run')}: {rule}"),
                 ("validation AUROC at the kept epoch", number(summary.get("best_val_auroc"))),
                 ("training time", duration(train_minutes(summary.get("history", []))))]
    return _table(("property", "value"), rows)


def _metrics_table(m: Mapping[str, Any]) -> str:
    return _table(("metric", "value"), [
        ("AUROC (95% bootstrap CI)", auroc_ci(m)),
        ("AUPRC", number(m["auprc"])), ("sensitivity", number(m["sensitivity"])),
        ("specificity", number(m["specificity"])), ("PPV / NPV", f"{number(m['ppv'])} / {number(m['npv'])}"),
        ("expected calibration error", number(m["ece"]))])


def _group_tables(report: Mapping[str, Any]) -> list[str]:
    out = []
    for column in ("modality", "manufacturer"):
        rows = report.get(f"by_{column}") or []
        if len(rows) > 1:
            out += [f"### By {column}", _table((column, "studies (abnormal)", "AUROC"), [
                (str(r.get(column)), f"{r.get('n')} ({r.get('n_pos')})", number(r.get("auroc"))) for r in rows])]
    return out


def _plan_section(rows: Sequence[tuple[str, str, str, str]] | None) -> list[str]:
    """The "Training plan" section: planned keys and the values trained with (none without a plan)."""
    if not rows:
        return []
    return ["## Training plan",
            "Keys the config left unset were planned from the dataset and machine fingerprint (`train.plan: auto`; "
            "mostly starting heuristics, see docs/benchmarks.md). Full record with reasons: `plan.json` of the "
            "train run.",
            _table(("key", "value", "source"), [(f"`{key}`", value, source) for key, value, source, _ in rows])]


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def architecture(config: PipelineConfig) -> str:
    arch = config.model.arch
    if arch in ("vit", "hybrid"):
        distilled = ", distilled from a teacher" if config.train.distill else ""
        init = ", initialised from a pretrained encoder" if config.train.init else ""
        return f"medvit Vision Transformer ({arch}, preset `{config.model.preset}`{distilled}{init})"
    return f"MONAI {arch} (CNN baseline, randomly initialised)"
