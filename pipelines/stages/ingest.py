"""Ingest: scan DICOM folders, join labels, pseudonymize, split by patient, write manifest + errors + data card."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipelines.config import PipelineConfig, dump_config
from pipelines.data.datacard import render_data_card
from pipelines.data.labels import read_labels
from pipelines.data.manifest import build_manifest, manifest_digest, write_errors, write_manifest
from pipelines.data.privacy import Pseudonymizer, load_or_create_key
from pipelines.data.scan_settings import scan_limits, selection_rules
from pipelines.data.splits import assign_splits
from pipelines.dicom.reasons import BAD_FILE_NAME, Rejected
from pipelines.dicom.scan import Series, scan
from pipelines.files import writable_folder
from pipelines.reporting.review import ingest_note
from pipelines.tracking import stage_run


@dataclass(frozen=True)
class IngestResult:
    manifest_path: Path
    errors_path: Path
    data_card_path: Path
    config_path: Path
    manifest: pd.DataFrame
    errors: pd.DataFrame
    n_files: int
    digest: str


def _utf8_named(series: list[Series]) -> tuple[list[Series], list[Rejected]]:
    """Series whose file names are valid UTF-8 (the Parquet manifest holds only such text), and a row for
    each other one."""
    kept, rejected = [], []
    for s in series:
        try:
            for name in s.files:
                name.encode("utf-8")
            kept.append(s)
        except UnicodeEncodeError:
            rejected.append(Rejected(name, BAD_FILE_NAME, "file name is not valid UTF-8, which the manifest "
                                     "cannot hold: rename the file (`medvit score` reads it as it is)"))
    return kept, rejected


def run_ingest(config: PipelineConfig, *, progress: bool = False, track: bool = True) -> IngestResult:
    """Entry point of the ingest stage."""
    out = config.output.dir
    writable_folder(out, "output.dir")
    scanned = scan([config.data.dicom_root], selection_rules(config), workers=config.data.workers, progress=progress,
                   limits=scan_limits(config))
    labels, label_errors = ({}, [])
    if config.data.labels is not None:
        labels, label_errors = read_labels(config.data.labels, config.data.study_column, config.data.label_column)
    key_file = config.privacy.key_file or out / ".pseudonym_key"
    pseudonym = Pseudonymizer(load_or_create_key(config.privacy.key_env, key_file))
    usable, misnamed = _utf8_named(scanned.series)  # of data.kind only: the scan's rules
    manifest = build_manifest(usable, labels, pseudonym, config.data.dicom_root)
    manifest["split"] = assign_splits(manifest, config.split.val, config.split.test, config.split.seed)
    rejected = [*scanned.rejected, *misnamed, *label_errors]

    paths = {name: out / name for name in ("manifest.parquet", "errors.csv", "data_card.md", "config.yaml")}
    write_manifest(manifest, paths["manifest.parquet"])
    errors = write_errors(rejected, paths["errors.csv"])
    digest = manifest_digest(manifest)
    label_source = (f"labels CSV `{config.data.labels.name}` ({len(labels)} studies)" if config.data.labels
                    else "none (unlabelled; usable for self-supervised pretraining only)")
    key_source = (f"environment variable {config.privacy.key_env}" if os.environ.get(config.privacy.key_env)
                  else f"key file `{key_file.name}` beside the outputs")
    card = render_data_card(manifest, errors, name=config.name, kind=config.data.kind, digest=digest,
                            n_files=scanned.n_files, label_source=label_source, key_source=key_source)
    paths["data_card.md"].write_text(card)
    paths["config.yaml"].write_text(dump_config(config))
    _log(config, manifest, errors, digest, scanned.n_files, paths["data_card.md"], track)
    return IngestResult(paths["manifest.parquet"], paths["errors.csv"], paths["data_card.md"], paths["config.yaml"],
                        manifest, errors, scanned.n_files, digest)


def _log(config: PipelineConfig, manifest: pd.DataFrame, errors: pd.DataFrame, digest: str, n_files: int,
         card: Path, track: bool) -> None:
    """MLflow: counts, the manifest as a dataset, the data card and rejects by reason (no paths)."""
    with stage_run(config, "ingest", enabled=track) as run:
        counts = {"files": n_files, "series": len(manifest), "studies": manifest["study_uid"].nunique(),
                  "patients": manifest["patient_key"].nunique(), "rejected": len(errors)}
        counts |= {f"series_{name}": int(n) for name, n in manifest["split"].value_counts().items()}
        run.log_metrics(counts)
        run.log_manifest(manifest, digest, context="ingest")
        run.log_artifact(card)
        by_reason = errors.groupby("reason_code").size().to_dict() if len(errors) else {}
        run.log_dict({"rejected_by_reason": {k: int(v) for k, v in by_reason.items()}}, "errors_summary.json")
        run.set_tags({"medvit.manifest_digest": digest})
        run.set_note(ingest_note(config.data.kind, n_files, counts, len(errors)))
