"""What a reviewer sees in MLflow: two `medvit run`s (a tiny ViT and a tiny CNN) into one real sqlite store.

Names that tell runs apart, tags to filter on, notes, params per stage, headline metrics on the parents, the
registered versions' metrics and tags, the logged models' metrics with the test split, a model card that renders,
no temporary path in ``MLmodel``, ``medvit compare``, and the PHI scan over all of it.
"""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib.image
import mlflow
import pytest
import yaml
from click.testing import CliRunner
from helpers.pipeline import (
    capture_everything,
    find_needles,
    identity_strings,
    is_packaged_source,
    mlflow_holdings,
    sqlite_uri,
    tiny_config,
)
from mlflow import MlflowClient

from pipelines.cli import cli
from pipelines.config import ModelConfig
from pipelines.pipeline import run_pipeline
from pipelines.reporting.review import TEST_HEADLINE
from pipelines.tracking import NOTE_TAG

REPO = Path(__file__).resolve().parent.parent
REGISTRY = "review_model"
EXPERIMENT = "review"
STAMP = re.compile(r" \d{4}-\d{4} [0-9a-f]{4}$")


@pytest.fixture(scope="module")
def reviewed(xray_cohort, tmp_path_factory):
    """A ViT run and a CNN run of the same cohort, one store, one registered model (versions 1 and 2)."""
    store = tmp_path_factory.mktemp("review_store")
    uri = sqlite_uri(store)
    results = {}
    with pytest.MonkeyPatch.context() as mp, capture_everything() as captured:
        mp.chdir(store)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        for name, model in (("vit", None), ("cnn", ModelConfig(arch="resnet18"))):
            config = tiny_config(xray_cohort, tmp_path_factory.mktemp(f"review_{name}"), uri, registry=REGISTRY,
                                 experiment=EXPERIMENT)
            if model is not None:
                config = config.model_copy(update={"model": model})
            results[name] = run_pipeline(config)
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id], max_results=100)
    return {"results": results, "uri": uri, "client": client, "runs": runs, "store": store, "captured": captured}


def _parent(reviewed, name):
    return reviewed["client"].get_run(reviewed["results"][name].run_id)


def _children(reviewed, name):
    parent = reviewed["results"][name].run_id
    return {r.data.tags["medvit.stage"]: r for r in reviewed["runs"] if r.data.tags.get("mlflow.parentRunId") == parent}


def test_two_runs_have_names_that_tell_config_model_and_time_apart(reviewed):
    vit, cnn = _parent(reviewed, "vit"), _parent(reviewed, "cnn")
    assert vit.info.run_name != cnn.info.run_name
    assert vit.info.run_name.startswith("test_xray vit_tiny ") and STAMP.search(vit.info.run_name)
    assert cnn.info.run_name.startswith("test_xray resnet18 ") and STAMP.search(cnn.info.run_name)
    stamp = STAMP.search(vit.info.run_name).group()
    children = _children(reviewed, "vit")
    assert children["ingest"].info.run_name == f"ingest test_xray{stamp}", "ingest trains no model"
    for stage in ("train", "evaluate", "register"):
        assert children[stage].info.run_name == f"{stage} test_xray vit_tiny{stamp}"
    names = [r.info.run_name for r in reviewed["runs"]]
    assert len(set(names)) == len(names) == 10


def test_runs_carry_the_tags_a_reviewer_filters_on(reviewed):
    client, exp = reviewed["client"], reviewed["runs"][0].info.experiment_id
    for run in reviewed["runs"]:
        tags = run.data.tags
        assert tags["data.kind"] == "xray" and tags["medvit.config"] == "test_xray"
        assert tags["medvit.version"] and tags["medvit.stage"] in ("pipeline", "ingest", "train", "evaluate",
                                                                    "register")
        assert ("model.arch" in tags) == (tags["medvit.stage"] != "ingest")
        if (REPO / ".git").exists():
            assert re.fullmatch(r"[0-9a-f]{40}", tags["mlflow.source.git.commit"])
    cnn_parents = client.search_runs([exp], "tags.`model.arch` = 'resnet18' and tags.`medvit.stage` = 'pipeline'")
    assert [r.info.run_id for r in cnn_parents] == [reviewed["results"]["cnn"].run_id]


