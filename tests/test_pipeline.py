"""End to end: `run_pipeline` on the tiny config, its MLflow run tree, the registered pyfunc, the CLI stages,
and a scan of everything MLflow holds for patient identities and the cohort's path.

The pipeline runs once (module fixture) into a sqlite store of its own; the working directory is a temporary
folder, so MLflow's default ``./mlruns`` artifact root lands there and not in the repository.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import traceback
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner
from helpers.dicom import study_folders
from helpers.pipeline import (
    REGISTRY_NAME,
    STAGES,
    capture_everything,
    find_needles,
    identity_strings,
    is_packaged_source,
    mlflow_holdings,
    sqlite_uri,
    tiny_config,
)
from mlflow import MlflowClient
from safetensors.torch import load_file

from pipelines.cli import cli
from pipelines.config import dump_config, validate_config
from pipelines.pipeline import run_pipeline
from pipelines.scoring.requests import OUTPUT_COLUMNS
from pipelines.stages.register import packaged_config, run_register
from pipelines.tracking import safe_config_yaml, safe_params, stage_params
from pipelines.training.planning import planned_config

EVALUATE_METRICS = ("auroc", "auroc_ci_low", "auroc_ci_high", "auprc", "sensitivity", "specificity", "ece")
EPOCH_METRICS = ("train_loss", "val_auroc", "lr", "images_per_sec")
FIXED_KEY = "medvit-e2e-fixed-pseudonym-key-5f1c0e9a7b3d4c2e8a6f"
PLOTS = {"roc.png", "pr.png", "reliability.png", "confusion.png", "score_histogram.png"}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A scratch working directory for the whole module (MLflow's ./mlruns goes here)."""
    path = tmp_path_factory.mktemp("pipeline_cwd")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(path)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.delenv("MEDVIT_TEST_NO_SUCH_ENV", raising=False)
        yield path


@pytest.fixture(scope="module")
def piped(xray_cohort, tmp_path_factory, workdir):
    """One `run_pipeline` on the tiny config, with everything it printed, logged or warned captured."""
    store = tmp_path_factory.mktemp("pipeline_store")
    out = tmp_path_factory.mktemp("pipeline_out")
    uri = sqlite_uri(store)
    config = tiny_config(xray_cohort, out, uri)
    # a fixed pseudonymization key: the patient-grouped splits (and so the val AUROC) are the same every run
    (out / ".pseudonym_key").write_text(FIXED_KEY)
    with capture_everything() as captured:
        result = run_pipeline(config, progress=True)
    return {"config": config, "result": result, "uri": uri, "client": MlflowClient(tracking_uri=uri),
            "captured": captured, "out": out, "store": store}


def _runs(piped):
    client = piped["client"]
    exp = client.get_experiment_by_name(piped["config"].tracking.experiment)
    return client.search_runs([exp.experiment_id], max_results=1000)


def _children(piped) -> dict[str, mlflow.entities.Run]:
    parent = piped["result"].run_id
    kids = [r for r in _runs(piped) if r.data.tags.get("mlflow.parentRunId") == parent]
    by_stage = {r.data.tags.get("medvit.stage"): r for r in kids}
    assert len(by_stage) == len(kids), [r.data.tags.get("medvit.stage") for r in kids]
    return by_stage


# ---- 1. the run tree ------------------------------------------------------------------------------------
def test_one_parent_run_with_exactly_the_four_stage_children(piped):
    runs = _runs(piped)
    parents = [r for r in runs if r.data.tags.get("medvit.stage") == "pipeline"]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.run_id == piped["result"].run_id
    assert "mlflow.parentRunId" not in parent.data.tags
    assert parent.info.status == "FINISHED"
    children = _children(piped)
    assert sorted(children) == sorted(STAGES)
    for stage, run in children.items():
        assert run.info.status == "FINISHED", stage
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["medvit.config"] == "test_xray"
    result = piped["result"]
    assert children["train"].info.run_id == result.train.run_id
    assert children["evaluate"].info.run_id == result.evaluate.run_id
    assert children["register"].info.run_id == result.register.run_id


