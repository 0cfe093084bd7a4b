"""DeiT distillation (DistilledVisionTransformer) and the layer ids used for layer-wise learning-rate decay."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import medvit
from medvit import DistilledVisionTransformer, VisionTransformer, build_vit

TINY = {"embed_dim": 32, "depth": 2, "num_heads": 4, "num_classes": 3, "img_size": 32, "patch_size": 8}


def tiny_vit(**kw) -> VisionTransformer:
    torch.manual_seed(0)
    return build_vit(**{**TINY, **kw})


# ---- distillation token ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("spatial_dims", "img_size", "stem"), [(2, 32, "patch"), (3, 16, "conv"), (2, (32, 48), "conv")])
def test_distilled_shapes_and_forward_is_the_mean_of_both_heads(spatial_dims, img_size, stem):
    model = tiny_vit(spatial_dims=spatial_dims, img_size=img_size, stem=stem, distilled=True).eval()
    x = torch.randn(2, 1, *model.img_size)
    with torch.no_grad():
        cls_logits, dist_logits = model.forward_distill(x)
        out = model(x)
        feats = model.forward_features(x)
    assert isinstance(model, DistilledVisionTransformer) and model.config["distilled"] is True
    assert model.num_prefix_tokens == 2 and model.prefix_parameters() == [model.cls_token, model.dist_token]
    assert model.pos_embed.shape == (1, 2 + model.num_patches, 32)
    assert feats.shape == (2, 2 + model.num_patches, 32)
    assert cls_logits.shape == dist_logits.shape == out.shape == (2, 3)
    assert not torch.allclose(cls_logits, dist_logits)  # two different heads on two different tokens
    torch.testing.assert_close(out, (cls_logits + dist_logits) / 2)
    torch.testing.assert_close(model.forward_head(feats, pre_logits=True), (feats[:, 0] + feats[:, 1]) / 2)


def test_distilled_model_needs_a_class_token_and_each_class_its_own_flag():
    with pytest.raises(ValueError, match="distilled=True needs class_token"):
        tiny_vit(distilled=True, class_token=False, global_pool="avg")
    with pytest.raises(ValueError, match="DistilledVisionTransformer"):
        VisionTransformer(**TINY, distilled=True)
    with pytest.raises(ValueError, match="plain VisionTransformer"):
        DistilledVisionTransformer(**TINY, distilled=False)


def test_build_vit_and_create_model_pick_the_class_from_distilled():
    assert type(tiny_vit()) is VisionTransformer and type(tiny_vit(distilled=False)) is VisionTransformer
    assert type(tiny_vit(distilled=True)) is DistilledVisionTransformer
    assert type(medvit.create_model("vit_tiny", depth=1, distilled=True)) is DistilledVisionTransformer
    assert type(medvit.create_model("vit_tiny", depth=1)) is VisionTransformer


def test_a_plain_model_has_no_distillation_attributes():
    plain = tiny_vit()
    for name in ("dist_token", "head_dist", "distilled", "forward_distill", "forward_head_distill", "pool_distill"):
        assert not hasattr(plain, name), name
    assert plain.config["distilled"] is False and plain.num_prefix_tokens == 1
    assert plain.prefix_parameters() == [plain.cls_token]


def test_a_distilled_model_round_trips_through_save_and_load_as_the_subclass(tmp_path):
    from pipelines.training.modeling import load_model, save_model

    model = tiny_vit(distilled=True, global_pool="avg", pos_embed="sincos").eval()
    with torch.no_grad():  # move every weight off its initial value, so a fresh model cannot pass by chance
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    kwargs = {k: list(v) if isinstance(v, tuple) else v for k, v in model.config.items()}
    save_model(tmp_path / "m.safetensors", model, kwargs)
    loaded, saved_kwargs, _ = load_model(tmp_path / "m.safetensors")
    assert type(loaded) is DistilledVisionTransformer and saved_kwargs["distilled"] is True
    assert list(loaded.state_dict()) == list(model.state_dict())
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
        for got, want in zip(loaded.forward_distill(x), model.forward_distill(x), strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_distilled_with_average_pooling_class_head_reads_the_patch_mean_and_dist_head_its_token():
    model = tiny_vit(distilled=True, global_pool="avg").eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        feats = model.forward_features(x)
        cls_logits, dist_logits = model.forward_distill(x)
        out = model(x)
    pooled = model.fc_norm(feats[:, 2:].mean(dim=1))
    dist = model.fc_norm(feats[:, 1])
    torch.testing.assert_close(cls_logits, model.head(pooled))
    torch.testing.assert_close(dist_logits, model.head_dist(dist))
    torch.testing.assert_close(out, (cls_logits + dist_logits) / 2)
    torch.testing.assert_close(model.forward_head(feats, pre_logits=True), (pooled + dist) / 2)
    assert isinstance(model.norm, torch.nn.Identity)  # avg pooling: the norm comes after pooling


def test_plain_state_dict_keys_are_unchanged_and_distilled_adds_three():
    plain, distilled = tiny_vit(), tiny_vit(distilled=True)
    plain_keys = set(plain.state_dict())
    assert not any("dist" in k for k in plain_keys)
    assert set(distilled.state_dict()) == plain_keys | {"dist_token", "head_dist.weight", "head_dist.bias"}
    assert plain.num_prefix_tokens == 1 and plain.pos_embed.shape == (1, 17, 32)
    rebuilt = build_vit(**distilled.config)
    assert type(rebuilt) is DistilledVisionTransformer and rebuilt.config == distilled.config
    rebuilt.load_state_dict(distilled.state_dict())  # strict: config round trip gives the same model
    assert type(VisionTransformer(**plain.config)) is VisionTransformer  # a plain config builds either way


def test_gradients_flow_to_both_heads_and_tokens():
    model = tiny_vit(distilled=True).train()
    x = torch.randn(4, 1, 32, 32)
    labels, teacher = torch.tensor([0, 1, 2, 0]), torch.tensor([2, 2, 1, 0])
    cls_logits, dist_logits = model.forward_distill(x)
    (F.cross_entropy(cls_logits, labels) + F.cross_entropy(dist_logits, teacher)).backward()
    for name in ("head.weight", "head_dist.weight", "cls_token", "dist_token", "pos_embed", "blocks.0.attn.qkv.weight"):
        grad = model.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name
    # the teacher loss alone trains the distillation head, not the class head
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model.forward_distill(x)[1], teacher).backward()
    assert model.head.weight.grad is None and model.head_dist.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("pos_embed", ["learned", "sincos"])
def test_distilled_set_img_size_keeps_both_prefix_positions(pos_embed):
    model = tiny_vit(distilled=True, pos_embed=pos_embed)
    prefix = model.pos_embed[:, :2].clone()
    model.set_img_size(48)
    assert model.pos_embed.shape == (1, 2 + 36, 32)
    torch.testing.assert_close(model.pos_embed[:, :2], prefix)
    cls_logits, dist_logits = model.forward_distill(torch.randn(2, 1, 48, 48))
    assert cls_logits.shape == dist_logits.shape == (2, 3)
    if pos_embed == "sincos":
        assert model.pos_embed[:, :2].abs().sum() == 0 and "pos_embed" not in model.state_dict()


def test_distilled_grad_checkpointing_gives_the_same_outputs_and_gradients():
    model = tiny_vit(distilled=True, drop_path_rate=0.2).train()
    x = torch.randn(4, 1, 32, 32)
    results = []
    for enable in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(enable)
        torch.manual_seed(1)
        cls_logits, dist_logits = model.forward_distill(x)
        (cls_logits.square().sum() + dist_logits.abs().sum()).backward()
        results.append((cls_logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=0, atol=1e-6)
    for name, grad in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], grad, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize(("spatial_dims", "img_size"), [(2, (32, 48)), (3, (16, 32, 16))])
def test_distilled_rollout_heatmap_has_the_input_shape(spatial_dims, img_size):
    model = tiny_vit(spatial_dims=spatial_dims, img_size=img_size, distilled=True).eval()
    x = torch.randn(2, 1, *img_size)
    logits, weights = model.forward_attention(x)
    torch.testing.assert_close(logits, model(x))
    assert weights[0].shape == (2, 4, 2 + model.num_patches, 2 + model.num_patches)
    heat = medvit.rollout_heatmap(model, x)
    assert heat.shape == (2, *img_size)
    assert heat.min() >= 0 and torch.allclose(heat.flatten(1).amax(1), torch.ones(2))


def test_no_weight_decay_includes_the_distillation_token():
    distilled, plain = tiny_vit(distilled=True), tiny_vit()
    assert "dist_token" in distilled.no_weight_decay() <= set(dict(distilled.named_parameters()))
    assert plain.no_weight_decay() == {"pos_embed", "cls_token"}


def test_bf16_autocast_and_compile_work_with_a_distilled_model():
    model = tiny_vit(distilled=True, stem="conv").eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model.forward_distill(x)
        torch._dynamo.reset()
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
        torch.testing.assert_close(compiled(x), ref)
    assert low[0].dtype == torch.bfloat16
    assert ((low[0].float() + low[1].float()) / 2 - ref).abs().max() < 0.05 * ref.abs().max() + 0.02


# ---- from_timm with distillation -------------------------------------------------------------------------------
def test_from_timm_reads_deit_distilled_weights():
    # medvit uses timm's names (dist_token, head_dist, pos_embed with two prefix slots), so a distilled
    # model's state dict is a timm DeiT-distilled state dict
    source = tiny_vit(distilled=True).eval()
    model = medvit.from_timm({f"model.{k}": v for k, v in source.state_dict().items()}, num_heads=4).eval()
    assert isinstance(model, DistilledVisionTransformer) and model.num_prefix_tokens == 2
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_distill(x), source.forward_distill(x))
        bigger = medvit.from_timm(source.state_dict(), num_heads=4, img_size=48)
        assert bigger.pos_embed.shape == (1, 2 + 36, 32)
        torch.testing.assert_close(bigger.pos_embed[:, :2], source.pos_embed[:, :2])


def test_from_timm_plain_weights_into_a_distilled_model_and_back():
    plain = tiny_vit().eval()
    model = medvit.from_timm(plain.state_dict(), num_heads=4, distilled=True)
    assert isinstance(model, DistilledVisionTransformer)
    pos = model.pos_embed.detach()
    torch.testing.assert_close(pos[:, 1], pos[:, 0])  # distillation slot starts from the class token's
    torch.testing.assert_close(pos[:, [0, *range(2, 18)]], plain.pos_embed.detach())
    torch.testing.assert_close(model.head.weight, plain.head.weight)
    assert model.dist_token.abs().sum() > 0  # kept at its fresh (non-zero) initialisation
    # and DeiT weights into a plain model drop the distillation token: same class path as before
    back = medvit.from_timm(model.state_dict(), num_heads=4, distilled=False).eval()
    assert type(back) is VisionTransformer and set(back.state_dict()) == set(plain.state_dict())
    with torch.no_grad():
        x = torch.randn(2, 1, 32, 32)
        torch.testing.assert_close(back(x), plain(x))


# ---- layer-wise learning-rate decay --------------------------------------------------------------------------
def test_layer_id_maps_names_to_depth():
    model = tiny_vit(distilled=True, depth=12, stem="conv")
    expected = {
        "cls_token": 0, "dist_token": 0, "pos_embed": 0, "patch_embed.proj.weight": 0, "patch_embed.stem.0.weight": 0,
        "blocks.0.norm1.weight": 1, "blocks.1.attn.qkv.weight": 2, "blocks.10.mlp.fc2.bias": 11,
        "blocks.11.ls1.gamma": 12, "norm.weight": 13, "fc_norm.bias": 13, "head.weight": 13, "head_dist.bias": 13,
        "module.blocks.3.attn.proj.weight": 4, "_orig_mod.pos_embed": 0, "module._orig_mod.head.bias": 13,
    }
    assert {name: model.layer_id(name) for name in expected} == expected
    ids = {name: model.layer_id(name) for name, _ in model.named_parameters()}
    assert set(ids.values()) == set(range(14))  # every layer has parameters, nothing out of range
    assert all(ids[n] == 1 + int(n.split(".")[1]) for n in ids if n.startswith("blocks."))


def test_layer_id_depends_only_on_the_name_and_depth():
    small, avg = tiny_vit(), tiny_vit(global_pool="avg", class_token=False, pos_embed="sincos")
    for name in ("patch_embed.proj.bias", "blocks.1.norm2.bias", "fc_norm.weight", "head.bias"):
        assert small.layer_id(name) == avg.layer_id(name)
    assert [small.layer_id(n) for n in ("pos_embed", "blocks.0.attn.qkv.bias", "blocks.1.mlp.fc1.weight", "norm.bias")] \
        == [0, 1, 2, 3]
