"""Data-efficient training: MAE pretraining stage, train.init, layer decay, distillation, progressive resizing."""

from __future__ import annotations

import json
import shutil
import signal
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from helpers.pipeline import cohort_config, tiny_config, train_cli
from helpers.pipeline import fresh_out as fresh

from pipelines.cli import cli
from pipelines.config import ConfigError, dump_config
from pipelines.pipeline import run_pipeline
from pipelines.runtime import Dist
from pipelines.stages.ingest import run_ingest
from pipelines.stages.pretrain import run_pretrain
from pipelines.stages.train import run_train
from pipelines.training import techniques
from pipelines.training.checkpoint import load_state
from pipelines.training.modeling import build_model, load_model, model_kwargs
from pipelines.training.pretrainer import Pretrainer
from pipelines.training.trainer import Trainer

TRAIN = {"epochs": 2, "batch_size": 6, "lr": 1e-3, "num_workers": 0, "deterministic": True,
         "early_stopping_patience": None, "warmup_epochs": 0.5, "device": "cpu"}
PRETRAIN = {"epochs": 2, "batch_size": 8, "warmup_epochs": 0.5, "decoder_dim": 32, "decoder_heads": 2,
            "decoder_depth": 1}


def config_for(cohort: Path, out: Path, **sections):
    base = {"model": {"arch": "vit", "preset": "vit_tiny", "embed_dim": 32, "depth": 2, "num_heads": 2, "patch_size": 8,
                      "global_pool": "token"},
            "train": TRAIN, "pretrain": PRETRAIN, "evaluate": {"bootstrap": 50},
            "tracking": {"uri": f"sqlite:///{out / 'mlflow.db'}", "system_metrics": False}}
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value}
    return cohort_config(cohort, "xray", out, **base)


def write_config(config, path: Path) -> Path:
    path.write_text(dump_config(config))
    return path


