"""Plan: fingerprint the ingested dataset and plan the training recipe, without training.

Reads ``OUTPUT/manifest.parquet``; writes ``OUTPUT/plan.json`` (fingerprint, planned values with reasons,
the keys the config overrides) and records it in an MLflow run tagged ``medvit.stage=plan``. ``medvit train``
resolves the same plan itself (``train.plan: auto``); this stage shows it beforehand.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.config import PipelineConfig
from pipelines.data.manifest import load_manifest
from pipelines.reporting.review import plan_note
from pipelines.tracking import stage_run
from pipelines.training.planning import plan_params, plan_path, plan_record, plan_rows, write_plan


@dataclass
class PlanResult:
    record: dict[str, Any]
    path: Path
    run_id: str | None


def run_plan(config: PipelineConfig, *, track: bool = True) -> PlanResult:
    """Entry point of the plan stage."""
    manifest = load_manifest(config)
    effective, record = plan_record(config, manifest)
    path = plan_path(config)
    write_plan(record, path)
    with stage_run(effective if config.train.plan == "auto" else config, "plan", enabled=track) as run:
        run.log_params(plan_params(record))
        run.log_artifact(path)
        run.set_tags({"medvit.plan": config.train.plan})
        run.set_note(plan_note(plan_rows(record)))
    return PlanResult(record, path, run.run_id)
