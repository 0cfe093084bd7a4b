"""from_timm reproduces the logits of a real timm VisionTransformer (fixture made with timm 1.0.31)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import medvit

FIXTURES = Path(__file__).parent / "fixtures"
REF = load_file(str(FIXTURES / "timm_vit_reference.safetensors"))
META = json.loads((FIXTURES / "timm_vit_reference.json").read_text())
HEADS = META["config"]["num_heads"]


def timm_state_dict() -> dict[str, torch.Tensor]:
    return {k.removeprefix("model."): v for k, v in REF.items() if k.startswith("model.")}


@pytest.mark.parametrize(
    ("kwargs", "inp", "logits"),
    [
        ({}, "input", "logits"),
        ({"in_chans": 1}, "input_1ch", "logits_1ch"),
        ({"img_size": META["big_img_size"]}, "input_big", "logits_big"),
    ],
    ids=["same", "rgb_to_gray", "pos_embed_resampled"],
)
@pytest.mark.parametrize("attn_impl", ["sdpa", "explicit"])
def test_from_timm_matches_reference_logits(kwargs, inp, logits, attn_impl):
    model = medvit.from_timm(REF, num_heads=HEADS, attn_impl=attn_impl, **kwargs).eval()
    with torch.no_grad():
        out = model(REF[inp])
    assert out.shape == REF[logits].shape
    assert (out - REF[logits]).abs().max() <= 1e-4


def test_from_timm_infers_the_architecture():
    model = medvit.from_timm(timm_state_dict(), num_heads=HEADS)
    cfg = META["config"]
    assert model.embed_dim == cfg["embed_dim"] and len(model.blocks) == cfg["depth"]
    assert model.patch_size == (cfg["patch_size"],) * 2 and model.img_size == (cfg["img_size"],) * 2
    assert model.num_classes == cfg["num_classes"] and model.global_pool == "token"


def test_from_timm_reads_safetensors_and_weights_only_torch_files(tmp_path):
    sd = timm_state_dict()
    save_file(sd, str(tmp_path / "vit.safetensors"))
    torch.save({"state_dict": sd}, tmp_path / "vit.pth")
    for path in (tmp_path / "vit.safetensors", tmp_path / "vit.pth"):
        model = medvit.from_timm(path, num_heads=HEADS).eval()
        with torch.no_grad():
            assert (model(REF["input"]) - REF["logits"]).abs().max() <= 1e-4


def test_from_timm_refuses_pickled_objects(tmp_path):
    torch.save({"model": timm_state_dict(), "extra": object()}, tmp_path / "unsafe.pth")
    with pytest.raises(Exception, match="(?i)weights.only|unsupported"):
        medvit.from_timm(tmp_path / "unsafe.pth", num_heads=HEADS)


def test_from_timm_wrong_heads_or_unsupported_keys_fail_clearly():
    with pytest.raises(ValueError, match="num_heads"):
        medvit.from_timm(REF, num_heads=5)
    sd = timm_state_dict() | {"reg_token": torch.zeros(1, 4, 64)}
    with pytest.raises(ValueError, match="register tokens"):
        medvit.from_timm(sd, num_heads=HEADS)


def test_rgb_to_gray_sums_filters():
    w = torch.randn(8, 3, 4, 4)
    torch.testing.assert_close(medvit.timm_weights.adapt_input_channels(w, 1), w.sum(1, keepdim=True))
    w5 = medvit.timm_weights.adapt_input_channels(w, 5)
    assert w5.shape == (8, 5, 4, 4)
    torch.testing.assert_close(w5.sum(1), w.sum(1))  # same response to a constant image