def test_every_run_has_a_note_written_from_what_it_did(reviewed):
    result = reviewed["results"]["vit"]
    children = _children(reviewed, "vit")
    notes = {stage: run.data.tags[NOTE_TAG] for stage, run in children.items()}
    assert notes["ingest"].startswith("ingest: 24 xray series of 24 studies")
    assert notes["train"].startswith("train: vit_tiny at 32x32 px, ") and "best val AUROC" in notes["train"]
    assert f"at epoch {result.train.best_epoch} of 2" in notes["train"] and re.search(r", \d+ s$", notes["train"])
    assert notes["evaluate"].startswith(f"evaluate: test AUROC {result.evaluate.metrics['auroc']:.3f} (95% CI")
    assert notes["register"].startswith(f"register: {REGISTRY} version 1 (alias candidate)")
    parent_note = _parent(reviewed, "vit").data.tags[NOTE_TAG]
    assert parent_note.startswith("vit_tiny on test_xray: test AUROC ") and f"{REGISTRY} v1 @candidate" in parent_note
    assert all("\n" not in note for note in notes.values())
    exp = reviewed["client"].get_experiment_by_name(EXPERIMENT)
    assert "medvit compare" in exp.tags[NOTE_TAG]
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development", "the UI opens on the training runs"


def test_parents_carry_the_headline_metrics_and_compare_side_by_side(reviewed):
    client, exp = reviewed["client"], reviewed["runs"][0].info.experiment_id
    parents = client.search_runs([exp], "tags.`medvit.stage` = 'pipeline'", order_by=["metrics.auroc DESC"])
    assert {p.info.run_id for p in parents} == {r.run_id for r in reviewed["results"].values()}
    for name, result in reviewed["results"].items():
        metrics = _parent(reviewed, name).data.metrics
        evaluate = _children(reviewed, name)["evaluate"].data.metrics
        for key in (*TEST_HEADLINE, "threshold"):
            assert metrics[key] == pytest.approx(evaluate[key]), (name, key)
        assert metrics["best_val_auroc"] == pytest.approx(result.train.best_val_auroc, nan_ok=True)
        assert metrics["train_minutes"] > 0 and metrics["n_test_studies"] == result.evaluate.metrics["n"]
        groups = [k for k in metrics if k.startswith("auroc.manufacturer.") or k.startswith("auroc.modality.")]
        assert groups and all(re.fullmatch(r"auroc\.(manufacturer|modality)\.[A-Za-z0-9_\-]+", k) for k in groups)
        assert set(groups) <= set(evaluate), "the evaluate run has the per-group AUROCs too"


def test_each_stage_logs_the_params_it_reads_only(reviewed):
    children = _children(reviewed, "cnn")
    assert "model.arch" in children["train"].data.params and "split.val" not in children["train"].data.params
    assert not any(k.startswith("model.") for k in children["ingest"].data.params)
    assert "registry.name" in children["register"].data.params
    parent = _parent(reviewed, "cnn").data.params
    assert parent["model.arch"] == "resnet18" and "split.val" in parent and "registry.name" in parent
    for run in reviewed["runs"]:
        assert not any(k.startswith(("pretrain.", "preprocess.mri.")) for k in run.data.params), run.info.run_name


def test_registered_versions_carry_metrics_tags_and_a_description(reviewed):
    client = reviewed["client"]
    assert "medvit xray classifier" in client.get_registered_model(REGISTRY).description
    for name, number in (("vit", "1"), ("cnn", "2")):
        result = reviewed["results"][name]
        version = client.get_model_version(REGISTRY, number)
        assert version.run_id == result.register.run_id
        assert version.tags["metric.auroc"] == f"{result.evaluate.metrics['auroc']:.4f}"
        assert version.tags["metric.threshold"] == f"{result.evaluate.threshold:.4f}"
        assert {"metric.sensitivity", "metric.specificity", "metric.auroc_ci_low", "metric.train_minutes"} <= set(
            version.tags)
        assert version.tags["data.kind"] == "xray"
        assert version.tags["model.arch"] == ("vit" if name == "vit" else "resnet18")
        logged = client.get_logged_model(version.source.removeprefix("models:/"))
        metrics = {m.key: m for m in logged.metrics}
        assert metrics["auroc"].value == pytest.approx(result.evaluate.metrics["auroc"])
        assert metrics["auroc"].dataset_name == "test split"
        assert logged.tags[NOTE_TAG].startswith(f"{REGISTRY} version {number} (alias candidate)")
        evaluation = [i for i in _children(reviewed, name)["evaluate"].inputs.dataset_inputs
                      if {t.key: t.value for t in i.tags}.get("mlflow.data.context") == "evaluation"]
        assert [i.dataset.name for i in evaluation] == ["test split"]
        assert metrics["auroc"].dataset_digest == evaluation[0].dataset.digest


