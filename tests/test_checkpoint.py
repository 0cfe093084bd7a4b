"""No-pickle training state: round trip of nested state, atomic writes, real optimizer/scheduler state."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from pipelines.training.checkpoint import load_state, save_state


def test_round_trip_of_a_real_training_state(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.SequentialLR(
        opt, [torch.optim.lr_scheduler.LinearLR(opt, 0.1, total_iters=2),
              torch.optim.lr_scheduler.CosineAnnealingLR(opt, 5)], milestones=[2])
    for _ in range(3):
        model(torch.randn(2, 4)).sum().backward()
        opt.step()
        sched.step()
    state = {
        "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
        "epoch": 3, "history": [{"val_auroc": 0.5}, {"val_auroc": float("nan")}], "note": None,
    }
    save_state(tmp_path / "ckpt.safetensors", state)
    loaded = load_state(tmp_path / "ckpt.safetensors")
    assert loaded["epoch"] == 3 and loaded["note"] is None and np.isnan(loaded["history"][1]["val_auroc"])
    for k, v in state["model"].items():
        assert torch.equal(loaded["model"][k], v)
    new_opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    new_opt.load_state_dict(loaded["optimizer"])  # int param ids and nested groups survive
    assert torch.equal(new_opt.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert loaded["scheduler"]["_milestones"] == [2] and loaded["scheduler"]["last_epoch"] == 3
    random.setstate(loaded["rng"]["python"])
    np.random.set_state(loaded["rng"]["numpy"])
    torch.set_rng_state(loaded["rng"]["torch"])
    assert random.random() == (random.setstate(state["rng"]["python"]), random.random())[1]


def test_file_is_safetensors_with_no_pickle(tmp_path):
    save_state(tmp_path / "s.safetensors", {"w": torch.ones(3), "view": torch.arange(10)[2:5]})
    raw = (tmp_path / "s.safetensors").read_bytes()
    assert b"\x80\x04" not in raw[:64] and raw[8:9] == b"{"  # JSON header, no pickle protocol marker
    loaded = load_state(tmp_path / "s.safetensors")
    assert torch.equal(loaded["view"], torch.tensor([2, 3, 4]))


def test_unsupported_objects_are_refused_and_nothing_is_left_behind(tmp_path):
    with pytest.raises(TypeError, match="without pickle"):
        save_state(tmp_path / "x.safetensors", {"obj": object()})
    assert list(tmp_path.iterdir()) == []


def test_overwrite_is_atomic(tmp_path):
    path = tmp_path / "c.safetensors"
    save_state(path, {"epoch": 1, "w": torch.zeros(2)})
    save_state(path, {"epoch": 2, "w": torch.ones(2)})
    assert load_state(path)["epoch"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]
