"""The training plan: fingerprint -> plan (pure), user keys win, min_steps holds early stopping, train.steps."""

from __future__ import annotations

import json
import math
from pathlib import Path

import mlflow
import pytest
import yaml
from click.testing import CliRunner
from helpers.pipeline import fresh_out, train_config

from pipelines.cli import cli
from pipelines.config import ConfigError, TrainConfig, dump_config, get_key, load_config
from pipelines.data.manifest import load_manifest
from pipelines.reporting.model_card import model_card
from pipelines.stages.ingest import run_ingest
from pipelines.stages.train import run_train
from pipelines.training.checkpoint import load_state
from pipelines.training.early_stopping import EarlyStopping
from pipelines.training.modeling import load_model
from pipelines.training.plan import fingerprint, make_plan
from pipelines.training.planning import plan_rows, resolve

# A large, balanced X-ray dataset; the tests change one thing at a time.
BIG = {"n_train": 2000, "n_val": 400, "n_test": 400, "n_unlabelled": 0, "abnormal_fraction": 0.5,
       "val_minority": 200, "median_rows": 2048, "median_cols": 2048, "median_spacing": [0.15, 0.15],
       "accelerator": "cuda", "cpu_cores": 16}

# A value unlike the plan's for every key it plans (a new planned key must be added here).
OVERRIDES = {
    "preprocess.xray.img_size": 96, "model.patch_size": 4, "model.arch": "vit", "model.preset": "vit_small",
    "model.embed_dim": 64, "model.depth": 3, "model.num_heads": 4, "model.drop_path_rate": 0.2,
    "model.global_pool": "token", "model.stem_norm": "group", "model.stem_depth": 2, "train.batch_size": 7, "train.lr": 0.01,
    "train.weight_decay": 0.1, "train.steps": 11, "train.warmup_steps": 2, "train.min_steps": 5,
    "train.early_stopping_patience": 3, "train.select": "best", "train.num_workers": 1, "augment.prob": 0.1, "augment.rotate_deg": 1.0, "augment.scale": 0.01,
    "augment.translate": 0.01, "augment.noise_std": 0.001, "augment.flip_lr": False,
}


