"""Shared pieces of the end-to-end pipeline tests: the tiny config, the identity list of a synthetic cohort,
a collector of everything an MLflow store holds for an experiment, and a real ``mlflow server`` process.

Test modules import these (``from helpers.pipeline import ...``); nothing here is a pytest fixture, so each
module decides the scope of what it builds.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.config import ConfigError, PipelineConfig, validate_config
from pipelines.server import LocalPostgres, local_postgres, wait_healthy
from pipelines.stages.register import packaged_config
from pipelines.training.modeling import build_model, model_kwargs, save_model

REPO = Path(__file__).resolve().parents[2]
TINY_MODEL = {"arch": "vit", "preset": "vit_tiny", "embed_dim": 32, "depth": 2, "num_heads": 2, "patch_size": 8,
              "global_pool": "token"}  # each model choice explicit: the plan would pick them otherwise
REGISTRY_NAME = "medvit_e2e"
STAGES = ("ingest", "train", "evaluate", "register")


def cohort_config(cohort: Path, kind: str, out: Path, **sections) -> PipelineConfig:
    """A config for a synthetic cohort with small CPU-sized preprocessing."""
    raw = {
        "name": f"test_{kind}",
        "data": {"dicom_root": str(cohort / "dicom"), "labels": str(cohort / "labels.csv"), "kind": kind,
                 "workers": 2},
        "preprocess": {"xray": {"img_size": 32}, "mri": {"img_size": [16, 16, 16], "spacing": [4.0, 4.0, 4.0]}},
        "split": {"val": 0.2, "test": 0.2, "seed": 0},
        "output": {"dir": str(out)},
        "privacy": {"key_env": "MEDVIT_TEST_NO_SUCH_ENV"},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return validate_config(raw)


def train_config(cohort: Path, out: Path, **train):
    """A tiny deterministic ViT training config (3 epochs, no early stopping) with its own sqlite store."""
    return cohort_config(
        cohort, "xray", out, model=TINY_MODEL,
        train={"epochs": 3, "batch_size": 6, "lr": 1e-3, "num_workers": 0, "deterministic": True,
               "early_stopping_patience": None, "warmup_epochs": 0.5, **train},
        tracking={"uri": f"sqlite:///{out / 'mlflow.db'}", "system_metrics": False},
    )


def fresh_out(ingested: Path, tmp_path: Path, name: str) -> Path:
    """A new output folder holding the manifest and pseudonym key of an ingested one (train without re-ingest)."""
    out = tmp_path / name
    out.mkdir()
    for f in ("manifest.parquet", ".pseudonym_key"):
        (out / f).write_bytes((ingested / f).read_bytes())
    return out


def train_cli(config_path: Path, *extra: str) -> subprocess.Popen:
    """Start `medvit train` in a subprocess (one torch thread, fixed hash seed)."""
    env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "pipelines.cli", "train", "--config", str(config_path), *extra],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def tiny_config(cohort: Path, out: Path, tracking_uri: str, *, registry: str = REGISTRY_NAME,
                experiment: str = "medvit_e2e", **train) -> PipelineConfig:
    """The 24-study X-ray cohort on a 2-block, 32-dim ViT at 32x32: trains in seconds on a CPU."""
    return cohort_config(
        cohort, "xray", out, model=TINY_MODEL,
        train={"epochs": 2, "batch_size": 6, "lr": 1e-3, "num_workers": 0, "deterministic": True,
               "early_stopping_patience": None, "warmup_epochs": 0.5, "device": "cpu", **train},
        evaluate={"bootstrap": 100},
        tracking={"uri": tracking_uri, "experiment": experiment, "system_metrics": False},
        registry={"name": registry},
    )


def write_untrained_package(folder: Path, config: PipelineConfig, name: str) -> Path:
    """An untrained model of ``config`` in the package format `register` writes (all that scoring needs)."""
    kwargs = model_kwargs(config)
    save_model(folder / "best.safetensors", build_model(kwargs), kwargs)
    (folder / "config.yaml").write_text(packaged_config(config))
    (folder / "meta.json").write_text(json.dumps({"threshold": 0.5, "aggregate": "max", "kind": config.data.kind,
                                                  "name": name}))
    return folder


def sqlite_uri(folder: Path) -> str:
    return f"sqlite:///{folder / 'mlflow.db'}"


# ---- identities ---------------------------------------------------------------------------------------
def identity_strings(cohort: Path) -> list[str]:
    """Every identity value of ``identities.csv``, the ``^``-parts (>= 4 chars) of names, ISO birth dates."""
    with open(cohort / "identities.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    found: set[str] = set()
    for row in rows:
        for column, value in row.items():
            value = (value or "").strip()
            if not value:
                continue
            found.add(value)
            if column == "PatientName":
                found |= {part.strip() for part in value.split("^") if len(part.strip()) >= 4}
            if column == "PatientBirthDate" and len(value) == 8 and value.isdigit():
                found.add(f"{value[:4]}-{value[4:6]}-{value[6:]}")
    return sorted(found)


def find_needles(blobs: dict[str, bytes], needles: Iterable[str | bytes]) -> list[tuple[str, str]]:
    """``(blob label, needle)`` for every needle found (as bytes) in every blob."""
    encoded = [(n if isinstance(n, bytes) else n.encode("utf-8")) for n in needles]
    return [(label, needle.decode("utf-8", "replace")) for label, data in blobs.items() for needle in encoded
            if needle and needle in data]


# ---- everything MLflow holds ---------------------------------------------------------------------------
def _files(root: Path, prefix: str) -> dict[str, bytes]:
    return {f"{prefix}/{p.relative_to(root).as_posix()}": p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def is_packaged_source(label: str, data: bytes) -> bool:
    """A ``code/<pkg>/...`` file of a packaged model that is byte-identical to this repository's source.

    medvit's own source travels inside the model (``code_paths``); ``pipelines/dicom/synth.py`` holds the
    pool of made-up names the synthetic cohorts draw from, so a name part of the cohort is *expected* there.
    Only unchanged source files are exempt; anything else under ``code/`` is scanned like every artifact.
    """
    marker = "/code/"
    if marker not in label:
        return False
    relative = label.split(marker, 1)[1]
    source = REPO / relative
    return relative.split("/", 1)[0] in ("medvit", "pipelines") and source.is_file() and source.read_bytes() == data


def mlflow_holdings(tracking_uri: str, experiment: str, dst: Path) -> dict[str, bytes]:
    """Label -> bytes for everything the store holds about ``experiment``.

    Runs (name, params keys and values, tags, metric names, dataset inputs with name/digest/source/schema/
    profile, model inputs/outputs, every artifact file), logged models (params, tags, metrics with their
    datasets, every artifact file),
    registered models (tags, aliases, description) and all their versions (description, tags, source, every
    artifact file downloaded through ``models:/NAME/VERSION``).
    """
    import mlflow
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    mlflow.set_tracking_uri(tracking_uri)  # the models:/ artifact repository resolves through the global URI
    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"experiment {experiment!r} not in {tracking_uri}"
    blobs: dict[str, bytes] = {"experiment": repr((exp.name, exp.tags)).encode()}
    runs = client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL, max_results=1000)
    for run in runs:
        rid = run.info.run_id
        label = f"run {run.info.run_name} ({rid[:8]})"
        blobs[f"{label}: name"] = str(run.info.run_name).encode()
        blobs[f"{label}: params"] = "\n".join(f"{k}={v}" for k, v in sorted(run.data.params.items())).encode()
        blobs[f"{label}: tags"] = "\n".join(f"{k}={v}" for k, v in sorted(run.data.tags.items())).encode()
        blobs[f"{label}: metric names"] = "\n".join(sorted(run.data.metrics)).encode()
        for i, di in enumerate(run.inputs.dataset_inputs if run.inputs else []):
            d = di.dataset
            blobs[f"{label}: dataset {i}"] = "\n".join([
                d.name, d.digest, d.source_type, d.source, d.schema or "", d.profile or "",
                *(f"{t.key}={t.value}" for t in di.tags)]).encode()
        if run.inputs and getattr(run.inputs, "model_inputs", None):
            blobs[f"{label}: model inputs"] = repr(run.inputs.model_inputs).encode()
        if getattr(run, "outputs", None):
            blobs[f"{label}: outputs"] = repr(run.outputs).encode()
        local = Path(mlflow.artifacts.download_artifacts(run_id=rid, dst_path=str(dst / "runs" / rid),
                                                         tracking_uri=tracking_uri))
        blobs |= _files(local, f"{label}: artifact")
    for model in client.search_logged_models([exp.experiment_id]):
        label = f"logged model {model.name} ({model.model_id})"
        blobs[f"{label}: params"] = "\n".join(f"{k}={v}" for k, v in sorted((model.params or {}).items())).encode()
        blobs[f"{label}: tags"] = "\n".join(f"{k}={v}" for k, v in sorted((model.tags or {}).items())).encode()
        blobs[f"{label}: metrics"] = "\n".join(f"{m.key} {m.dataset_name} {m.dataset_digest}"
                                               for m in model.metrics or []).encode()
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{model.model_id}",
                                                         dst_path=str(dst / "models" / model.model_id)))
        blobs |= _files(local, f"{label}: artifact")
    for registered in client.search_registered_models():
        label = f"registered {registered.name}"
        blobs[f"{label}: model"] = repr((registered.name, registered.description, registered.tags,
                                         registered.aliases)).encode()
        for version in client.search_model_versions(f"name='{registered.name}'"):
            vlabel = f"{label} v{version.version}"
            blobs[f"{vlabel}: description"] = (version.description or "").encode()
            blobs[f"{vlabel}: meta"] = repr((version.tags, version.source, version.run_id, version.run_link,
                                             version.aliases)).encode()
            local = Path(mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{registered.name}/{version.version}",
                dst_path=str(dst / "registered" / registered.name / str(version.version))))
            blobs |= _files(local, f"{vlabel}: artifact")
    return blobs


# ---- capture of everything a run prints or logs ---------------------------------------------------------
@dataclass
class Captured:
    stdout: str = ""
    stderr: str = ""
    records: list[logging.LogRecord] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def blobs(self) -> dict[str, bytes]:
        logs = "\n".join(f"{r.name} {r.levelname} {r.getMessage()} {r.exc_text or ''}" for r in self.records)
        return {"stdout": self.stdout.encode(), "stderr": self.stderr.encode(), "log records": logs.encode(),
                "warnings": "\n".join(self.warnings).encode()}


class _ListHandler(logging.Handler):
    def __init__(self, sink: list[logging.LogRecord]):
        super().__init__(logging.DEBUG)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(record)


@contextlib.contextmanager
def capture_everything() -> Iterator[Captured]:
    """stdout, stderr, log records (root and the non-propagating ``mlflow`` logger) and warnings.

    ``capsys``/``caplog`` are function-scoped; this does the same for a module-scoped fixture.
    """
    captured = Captured()
    out, err = io.StringIO(), io.StringIO()
    handler = _ListHandler(captured.records)
    loggers = [logging.getLogger(), logging.getLogger("mlflow")]
    root_level = loggers[0].level
    for logger in loggers:
        logger.addHandler(handler)
    loggers[0].setLevel(logging.INFO)
    try:
        with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(out), \
                contextlib.redirect_stderr(err):
            warnings.simplefilter("always")
            yield captured
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
        loggers[0].setLevel(root_level)
        captured.stdout, captured.stderr = out.getvalue(), err.getvalue()
        captured.warnings = [f"{w.category.__name__}: {w.message}" for w in caught]


# ---- a real mlflow server -------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - a recycled group id we do not own
        return False
    return True


def stop_process_group(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGTERM the server's own process group (it was started in a new session), SIGKILL what outlives it."""
    pgid = proc.pid
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
        if proc.poll() is None or _group_alive(pgid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and (proc.poll() is None or _group_alive(pgid)):
            time.sleep(0.1)
        if proc.poll() is not None and not _group_alive(pgid):
            return


@dataclass
class Server:
    url: str
    root: Path
    proc: subprocess.Popen
    stderr_path: Path

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")[-4000:]


@contextlib.contextmanager
def mlflow_server(root: Path, startup_timeout: float = 90.0) -> Iterator[Server]:
    """``mlflow server`` on 127.0.0.1:<free port> with a sqlite backend and proxied artifacts under ``root``.

    Waits (bounded) for ``GET /health``; fails with the server's stderr when it does not come up; always
    terminates the server's process group afterwards.
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    mlflow_cli = Path(sys.executable).parent / "mlflow"
    cmd = [str(mlflow_cli), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", f"sqlite:///{root / 'srv.db'}",
           "--artifacts-destination", str(root / "artifacts")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no background job workers: a lighter, faster start
    stdout_path, stderr_path = root / "server.out", root / "server.err"
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=root, env=env, start_new_session=True)
    server = Server(url, root, proc, stderr_path)
    try:
        try:
            wait_healthy(proc, url, startup_timeout)
        except ConfigError as exc:
            raise AssertionError(f"{exc}; stderr:\n{server.stderr()}") from None
        yield server
    finally:
        stop_process_group(proc)


# ---- `medvit server` on a throwaway PostgreSQL ------------------------------------------------------------
def medvit_cli(*args: str) -> list[str]:
    """The installed ``medvit`` console script with ``args``."""
    return [str(Path(sys.executable).parent / "medvit"), *args]


def unprivileged_user() -> str | None:
    """``nobody`` when the tests run as root (PostgreSQL refuses root), else None: the cluster runs as us."""
    return "nobody" if os.geteuid() == 0 else None


def reachable_tmpdir(prefix: str) -> Path:
    """A new folder in the system temp dir that ``unprivileged_user()`` can reach (pytest's are 0700 root)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    folder.chmod(0o755)
    return folder


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[LocalPostgres]:
    """A new PostgreSQL cluster (``pipelines.server.local_postgres``), stopped and removed afterwards."""
    folder = reachable_tmpdir("medvit-pg-")
    try:
        with local_postgres(folder / "data", unprivileged_user()) as cluster:
            yield cluster
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def medvit_server(root: Path, *args: str, startup_timeout: float = 150.0) -> Iterator[Server]:
    """``medvit server ARGS --port <free> -- --workers 1`` as a real process in its own session, cwd ``root``.

    PATH holds only the system folders: the command itself must put the venv's (uvicorn) first. Waits for
    ``/health`` (``pipelines.server.wait_healthy``), fails with the server's stderr, always stops its group.
    """
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
    env |= {"PATH": os.defpath, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "OMP_NUM_THREADS": "1"}
    command = medvit_cli("server", *args, "--port", str(port), "--", "--workers", "1")
    with open(root / "server.out", "wb") as out, open(root / "server.err", "wb") as err:
        # A suite started in the background (`make test &`) inherits SIGINT ignored, and so would the server:
        # give it the terminal's default, so the Ctrl-C test tests the server and not how pytest was started.
        proc = subprocess.Popen(command, stdout=out, stderr=err, cwd=root, env=env, start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    server = Server(f"http://127.0.0.1:{port}", root, proc, root / "server.err")
    try:
        try:
            wait_healthy(proc, server.url, startup_timeout)
        except ConfigError as exc:
            raise AssertionError(f"{exc}; stderr:\n{server.stderr()}") from None
        yield server
    finally:
        stop_process_group(proc)
