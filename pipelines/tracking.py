"""MLflow record of the stages: one run per stage tagged ``medvit.stage``, nested under a ``medvit run`` parent.

Store: ``tracking.uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` in the working directory.
Params are the flattened config with every path replaced by ``<path>`` and credentials removed from the
tracking URI, so no site path (or a patient name hidden in a folder name) reaches the tracking server.
Only rank 0 of a distributed job records anything.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pandas as pd
import yaml

from pipelines.config import PipelineConfig, flatten_tree

DEFAULT_URI = "sqlite:///mlflow.db"
STAGE_TAG = "medvit.stage"
PATH_KEYS = ("data.dicom_root", "data.labels", "output.dir", "preprocess.cache_dir", "privacy.key_file",
             "pretrain.dicom_root")


def tracking_uri(config: PipelineConfig | None = None) -> str:
    """The store to use; a relative sqlite path is made absolute, so it means the same in any folder."""
    uri = (config.tracking.uri if config is not None else None) or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        uri = prefix + str(Path(uri[len(prefix):]).resolve())
    return uri


def _quiet_mlflow() -> None:
    for name in ("mlflow", "alembic", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)


REDACTED_PATH = "<path>"


def safe_uri(uri: str | None) -> str | None:
    """A tracking URI without credentials or local file paths: http(s) keeps scheme, host and port."""
    if not uri:
        return uri
    parts = urlsplit(uri)
    if parts.scheme in ("http", "https"):
        host = parts.hostname or ""
        return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")
    if parts.scheme:
        return f"{parts.scheme}:{REDACTED_PATH}"
    return REDACTED_PATH


def _redacted_tree(config: PipelineConfig) -> dict[str, Any]:
    tree = config.model_dump(mode="json")
    for key in PATH_KEYS:
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and node.get(leaf):
            node[leaf] = REDACTED_PATH
    tree["tracking"]["uri"] = safe_uri(tree["tracking"].get("uri"))
    return tree


def safe_params(config: PipelineConfig) -> dict[str, str]:
    """Flattened config with paths redacted and the tracking URI stripped of credentials."""
    return flatten_tree(_redacted_tree(config))


def safe_config_yaml(config: PipelineConfig) -> str:
    """The resolved config as YAML, redacted like ``safe_params``."""
    return yaml.safe_dump(_redacted_tree(config), sort_keys=False)


def is_rank_zero() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


class StageRun:
    """Logging handle of one stage's MLflow run; every method is a no-op when tracking is disabled."""

    def __init__(self, run: Any | None):
        self.run = run

    @property
    def run_id(self) -> str | None:
        return self.run.info.run_id if self.run else None

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if self.run:
            import mlflow

            clean = {k: float(v) for k, v in metrics.items() if v is not None and v == v}  # drop NaN
            if clean:
                mlflow.log_metrics(clean, step=step)

    def log_params(self, params: Mapping[str, str]) -> None:
        if self.run:
            import mlflow

            mlflow.log_params(dict(params))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if self.run:
            import mlflow

            mlflow.log_artifact(str(path), artifact_path)

    def log_text(self, text: str, name: str) -> None:
        if self.run:
            import mlflow

            mlflow.log_text(text, name)

    def log_dict(self, data: dict, name: str) -> None:
        if self.run:
            import mlflow

            mlflow.log_dict(data, name)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        if self.run:
            import mlflow

            mlflow.set_tags(dict(tags))

    def log_manifest(self, manifest: pd.DataFrame, digest: str, context: str) -> None:
        """The manifest as an MLflow dataset input (ids, labels and splits only; no file paths)."""
        if self.run:
            import mlflow

            columns = [c for c in ("patient_key", "study_uid", "series_uid", "modality", "manufacturer",
                                   "label", "split") if c in manifest.columns]
            frame = manifest[columns].astype({"label": "float64"}) if "label" in columns else manifest[columns]
            with warnings.catch_warnings():  # "source can be interpreted in multiple ways": it is a local file
                warnings.simplefilter("ignore", UserWarning)
                dataset = mlflow.data.from_pandas(frame, source="manifest.parquet", name="manifest", digest=digest,
                                                  targets="label" if "label" in columns else None)
            mlflow.log_input(dataset, context=context)


@contextmanager
def stage_run(config: PipelineConfig, stage: str, enabled: bool = True, run_id: str | None = None) -> Iterator[StageRun]:
    """Start the stage's run (nested when a ``medvit run`` parent is active) and log params + config.

    With ``run_id`` (a resumed training), that run is continued instead of a new one started.
    """
    if not enabled or not is_rank_zero():
        yield StageRun(None)
        return
    import mlflow

    _quiet_mlflow()
    mlflow.set_tracking_uri(tracking_uri(config))
    mlflow.set_experiment(config.tracking.experiment)
    nested = mlflow.active_run() is not None
    if run_id is not None:
        with mlflow.start_run(run_id=run_id, nested=nested) as run:
            yield StageRun(run)
        return
    with mlflow.start_run(run_name=f"{config.name}-{stage}", nested=nested,
                          tags={STAGE_TAG: stage, "medvit.config": config.name},
                          log_system_metrics=config.tracking.system_metrics and stage in ("train", "pretrain")) as run:
        mlflow.log_params(safe_params(config))
        mlflow.log_text(safe_config_yaml(config), "config.yaml")
        yield StageRun(run)


@contextmanager
def pipeline_run(config: PipelineConfig) -> Iterator[StageRun]:
    """The parent run of ``medvit run``: its stages become child runs."""
    import mlflow

    _quiet_mlflow()
    mlflow.set_tracking_uri(tracking_uri(config))
    mlflow.set_experiment(config.tracking.experiment)
    with mlflow.start_run(run_name=config.name, tags={STAGE_TAG: "pipeline", "medvit.config": config.name}) as run:
        mlflow.log_params(safe_params(config))
        mlflow.log_text(safe_config_yaml(config), "config.yaml")
        yield StageRun(run)
