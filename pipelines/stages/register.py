"""Register: package the best model as an MLflow pyfunc, register it under ``registry.name`` with an alias.

The package holds safetensors weights, the preprocessing/model config, the threshold chosen on validation
and a model card, plus medvit's own source (``code_paths``), so it loads anywhere medvit's dependencies are
installed. A copy is saved as a local model folder (``OUTPUT/model``) that ``medvit score`` also accepts.
For the MLflow UI: the headline test metrics are linked to the logged model (with the test split as their
dataset) and set as tags of the version, the model card is the version's description, and ``MLmodel``
names its code file without the registering machine's path.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pandas as pd
import yaml

from pipelines.config import ConfigError, PipelineConfig
from pipelines.data.manifest import manifest_digest, read_manifest
from pipelines.layout import evaluate_dir, train_dir
from pipelines.reporting.model_card import model_card
from pipelines.reporting.review import headline_metrics, register_note
from pipelines.scoring.requests import signature
from pipelines.tracking import (
    NOTE_TAG,
    STAGE_TAG,
    manifest_dataset,
    run_tags,
    safe_config_yaml,
    stage_run,
    tracking_uri,
)
from pipelines.training.modeling import input_size
from pipelines.training.planning import plan_rows, planned_config, read_plan

PYFUNC_FILE = Path(__file__).resolve().parent.parent / "scoring" / "pyfunc_model.py"
PACKAGES = [Path(__file__).resolve().parent.parent.parent / name for name in ("medvit", "pipelines")]
RUNTIME_REQUIREMENTS = ("torch", "monai", "pydicom", "pylibjpeg", "pylibjpeg-libjpeg", "pylibjpeg-openjpeg",
                        "pylibjpeg-rle", "pyjpegls", "nibabel", "numpy", "pandas", "pyarrow", "safetensors",
                        "scikit-learn", "pydantic", "pyyaml", "matplotlib", "tqdm", "click", "mlflow")


@dataclass
class RegisterResult:
    model_uri: str
    registered_name: str
    version: str
    alias: str
    local_model: Path
    run_id: str | None


def pip_requirements() -> list[str]:
    reqs = []
    for name in RUNTIME_REQUIREMENTS:
        try:
            reqs.append(f"{name}=={metadata.version(name).split('+')[0]}")
        except metadata.PackageNotFoundError:
            continue
    return reqs


def packaged_config(config: PipelineConfig) -> str:
    """The config the model scores with: paths replaced by neutral values (nothing site-specific)."""
    tree = yaml.safe_load(safe_config_yaml(config))
    tree["data"].update(dicom_root=".", labels=None)
    tree["output"]["dir"] = "."
    tree["preprocess"]["cache_dir"] = None
    tree["privacy"]["key_file"] = None
    tree["tracking"]["uri"] = None
    return yaml.safe_dump(tree, sort_keys=False)


def _neutral_code_path(mlmodel_dir: Path) -> None:
    """MLflow records the model code's absolute (temporary) path in ``MLmodel``; loading reads only its name."""
    from mlflow.models import Model

    model = Model.load(str(mlmodel_dir))
    flavor = model.flavors["python_function"]
    flavor["model_code_path"] = Path(flavor["model_code_path"]).name
    model.save(str(mlmodel_dir / "MLmodel"))


def _neutral_logged_code_path(model_id: str, scratch: Path) -> None:
    """The same for the logged model: its ``MLmodel`` rewritten in the store."""
    import mlflow

    client = mlflow.MlflowClient()
    folder = scratch / "logged"
    folder.mkdir()
    mlflow.artifacts.download_artifacts(artifact_uri=f"{client.get_logged_model(model_id).artifact_location}/MLmodel",
                                        dst_path=str(folder))
    _neutral_code_path(folder)
    client.log_model_artifact(model_id, str(folder / "MLmodel"))


def version_tags(config: PipelineConfig, headline: dict[str, float], method: str) -> dict[str, str]:
    """Tags of the registered version: the headline metrics (4 decimals), kind, model, threshold rule, code."""
    metrics = {f"metric.{k}": f"{v:.4f}" for k, v in headline.items() if not k.startswith(("auroc.", "n."))}
    return metrics | {k: v for k, v in run_tags(config, "register").items() if k != STAGE_TAG} | {
        "medvit.threshold_method": method}