def minimal_yaml(cohort: Path, out: Path, file: str = "config.yaml", **sections) -> Path:
    """A config that sets only data, output and tracking: everything else is the plan's."""
    raw = {"name": "plan_test",
           "data": {"dicom_root": str(cohort / "dicom"), "labels": str(cohort / "labels.csv"), "kind": "xray"},
           "split": {"val": 0.2, "test": 0.2, "seed": 0}, "output": {"dir": str(out)},
           "privacy": {"key_env": "MEDVIT_TEST_NO_SUCH_ENV"},
           "tracking": {"uri": f"sqlite:///{out / 'mlflow.db'}", "system_metrics": False}, **sections}
    path = out / file
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def ingested(xray_cohort, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("plan_ingest")
    run_ingest(train_config(xray_cohort, out))
    return out


# ---- fingerprint and plan: pure ------------------------------------------------------------------------
def test_fingerprint_counts_the_manifest_in_rounded_values_without_identifiers(xray_cohort, ingested):
    manifest = load_manifest(train_config(xray_cohort, ingested))
    fp = fingerprint(manifest, "xray")
    labelled = manifest[manifest["label"].notna()]
    assert fp["n_train"] == int((labelled["split"] == "train").sum()) > 0
    assert fp["n_val"] == int((labelled["split"] == "val").sum()) and fp["n_unlabelled"] == 0
    assert 0 < fp["abnormal_fraction"] < 1 and fp["median_rows"] == 96 and len(fp["median_spacing"]) == 2
    assert fingerprint(manifest, "xray") == fp == json.loads(json.dumps(fp))
    text = json.dumps(fp)
    assert not any(uid in text for uid in [*manifest["study_uid"], *manifest["series_uid"], *manifest["patient_key"]])


def test_the_plan_is_a_pure_function_of_the_fingerprint():
    before = json.dumps(BIG)
    first, second = make_plan(dict(BIG), "xray"), make_plan(json.loads(before), "xray")
    assert first == second and json.dumps(BIG) == before  # same input, same plan; the input is untouched
    assert set(first.values) == set(first.reasons) == set(OVERRIDES)
    assert all(isinstance(r, str) and r and "\n" not in r for r in first.reasons.values())


def test_different_fingerprints_plan_the_expected_differences():
    big = make_plan(BIG, "xray").values
    assert big["preprocess.xray.img_size"] == 128 and big["model.patch_size"] == 16
    assert big["train.batch_size"] == 32 and big["train.lr"] == 5e-4
    assert big["train.steps"] == 3000 and big["train.warmup_steps"] == 150 and big["train.min_steps"] == 1200
    assert make_plan(BIG, "xray").notes == []

    cpu = make_plan(BIG | {"accelerator": "cpu", "cpu_cores": 2}, "xray")
    assert cpu.values["preprocess.xray.img_size"] == 64 and "no GPU" in cpu.reasons["preprocess.xray.img_size"]
    assert cpu.values["train.num_workers"] == 0 and big["train.num_workers"] == 8

    small_images = make_plan(BIG | {"median_rows": 200, "median_cols": 180}, "xray").values
    assert small_images["preprocess.xray.img_size"] == 64 and small_images["model.patch_size"] == 8

    few_labels = make_plan(BIG | {"n_train": 150}, "xray").values
    assert few_labels["train.batch_size"] == 16 and few_labels["train.lr"] < big["train.lr"]
    assert few_labels["train.steps"] == 600  # 60 epochs of 10 steps
    assert few_labels["augment.rotate_deg"] > big["augment.rotate_deg"]

    small_val = make_plan(BIG | {"n_val": 40, "val_minority": 6}, "xray")
    assert small_val.notes and "too small" in small_val.notes[0]
    assert small_val.values["train.min_steps"] == 2100 and "too small" in small_val.reasons["train.min_steps"]
    assert small_val.values["train.select"] == "last" and big["train.select"] == "best"

    given = make_plan(BIG, "xray", given={"train.batch_size": 8, "train.steps": 1000, "preprocess.xray.img_size": 36})
    assert given.values["train.lr"] == 2.5e-4 and given.values["train.min_steps"] == 400
    assert given.values["model.patch_size"] == 4  # 36 px: the largest power of two up to 8 dividing it

    mri = make_plan({**BIG, "median_rows": 256, "median_cols": 256, "median_slices": 40,
                     "median_spacing": [1.0, 1.0, 4.0]}, "mri").values
    assert mri["preprocess.mri.img_size"] == [64, 64, 64] and mri["preprocess.mri.spacing"] == [3.0, 3.0, 2.5]
    assert mri["model.preset"] == "vit3d_tiny" and mri["model.stem_norm"] == "group"
    assert big["augment.flip_lr"] is True and "augment.flip_lr" not in mri  # X-ray only: brains not measured
    mri_cpu = make_plan({**BIG, "median_rows": 256, "median_cols": 256, "median_slices": 40, "accelerator": "cpu",
                         "median_spacing": [1.0, 1.0, 4.0]}, "mri").values
    assert mri_cpu["preprocess.mri.img_size"] == [48, 48, 48] and mri_cpu["preprocess.mri.spacing"] == [4.0, 4.0, 3.5]


# ---- applying it: the user's keys win --------------------------------------------------------------------
def test_every_planned_key_is_overridable_and_plan_json_says_so(xray_cohort, ingested):
    path = minimal_yaml(xray_cohort, ingested)
    plain = resolve(load_config(path))
    assert set(plain.record["applied"]) == set(OVERRIDES) and not plain.record["overridden"]
    for key, value in OVERRIDES.items():
        resolved = resolve(load_config(path, [f"{key}={value}"]))
        assert get_key(resolved.config, key) == value, key
        assert resolved.record["overridden"] == [key] and resolved.record["effective"][key] == value
        assert key not in resolved.record["applied"]
    in_yaml = resolve(load_config(minimal_yaml(xray_cohort, ingested, "yaml_keys.yaml", train={"lr": 0.02},
                                               model={"depth": 5})))
    assert in_yaml.config.train.lr == 0.02 and in_yaml.config.model.depth == 5
    assert {"train.lr", "model.depth"} == set(in_yaml.record["overridden"])


def test_a_related_key_keeps_the_users_design(xray_cohort, ingested):
    path = minimal_yaml(xray_cohort, ingested)
    resolved = resolve(load_config(path, ["train.epochs=3", "model.depth=2"]))
    config, record = resolved.config, resolved.record
    assert config.train.epochs == 3 and config.train.steps is None and config.train.min_steps == 0
    assert record["kept"]["train.steps"] == "train.epochs is set"
    assert config.model.preset == "vit_small" and record["kept"]["model.patch_size"] == "model.depth is set"
    assert config.model.arch == record["plan"]["model.arch"] == "hybrid"  # a choice of its own: still planned
    assert config.train.batch_size == record["plan"]["train.batch_size"]  # unrelated keys are still planned
    plain_vit = resolve(load_config(path, ["model.arch=vit", "model.global_pool=max"])).config
    assert plain_vit.model.arch == "vit" and plain_vit.model.global_pool == "max"  # the user's choices ...
    assert plain_vit.model.patch_size == record["plan"]["model.patch_size"]  # ... in the planned dimensions
    assert plain_vit.model.depth == record["plan"]["model.depth"]
    again = resolve(config)  # applying the plan to its own result changes nothing
    assert again.config == config and again.record == record
    augment = resolve(load_config(path, ["augment.rotate_deg=3"]))
    assert augment.record["kept"]["augment.prob"] == "augment.rotate_deg is set"
    assert augment.config.augment.prob == 0.5  # the schema default, not the plan's strength
    off = resolve(load_config(path, ["train.plan=off"]))
    assert off.record is None and off.config.model.arch == "vit" and off.config.train.steps is None


def test_a_dumped_config_sets_every_key_so_nothing_is_planned(xray_cohort, ingested, tmp_path):
    config = train_config(xray_cohort, ingested)
    (tmp_path / "dumped.yaml").write_text(dump_config(config))
    resolved = resolve(load_config(tmp_path / "dumped.yaml"))  # steps: null is set too
    assert resolved.record["applied"] == [] and resolved.config == config


# ---- training: min_steps and train.steps -------------------------------------------------------------------
def test_early_stopping_smooths_and_waits_for_min_steps():
    stopper = EarlyStopping(TrainConfig(early_stopping_patience=2, min_steps=10, early_stopping_smoothing=0.5))
    flat = {"val_loss": 0.7, "val_auroc": 0.5}
    assert [stopper.update(flat, step) for step in (3, 6, 9, 12)] == [False, False, False, True]
    assert stopper.bad == 3
    lucky = EarlyStopping(TrainConfig(early_stopping_patience=2, early_stopping_smoothing=0.9))
    for loss in (1.0, 0.5, 1.0):  # one lucky validation lowers the average only a little ...
        lucky.update({"val_loss": loss, "val_auroc": 0.5}, 1)
    assert lucky.bad == 1 and math.isclose(lucky.ema, 0.955)  # ... and a bad one spends patience
    assert not lucky.update({"val_loss": float("nan"), "val_auroc": float("nan")}, 99)  # no validation data
    auroc = EarlyStopping(TrainConfig(early_stopping_metric="auroc", early_stopping_smoothing=0.0))
    auroc.update({"val_loss": 9.0, "val_auroc": 0.6}, 1)
    auroc.update({"val_loss": 9.5, "val_auroc": 0.7}, 2)
    assert auroc.bad == 0 and math.isclose(auroc.best, -0.7)


def test_early_stopping_cannot_fire_before_min_steps(xray_cohort, ingested, tmp_path):
    """A training whose validation never improves (lr too small to move float32 weights), patience 1."""
    out = fresh_out(ingested, tmp_path, "flat")
    config = train_config(xray_cohort, out, epochs=8, lr=1e-12, min_lr=0.0, early_stopping_patience=1,
                         min_steps=10, early_stopping_smoothing=0.0)
    result = run_train(config, track=False)
    losses = {h["val_loss"] for h in result.history}
    assert len(losses) == 1, "premise: the validation criterion never changes"
    per_epoch = result.steps_run // result.epochs_run
    assert result.stopped_early and result.steps_run >= 10 > result.steps_run - per_epoch
    assert result.epochs_run == math.ceil(10 / per_epoch) < 8  # not at epoch 2, where patience 1 ran out


def test_select_last_keeps_the_end_of_the_schedule_where_best_keeps_the_first_of_equals(xray_cohort, ingested,
                                                                                         tmp_path):
    """Validation never changes (lr too small to move the weights): ``best`` keeps epoch 1 (a tie is no
    improvement), ``last`` the final epoch."""
    kept = {}
    for select in ("best", "last"):
        out = fresh_out(ingested, tmp_path, select)
        config = train_config(xray_cohort, out, epochs=3, lr=1e-12, min_lr=0.0, select=select)
        result = run_train(config, track=False)
        assert len({h["val_loss"] for h in result.history}) == 1, "premise: the validation criterion never changes"
        _, _, extra = load_model(Path(result.best_path))  # the kept weights record their epoch
        kept[select] = (result.best_epoch, extra["epoch"])
    assert kept == {"best": (1, 1), "last": (3, 3)}


def test_train_steps_is_the_exact_optimizer_step_budget_and_the_plan_is_logged(xray_cohort, ingested, tmp_path):
    out = fresh_out(ingested, tmp_path, "steps")
    config = train_config(xray_cohort, out, steps=7, warmup_steps=2, min_lr=1e-5)  # 3 steps an epoch
    result = run_train(config)
    state = load_state(Path(result.last_path))
    assert state["step"] == result.steps_run == 7 and result.epochs_run == 3  # 3 + 3 + 1; train.epochs=3 unused
    assert math.isclose(result.history[-1]["lr"], 1e-5, rel_tol=1e-6)  # the cosine ends exactly at step 7
    record = json.loads((out / "plan.json").read_text())
    assert "train.steps" in record["overridden"] and record["effective"]["train.steps"] == 7
    client = mlflow.MlflowClient(tracking_uri=config.tracking.uri)
    run = client.get_run(result.run_id)
    assert run.data.tags["medvit.plan"] == "auto"
    assert run.data.params["plan.train.steps"] == str(record["plan"]["train.steps"])
    assert run.data.params["augment.prob"] == str(record["effective"]["augment.prob"])  # the config trained with
    assert "plan.json" in [a.path for a in client.list_artifacts(result.run_id)]


def test_progressive_stages_must_fit_in_the_step_budget(xray_cohort, ingested, tmp_path):
    out = fresh_out(ingested, tmp_path, "prog")
    config = train_config(xray_cohort, out, steps=2, progressive=[{"epochs": 2, "img_size": 16}])
    with pytest.raises(ConfigError, match="train.progressive"):
        run_train(config, track=False)


# ---- the command and the model card --------------------------------------------------------------------------
def test_medvit_plan_writes_plan_json_and_logs_a_plan_run(xray_cohort, ingested, tmp_path):
    out = fresh_out(ingested, tmp_path, "cli")
    path = minimal_yaml(xray_cohort, out)
    result = CliRunner().invoke(cli, ["plan", "--config", str(path), "--set", "train.lr=0.001"])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "plan.json").read_text())
    assert record["overridden"] == ["train.lr"] and record["effective"]["train.lr"] == 0.001
    lines = result.stdout.splitlines()
    assert any(line.startswith("train.lr") and "0.001 *" in line for line in lines)
    assert any(line.startswith("model.arch") and "hybrid" in line for line in lines)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("medvit").experiment_id],
                              filter_string="tags.`medvit.stage` = 'plan'")
    assert len(runs) == 1 and runs[0].data.params["plan.model.arch"] == "hybrid"


def test_medvit_plan_without_a_manifest_is_one_line_and_exit_2(xray_cohort, tmp_path):
    result = CliRunner().invoke(cli, ["plan", "--config", str(minimal_yaml(xray_cohort, tmp_path))])
    assert result.exit_code == 2 and not result.stdout
    assert len(result.stderr.strip().splitlines()) == 1 and "medvit ingest" in result.stderr


def test_model_card_lists_the_training_plan(xray_cohort, ingested):
    config = load_config(minimal_yaml(xray_cohort, ingested), ["train.lr=0.001"])
    record = resolve(config).record
    test = dict.fromkeys(["auroc", "auroc_ci_low", "auroc_ci_high", "auprc", "sensitivity", "specificity", "ppv",
                          "npv", "ece"], 0.5) | {"n": 5, "n_pos": 2}
    report = {"test": test, "threshold": 0.5, "threshold_method": "youden", "aggregate": "max"}
    card = model_card(config, report, {}, "1", (32, 32), plan_rows(record))
    assert "## Training plan" in card and "| `train.lr` | 0.001 | config |" in card
    assert "| `model.arch` | hybrid | planned |" in card
    assert "## Training plan" not in model_card(config, report, {}, "1", (32, 32))
