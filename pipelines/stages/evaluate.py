"""Evaluate: study-level metrics on the test split at the threshold chosen on validation, with plots.

Reads ``OUTPUT/manifest.parquet`` and ``OUTPUT/train/best.safetensors``. Writes ``OUTPUT/evaluate/``:
``metrics.json`` (threshold, test metrics with the AUROC bootstrap CI, per-group tables), ``by_modality.csv``,
``by_manufacturer.csv``, ``predictions.csv`` (study, split, label, score, prediction; stays local) and
``plots/*.png``. MLflow gets the metrics (per modality and manufacturer too: ``auroc.manufacturer.<name>``),
plots and tables, and the test split as an evaluation dataset (schema and digest), never the study list.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from pipelines import runtime
from pipelines.config import ConfigError, PipelineConfig
from pipelines.data.dataset import manifest_items
from pipelines.data.manifest import manifest_digest, read_manifest
from pipelines.layout import evaluate_dir, train_dir
from pipelines.reporting.metrics import binary_metrics, choose_threshold, metrics_by_group
from pipelines.reporting.plots import (
    confusion_figure,
    pr_figure,
    reliability_figure,
    roc_figure,
    save_figure,
    score_histogram_figure,
)
from pipelines.reporting.review import evaluate_note, group_metrics
from pipelines.scoring.predictor import Predictor, prediction_of
from pipelines.tracking import stage_run
from pipelines.training.modeling import load_model
from pipelines.training.planning import planned_config

LOGGED = ("auroc", "auroc_ci_low", "auroc_ci_high", "auprc", "sensitivity", "specificity", "ppv", "npv",
          "accuracy", "ece")


@dataclass
class EvaluateResult:
    metrics: dict[str, Any]
    report: dict[str, Any]
    threshold: float
    threshold_method: str
    out_dir: Path
    run_id: str | None


def study_scores(predictor: Predictor, rows: pd.DataFrame, config: PipelineConfig) -> pd.DataFrame:
    """Study-level scores for manifest rows, with modality and manufacturer of the study's first series."""
    if rows.empty:
        return pd.DataFrame(columns=["study_uid", "score", "label", "n_series", "modality", "manufacturer"])
    items = manifest_items(rows, config.data.dicom_root)
    scored = predictor.score(items)
    if len(scored.errors):
        first = scored.errors.iloc[0]
        raise ConfigError(f"{len(scored.errors)} series of the manifest cannot be read now (first: "
                          f"{first['reason_code']}: {first['message']}): the files changed since ingest; re-run "
                          "`medvit ingest`")
    studies = predictor.studies(scored.series).drop(columns="prediction")
    info = rows.drop_duplicates("study_uid").set_index("study_uid")[["modality", "manufacturer"]]
    return studies.join(info, on="study_uid")


def _plots(test: pd.DataFrame, metrics: dict[str, Any], threshold: float, plot_dir: Path) -> list[Path]:
    y, s = test["label"].astype(int).to_numpy(), test["score"].to_numpy()
    figures = {
        "roc.png": roc_figure(y, s, threshold),
        "pr.png": pr_figure(y, s, threshold),
        "reliability.png": reliability_figure(y, s),
        "confusion.png": confusion_figure(metrics["tn"], metrics["fp"], metrics["fn"], metrics["tp"]),
        "score_histogram.png": score_histogram_figure(y, s, threshold),
    }
    return [save_figure(fig, plot_dir / name) for name, fig in figures.items()]


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def run_evaluate(config: PipelineConfig, *, track: bool = True) -> EvaluateResult:
    """Entry point of the evaluate stage."""
    config = planned_config(config)  # the preprocessing the model was trained with (train.plan: auto)
    best = train_dir(config) / "best.safetensors"
    if not best.is_file():
        raise ConfigError(f"no trained model at '{best}': run `medvit train --config ...` first")
    manifest = read_manifest(config.output.dir / "manifest.parquet")
    labelled = manifest[manifest["label"].notna()]
    device = runtime.resolve_device(config.train.device, runtime.Dist())
    model, _, _ = load_model(best, device)
    predictor = Predictor(model, config, aggregate=config.evaluate.aggregate, device=device,
                          batch_size=config.train.batch_size, workers=config.train.num_workers,
                          cache_dir=config.cache_dir)
    val = study_scores(predictor, labelled[labelled["split"] == "val"], config)
    test_rows = labelled[labelled["split"] == "test"]
    test = study_scores(predictor, test_rows, config)
    if test.empty:
        raise ConfigError("the manifest has no labelled test studies: set split.test > 0 and re-run ingest")
    ev = config.evaluate
    if val["label"].nunique() == 2:
        threshold = choose_threshold(val["label"].astype(int), val["score"], ev.threshold, ev.target_sensitivity)
        method = ev.threshold if ev.threshold == "youden" else f"sensitivity>={ev.target_sensitivity}"
    else:
        threshold, method = 0.5, "fixed 0.5 (validation split lacks one class)"
    metrics = binary_metrics(test["label"].astype(int), test["score"], threshold, n_boot=ev.bootstrap,
                             seed=config.split.seed).as_dict()
    test = test.assign(split="test")
    groups = {col: metrics_by_group(test.assign(label=test["label"].astype(int)), col, threshold,
                                    n_boot=min(ev.bootstrap, 200), seed=config.split.seed)
              for col in ("modality", "manufacturer")}

    out = evaluate_dir(config)
    out.mkdir(parents=True, exist_ok=True)
    plots = _plots(test, metrics, threshold, out / "plots")
    for col, table in groups.items():
        table.to_csv(out / f"by_{col}.csv", index=False)
    predictions = pd.concat([val.assign(split="val"), test])
    predictions = predictions.assign(prediction=prediction_of(predictions["score"], threshold).to_numpy())
    predictions[["study_uid", "split", "label", "score", "prediction", "n_series"]].to_csv(
        out / "predictions.csv", index=False)
    report = {"threshold": threshold, "threshold_method": method, "aggregate": ev.aggregate,
              "test": metrics, "n_val_studies": len(val),
              "by_modality": groups["modality"].to_dict("records"),
              "by_manufacturer": groups["manufacturer"].to_dict("records")}
    report = _json_safe(report)
    (out / "metrics.json").write_text(json.dumps(report, indent=2))

    with stage_run(config, "evaluate", enabled=track) as run:
        run.log_manifest(test_rows, manifest_digest(test_rows), context="evaluation", name="test split")
        run.log_metrics({k: metrics[k] for k in LOGGED} | {"threshold": threshold} | group_metrics(report))
        run.set_tags({"medvit.threshold_method": method})
        run.set_note(evaluate_note(report))
        for path in plots:
            run.log_artifact(path, "plots")
        for name in ("metrics.json", "by_modality.csv", "by_manufacturer.csv"):
            run.log_artifact(out / name)
    return EvaluateResult(metrics, report, threshold, method, out, run.run_id)