def registered_model_note(config: PipelineConfig) -> str:
    return (f"medvit {config.data.kind} classifier (normal / abnormal) from `{config.name}`. Each version's "
            "description is its model card; its tags hold the test metrics (metric.auroc, metric.sensitivity, "
            "...), data.kind and model.arch; the logged model holds the same metrics linked to the test split. "
            "Aliases: candidate (latest registered), champion (promoted by `medvit register --alias champion`). "
            "Compare versions with `medvit compare models:/NAME/1 models:/NAME/2`.")


def _test_dataset(config: PipelineConfig) -> object:
    manifest = read_manifest(config.output.dir / "manifest.parquet")
    test = manifest[manifest["label"].notna() & (manifest["split"] == "test")]
    return manifest_dataset(test, manifest_digest(test), "test split")


def run_register(config: PipelineConfig, *, alias: str | None = None, track: bool = True) -> RegisterResult:
    """Entry point of the register stage."""
    import mlflow
    from mlflow import MlflowClient

    config = planned_config(config)  # the preprocessing and model the training used (train.plan: auto)
    best = (train_dir(config) / "best.safetensors").resolve()
    report_path = evaluate_dir(config) / "metrics.json"
    for path, stage in ((best, "train"), (report_path, "evaluate")):
        if not path.is_file():
            raise ConfigError(f"'{path}' is missing: run `medvit {stage} --config ...` first")
    report = json.loads(report_path.read_text())
    summary_path = train_dir(config) / "summary.json"
    train_summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    alias = alias or config.registry.alias

    staging = (config.output.dir / "register").resolve()
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    meta = {"threshold": report["threshold"], "threshold_method": report["threshold_method"],
            "aggregate": report["aggregate"], "kind": config.data.kind, "name": config.registry.name}
    mlflow.set_tracking_uri(tracking_uri(config))
    local = (config.output.dir / "model").resolve()
    if local.exists():
        shutil.rmtree(local)
    # Package from a neutral temporary folder with relative names: MLmodel records the names (and the
    # temporary path of the model code) as given, so no site path is stored with the model.
    with stage_run(config, "register", enabled=track) as run, \
            tempfile.TemporaryDirectory(prefix="medvit-package-") as pkg, contextlib.chdir(pkg):
        Path("config.yaml").write_text(packaged_config(config))
        Path("meta.json").write_text(json.dumps(meta, indent=2))
        shutil.copy2(best, "best.safetensors")
        shutil.copy2(PYFUNC_FILE, PYFUNC_FILE.name)
        package = {"python_model": PYFUNC_FILE.name,
                   "artifacts": {"weights": "best.safetensors", "config": "config.yaml", "meta": "meta.json"},
                   "code_paths": [str(p) for p in PACKAGES], "signature": signature(),
                   "input_example": pd.DataFrame({"path": ["study/series/image.dcm"]}),
                   "pip_requirements": pip_requirements()}
        mlflow.pyfunc.save_model(path=str(local), **package)
        info = mlflow.pyfunc.log_model(name="model", **package)
        _neutral_code_path(local)
        _neutral_logged_code_path(info.model_id, Path(pkg))
        headline = headline_metrics(report, train_summary)
        mlflow.log_metrics(headline, model_id=info.model_id, dataset=_test_dataset(config))
        version = mlflow.register_model(info.model_uri, config.registry.name)
        client = MlflowClient()
        client.set_registered_model_alias(config.registry.name, alias, version.version)
        client.update_registered_model(config.registry.name, description=registered_model_note(config))
        for key, value in version_tags(config, headline, report["threshold_method"]).items():
            client.set_model_version_tag(config.registry.name, version.version, key, value)
        plan = read_plan(config) if config.train.plan == "auto" else None
        card = model_card(config, report, train_summary, str(version.version), input_size(config),
                          plan_rows(plan) if plan else None)
        client.update_model_version(config.registry.name, version.version, description=card)
        run.log_text(card, "model_card.md")
        run.set_tags({"medvit.registered_model": f"{config.registry.name}/{version.version}", "medvit.alias": alias})
        note = register_note(config.registry.name, str(version.version), alias, report)
        run.set_note(note)
        client.set_logged_model_tags(info.model_id, {NOTE_TAG: note.removeprefix("register: ")})
    for folder in (staging, local):
        (folder / "model_card.md").write_text(card)
    (staging / "meta.json").write_text(json.dumps(meta, indent=2))
    return RegisterResult(f"models:/{config.registry.name}@{alias}", config.registry.name, str(version.version),
                          alias, local, run.run_id)
