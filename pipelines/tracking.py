"""MLflow record of the stages: one run per stage tagged ``medvit.stage``, nested under a ``medvit run`` parent.

Store: ``tracking.uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` in the working directory.
Runs are named ``[STAGE ]CONFIG[ MODEL] STAMP`` (a parent's stages share its stamp) and tagged with the data
kind, model and code version. Params are the flattened config keys the stage reads (``STAGE_KEYS``; the parent:
the whole resolved config), every path replaced by ``<path>`` and credentials removed from the tracking URI,
so no site path (or a patient name hidden in a folder name) reaches the tracking server. Only rank 0 of a
distributed job records anything.
"""

from __future__ import annotations

import logging
import os
import secrets
import subprocess
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pandas as pd
import yaml

from pipelines.config import PipelineConfig, flatten_tree

DEFAULT_URI = "sqlite:///mlflow.db"
STAGE_TAG = "medvit.stage"
NOTE_TAG = "mlflow.note.content"  # the description MLflow's UI shows on a run, experiment or model
KIND_TAG = "mlflow.experimentKind"
MODEL_STAGES = ("plan", "train", "pretrain", "evaluate", "register", "score", "pipeline")
# The config keys each stage reads (prefixes of the flattened params; {kind} is data.kind): a stage run logs
# these only, the parent of `medvit run` logs the whole config for its kind.
STAGE_KEYS: dict[str, tuple[str, ...]] = {
    "ingest": ("data.", "split.", "privacy.", "preprocess.{kind}.color", "preprocess.cache_dir"),
    "plan": ("data.kind", "preprocess.{kind}.", "model.", "train."),
    "train": ("data.kind", "preprocess.{kind}.", "preprocess.cache_dir", "augment.", "model.", "train.",
              "evaluate.aggregate"),
    "pretrain": ("data.", "preprocess.{kind}.", "preprocess.cache_dir", "model.", "pretrain.", "train.accumulate",
                 "train.amp", "train.compile", "train.deterministic", "train.device", "train.grad_clip",
                 "train.num_workers", "train.seed"),
    "evaluate": ("data.kind", "preprocess.{kind}.", "preprocess.cache_dir", "model.", "evaluate.", "split.seed"),
    "register": ("data.kind", "preprocess.{kind}.", "model.", "evaluate.aggregate", "registry."),
    "score": ("data.kind", "preprocess.{kind}.", "model.", "evaluate.aggregate"),
    "pipeline": ("name", "data.", "preprocess.{kind}.", "preprocess.cache_dir", "augment.", "split.", "model.",
                 "train.", "evaluate.", "tracking.", "registry.", "output.", "privacy."),
}
PATH_KEYS = ("data.dicom_root", "data.labels", "output.dir", "preprocess.cache_dir", "privacy.key_file",
             "pretrain.dicom_root")


def tracking_uri(config: PipelineConfig | None = None) -> str:
    """The store to use; a relative sqlite path is made absolute, so it means the same in any folder."""
    uri = (config.tracking.uri if config is not None else None) or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        uri = prefix + str(Path(uri[len(prefix):]).resolve())
    return uri


def quiet_mlflow() -> None:
    """MLflow, alembic and urllib3 log warnings only."""
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

    def set_note(self, text: str) -> None:
        """The run's description in the MLflow UI (one line of what the stage did)."""
        self.set_tags({NOTE_TAG: text})

    def log_manifest(self, manifest: pd.DataFrame, digest: str, context: str, name: str = "manifest") -> None:
        """The manifest (or its test split) as an MLflow dataset input: schema and digest, no file paths."""
        if self.run:
            import mlflow

            mlflow.log_input(manifest_dataset(manifest, digest, name), context=context)


def manifest_dataset(manifest: pd.DataFrame, digest: str, name: str) -> Any:
    """An MLflow dataset of manifest rows: ids, labels and splits only (MLflow stores its schema and profile)."""
    import mlflow

    columns = [c for c in ("patient_key", "study_uid", "series_uid", "modality", "manufacturer",
                           "label", "split") if c in manifest.columns]
    frame = manifest[columns].astype({"label": "float64"}) if "label" in columns else manifest[columns]
    with warnings.catch_warnings():  # "source can be interpreted in multiple ways": it is a local file
        warnings.simplefilter("ignore", UserWarning)
        return mlflow.data.from_pandas(frame, source="manifest.parquet", name=name, digest=digest,
                                       targets="label" if "label" in columns else None)



_PIPELINE_STAMP: ContextVar[str | None] = ContextVar("medvit_pipeline_stamp", default=None)


def run_stamp() -> str:
    """Local time to the minute and 4 random hex digits: two runs of one config never share a name."""
    return f"{datetime.now():%m%d-%H%M} {secrets.token_hex(2)}"


def model_label(config: PipelineConfig) -> str:
    """``vit_tiny``, ``hybrid-vit_tiny`` (``vit-custom`` without a preset), or the CNN's name (``resnet18``)."""
    arch, preset = config.model.arch, config.model.preset
    if arch == "vit":
        return preset or "vit-custom"
    if arch == "hybrid":
        return f"hybrid-{preset or 'custom'}"
    return arch