def test_each_run_logs_the_params_of_its_stage_and_the_parent_the_whole_resolved_config(piped):
    client = piped["client"]
    children = _children(piped)
    parent = client.get_run(piped["result"].run_id)
    given = piped["config"]
    planned = planned_config(given)  # train.plan: auto: from train on, the plan applied
    assert safe_params(planned) != safe_params(given)
    assert parent.data.params == stage_params(planned, "pipeline")
    for stage, run in children.items():
        params = {k: v for k, v in run.data.params.items() if not k.startswith("plan.")}  # train: the plan too
        assert params == stage_params(given if stage == "ingest" else planned, stage), stage
    for run in [parent, *children.values()]:
        params = run.data.params
        assert not any(k.startswith(("pretrain.", "preprocess.mri.")) for k in params), run.info.run_name
        assert params["data.kind"] == "xray"
        assert not any("." not in k and k != "name" for k in params), "params must be flattened section.key"
        text = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="config.yaml",
                                                        tracking_uri=piped["uri"])).read_text()
        logged = yaml.safe_load(text)
        assert logged["train"]["epochs"] == 2 and logged["model"]["preset"] == "vit_tiny"
        assert logged["data"]["dicom_root"] == "<path>"
    assert parent.data.params["train.epochs"] == children["train"].data.params["train.epochs"] == "2"
    assert parent.data.params["model.embed_dim"] == "32" and parent.data.params["preprocess.xray.img_size"] == "32"
    assert parent.data.params["data.dicom_root"] == parent.data.params["output.dir"] == "<path>"
    assert parent.data.params["tracking.uri"] == "sqlite:<path>"
    assert children["ingest"].data.params["data.dicom_root"] == "<path>"
    assert not any(k.startswith(("model.", "train.")) for k in children["ingest"].data.params)
    assert not any(k.startswith(("train.", "split.", "data.dicom_root")) for k in children["register"].data.params)
    assert "registry.name" in children["register"].data.params


def test_train_run_has_one_value_per_epoch_of_each_epoch_metric(piped):
    client = piped["client"]
    train = _children(piped)["train"]
    result = piped["result"].train
    assert result.epochs_run == 2
    for name in EPOCH_METRICS:
        history = client.get_metric_history(train.info.run_id, name)
        assert [m.step for m in sorted(history, key=lambda m: m.step)] == [1, 2], name
        for m in history:
            assert math.isfinite(m.value), (name, m.step)
            assert m.value == pytest.approx(result.history[m.step - 1][name], rel=1e-6), (name, m.step)
    lrs = [m.value for m in client.get_metric_history(train.info.run_id, "lr")]
    assert all(v > 0 for v in lrs)
    assert all(m.value > 0 for m in client.get_metric_history(train.info.run_id, "images_per_sec"))
    assert train.data.metrics["best_epoch"] == result.best_epoch
    assert [i.dataset.digest for i in train.inputs.dataset_inputs] == [piped["result"].ingest.digest]


