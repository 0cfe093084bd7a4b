"""`medvit server` on a throwaway PostgreSQL cluster, the production store: `medvit run` and `medvit score
--log-mlflow` through it, then PostgreSQL itself (SQL, psycopg2) holds the run tree and the registered version,
and the served destination the artifacts.

PostgreSQL missing fails these tests, in CI and everywhere else: nothing says CI sets ``CI``, a skip would
pass silently there, and this is the store production runs on. As root (CI, containers) the cluster runs as
``nobody`` through setpriv, the way `medvit server --postgres-user` runs it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import psycopg2
import pytest
from helpers.pipeline import (
    STAGES,
    free_port,
    medvit_cli,
    medvit_server,
    reachable_tmpdir,
    throwaway_postgres,
    tiny_config,
    unprivileged_user,
)

from pipelines.config import dump_config
from pipelines.server import LocalPostgres

REGISTRY = EXPERIMENT = "medvit_pg"
CLI_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def medvit(*args: str, cwd: Path, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(medvit_cli(*args), cwd=cwd, env={**CLI_ENV, **env}, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def postgres():
    with throwaway_postgres() as cluster:
        yield cluster
    assert not cluster.data.exists(), "the cluster is removed"


@pytest.fixture(scope="module")
def server(postgres, tmp_path_factory):
    root = tmp_path_factory.mktemp("pg_server")
    args = ("--backend-store-uri", postgres.uri, "--artifacts-destination", str(root / "served"))
    with medvit_server(root, *args) as srv:
        yield srv
    assert srv.proc.poll() is not None, "the server is stopped"


@pytest.fixture(scope="module")
def work(server, xray_cohort, tmp_path_factory):
    """`medvit run` then `medvit score --log-mlflow` with the registered model, both against the server."""
    work = tmp_path_factory.mktemp("pg_work")
    config = work / "config.yaml"
    config.write_text(dump_config(tiny_config(xray_cohort, work / "out", server.url, registry=REGISTRY,
                                              experiment=EXPERIMENT)))
    run = medvit("run", "--config", str(config), cwd=work)
    assert run.returncode == 0, run.stderr[-3000:]
    score = medvit("score", str(xray_cohort / "dicom"), "--model", f"models:/{REGISTRY}@candidate",
                   "--out", str(work / "scores"), "--log-mlflow", "--workers", "0", cwd=work,
                   MLFLOW_TRACKING_URI=server.url)
    assert score.returncode == 0, score.stderr[-3000:]
    return work


@pytest.fixture(scope="module")
def sql(postgres: LocalPostgres, work):
    """``sql(statement, *params)`` -> rows, straight from the store's database."""
    connection = psycopg2.connect(postgres.dsn)
    connection.autocommit = True

    def query(statement: str, *params: object) -> list[tuple]:
        with connection.cursor() as cursor:
            cursor.execute(statement, params)
            return cursor.fetchall()

    yield query
    connection.close()


def runs_by_stage(sql) -> dict[str, list[tuple]]:
    """medvit.stage -> [(run_uuid, status, artifact_uri, parent run or None)] of the experiment, from SQL."""
    rows = sql("""SELECT stage.value, r.run_uuid, r.status, r.artifact_uri, parent.value
                  FROM runs r JOIN experiments e ON e.experiment_id = r.experiment_id
                  JOIN tags stage ON stage.run_uuid = r.run_uuid AND stage.key = 'medvit.stage'
                  LEFT JOIN tags parent ON parent.run_uuid = r.run_uuid AND parent.key = 'mlflow.parentRunId'
                  WHERE e.name = %s AND r.lifecycle_stage = 'active'""", EXPERIMENT)
    found: dict[str, list[tuple]] = {}
    for stage, *rest in rows:
        found.setdefault(stage, []).append(tuple(rest))
    return found


def test_the_store_is_the_postgresql_database(sql):
    assert sql("SELECT version_num FROM alembic_version"), "mlflow's schema is in PostgreSQL"
    (location,), = sql("SELECT artifact_location FROM experiments WHERE name = %s", EXPERIMENT)
    assert location.startswith("mlflow-artifacts:"), location


def test_parent_run_and_stage_children_are_rows_in_postgresql(sql, xray_cohort):
    runs = runs_by_stage(sql)
    assert sorted(runs) == sorted([*STAGES, "pipeline", "score"])
    (parent_id, status, _, grandparent), = runs["pipeline"]
    assert status == "FINISHED" and grandparent is None
    for stage in STAGES:
        (_, status, _, parent), = runs[stage]
        assert (status, parent) == ("FINISHED", parent_id), stage
    (score_id, status, _, parent), = runs["score"]
    assert status == "FINISHED" and parent is None, "score is a run of its own"
    (scored,), = sql("SELECT value FROM latest_metrics WHERE run_uuid = %s AND key = 'n_studies_scored'", score_id)
    assert scored == pd.read_csv(xray_cohort / "labels.csv")["StudyInstanceUID"].nunique()