def run_name(config: PipelineConfig, stage: str, stamp: str, with_model: bool | None = None) -> str:
    """``train demo_xray hybrid-vit_tiny 1201-1714 3fa2``: the parent of ``medvit run`` has no stage word, and
    stages without a model (ingest) no model label."""
    words = [] if stage == "pipeline" else [stage]
    words.append(config.name)
    if stage in MODEL_STAGES if with_model is None else with_model:
        words.append(model_label(config))
    return " ".join([*words, stamp])


@lru_cache(maxsize=1)
def source_version() -> dict[str, str]:
    """medvit's version and, when it runs from a git checkout, the commit (and whether the tree was dirty)."""
    import medvit

    tags = {"medvit.version": medvit.__version__}
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return tags
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return tags
    return tags | {"mlflow.source.git.commit": commit, "medvit.git_dirty": str(bool(dirty)).lower()}


def run_tags(config: PipelineConfig, stage: str, with_model: bool | None = None) -> dict[str, str]:
    """What a reviewer filters on: stage, config name, data kind, model (where the stage has one), code version."""
    tags = {STAGE_TAG: stage, "medvit.config": config.name, "data.kind": config.data.kind, **source_version()}
    if stage in MODEL_STAGES if with_model is None else with_model:
        tags |= {"model.arch": config.model.arch, "model.label": model_label(config)}
    return tags


def stage_params(config: PipelineConfig, stage: str) -> dict[str, str]:
    """The safe params of the config keys ``stage`` reads: ``STAGE_KEYS`` holds whole sections (``train.``) and
    single keys (``data.kind``)."""
    keys = [k.format(kind=config.data.kind) for k in STAGE_KEYS[stage]]
    return {name: value for name, value in safe_params(config).items()
            if any(name == k or (k.endswith(".") and name.startswith(k)) for k in keys)}


def _start(config: PipelineConfig, stage: str) -> None:
    quiet_mlflow()
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(config))
    experiment = mlflow.set_experiment(config.tracking.experiment)
    tags = experiment.tags or {}
    if NOTE_TAG not in tags:
        mlflow.set_experiment_tag(NOTE_TAG, EXPERIMENT_NOTE)
    if KIND_TAG not in tags:  # MLflow 3's UI then opens the experiment on its training runs, not GenAI traces
        mlflow.set_experiment_tag(KIND_TAG, "custom_model_development")


EXPERIMENT_NOTE = (
    "medvit runs: normal/abnormal classification of DICOM X-ray (CR/DX) and MRI studies. Each `medvit run` is a "
    "parent run (tag medvit.stage=pipeline) with one child run per stage (ingest, train, evaluate, register). "
    "Parents carry the headline test metrics (auroc with its 95% CI, auprc, sensitivity and specificity at the "
    "threshold chosen on validation, best_val_auroc, train_minutes): filter on tags.medvit.stage = 'pipeline' to "
    "compare pipelines side by side, or run `medvit compare RUN_ID...` in a terminal.")


@contextmanager
def stage_run(config: PipelineConfig, stage: str, enabled: bool = True, run_id: str | None = None) -> Iterator[StageRun]:
    """Start the stage's run (nested when a ``medvit run`` parent is active), with its name, tags, the params of
    the config keys it reads and the config as ``config.yaml``.

    With ``run_id`` (a resumed training), that run is continued instead of a new one started.
    """
    if not enabled or not is_rank_zero():
        yield StageRun(None)
        return
    import mlflow

    _start(config, stage)
    nested = mlflow.active_run() is not None
    if run_id is not None:
        with mlflow.start_run(run_id=run_id, nested=nested) as run:
            yield StageRun(run)
        return
    stamp = (_PIPELINE_STAMP.get() if nested else None) or run_stamp()
    with mlflow.start_run(run_name=run_name(config, stage, stamp), nested=nested, tags=run_tags(config, stage),
                          log_system_metrics=config.tracking.system_metrics and stage in ("train", "pretrain")) as run:
        mlflow.log_params(stage_params(config, stage))
        mlflow.log_text(safe_config_yaml(config), "config.yaml")
        yield StageRun(run)


@contextmanager
def pipeline_run(config: PipelineConfig) -> Iterator[PipelineRun]:
    """The parent run of ``medvit run``: its stages become child runs named with the parent's stamp.

    The config is logged by :meth:`PipelineRun.finish` (once the plan resolved it), tags and name again then.
    """
    import mlflow

    _start(config, "pipeline")
    stamp = run_stamp()
    token = _PIPELINE_STAMP.set(stamp)
    try:
        with mlflow.start_run(run_name=run_name(config, "pipeline", stamp, with_model=False),
                              tags=run_tags(config, "pipeline", with_model=False)) as run:
            yield PipelineRun(run, stamp)
    finally:
        _PIPELINE_STAMP.reset(token)


class PipelineRun(StageRun):
    """The parent run's handle: :meth:`finish` records the resolved config, the model tags and the final name."""

    def __init__(self, run: Any, stamp: str):
        super().__init__(run)
        self.stamp = stamp

    def finish(self, resolved: PipelineConfig) -> None:
        import mlflow

        mlflow.log_params(stage_params(resolved, "pipeline"))
        mlflow.log_text(safe_config_yaml(resolved), "config.yaml")
        mlflow.set_tags(run_tags(resolved, "pipeline"))
        mlflow.MlflowClient().update_run(self.run_id, name=run_name(resolved, "pipeline", self.stamp))