def test_evaluate_run_has_test_metrics_and_plots(piped):
    client = piped["client"]
    evaluate = _children(piped)["evaluate"]
    metrics = evaluate.data.metrics
    for name in EVALUATE_METRICS:
        assert name in metrics, name
    assert 0 <= metrics["auroc_ci_low"] <= metrics["auroc"] <= metrics["auroc_ci_high"] <= 1
    for name in ("auprc", "sensitivity", "specificity", "ece"):
        assert 0 <= metrics[name] <= 1, name
    assert metrics["auroc"] == pytest.approx(piped["result"].evaluate.metrics["auroc"])
    plots = {Path(a.path).name for a in client.list_artifacts(evaluate.info.run_id, "plots")}
    assert plots == PLOTS
    local = Path(mlflow.artifacts.download_artifacts(run_id=evaluate.info.run_id, artifact_path="plots",
                                                     tracking_uri=piped["uri"]))
    for name in PLOTS:
        data = (local / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000, name
    top = {a.path for a in client.list_artifacts(evaluate.info.run_id)}
    assert {"metrics.json", "by_modality.csv", "by_manufacturer.csv", "config.yaml"} <= top
    assert "predictions.csv" not in top, "the study list stays local"


def test_ingest_run_has_the_manifest_dataset_and_the_data_card(piped):
    client = piped["client"]
    ingest = _children(piped)["ingest"]
    inputs = ingest.inputs.dataset_inputs
    assert len(inputs) == 1
    dataset = inputs[0].dataset
    assert dataset.name == "manifest" and dataset.digest == piped["result"].ingest.digest
    assert json.loads(dataset.source) == {"uri": "manifest.parquet"}
    assert json.loads(dataset.profile)["num_rows"] == len(piped["result"].ingest.manifest) == 24
    columns = {c["name"] for c in json.loads(dataset.schema)["mlflow_colspec"]}
    assert "patient_key" in columns and "files" not in columns
    assert {t.key: t.value for t in inputs[0].tags}.get("mlflow.data.context") == "ingest"
    arts = {a.path for a in client.list_artifacts(ingest.info.run_id)}
    assert {"data_card.md", "errors_summary.json", "config.yaml"} <= arts
    card = Path(mlflow.artifacts.download_artifacts(run_id=ingest.info.run_id, artifact_path="data_card.md",
                                                    tracking_uri=piped["uri"])).read_text()
    assert card == piped["result"].ingest.data_card_path.read_text()
    assert ingest.data.metrics["studies"] == 24
    assert ingest.data.tags["medvit.manifest_digest"] == dataset.digest


def test_register_run_registers_a_version_with_the_candidate_alias_and_a_model_card(piped):
    client = piped["client"]
    register = _children(piped)["register"]
    result = piped["result"].register
    assert result.registered_name == REGISTRY_NAME and result.alias == "candidate"
    assert result.model_uri == f"models:/{REGISTRY_NAME}@candidate"
    version = client.get_model_version_by_alias(REGISTRY_NAME, "candidate")
    assert str(version.version) == result.version
    assert version.run_id == register.info.run_id
    assert "AUROC" in (version.description or "")
    assert f"v{version.version}" in version.description
    arts = {a.path for a in client.list_artifacts(register.info.run_id)}
    assert "model_card.md" in arts
    card = Path(mlflow.artifacts.download_artifacts(run_id=register.info.run_id, artifact_path="model_card.md",
                                                    tracking_uri=piped["uri"])).read_text()
    assert card == version.description
    assert "## Training plan" in card and "| `augment.prob` | 0.7 | planned |" in card  # train.plan: auto
    assert register.data.tags["medvit.registered_model"] == f"{REGISTRY_NAME}/{version.version}"
    assert register.data.tags["medvit.alias"] == "candidate"
    logged = [m for m in client.search_logged_models([register.info.experiment_id])
              if m.source_run_id == register.info.run_id]
    assert len(logged) == 1 and version.source == f"models:/{logged[0].model_id}"


# ---- 2. the pyfunc ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def candidate_scores(piped, xray_cohort):
    mlflow.set_tracking_uri(piped["uri"])
    model = mlflow.pyfunc.load_model(f"models:/{REGISTRY_NAME}@candidate")
    return model, model.predict(pd.DataFrame({"path": study_folders(xray_cohort)}))


def test_registered_pyfunc_scores_every_study_of_the_cohort(candidate_scores, xray_cohort, piped):
    _, scores = candidate_scores
    labels = pd.read_csv(xray_cohort / "labels.csv")
    assert list(scores.columns) == [name for name, _ in OUTPUT_COLUMNS]
    assert len(scores) == len(labels) == 24 and (scores["status"] == "ok").all()
    assert set(scores["StudyInstanceUID"]) == set(labels["StudyInstanceUID"])
    assert scores["StudyInstanceUID"].is_unique
    assert scores["score"].between(0, 1).all() and scores["score"].notna().all()
    assert set(scores["prediction"]) <= {"normal", "abnormal"}
    assert (scores["n_series"] >= 1).all() and scores["n_series"].sum() == len(piped["result"].ingest.manifest)
    threshold = piped["result"].evaluate.threshold
    assert ((scores["score"] >= threshold) == (scores["prediction"] == "abnormal")).all()


def test_local_model_folder_gives_identical_scores(candidate_scores, xray_cohort, piped):
    _, registered = candidate_scores
    local = mlflow.pyfunc.load_model(str(piped["out"] / "model"))
    scores = local.predict(pd.DataFrame({"path": study_folders(xray_cohort)}))
    pd.testing.assert_frame_equal(registered, scores, check_exact=True)


def test_one_row_per_request_in_input_order_and_bad_rows_are_error_rows(candidate_scores, xray_cohort, tmp_path):
    model, scores = candidate_scores
    folders = study_folders(xray_cohort)
    backwards = model.predict(pd.DataFrame({"path": folders[::-1]}))
    pd.testing.assert_frame_equal(backwards, scores[::-1].reset_index(drop=True), check_exact=True)
    one_file = next(Path(folders[0]).rglob("*.dcm"))
    (tmp_path / "notes.txt").write_text("not DICOM")
    requests = pd.DataFrame({
        "path": [folders[1], str(tmp_path / "no" / "such" / "folder"), None, str(xray_cohort / "dicom"),
                 str(tmp_path / "notes.txt"), None],
        "dicom": [None, None, one_file.read_bytes(), None, None, None]})
    got = model.predict(requests)
    assert list(got["status"]) == ["ok", "not_found", "ok", "several_studies", "not_dicom", "no_input"]
    assert got.loc[0, "StudyInstanceUID"] == scores.loc[1, "StudyInstanceUID"]
    assert got.loc[0, "score"] == scores.loc[1, "score"]
    assert got.loc[2, "StudyInstanceUID"] == scores.loc[0, "StudyInstanceUID"]  # bytes in: the same study
    assert abs(got.loc[2, "score"] - scores.loc[0, "score"]) < 1e-6 and scores.loc[0, "n_series"] == 1
    assert got.loc[1:, "score"].drop(2).isna().all() and (got.loc[[1, 3, 4, 5], "n_series"] == 0).all()
    assert all(got.loc[i, "message"] for i in (1, 3, 4, 5))  # every error row says why


def _assert_no_pickles_and_safetensors_weights(folder: Path, best: Path):
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert files
    pickles = [p for p in files if p.suffix in (".pkl", ".pickle") or p.name == "python_model.pkl"]
    assert pickles == []
    for p in files:  # no pickle stream under another name either (protocol 2+ starts with 0x80 0x02..0x05)
        head = p.read_bytes()[:2]
        assert not (len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5), p
    weights = [p for p in files if p.suffix == ".safetensors"]
    assert [p.name for p in weights] == ["best.safetensors"]
    assert weights[0].read_bytes() == best.read_bytes()
    assert load_file(str(weights[0]))
    mlmodel = yaml.safe_load((folder / "MLmodel").read_text())
    flavor = mlmodel["flavors"]["python_function"]
    assert flavor["loader_module"] == "mlflow.pyfunc.loaders.code_model", "models-from-code, not a pickle"
    assert "python_model" not in flavor
    assert set(flavor["artifacts"]) == {"weights", "config", "meta"}
    meta = json.loads((folder / flavor["artifacts"]["meta"]["path"]).read_text())
    assert 0 <= meta["threshold"] <= 1 and meta["kind"] == "xray"


def test_model_folders_hold_no_pickle_and_safetensors_weights(piped, tmp_path):
    best = piped["out"] / "train" / "best.safetensors"
    _assert_no_pickles_and_safetensors_weights(piped["out"] / "model", best)
    mlflow.set_tracking_uri(piped["uri"])
    registered = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{REGISTRY_NAME}@candidate",
                                                          dst_path=str(tmp_path / "registered")))
    _assert_no_pickles_and_safetensors_weights(registered, best)
    packaged = yaml.safe_load((registered / "artifacts" / "config.yaml").read_text())
    assert packaged["data"]["dicom_root"] == "." and packaged["data"]["labels"] is None
    assert packaged["output"]["dir"] == "."


