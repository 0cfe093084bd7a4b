"""The train stage: a real run on a tiny synthetic cohort, checkpoints, exact resume after SIGKILL, DDP on CPU."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers.pipeline import fresh_out, train_cli, train_config
from safetensors.torch import load_file

from pipelines.config import dump_config
from pipelines.runtime import Dist
from pipelines.stages.ingest import run_ingest
from pipelines.stages.train import run_train
from pipelines.training.checkpoint import load_state
from pipelines.training.modeling import load_model
from pipelines.training.trainer import Trainer


@pytest.fixture(scope="module")
def ingested(xray_cohort, tmp_path_factory):
    out = tmp_path_factory.mktemp("train_ingest")
    run_ingest(train_config(xray_cohort, out))
    return out


def test_train_writes_best_and_last_checkpoints_and_history(xray_cohort, ingested, tmp_path):
    out = fresh_out(ingested, tmp_path, "a")
    result = run_train(train_config(xray_cohort, out))
    assert result.epochs_run == 3 and len(result.history) == 3
    assert {"train_loss", "val_auroc", "val_loss", "lr", "images_per_sec"} <= set(result.history[0])
    model, kwargs, extra = load_model(Path(result.best_path))
    assert kwargs["num_classes"] == 1 and extra["epoch"] == result.best_epoch
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 1)
    state = load_state(Path(result.last_path))
    assert state["epoch"] == 3 and state["step"] > 0 and "exp_avg" in state["optimizer"]["state"][0]
    summary = json.loads((out / "train" / "summary.json").read_text())
    assert summary["best_epoch"] == result.best_epoch and summary["run_id"] == result.run_id


def test_best_epoch_has_the_highest_val_auroc_then_the_lowest_val_loss(xray_cohort, ingested, tmp_path):
    out = fresh_out(ingested, tmp_path, "best")
    config = train_config(xray_cohort, out, epochs=4)
    result = run_train(config, track=False)
    top = max(h["val_auroc"] for h in result.history)
    tied = [h for h in result.history if h["val_auroc"] == top]
    assert result.best_epoch == min(tied, key=lambda h: (h["val_loss"], h["epoch"]))["epoch"]
    trainer = Trainer(config, Dist(), torch.device("cpu"))
    trainer.history = [{"epoch": 1, "val_auroc": 1.0, "val_loss": 0.5}, {"epoch": 2, "val_auroc": 0.9, "val_loss": 0.2}]
    trainer.best_auroc, trainer.best_epoch = 1.0, 1
    assert trainer.improved({"val_auroc": 1.0, "val_loss": 0.4})  # same AUROC, lower loss
    assert not trainer.improved({"val_auroc": 1.0, "val_loss": 0.5})  # a full tie keeps the earlier epoch
    assert not trainer.improved({"val_auroc": 0.95, "val_loss": 0.01})  # AUROC comes first
    trainer.best_auroc = 0.9
    assert trainer.improved({"val_auroc": 0.95, "val_loss": 9.0})


def test_optimizer_groups_skip_decay_for_norms_biases_embeddings():
    import medvit
    from pipelines.training.modeling import param_groups

    model = medvit.VisionTransformer(img_size=16, patch_size=8, embed_dim=16, depth=1, num_heads=2)
    decay, no_decay = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    skipped = {names[id(p)] for p in no_decay["params"]}
    assert {"pos_embed", "cls_token", "norm.weight", "head.bias", "blocks.0.norm1.bias"} <= skipped
    assert all(names[id(p)].endswith("weight") and "norm" not in names[id(p)] for p in decay["params"])
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0


@pytest.mark.parametrize("kw", [{}, {"stem": "conv", "stem_depth": 1, "distilled": True}])
def test_one_weight_decay_rule_for_plain_and_layer_decay_groups(kw):
    import medvit
    from pipelines.training.modeling import no_weight_decay_names, param_groups
    from pipelines.training.techniques import layer_decay_groups

    model = medvit.build_vit(img_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2, **kw)
    rule = no_weight_decay_names(model)
    embeddings = {"pos_embed", "cls_token"} | ({"dist_token"} if kw else set())
    assert embeddings <= rule and "patch_embed.proj.weight" not in rule and "blocks.0.attn.qkv.weight" not in rule
    if kw:  # a 4-D conv weight is decayed, the stem's BatchNorm is not
        assert "patch_embed.stem.0.weight" not in rule and "patch_embed.stem.1.weight" in rule
    names = {id(p): n for n, p in model.named_parameters()}

    def undecayed(groups):
        return {names[id(p)] for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}

    assert undecayed(param_groups(model, 0.05)) == rule
    assert undecayed(layer_decay_groups(model, 0.05, 1e-3, 0.75)) == rule


def test_resume_after_sigkill_ends_exactly_like_an_uninterrupted_run(xray_cohort, ingested, tmp_path):
    paths = {}
    for name in ("straight", "killed"):
        out = fresh_out(ingested, tmp_path, name)
        paths[name] = out / "config.yaml"
        paths[name].write_text(dump_config(train_config(xray_cohort, out, epochs=4)))
    straight = train_cli(paths["straight"])
    killed = train_cli(paths["killed"])
    last = tmp_path / "killed" / "train" / "last.safetensors"
    deadline = time.time() + 240
    while not last.is_file() and time.time() < deadline and killed.poll() is None:
        time.sleep(0.05)
    assert last.is_file(), "no checkpoint appeared"
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    epoch_at_kill = load_state(last)["epoch"]
    assert 1 <= epoch_at_kill < 4, "the kill must land before the run finished"
    resumed = train_cli(paths["killed"], "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    assert straight.wait(timeout=300) == 0, straight.stderr.read()
    a = load_state(tmp_path / "straight" / "train" / "last.safetensors")
    b = load_state(last)
    assert a["epoch"] == b["epoch"] == 4
    for key, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][key]), key
    timing_free = [[{k: v for k, v in h.items() if k not in ("images_per_sec", "epoch_seconds")} for h in s["history"]] for s in (a, b)]
    assert timing_free[0] == timing_free[1]
    best_a = load_file(str(tmp_path / "straight" / "train" / "best.safetensors"))
    best_b = load_file(str(tmp_path / "killed" / "train" / "best.safetensors"))
    assert all(torch.equal(best_a[k], best_b[k]) for k in best_a)


def test_two_process_ddp_on_cpu_with_gloo(xray_cohort, ingested, tmp_path):
    out = fresh_out(ingested, tmp_path, "ddp")
    config = out / "config.yaml"
    config.write_text(dump_config(train_config(xray_cohort, out, epochs=2)))
    torchrun = Path(sys.executable).parent / "torchrun"
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "pipelines.cli", "train",
                           "--config", str(config)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("train test_xray") == 1  # rank 0 alone reports
    state = load_state(out / "train" / "last.safetensors")
    assert state["epoch"] == 2
    # each rank scored its shard of the validation set; the metrics come from both shards put together, so they
    # equal what one process computes on the whole set with the same (final) weights
    single = Trainer(train_config(xray_cohort, out, epochs=2), Dist(), torch.device("cpu"))
    single.module.load_state_dict(state["model"])
    alone = single.validate()
    assert len(single.val_set) >= 4 and math.isfinite(alone["val_auroc"]) and math.isfinite(alone["val_loss"])
    combined = state["history"][-1]
    assert combined["val_auroc"] == pytest.approx(alone["val_auroc"], abs=1e-9)
    assert combined["val_loss"] == pytest.approx(alone["val_loss"], rel=1e-5)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_explicit_amp_modes_train_on_cpu(xray_cohort, ingested, tmp_path, amp):
    from pipelines import runtime

    dtype = runtime.resolve_amp(amp, torch.device("cpu"))
    assert dtype == (torch.bfloat16 if amp == "bf16" else torch.float16)
    assert runtime.resolve_amp("auto", torch.device("cpu")) is None  # auto is off on CPU
    assert runtime.make_scaler(torch.device("cpu"), dtype).is_enabled() == (amp == "fp16")  # loss scaling for fp16
    out = fresh_out(ingested, tmp_path, amp)
    result = run_train(train_config(xray_cohort, out, epochs=1, amp=amp), track=False)
    assert result.epochs_run == 1 and result.history[0]["train_loss"] == result.history[0]["train_loss"]
    state = load_state(Path(result.last_path))
    assert bool(state["scaler"]) == (amp == "fp16")
