"""The registered model behind a real `mlflow models serve` on 127.0.0.1: one row per request row in order,
error rows for bad or disallowed paths, bytes scored like the path they came from."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.dicom import study_folders
from helpers.pipeline import free_port, sqlite_uri, stop_process_group, tiny_config

from pipelines.config import ConfigError
from pipelines.pipeline import run_pipeline
from pipelines.scoring.requests import OUTPUT_COLUMNS, ROOTS_ENV
from pipelines.server import wait_healthy


@pytest.fixture(scope="module")
def model_folder(xray_cohort, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("serve_model")
    return run_pipeline(tiny_config(xray_cohort, root / "run", sqlite_uri(root))).register.local_model


@contextlib.contextmanager
def models_serve(model: Path, roots: str | None, log: Path, timeout: float = 120.0) -> Iterator[str]:
    """`mlflow models serve` of ``model`` (this venv, no new environment) with ``MEDVIT_SERVE_ROOTS=roots``."""
    port = free_port()
    venv_bin = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if k != ROOTS_ENV and not k.startswith("MLFLOW_TRACKING")}
    env["PATH"] = f"{venv_bin}{os.pathsep}{env.get('PATH', '')}"  # it execs uvicorn
    if roots is not None:
        env[ROOTS_ENV] = roots
    cmd = [str(venv_bin / "mlflow"), "models", "serve", "-m", str(model), "--env-manager", "local",
           "-h", "127.0.0.1", "-p", str(port)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_healthy(proc, url, timeout, route="/ping", what="mlflow models serve")
        except ConfigError as exc:
            raise AssertionError(f"{exc}:\n{log.read_text()[-3000:]}") from None
        yield url
    finally:
        stop_process_group(proc)


def invoke(url: str, columns: list[str], rows: list[list]) -> list[dict]:
    body = json.dumps({"dataframe_split": {"columns": columns, "data": rows}}).encode()
    request = urllib.request.Request(f"{url}/invocations", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.loads(response.read())["predictions"]
    except urllib.error.HTTPError as error:
        raise AssertionError(f"HTTP {error.code}: {error.read().decode(errors='replace')[:2000]}") from None


def test_served_model_keeps_row_order_reads_only_allowed_roots_and_scores_bytes(model_folder, xray_cohort,
                                                                                 tmp_path):
    folders = study_folders(xray_cohort)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    one_file = next(Path(folders[0]).rglob("*.dcm"))
    (outside / "copy.dcm").write_bytes(one_file.read_bytes())
    inbox = tmp_path / "inbox"  # an allowed root holding a study folder whose file links outside every root
    (inbox / "linked").mkdir(parents=True)
    (inbox / "linked" / "image.dcm").symlink_to(outside / "copy.dcm")
    roots = os.pathsep.join([str(xray_cohort / "dicom"), str(inbox)])
    with models_serve(model_folder, roots, tmp_path / "serve.log") as url:
        got = invoke(url, ["path"], [[folders[2]], [folders[0]], [folders[1]]])
        assert [set(r) for r in got] == [{name for name, _ in OUTPUT_COLUMNS}] * 3
        again = invoke(url, ["path"], [[folders[1]], [folders[2]], [folders[0]]])
        assert [r["StudyInstanceUID"] for r in again] == [got[2]["StudyInstanceUID"], got[0]["StudyInstanceUID"],
                                                          got[1]["StudyInstanceUID"]]
        assert len({r["StudyInstanceUID"] for r in got}) == 3 and all(r["status"] == "ok" for r in got)
        data = base64.b64encode(one_file.read_bytes()).decode()
        mixed = invoke(url, ["path", "dicom"], [[folders[0], ""], [str(outside / "copy.dcm"), ""],
                                                [str(xray_cohort / "dicom" / "nope"), ""], ["", data],
                                                [str(inbox / "linked"), ""], [str(inbox / "linked" / "image.dcm"), ""]])
    assert [r["status"] for r in mixed] == ["ok", "path_not_allowed", "not_found", "ok", "path_not_allowed",
                                            "path_not_allowed"]
    assert "MEDVIT_SERVE_ROOTS" in mixed[1]["message"] and mixed[1]["n_series"] == 0
    assert "symbolic links" in mixed[4]["message"] and mixed[4]["StudyInstanceUID"] == ""
    assert mixed[3]["StudyInstanceUID"] == mixed[0]["StudyInstanceUID"] == got[1]["StudyInstanceUID"]
    assert abs(mixed[3]["score"] - mixed[0]["score"]) < 1e-6


def test_served_model_without_roots_takes_bytes_only(model_folder, xray_cohort, tmp_path):
    one_file = next(Path(study_folders(xray_cohort)[0]).rglob("*.dcm"))
    with models_serve(model_folder, None, tmp_path / "serve.log") as url:
        got = invoke(url, ["path", "dicom"], [[str(one_file), ""],
                                              ["", base64.b64encode(one_file.read_bytes()).decode()]])
    assert [r["status"] for r in got] == ["path_not_allowed", "ok"]
