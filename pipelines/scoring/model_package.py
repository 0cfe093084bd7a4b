"""Find and load a packaged medvit model from a model URI, without MLflow's Python-model loader and without pickle.

A package is what ``register`` writes (an MLflow pyfunc folder): ``artifacts/best.safetensors`` (weights with
their constructor arguments), ``artifacts/config.yaml`` (preprocessing, selection rules) and
``artifacts/meta.json`` (threshold, study aggregation, kind, name). Accepted URIs:
``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``runs:/RUN_ID/model`` and a local folder (the pyfunc folder,
or a folder holding the three files directly).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from pipelines.config import ConfigError, PipelineConfig, validate_config, without_replaced_keys

PACKAGE_FILES = ("best.safetensors", "config.yaml", "meta.json")
MLFLOW_SCHEMES = ("models:/", "runs:/")


@dataclass
class LoadedModel:
    """A model ready to score: network, packaged config and meta, and who it is."""

    model: nn.Module
    model_kwargs: dict[str, Any]
    config: PipelineConfig
    meta: dict[str, Any]
    name: str
    version: str | None  # registry version, when the URI named the registry
    digest: str  # sha256 of the weights file: the identity used to skip already-scored studies
    source: str  # the URI as safe to record: an MLflow URI, or "local folder"

    @property
    def label(self) -> str:
        """``NAME/VERSION`` for a registered model, else ``NAME@sha256:<12 hex>``."""
        return f"{self.name}/{self.version}" if self.version else f"{self.name}@sha256:{self.digest[:12]}"

    @property
    def threshold(self) -> float:
        return float(self.meta["threshold"])


def package_folder(root: Path) -> Path | None:
    """The folder holding the package files under ``root`` (itself or its ``artifacts/``), or None."""
    for folder in (root / "artifacts", root):
        if all((folder / name).is_file() for name in PACKAGE_FILES):
            return folder
    return None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _registry_spec(uri: str) -> tuple[str, str | None, str | None]:
    """(name, alias, version) of a ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` URI; another form is one error."""
    spec = uri[len("models:/"):].strip("/")
    if "@" in spec:
        name, alias = spec.split("@", 1)
        return name, alias, None
    parts = spec.split("/")
    if len(parts) == 2 and parts[1].isdigit():
        return parts[0], None, parts[1]
    raise ConfigError(f"model URI '{uri}' is not models:/NAME@ALIAS or models:/NAME/VERSION: fix --model")


def _registry_version(uri: str) -> str:
    """The version a ``models:/`` URI points at (an alias is resolved through the registry)."""
    from mlflow import MlflowClient

    name, alias, version = _registry_spec(uri)
    return version if version is not None else str(MlflowClient().get_model_version_by_alias(name, alias).version)


def download(uri: str, dest: Path, tracking: str, what: str = "model URI") -> Path:
    """Download an MLflow artifact URI (models:/, runs:/, ...) into ``dest``; any failure is one ConfigError line."""
    import mlflow

    from pipelines.tracking import quiet_mlflow

    quiet_mlflow()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dest), tracking_uri=tracking))
    except Exception as exc:  # MLflow raises several types for unknown models, runs, artifacts and stores
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{what} '{uri}' cannot be resolved in the tracking store ({reason[:200]}): check the "
                          "name, alias, run id or path, and MLFLOW_TRACKING_URI") from None


def _download(uri: str, dest: Path, tracking: str) -> tuple[Path, str | None]:
    """The package folder of an MLflow URI and, for a registry URI, the version it names."""
    import mlflow

    registry = uri.startswith("models:/")
    if registry:
        _registry_spec(uri)  # a malformed registry URI fails here, before any download
    local = download(uri, dest, tracking)  # an unknown name, alias or run fails here, in one line
    mlflow.set_tracking_uri(tracking)
    return local, _registry_version(uri) if registry else None


def read_package_config(path: Path) -> PipelineConfig:
    """The config a package was registered with; keys an earlier version wrote and a later one replaced are
    dropped (``config.REPLACED_KEYS``), so older packages keep loading."""
    return validate_config(without_replaced_keys(yaml.safe_load(path.read_text())), "packaged model config")


def load_packaged_model(uri: str, *, device: torch.device | str = "cpu", tracking: str | None = None) -> LoadedModel:
    """Resolve ``uri`` and load the package; a bad URI or an incomplete package is a ``ConfigError``."""
    from pipelines.tracking import tracking_uri
    from pipelines.training.modeling import load_model

    with tempfile.TemporaryDirectory(prefix="medvit-model-") as tmp:
        if uri.startswith(MLFLOW_SCHEMES):
            root, version = _download(uri, Path(tmp), tracking or tracking_uri())
            source = uri
        else:
            root, version, source = Path(uri), None, "local folder"
            if not root.is_dir():
                raise ConfigError(f"model '{uri}' is neither a models:/ or runs:/ URI nor an existing folder: "
                                  "fix --model")
        folder = package_folder(root)
        if folder is None:
            raise ConfigError(f"model '{uri}' holds no medvit package ({', '.join(PACKAGE_FILES)}): point --model "
                              "at a folder written by `medvit register` (OUTPUT/model) or a registered model")
        weights = folder / "best.safetensors"
        try:
            model, kwargs, _ = load_model(weights, device)
        except Exception as exc:
            raise ConfigError(f"model '{uri}': the weights cannot be loaded ({str(exc).splitlines()[0][:200]}): "
                              "re-register the model") from None
        meta = json.loads((folder / "meta.json").read_text())
        config = read_package_config(folder / "config.yaml")
        digest = file_sha256(weights)
    return LoadedModel(model=model, model_kwargs=kwargs, config=config, meta=meta,
                       name=str(meta.get("name") or config.registry.name), version=version, digest=digest,
                       source=source)