# ---- 5. PHI: nothing identifying in anything MLflow holds, printed or logged -------------------------------
@pytest.fixture(scope="module")
def holdings(piped, tmp_path_factory):
    dst = tmp_path_factory.mktemp("holdings")
    return mlflow_holdings(piped["uri"], piped["config"].tracking.experiment, dst)


def test_scanner_finds_a_planted_identity_in_text_and_binary():
    blobs = {"a.png": b"\x89PNG\x00\x13MILLER\x00", "b.txt": b"nothing here"}
    assert find_needles(blobs, ["MILLER", "PID1"]) == [("a.png", "MILLER")]


def test_mlflow_holds_no_identity_and_not_the_cohort_path(piped, holdings, xray_cohort):
    secrets = identity_strings(xray_cohort)
    assert len(secrets) >= 24 * 3, "the synthetic cohort must list its identities"
    scanned = {k: v for k, v in holdings.items() if not is_packaged_source(k, v)}
    exempt = sorted(set(holdings) - set(scanned))
    assert all("/code/" in k and k.endswith(".py") for k in exempt), exempt
    # the collector saw everything it should: every run's artifacts, the logged and the registered model
    labels = "\n".join(scanned)
    for needle in ("data_card.md", "plots/roc.png", "model_card.md", "summary.json", "MLmodel",
                   "artifacts/best.safetensors", "description", "dataset 0", "params", "tags"):
        assert needle in labels, needle
    assert any(k.startswith("registered") and k.endswith("artifacts/best.safetensors") for k in scanned)
    assert any(k.startswith("logged model") and k.endswith("artifacts/best.safetensors") for k in scanned)
    leaks = find_needles(scanned, secrets)
    assert leaks == [], f"identity strings reached MLflow: {leaks[:20]}"
    cohort_paths = {str(xray_cohort), str(xray_cohort.resolve()), str(xray_cohort / "dicom")}
    leaks = find_needles(scanned, cohort_paths)
    assert leaks == [], f"the cohort's absolute path reached MLflow: {leaks[:20]}"