def test_the_registered_version_is_a_row_in_postgresql(sql, work):
    (register_id, *_), = runs_by_stage(sql)["register"]
    (version, run_id, status), = sql("SELECT version, run_id, status FROM model_versions WHERE name = %s", REGISTRY)
    assert (version, run_id, status) == (1, register_id, "READY")
    assert sql("SELECT alias, version FROM registered_model_aliases WHERE name = %s", REGISTRY) == [("candidate", 1)]


def test_artifacts_went_to_the_served_destination(sql, server, work, xray_cohort):
    served = server.root / "served"
    folders = {}
    for stage, [(run_id, _, artifact_uri, _)] in runs_by_stage(sql).items():
        assert artifact_uri.startswith("mlflow-artifacts:/") and run_id in artifact_uri, (stage, artifact_uri)
        folders[stage] = served / artifact_uri.removeprefix("mlflow-artifacts:/")
    assert (folders["register"] / "model_card.md").is_file() and (folders["score"] / "summary.json").is_file()
    assert (folders["evaluate"] / "plots" / "roc.png").is_file()
    assert {p.name for p in served.rglob("*") if p.is_file()} >= {"MLmodel", "best.safetensors"}
    assert not {"mlruns", "mlartifacts", "mlflow.db"} & {p.name for p in work.iterdir()}
    scored = pd.read_csv(work / "scores" / "scores.csv")
    assert len(scored) == pd.read_csv(xray_cohort / "labels.csv")["StudyInstanceUID"].nunique()


def one_line_refusal(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_a_busy_port_is_one_line_and_exit_2(postgres, server, tmp_path):
    port = server.url.rsplit(":", 1)[1]
    line = one_line_refusal(medvit("server", "--backend-store-uri", postgres.uri, "--port", port, cwd=tmp_path))
    assert line.startswith(f"medvit: --port {port}: ") and "another --port" in line


def test_an_unreachable_database_is_one_line_without_the_password(tmp_path):
    uri = f"postgresql+psycopg2://medvit:s3cret@127.0.0.1:{free_port()}/medvit"
    line = one_line_refusal(medvit("server", "--backend-store-uri", uri, "--port", str(free_port()), cwd=tmp_path))
    assert "--backend-store-uri postgresql+psycopg2://medvit:***@" in line and "cannot connect" in line
    assert "s3cret" not in line and not (tmp_path / "mlartifacts").exists()


def test_no_store_is_one_line(tmp_path):
    line = one_line_refusal(medvit("server", cwd=tmp_path))
    assert "--backend-store-uri" in line and "--postgres-data" in line


def test_postgres_data_starts_a_local_cluster_and_ctrl_c_stops_everything():
    """`medvit server --postgres-data DIR`: initdb, PostgreSQL, mlflow up; SIGINT (Ctrl-C) stops them, DIR stays."""
    root = reachable_tmpdir("medvit-pgdata-")
    user = unprivileged_user()
    try:
        args = ("--postgres-data", str(root / "pg"), *(("--postgres-user", user) if user else ()))
        with medvit_server(root, *args) as srv:
            ready = f"MLflow server on {srv.url}"
            deadline = time.monotonic() + 60
            while ready not in (root / "server.out").read_text() and time.monotonic() < deadline:
                time.sleep(0.1)  # /health answers a moment before medvit sees it and says it is ready
            assert ready in (root / "server.out").read_text(), "not ready: Ctrl-C would land mid-start"
            os.killpg(srv.proc.pid, signal.SIGINT)  # what Ctrl-C in its terminal sends
            assert srv.proc.wait(60) == 0, srv.stderr()
        out = (root / "server.out").read_text()
        assert out.startswith(f"PostgreSQL {root / 'pg'} on 127.0.0.1:"), out
        assert ready in out and out.rstrip().endswith("medvit server: stopped"), out
        assert (root / "pg" / "PG_VERSION").is_file() and not (root / "pg" / "postmaster.pid").exists()
        assert (root / "mlartifacts").is_dir(), "the default destination is under the working directory"
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(f"{srv.url}/health", timeout=5)
    finally:
        cluster = LocalPostgres(root / "pg", user)
        if cluster.data.exists():
            cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
