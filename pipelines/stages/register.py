"""Register: package the best model as an MLflow pyfunc, register it under ``registry.name`` with an alias.

The package holds safetensors weights, the preprocessing/model config, the threshold chosen on validation
and a model card, plus medvit's own source (``code_paths``), so it loads anywhere medvit's dependencies are
installed. A copy is saved as a local model folder (``OUTPUT/model``) that ``medvit score`` also accepts.
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
from pipelines.layout import evaluate_dir, train_dir
from pipelines.scoring.requests import signature
from pipelines.tracking import safe_config_yaml, stage_run, tracking_uri
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


def model_card(config: PipelineConfig, report: dict, train_summary: dict, version: str,
               plan: dict | None = None) -> str:
    m = report["test"]

    def fmt(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    return f"""# Model card: {config.registry.name} v{version}

## Intended use
Research decision support: flags {config.data.kind} studies as **abnormal** or **normal**. Not a medical
device; a clinician reads every study. Trained and evaluated on `{config.name}` data only.

## Model
{_architecture(config)}, input
{'x'.join(str(s) for s in _input(config))}, one logit (probability of abnormal). Best epoch
{train_summary.get('best_epoch')} of {train_summary.get('epochs_run')} (validation AUROC
{fmt(train_summary.get('best_val_auroc'))}).

## Data
Patient-grouped split (no patient in two splits); see the data card logged with the ingest run.
Test split: {m['n']} studies, {m['n_pos']} abnormal.
{_plan_section(plan)}
## Metrics (test split)
| metric | value |
| --- | --- |
| AUROC (95% bootstrap CI) | {fmt(m['auroc'])} ({fmt(m['auroc_ci_low'])}-{fmt(m['auroc_ci_high'])}) |
| AUPRC | {fmt(m['auprc'])} |
| sensitivity | {fmt(m['sensitivity'])} |
| specificity | {fmt(m['specificity'])} |
| PPV / NPV | {fmt(m['ppv'])} / {fmt(m['npv'])} |
| expected calibration error | {fmt(m['ece'])} |

## Operating threshold
{report['threshold']:.4f}, chosen on the validation split by {report['threshold_method']}; series scores are
combined per study by {report['aggregate']}.

## Limits
Metrics come from one site's split and a small test set (see the CI). Performance on other scanners,
populations or protocols is unknown until measured. Scores are not calibrated probabilities unless the
reliability diagram of the evaluate run says so.
"""


def _plan_section(plan: dict | None) -> str:
    """The "Training plan" section: planned keys and the values trained with (empty without plan.json)."""
    if not plan:
        return ""
    rows = "\n".join(f"| `{key}` | {value} | {source} |" for key, value, source, _ in plan_rows(plan))
    return f"""
## Training plan
Keys the config left unset were planned from the dataset and machine fingerprint (`train.plan: auto`; mostly starting
heuristics, see docs/benchmarks.md). Full record with reasons: `plan.json` of the train run.

| key | value | source |
| --- | --- | --- |
{rows}
"""


def _architecture(config: PipelineConfig) -> str:
    arch = config.model.arch
    if arch in ("vit", "hybrid"):
        distilled = ", distilled from a teacher" if config.train.distill else ""
        init = ", initialised from a pretrained encoder" if config.train.init else ""
        return f"medvit Vision Transformer ({arch}, preset `{config.model.preset}`{distilled}{init})"
    return f"MONAI {arch} (CNN baseline, randomly initialised)"


def _input(config: PipelineConfig) -> tuple[int, ...]:
    from pipelines.training.modeling import input_size

    return input_size(config)


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
        version = mlflow.register_model(info.model_uri, config.registry.name)
        client = MlflowClient()
        client.set_registered_model_alias(config.registry.name, alias, version.version)
        plan = read_plan(config) if config.train.plan == "auto" else None
        card = model_card(config, report, train_summary, str(version.version), plan)
        client.update_model_version(config.registry.name, version.version, description=card)
        run.log_text(card, "model_card.md")
        run.set_tags({"medvit.registered_model": f"{config.registry.name}/{version.version}", "medvit.alias": alias})
    for folder in (staging, local):
        (folder / "model_card.md").write_text(card)
    (staging / "meta.json").write_text(json.dumps(meta, indent=2))
    return RegisterResult(f"models:/{config.registry.name}@{alias}", config.registry.name, str(version.version),
                          alias, local, run.run_id)