@pytest.fixture(scope="module")
def ingested(xray_cohort, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("de") / "base"
    run_ingest(config_for(xray_cohort, out))
    return out


@pytest.fixture(scope="module")
def pretrained(xray_cohort, ingested) -> tuple[str, str]:
    """(stdout of `medvit pretrain`, the tracking URI) for a 2-epoch MAE run on the cohort."""
    config = config_for(xray_cohort, ingested)
    result = CliRunner().invoke(cli, ["pretrain", "--config", str(write_config(config, ingested / "c.yaml"))],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output, config.tracking.uri


# ---- pretrain -----------------------------------------------------------------------------------------
def test_pretrain_prints_the_encoder_uri_last_and_records_the_run(pretrained, ingested):
    output, uri = pretrained
    last = output.strip().splitlines()[-1]
    assert last.startswith("encoder: runs:/") and last.endswith("/encoder/encoder.safetensors")
    run_id = last.split("runs:/")[1].split("/")[0]
    client = mlflow.MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.data.tags["medvit.stage"] == "pretrain"
    assert [m.step for m in client.get_metric_history(run_id, "pretrain_loss")] == [1, 2]
    artifacts = {a.path for a in client.list_artifacts(run_id)} | {a.path for a in client.list_artifacts(run_id, "encoder")}
    assert {"reconstruction.png", "encoder/encoder.safetensors", "summary.json"} <= artifacts
    assert (ingested / "pretrain" / "reconstruction.png").stat().st_size > 1000


def test_pretrain_uses_unlabelled_studies_too(xray_cohort, tmp_path):
    folder = tmp_path / "unlabelled"
    shutil.copytree(xray_cohort / "dicom", folder)
    result = run_pretrain(config_for(xray_cohort, tmp_path / "out", pretrain={"epochs": 1, "dicom_root": str(folder)}),
                          track=False)
    n_files = sum(1 for p in folder.rglob("*") if p.is_file())
    assert result.n_series == n_files  # one file per X-ray series; labels.csv is never read
    assert result.encoder_uri == str((tmp_path / "out" / "pretrain" / "encoder.safetensors").resolve())


def test_pretrain_resume_continues_the_epochs(xray_cohort, tmp_path):
    out = tmp_path / "out"
    run_pretrain(config_for(xray_cohort, out, pretrain={"epochs": 1}), track=False)
    result = run_pretrain(config_for(xray_cohort, out, pretrain={"epochs": 2}), resume=True, track=False)
    assert result.epochs_run == 2 and len(result.history) == 2
    assert load_state(out / "pretrain" / "last.safetensors")["epoch"] == 2


def test_pretrain_runs_in_the_training_loop_with_its_shared_train_keys(xray_cohort, tmp_path):
    """train.accumulate and train.grad_clip apply to pretraining (the same loop as train), not silently dropped."""
    config = config_for(xray_cohort, tmp_path / "out", pretrain={"epochs": 1, "batch_size": 4},
                        train={"accumulate": 2, "grad_clip": 0.5})
    trainer = Pretrainer(config, Dist(), torch.device("cpu"), progress=False)
    n_batches = -(-len(trainer.dataset) // 4)
    assert trainer.loop.accumulate == 2 and trainer.loop.grad_clip == 0.5
    trainer.train_epoch(progress=False)
    assert trainer.loop.step == -(-n_batches // 2) < n_batches  # one optimizer step per two micro-batches


def test_pretrain_refuses_a_cnn_arch(xray_cohort, tmp_path):
    with pytest.raises(ConfigError, match="trains a ViT encoder"):
        run_pretrain(config_for(xray_cohort, tmp_path / "o", model={"arch": "resnet18"}), track=False)


# ---- train.init -------------------------------------------------------------------------------------------
def encoder_uri(pretrained) -> str:
    return pretrained[0].strip().splitlines()[-1].split("encoder: ")[1]


def test_init_loads_every_encoder_weight_only_heads_differ(pretrained, xray_cohort, ingested, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", pretrained[1])
    config = config_for(xray_cohort, ingested)
    model = build_model(model_kwargs(config))
    report = techniques.load_init(model, encoder_uri(pretrained))
    assert set(report["missing"]) == {"head.weight", "head.bias"} and report["unexpected"] == []
    encoder, _, _ = load_model(ingested / "pretrain" / "encoder.safetensors")
    for key, value in encoder.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_init_into_an_average_pooling_model_takes_every_block_and_a_fresh_fc_norm(pretrained, xray_cohort,
                                                                                ingested):
    config = config_for(xray_cohort, ingested, model={"global_pool": "avg"})
    model = build_model(model_kwargs(config))
    fresh_fc_norm = model.fc_norm.weight.clone()
    report = techniques.load_init(model, str(ingested / "pretrain" / "encoder.safetensors"))
    assert set(report["missing"]) == {"head.weight", "head.bias", "fc_norm.weight", "fc_norm.bias"}
    assert report["unexpected"] == []
    encoder, _, _ = load_model(ingested / "pretrain" / "encoder.safetensors")
    for key, value in encoder.state_dict().items():
        if not key.startswith(("norm.", "head.")):
            assert torch.equal(model.state_dict()[key], value), key
    assert torch.equal(model.fc_norm.weight, fresh_fc_norm)


def test_init_resamples_position_embeddings_for_another_size(pretrained, xray_cohort, ingested, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", pretrained[1])
    config = config_for(xray_cohort, ingested, preprocess={"xray": {"img_size": 48}})
    model = build_model(model_kwargs(config))
    techniques.load_init(model, str(ingested / "pretrain" / "encoder.safetensors"))
    assert model.pos_embed.shape == (1, 1 + 36, 32)
    encoder, _, _ = load_model(ingested / "pretrain" / "encoder.safetensors")
    assert torch.equal(model.blocks[1].mlp.fc2.weight, encoder.blocks[1].mlp.fc2.weight)


def test_init_with_another_depth_is_one_line_and_exit_2(pretrained, xray_cohort, ingested, tmp_path):
    out = fresh(ingested, tmp_path, "deep")
    config = config_for(xray_cohort, out, model={"depth": 3},
                        train={"init": str(ingested / "pretrain" / "encoder.safetensors")})
    result = CliRunner().invoke(cli, ["train", "--config", str(write_config(config, out / "c.yaml"))])
    assert result.exit_code == 2
    assert "depth is 2 in the encoder but 3" in result.output and "Traceback" not in result.output


def test_init_from_timm_format_weights(xray_cohort, tmp_path):
    config = config_for(xray_cohort, tmp_path)
    source = build_model(model_kwargs(config) | {"num_classes": 1000})
    torch.save({"model": source.state_dict()}, tmp_path / "vit.pth")
    model = build_model(model_kwargs(config))
    report = techniques.load_init(model, str(tmp_path / "vit.pth"))
    assert report["unexpected"] == []
    assert torch.equal(model.patch_embed.proj.weight, source.patch_embed.proj.weight)


def test_train_from_init_with_layer_decay(pretrained, xray_cohort, ingested, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # the runs:/ encoder is found through the config's store, not ./mlflow.db
    out = fresh(ingested, tmp_path, "init")
    config = config_for(xray_cohort, out, train={"init": encoder_uri(pretrained), "layer_decay": 0.5, "epochs": 1},
                        tracking={"uri": pretrained[1]})
    trainer = Trainer(config, Dist(), torch.device("cpu"))
    lrs = sorted({g["initial_lr"] for g in trainer.loop.optimizer.param_groups})
    assert lrs == pytest.approx([1e-3 * 0.5 ** k for k in (3, 2, 1, 0)])  # embed, block 0, block 1, head
    assert run_train(config, track=False).epochs_run == 1


# ---- distillation ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def registered_teacher(xray_cohort, tmp_path_factory) -> tuple[Path, str]:
    """A model of this pipeline registered as ``teacher`` version 1: (its local folder, its store's URI)."""
    root = tmp_path_factory.mktemp("teacher")
    store = f"sqlite:///{root / 'mlflow.db'}"
    return run_pipeline(tiny_config(xray_cohort, root / "run", store, registry="teacher")).register.local_model, store


@pytest.fixture(scope="module")
def teacher(registered_teacher) -> Path:
    """The registered teacher's local folder."""
    return registered_teacher[0]


def test_a_models_uri_teacher_is_read_from_the_configs_store(registered_teacher, xray_cohort, ingested, tmp_path,
                                                             monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # the default store (./mlflow.db) holds no teacher
    out = fresh(ingested, tmp_path, "uri")
    config = config_for(xray_cohort, out, train={"distill": {"teacher": "models:/teacher/1"}},
                        tracking={"uri": registered_teacher[1]})
    trainer = Trainer(config, Dist(), torch.device("cpu"))
    assert trainer.teacher is not None and trainer.teacher.label == "teacher/1"


def test_teacher_gets_no_gradient_and_does_not_change(teacher, xray_cohort, ingested, tmp_path):
    out = fresh(ingested, tmp_path, "d")
    config = config_for(xray_cohort, out, train={"distill": {"teacher": str(teacher), "kind": "soft",
                                                             "temperature": 2.0}})
    trainer = Trainer(config, Dist(), torch.device("cpu"))
    before = {k: v.clone() for k, v in trainer.teacher.model.state_dict().items()}
    head_dist = trainer.module.head_dist.weight.detach().clone()
    trainer.train_epoch(progress=False)
    assert all(p.grad is None and not p.requires_grad for p in trainer.teacher.model.parameters())
    assert all(torch.equal(before[k], v) for k, v in trainer.teacher.model.state_dict().items())
    student = trainer.module
    assert student.distilled and not torch.equal(student.head_dist.weight, head_dist)  # learns from the teacher
    x = torch.zeros(3, 1, 32, 32)
    cls_logits, dist_logits = student.forward_distill(x)
    assert cls_logits.shape == dist_logits.shape == student(x).shape == (3, 1)


def test_hard_distillation_loss_follows_the_teacher():
    teacher = techniques.Teacher(torch.nn.Identity(), (1,), "t", "hard", 1.0, 1.0)
    agree = teacher.loss(torch.zeros(4), torch.full((4,), 5.0), torch.zeros(4), torch.full((4,), 3.0),
                         torch.nn.BCEWithLogitsLoss())
    disagree = teacher.loss(torch.zeros(4), torch.full((4,), -5.0), torch.zeros(4), torch.full((4,), 3.0),
                            torch.nn.BCEWithLogitsLoss())
    assert agree < 0.01 < 4.0 < disagree  # alpha=1: only the teacher's hard label counts


def test_distilled_model_registers_and_scores_without_the_teacher(teacher, xray_cohort, ingested, tmp_path):
    own_teacher = tmp_path / "teacher_copy"
    shutil.copytree(teacher, own_teacher)
    out = fresh(ingested, tmp_path, "dist")
    config = config_for(xray_cohort, out, train={"distill": {"teacher": str(own_teacher)}},
                        registry={"name": "distilled"})
    path = str(write_config(config, out / "c.yaml"))
    runner = CliRunner()
    for stage in ("train", "evaluate", "register"):
        result = runner.invoke(cli, [stage, "--config", path], catch_exceptions=False)
        assert result.exit_code == 0, result.output
    shutil.rmtree(own_teacher)  # the student scores on its own
    _, kwargs, _ = load_model(out / "train" / "best.safetensors")
    assert kwargs["distilled"] is True
    scored = runner.invoke(cli, ["score", str(xray_cohort / "dicom"), "--model", str(out / "model"),
                                 "--out", str(tmp_path / "scores")], catch_exceptions=False)
    assert scored.exit_code == 0, scored.output
    assert len(pd.read_csv(tmp_path / "scores" / "scores.csv")) == 24


@pytest.fixture(scope="module")
def partly_labelled(xray_cohort, tmp_path_factory) -> Path:
    """An ingest of the cohort where every third study has no label (so the manifest has unlabelled series)."""
    out = tmp_path_factory.mktemp("partly") / "base"
    out.mkdir()
    labels = pd.read_csv(xray_cohort / "labels.csv")
    labels.drop(index=labels.index[::3]).to_csv(out / "labels.csv", index=False)
    run_ingest(config_for(xray_cohort, out, data={"labels": str(out / "labels.csv")}))
    return out


def test_distillation_on_unlabelled_series_teaches_the_dist_head_only(teacher, xray_cohort, partly_labelled,
                                                                      tmp_path):
    out = fresh(partly_labelled, tmp_path, "pool")
    manifest = pd.read_parquet(out / "manifest.parquet")
    n_unlabelled = int((manifest["split"] == "unlabelled").sum())
    n_train = int(((manifest["split"] == "train") & manifest["label"].notna()).sum())
    assert n_unlabelled == 8 and n_train > 0
    distill = {"teacher": str(teacher), "unlabelled": True}
    config = config_for(xray_cohort, out, data={"labels": str(partly_labelled / "labels.csv")},
                        train={"distill": distill})
    trainer = Trainer(config, Dist(), torch.device("cpu"))
    assert trainer.n_unlabelled == n_unlabelled and len(trainer.train_set) == n_train + n_unlabelled
    train_series = {item["series_uid"] for item in trainer.train_set.items}
    held_out = set(manifest.loc[manifest["split"].isin(["val", "test"]), "series_uid"])
    assert not train_series & held_out  # validation and test series never train, labelled or not
    head_dist = trainer.module.head_dist.weight.detach().clone()
    trainer.train_epoch(progress=False)
    assert not torch.equal(trainer.module.head_dist.weight, head_dist)
    without = config_for(xray_cohort, out, data={"labels": str(partly_labelled / "labels.csv")},
                         train={"distill": {"teacher": str(teacher)}})
    assert len(Trainer(without, Dist(), torch.device("cpu")).train_set) == n_train


def test_train_cli_with_unlabelled_distillation_records_how_many_series(teacher, xray_cohort, partly_labelled,
                                                                         tmp_path):
    out = fresh(partly_labelled, tmp_path, "cli")
    config = config_for(xray_cohort, out, data={"labels": str(partly_labelled / "labels.csv")},
                        train={"epochs": 1, "distill": {"teacher": str(teacher), "unlabelled": True}})
    result = CliRunner().invoke(cli, ["train", "--config", str(write_config(config, out / "c.yaml"))],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    run_id = json.loads((out / "train" / "summary.json").read_text())["run_id"]
    tags = mlflow.MlflowClient(config.tracking.uri).get_run(run_id).data.tags
    assert tags["medvit.stage"] == "train" and tags["medvit.distill_unlabelled_series"] == "8"


def test_unlabelled_items_count_for_the_teacher_loss_only():
    teacher = techniques.Teacher(torch.nn.Identity(), (1,), "t", "hard", 1.0, 0.25)
    bce = torch.nn.BCEWithLogitsLoss()
    cls_logits, dist_logits = torch.tensor([2.0, -1.0, 0.5, 3.0]), torch.tensor([1.0, 0.0, -2.0, 0.5])
    teacher_logits = torch.tensor([4.0, -4.0, 4.0, -4.0])
    dist = bce(dist_logits, (teacher_logits > 0).float())
    labels = torch.tensor([1.0, -1.0, 0.0, -1.0])
    expected = 0.75 * bce(cls_logits[[0, 2]], labels[[0, 2]]) + 0.25 * dist
    torch.testing.assert_close(teacher.loss(cls_logits, dist_logits, labels, teacher_logits, bce), expected)
    none_labelled = torch.full((4,), -1.0)
    cls = cls_logits.clone().requires_grad_()
    loss = teacher.loss(cls, dist_logits, none_labelled, teacher_logits, bce)
    torch.testing.assert_close(loss, 0.25 * dist)
    loss.backward()
    assert torch.equal(cls.grad, torch.zeros(4))  # the class head learns nothing from unlabelled series


def test_distillation_on_unlabelled_series_needs_some(teacher, xray_cohort, ingested, tmp_path):
    out = fresh(ingested, tmp_path, "none")
    config = config_for(xray_cohort, out, train={"distill": {"teacher": str(teacher), "unlabelled": True}})
    with pytest.raises(ConfigError, match="no unlabelled series"):
        Trainer(config, Dist(), torch.device("cpu"))


# ---- progressive resizing -----------------------------------------------------------------------------
def test_progressive_schedule_sizes_and_batch(xray_cohort, tmp_path):
    config = config_for(xray_cohort, tmp_path, train={"epochs": 4, "progressive_batch": "auto",
                                                      "progressive": [{"epochs": 1, "img_size": 16},
                                                                      {"epochs": 1, "img_size": 24}]})
    assert techniques.epoch_sizes(config) == [(16, 16), (24, 24), (32, 32), (32, 32)]
    assert [techniques.epoch_batch_size(config, s) for s in ((16, 16), (24, 24), (32, 32))] == [24, 10, 6]
    too_long = config_for(xray_cohort, tmp_path, train={"epochs": 1, "progressive": [{"epochs": 2, "img_size": 16}]})
    with pytest.raises(ConfigError, match="more than train.epochs"):
        techniques.epoch_sizes(too_long)
    model = build_model(model_kwargs(config))
    with pytest.raises(ConfigError, match="multiple of the patch size"):
        techniques.check_patch_fit(model, [(20, 20)])


def test_progressive_resume_across_the_size_change_matches_a_straight_run(xray_cohort, ingested, tmp_path):
    progressive = {"epochs": 3, "progressive": [{"epochs": 1, "img_size": 16}], "progressive_batch": "auto"}
    paths = {}
    for name in ("straight", "killed"):
        out = fresh(ingested, tmp_path, name)
        paths[name] = write_config(config_for(xray_cohort, out, train=progressive), out / "c.yaml")
    straight = train_cli(paths["straight"])
    killed = train_cli(paths["killed"])
    last = tmp_path / "killed" / "train" / "last.safetensors"
    deadline = time.time() + 240
    while not last.is_file() and time.time() < deadline and killed.poll() is None:
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    state = load_state(last)
    assert state["epoch"] == 1 and json.loads(state["img_size"]) == [16, 16], "the kill must land in the small stage"
    resumed = train_cli(paths["killed"], "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    assert straight.wait(timeout=300) == 0, straight.stderr.read()
    a, b = load_state(tmp_path / "straight" / "train" / "last.safetensors"), load_state(last)
    assert a["epoch"] == b["epoch"] == 3 and json.loads(b["img_size"]) == [32, 32]
    for key, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][key]), key
    model, kwargs, _ = load_model(tmp_path / "killed" / "train" / "best.safetensors")
    assert kwargs["img_size"] == [32, 32] and model.pos_embed.shape == (1, 17, 32)  # registered at full size


def test_progressive_3d_pretrain_and_train(mri_cohort, tmp_path):
    model = {"preset": "vit3d_tiny", "embed_dim": 32, "depth": 2, "num_heads": 2, "patch_size": 4}
    base = {"model": model, "train": {**TRAIN, "epochs": 2, "batch_size": 2,
                                      "progressive": [{"epochs": 1, "img_size": [8, 8, 8]}]},
            "pretrain": {**PRETRAIN, "epochs": 1, "batch_size": 2}, "split": {"val": 0.34, "test": 0.0, "seed": 0},
            "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "system_metrics": False}}
    config = cohort_config(mri_cohort, "mri", tmp_path / "out", **base)
    run_ingest(config, track=False)
    encoder = run_pretrain(config, track=False).encoder_uri
    config = cohort_config(mri_cohort, "mri", tmp_path / "out", **{**base, "train": {**base["train"], "init": encoder}})
    result = run_train(config, track=False)
    assert result.epochs_run == 2
    _, kwargs, _ = load_model(Path(result.best_path))
    assert kwargs["img_size"] == [16, 16, 16]


def test_validation_during_a_small_stage_judges_the_full_size_model(xray_cohort, ingested, tmp_path):
    out = fresh(ingested, tmp_path, "v")
    config = config_for(xray_cohort, out, train={"epochs": 2, "progressive": [{"epochs": 1, "img_size": 16}]})
    trainer = Trainer(config, Dist(), torch.device("cpu"))
    trainer.set_size((16, 16))
    full = trainer.full_size_module()
    assert full is not trainer.module and tuple(full.img_size) == (32, 32)
    metrics = trainer.validate()  # full-size batches through a full-size copy: no size error
    assert 0.0 <= metrics["val_auroc"] <= 1.0
    assert tuple(trainer.module.img_size) == (16, 16)  # the training model stays at the stage size


def test_save_every_keeps_the_full_size_model_of_each_epoch(xray_cohort, ingested, tmp_path):
    out = fresh(ingested, tmp_path, "every")
    config = config_for(xray_cohort, out, train={"epochs": 3, "save_every": 1,
                                                 "progressive": [{"epochs": 1, "img_size": 16}]})
    result = run_train(config, track=False)
    saved = sorted(p.name for p in (out / "train" / "epochs").iterdir())
    assert saved == ["epoch_001.safetensors", "epoch_002.safetensors", "epoch_003.safetensors"]
    first, kwargs, extra = load_model(out / "train" / "epochs" / "epoch_001.safetensors")
    assert kwargs["img_size"] == [32, 32] and first.pos_embed.shape == (1, 17, 32)  # kept at full size
    assert extra["epoch"] == 1 and extra["val_auroc"] == result.history[0]["val_auroc"]
    best, _, _ = load_model(Path(result.best_path))
    same_epoch, _, _ = load_model(out / "train" / "epochs" / f"epoch_{result.best_epoch:03d}.safetensors")
    for key, tensor in best.state_dict().items():
        assert torch.equal(tensor, same_epoch.state_dict()[key]), key
    last = load_state(out / "train" / "last.safetensors")["model"]
    final, _, _ = load_model(out / "train" / "epochs" / "epoch_003.safetensors")
    assert all(torch.equal(tensor, last[key]) for key, tensor in final.state_dict().items())
    with_gaps = config_for(xray_cohort, fresh(ingested, tmp_path, "gaps"), train={"epochs": 3, "save_every": 2})
    run_train(with_gaps, track=False)
    assert [p.name for p in (with_gaps.output.dir / "train" / "epochs").iterdir()] == ["epoch_002.safetensors"]