def test_mlflow_holds_no_study_uid_and_not_the_pseudonym_key(piped, holdings, xray_cohort):
    """The study list stays local (evaluate's contract) and the pseudonymization key never leaves OUTPUT."""
    scanned = {k: v for k, v in holdings.items() if not is_packaged_source(k, v)}
    uids = pd.read_csv(xray_cohort / "labels.csv")["StudyInstanceUID"].tolist()
    assert find_needles(scanned, uids) == []
    key = (piped["out"] / ".pseudonym_key").read_bytes().strip()
    assert len(key) >= 32
    assert find_needles(scanned, [key]) == []


def test_local_model_folder_holds_no_identity(piped, xray_cohort):
    folder = piped["out"] / "model"
    blobs = {f"model/{p.relative_to(folder).as_posix()}": p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    scanned = {k: v for k, v in blobs.items() if not is_packaged_source(k, v)}
    assert "model/artifacts/best.safetensors" in scanned and "model/model_card.md" in scanned
    assert find_needles(scanned, identity_strings(xray_cohort)) == []
    assert find_needles(scanned, [str(xray_cohort)]) == []


def test_run_output_and_logs_hold_no_identity(piped, xray_cohort):
    captured = piped["captured"]
    blobs = captured.blobs()
    assert "epoch 2:" in captured.stdout, "progress output was captured"
    assert find_needles(blobs, identity_strings(xray_cohort)) == []


def test_no_absolute_output_path_reaches_mlflow(piped, holdings):
    scanned = {k: v for k, v in holdings.items() if not is_packaged_source(k, v)}
    out = str(piped["out"])
    leaks = sorted({label for label, _ in find_needles(scanned, [out])})
    assert leaks == [], f"OUTPUT dir {out} appears in: {leaks}"


def test_tracking_uri_is_not_logged_verbatim(xray_cohort, tmp_path):
    uri = "http://alice:s3cr3t-token@mlflow.internal.example:5000"
    config = tiny_config(xray_cohort, tmp_path / "out", uri)
    assert "s3cr3t-token" not in safe_params(config)["tracking.uri"]
    assert "s3cr3t-token" not in safe_config_yaml(config)
    assert "s3cr3t-token" not in packaged_config(config)


def test_a_patient_named_folder_does_not_reach_the_params(xray_cohort, tmp_path):
    name = next(s for s in identity_strings(xray_cohort) if "^" in s)  # a PatientName of the cohort
    folder = tmp_path / name  # e.g. a folder exported for one patient: /exports/MILLER^ELENA
    folder.symlink_to(xray_cohort / "dicom", target_is_directory=True)
    raw = tiny_config(xray_cohort, tmp_path / "out", sqlite_uri(tmp_path)).model_dump(mode="json")
    raw["data"]["dicom_root"] = str(folder)
    config = validate_config(raw)
    assert name not in "\n".join(safe_params(config).values())
    assert name not in safe_config_yaml(config)


# ---- 4. each stage alone via the CLI ----------------------------------------------------------------------
def _invoke(args: list[str]):
    result = CliRunner().invoke(cli, args, catch_exceptions=True)
    tb = "".join(traceback.format_exception(*result.exc_info)) if result.exc_info and result.exit_code not in (
        0, 2, 3) else ""
    return result, f"exit {result.exit_code}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}\n{tb}"


def _config_file(config, path: Path) -> Path:
    path.write_text(dump_config(config))
    return path


def _copy_output(src: Path, dst: Path, *names: str) -> Path:
    dst.mkdir(parents=True)
    for name in names:
        if (src / name).is_dir():
            shutil.copytree(src / name, dst / name)
        else:
            shutil.copy2(src / name, dst / name)
    return dst


SUMMARY_ROWS = {
    "ingest": ("files scanned", "series", "studies", "patients", "split: train", "manifest", "data card"),
    "train": ("epochs run", "best epoch", "best val AUROC", "last train loss", "best model", "MLflow run"),
    "evaluate": ("AUROC (95% CI)", "AUPRC", "threshold", "sensitivity / specificity", "ECE", "MLflow run"),
    "register": ("registered model", "alias", "model URI", "local model folder", "MLflow run"),
}


def test_each_stage_alone_via_the_cli(xray_cohort, tmp_path_factory, workdir):
    store = tmp_path_factory.mktemp("cli_store")
    out = tmp_path_factory.mktemp("cli_out") / "run"
    uri = sqlite_uri(store)
    config = _config_file(tiny_config(xray_cohort, out, uri, registry="medvit_cli"), store / "config.yaml")
    run_ids = {}
    for stage in STAGES:
        extra = ["--set", "train.epochs=1"] if stage == "train" else []
        result, info = _invoke([stage, "--config", str(config), *extra])
        assert result.exit_code == 0, info
        lines = result.stdout.strip().splitlines()
        title = next(i for i, line in enumerate(lines) if line.startswith(f"{stage} test_xray"))
        assert set(lines[title + 1]) == {"-"}, info
        keys = {line.split("  ")[0].strip() for line in lines[title + 2:]}
        assert set(SUMMARY_ROWS[stage]) <= keys, (stage, keys)
        if stage != "ingest":
            run_ids[stage] = next(line.split()[-1] for line in lines if line.startswith("MLflow run"))
    assert (out / "manifest.parquet").is_file() and (out / "model" / "MLmodel").is_file()

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("medvit_e2e")
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.data.tags["medvit.stage"] for r in runs) == sorted(STAGES)
    for run in runs:  # a stage run on its own is a top-level run with the stage tag
        assert "mlflow.parentRunId" not in run.data.tags, run.info.run_name
        assert run.info.status == "FINISHED"
    by_stage = {r.data.tags["medvit.stage"]: r for r in runs}
    assert {s: by_stage[s].info.run_id for s in run_ids} == run_ids
    assert by_stage["train"].data.params["train.epochs"] == "1", "--set reaches the logged params"
    assert by_stage["evaluate"].data.params["evaluate.bootstrap"] == "100"
    assert "train.epochs" not in by_stage["ingest"].data.params, "ingest logs the keys it reads only"
    assert len(client.get_metric_history(by_stage["train"].info.run_id, "train_loss")) == 1
    version = client.get_model_version_by_alias("medvit_cli", "candidate")
    assert version.run_id == by_stage["register"].info.run_id


