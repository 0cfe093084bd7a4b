"""The plan in the pipeline: the effective config of a run (``train.plan: auto``) and its record, plan.json.

Train, evaluate and register resolve the same plan from the same manifest, so the model is evaluated and
packaged with the preprocessing it was trained with. ``medvit plan`` writes the record without training.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from pipelines.config import PipelineConfig, explicit_keys, get_key, with_values
from pipelines.data.manifest import load_manifest, manifest_path
from pipelines.files import atomic_write
from pipelines.training.plan import (
    apply_plan,
    fingerprint,
    machine_fingerprint,
    make_plan,
    plan_inputs,
    split_plan,
)

PLAN_FILE = "plan.json"


@dataclass
class Resolved:
    config: PipelineConfig          # the effective config (the plan applied when train.plan is auto)
    record: dict[str, Any] | None   # plan.json's content; None with train.plan: off


def plan_path(config: PipelineConfig) -> Path:
    return config.output.dir / PLAN_FILE


def plan_record(config: PipelineConfig, manifest: pd.DataFrame) -> tuple[PipelineConfig, dict[str, Any]]:
    """(the config with the plan applied, the record): fingerprint, plan, reasons, what the user overrode."""
    kind = config.data.kind
    fp = fingerprint(manifest, kind) | machine_fingerprint(config.train.device)
    plan = make_plan(fp, kind, given=plan_inputs(config))
    applied, overridden, kept = split_plan(plan.values, explicit_keys(config))
    effective = apply_plan(config, plan)
    record = {
        "train.plan": config.train.plan, "kind": kind, "fingerprint": fp, "plan": plan.values,
        "reasons": plan.reasons, "notes": plan.notes, "applied": sorted(applied), "overridden": overridden,
        "kept": kept, "effective": {key: _json(get_key(effective, key)) for key in plan.values},
    }
    return effective, json.loads(json.dumps(record))  # tuples as lists: the record reads back the same


def _json(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def resolve(config: PipelineConfig, manifest: pd.DataFrame | None = None) -> Resolved:
    """The config a training uses: with ``train.plan: auto``, the plan of the manifest applied."""
    if config.train.plan == "off":
        return Resolved(config, None)
    return Resolved(*plan_record(config, load_manifest(config) if manifest is None else manifest))


def planned_config(config: PipelineConfig) -> PipelineConfig:
    """The effective config for stages after train (evaluate, register): the plan train recorded in plan.json
    (the plan also reads the machine, so evaluating elsewhere must not re-plan), else the manifest's plan;
    unchanged without either."""
    if config.train.plan == "off":
        return config
    record = read_plan(config)
    if record is not None:
        apply, _, _ = split_plan(record["plan"], explicit_keys(config))
        return with_values(config, apply)
    if not manifest_path(config).is_file():
        return config
    return resolve(config).config


def write_plan(record: dict[str, Any], path: Path) -> None:
    """plan.json, written atomically."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=2) + "\n"))


def read_plan(config: PipelineConfig) -> dict[str, Any] | None:
    path = plan_path(config)
    return json.loads(path.read_text()) if path.is_file() else None


def plan_rows(record: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(key, effective value, source, why) per planned key; source: planned, or config where its value stands
    (the key itself is set, or a related one is)."""
    rows = []
    for key, value in record["effective"].items():
        if key in record["overridden"]:
            source, why = "config", f"set in the config (plan: {record['plan'][key]})"
        elif key in record["kept"]:
            source, why = "config", f"{record['kept'][key]}, so kept (plan: {record['plan'][key]})"
        else:
            source, why = "planned", record["reasons"][key]
        rows.append((key, str(value), source, why))
    return rows


def plan_params(record: dict[str, Any]) -> dict[str, str]:
    """MLflow params ``plan.<key>``: the planned values, and which keys the user's values replaced."""
    params = {f"plan.{key}": str(value) for key, value in record["plan"].items()}
    params["plan.overridden"] = ",".join(record["overridden"] + sorted(record["kept"])) or "none"
    return params
