"""The tiny pipeline against a real `mlflow server` (sqlite backend, proxied artifacts) on a free local port:
run tree, registry alias and the pyfunc loaded back through the server."""

from __future__ import annotations

import json
import urllib.request

import mlflow
import pandas as pd
import pytest
from helpers.dicom import study_folders
from helpers.pipeline import REGISTRY_NAME, STAGES, mlflow_server, tiny_config
from mlflow import MlflowClient

from pipelines.pipeline import run_pipeline
from pipelines.scoring.requests import OUTPUT_COLUMNS


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow_server")
    with mlflow_server(root) as srv:
        yield srv
    assert srv.proc.poll() is not None, "the server must be stopped"


@pytest.fixture(scope="module")
def served(server, xray_cohort, tmp_path_factory):
    cwd = tmp_path_factory.mktemp("server_cwd")
    out = tmp_path_factory.mktemp("server_out")
    config = tiny_config(xray_cohort, out, server.url)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        result = run_pipeline(config)
    return {"config": config, "result": result, "client": MlflowClient(tracking_uri=server.url), "cwd": cwd}


def test_server_answers_health(server):
    with urllib.request.urlopen(f"{server.url}/health", timeout=10) as response:
        assert response.status == 200 and response.read().strip() == b"OK"


def test_run_tree_through_the_server(served):
    client = served["client"]
    exp = client.get_experiment_by_name(served["config"].tracking.experiment)
    assert exp.artifact_location.startswith("mlflow-artifacts:"), exp.artifact_location
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("medvit.stage") == "pipeline"]
    assert [p.info.run_id for p in parents] == [served["result"].run_id]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert sorted(r.data.tags["medvit.stage"] for r in children) == sorted(STAGES)
    assert len(runs) == 1 + len(STAGES)
    by_stage = {r.data.tags["medvit.stage"]: r for r in children}
    assert all(r.info.status == "FINISHED" for r in runs)
    assert by_stage["train"].data.params["train.epochs"] == "2"
    assert len(client.get_metric_history(by_stage["train"].info.run_id, "val_auroc")) == 2
    assert "auroc" in by_stage["evaluate"].data.metrics
    assert by_stage["ingest"].inputs.dataset_inputs[0].dataset.digest == served["result"].ingest.digest
    plots = {a.path for a in client.list_artifacts(by_stage["evaluate"].info.run_id, "plots")}
    assert "plots/roc.png" in plots
    assert "model_card.md" in {a.path for a in client.list_artifacts(by_stage["register"].info.run_id)}


def test_review_record_through_the_server(served):
    """Names, notes, headline metrics on the parent, version tags and logged-model metrics over HTTP too."""
    client, result = served["client"], served["result"]
    parent = client.get_run(result.run_id)
    assert parent.info.run_name.startswith("test_xray vit_tiny ")
    assert parent.data.metrics["auroc"] == pytest.approx(result.evaluate.metrics["auroc"])
    assert parent.data.tags["mlflow.note.content"].startswith("vit_tiny on test_xray: test AUROC")
    assert parent.data.params["train.epochs"] == "2" and "pretrain.epochs" not in parent.data.params
    version = client.get_model_version(REGISTRY_NAME, result.register.version)
    assert version.tags["metric.auroc"] == f"{result.evaluate.metrics['auroc']:.4f}"
    logged = client.get_logged_model(version.source.removeprefix("models:/"))
    assert {m.key: m.dataset_name for m in logged.metrics}["auroc"] == "test split"
    mlmodel = mlflow.artifacts.load_text(f"{logged.artifact_location}/MLmodel")
    assert "model_code_path: pyfunc_model.py" in mlmodel


def test_artifacts_went_to_the_server_not_the_working_directory(served, server):
    stored = {p.name for p in (server.root / "artifacts").rglob("*") if p.is_file()}
    assert {"model_card.md", "data_card.md", "best.safetensors", "MLmodel", "roc.png"} <= stored
    assert not (served["cwd"] / "mlruns").exists() and not (served["cwd"] / "mlflow.db").exists()


def test_registered_alias_through_the_server(served):
    client = served["client"]
    register = served["result"].register
    version = client.get_model_version_by_alias(REGISTRY_NAME, "candidate")
    assert str(version.version) == register.version
    assert version.run_id == register.run_id
    assert "AUROC" in version.description
    assert client.get_registered_model(REGISTRY_NAME).aliases == {"candidate": version.version}


def test_pyfunc_loads_and_predicts_through_the_server(served, server, xray_cohort):
    mlflow.set_tracking_uri(server.url)
    model = mlflow.pyfunc.load_model(f"models:/{REGISTRY_NAME}@candidate")
    assert model.metadata.run_id == served["result"].register.run_id
    scores = model.predict(pd.DataFrame({"path": study_folders(xray_cohort)}))
    labels = pd.read_csv(xray_cohort / "labels.csv")
    assert list(scores.columns) == [name for name, _ in OUTPUT_COLUMNS]
    assert sorted(scores["StudyInstanceUID"]) == sorted(labels["StudyInstanceUID"])
    assert scores["score"].between(0, 1).all() and set(scores["prediction"]) <= {"normal", "abnormal"}
    local = mlflow.pyfunc.load_model(str(served["result"].register.local_model))
    same = local.predict(pd.DataFrame({"path": study_folders(xray_cohort)}))
    pd.testing.assert_frame_equal(scores, same, check_exact=True)
    meta = json.loads((served["result"].register.local_model / "artifacts" / "meta.json").read_text())
    assert ((scores["score"] >= meta["threshold"]) == (scores["prediction"] == "abnormal")).all()