OUT_OF_ORDER = {
    # stage: (files copied from the pipeline's OUTPUT, the missing file the one line must name)
    "train": ((), "manifest.parquet"),
    "evaluate": ((".pseudonym_key", "manifest.parquet"), "best.safetensors"),
    "register": ((".pseudonym_key", "manifest.parquet", "train"), "metrics.json"),
}


@pytest.mark.parametrize("stage", sorted(OUT_OF_ORDER))
def test_a_stage_out_of_order_is_one_line_and_exit_2(stage, piped, xray_cohort, tmp_path):
    copied, missing = OUT_OF_ORDER[stage]
    out = _copy_output(piped["out"], tmp_path / "out", *copied)
    uri = sqlite_uri(tmp_path)
    config = _config_file(tiny_config(xray_cohort, out, uri), tmp_path / "config.yaml")
    result, info = _invoke([stage, "--config", str(config)])
    assert result.exit_code == 2, info
    assert result.stdout == "", info
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, info
    assert lines[0].startswith("medvit: ") and missing in lines[0] and str(out) in lines[0], info
    assert "Traceback" not in result.output
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("medvit_e2e")
    assert exp is None or client.search_runs([exp.experiment_id]) == [], "a refused stage leaves no run"


def test_console_script_evaluate_before_train_is_one_line_without_traceback(piped, xray_cohort, tmp_path):
    out = _copy_output(piped["out"], tmp_path / "out", ".pseudonym_key", "manifest.parquet")
    config = _config_file(tiny_config(xray_cohort, out, sqlite_uri(tmp_path)), tmp_path / "config.yaml")
    medvit = Path(sys.executable).parent / "medvit"
    proc = subprocess.run([str(medvit), "evaluate", "--config", str(config)], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "best.safetensors" in lines[0] and "medvit train" in lines[0], proc.stderr


# ---- 3. a second registration with another alias (last: it adds a version and a top-level run) -----------
def test_register_with_champion_alias_adds_a_version_and_moves_the_alias(piped):
    client = piped["client"]
    config = piped["config"]
    before = {int(v.version) for v in client.search_model_versions(f"name='{REGISTRY_NAME}'")}
    first = run_register(config, alias="champion")
    assert first.alias == "champion" and first.model_uri == f"models:/{REGISTRY_NAME}@champion"
    assert int(first.version) == max(before) + 1
    assert str(client.get_model_version_by_alias(REGISTRY_NAME, "champion").version) == first.version
    assert str(client.get_model_version_by_alias(REGISTRY_NAME, "candidate").version) == piped["result"].register.version
    second = run_register(config, alias="champion")
    assert int(second.version) == int(first.version) + 1
    assert str(client.get_model_version_by_alias(REGISTRY_NAME, "champion").version) == second.version, "moved"
    assert str(client.get_registered_model(REGISTRY_NAME).aliases["champion"]) == second.version
    for reg in (first, second):
        run = client.get_run(reg.run_id)
        assert run.data.tags["medvit.stage"] == "register" and "mlflow.parentRunId" not in run.data.tags
        assert run.data.tags["medvit.alias"] == "champion"
    mlflow.set_tracking_uri(piped["uri"])
    champion = mlflow.pyfunc.load_model(f"models:/{REGISTRY_NAME}@champion")
    assert champion.metadata.run_id == second.run_id