def test_model_card_renders_in_the_ui(reviewed):
    card = reviewed["client"].get_model_version(REGISTRY, "1").description
    blocks = card.split("\n\n")
    for block in blocks:
        lines = block.splitlines()
        if lines[0].startswith("|"):
            assert all(line.startswith("|") and line.endswith("|") for line in lines), block
            assert set(lines[1]) <= set("|- "), "a table has its separator row"
        else:
            assert len(lines) == 1, f"a hard-wrapped paragraph renders as broken lines: {block!r}"
    assert "| AUROC (95% bootstrap CI) |" in card and "| kept epoch |" in card


def test_mlmodel_holds_no_temporary_path_and_still_loads(reviewed, tmp_path):
    mlflow.set_tracking_uri(reviewed["uri"])
    registered = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{REGISTRY}/1",
                                                          dst_path=str(tmp_path / "registered")))
    for folder in (registered, reviewed["results"]["vit"].register.local_model):
        text = (folder / "MLmodel").read_text()
        assert yaml.safe_load(text)["flavors"]["python_function"]["model_code_path"] == "pyfunc_model.py"
        assert "medvit-package" not in text
        stray = [path for path in re.findall(r"(?<![\w.])/[^\s'\"]+", text) if not path.startswith(str(reviewed["store"]))]
        assert stray == [], "the only absolute path is the store's own artifact location"
    assert mlflow.pyfunc.load_model(f"models:/{REGISTRY}/1").metadata.model_id


def test_train_and_evaluate_runs_have_the_plots_a_reviewer_reads(reviewed):
    client = reviewed["client"]
    children = _children(reviewed, "vit")
    assert "plots/loss.png" in {a.path for a in client.list_artifacts(children["train"].info.run_id, "plots")}
    assert "plots/reliability.png" in {a.path for a in client.list_artifacts(children["evaluate"].info.run_id,
                                                                             "plots")}


def test_compare_prints_runs_and_versions_side_by_side_and_draws_them(reviewed, tmp_path):
    vit, cnn = reviewed["results"]["vit"], reviewed["results"]["cnn"]
    png = tmp_path / "compare.png"
    result = CliRunner().invoke(cli, ["compare", vit.run_id, f"runs:/{cnn.run_id}", f"models:/{REGISTRY}/1",
                                      f"models:/{REGISTRY}@candidate", "--tracking-uri", reviewed["uri"],
                                      "--png", str(png)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    auroc = next(line for line in lines if line.startswith("test AUROC (95% CI)"))
    assert auroc.count(f"{vit.evaluate.metrics['auroc']:.3f} (") == 2, "the run and its version agree"
    assert auroc.count(f"{cnn.evaluate.metrics['auroc']:.3f} (") >= 2
    model = next(line for line in lines if line.startswith("model"))
    assert model.split()[1:] == ["vit_tiny", "resnet18", "vit_tiny", "resnet18"]
    assert f"{REGISTRY} v1" in lines[2] and f"{REGISTRY} v2" in lines[2]
    assert matplotlib.image.imread(png).shape[1] > 500


def test_compare_reports_a_bad_reference_in_one_line_and_shows_the_rest(reviewed):
    vit = reviewed["results"]["vit"]
    result = CliRunner().invoke(cli, ["compare", vit.run_id, "0123456789abcdef", f"models:/{REGISTRY}",
                                      "--tracking-uri", reviewed["uri"]])
    assert result.exit_code == 3
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 2 and errors[0].startswith("medvit compare: 0123456789abcdef: not found")
    assert f"models:/{REGISTRY}/1" in errors[1] and "Traceback" not in result.output
    assert "test AUROC" in result.stdout


def test_phi_scan_passes_over_everything_the_review_added(reviewed, xray_cohort, tmp_path):
    holdings = mlflow_holdings(reviewed["uri"], EXPERIMENT, tmp_path)
    scanned = {k: v for k, v in holdings.items() if not is_packaged_source(k, v)}
    labels = "\n".join(scanned)
    for needle in ("plots/loss.png", "logged model", "metrics", "registered review_model v2: meta"):
        assert needle in labels, needle
    assert find_needles(scanned, identity_strings(xray_cohort)) == []
    outputs = [str(r.config.output.dir) for r in reviewed["results"].values()]
    assert find_needles(scanned, [str(xray_cohort), *outputs]) == []  # the store's own location may appear
    assert find_needles(reviewed["captured"].blobs(), identity_strings(xray_cohort)) == []
