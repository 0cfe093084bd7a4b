"""The model library: shapes, attention paths, checkpointing, compile, training, autocast, explainability."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import medvit
from medvit import VisionTransformer, create_model
from medvit.layers import ResidualConvBlock

TINY = {"embed_dim": 32, "depth": 2, "num_heads": 4, "num_classes": 3}


def tiny_vit(**kw) -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(**{"img_size": 32, "patch_size": 8, "in_chans": 1, **TINY, **kw})


@pytest.mark.parametrize("name", medvit.list_models())
def test_presets_build_and_classify(name):
    model = create_model(name, num_classes=2, depth=1).eval()  # depth 1 keeps the suite fast
    x = torch.randn(1, 1, *model.img_size)
    with torch.no_grad():
        assert model(x).shape == (1, 2)
        assert model.forward_features(x).shape == (1, 1 + model.num_patches, model.embed_dim)
    dims = medvit.PRESETS[name]
    assert model.embed_dim == dims["embed_dim"] and len(model.blocks) == 1
    assert model.spatial_dims == (3 if name.startswith("vit3d") else 2)


def test_preset_dims_match_vit_ti_s_b():
    got = {n: (c["embed_dim"], c["depth"], c["num_heads"]) for n, c in medvit.PRESETS.items()}
    assert got["vit_tiny"] == (192, 12, 3) and got["vit_small"] == (384, 12, 6) and got["vit_base"] == (768, 12, 12)
    base = create_model("vit_base", num_classes=1000, in_chans=3)
    assert 86.0e6 < sum(p.numel() for p in base.parameters()) < 86.9e6  # ViT-B/16 has 86.6M


@pytest.mark.parametrize(
    ("spatial_dims", "img_size", "patch_size", "stem", "in_chans"),
    [
        (2, 32, 8, "patch", 1),
        (2, (32, 48), 8, "conv", 3),
        (3, 32, 8, "patch", 1),
        (3, (32, 32, 16), (8, 8, 4), "conv", 2),
    ],
)
def test_shapes_2d_3d_hybrid(spatial_dims, img_size, patch_size, stem, in_chans):
    model = tiny_vit(spatial_dims=spatial_dims, img_size=img_size, patch_size=patch_size, stem=stem, in_chans=in_chans)
    size = model.img_size
    x = torch.randn(2, in_chans, *size)
    assert model(x).shape == (2, 3)
    grid = tuple(s // p for s, p in zip(size, model.patch_size, strict=True))
    assert model.grid_size == grid
    assert model.patch_embed(x).shape == (2, model.num_patches, 32)


def test_conv_stem_is_stride_two_convs_then_1x1():
    model = tiny_vit(stem="conv", patch_size=16, img_size=64)
    convs = [m for m in model.patch_embed.modules() if isinstance(m, nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(3, 3)] * 4 + [(1, 1)]
    assert [c.stride for c in convs[:4]] == [(2, 2)] * 4
    assert convs[-1].out_channels == 32
    with pytest.raises(ValueError, match="power-of-two"):
        tiny_vit(stem="conv", patch_size=12, img_size=48)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_residual_stem_adds_identity_initialised_blocks_per_stage(spatial_dims):
    plain = tiny_vit(spatial_dims=spatial_dims, stem="conv", patch_size=8, stem_norm="group")
    deep = tiny_vit(spatial_dims=spatial_dims, stem="conv", patch_size=8, stem_norm="group", stem_depth=2)
    conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
    count = lambda m: sum(isinstance(x, conv) for x in m.patch_embed.modules())  # noqa: E731
    assert count(deep) == count(plain) + 3 * 2 * 2  # 3 stages x 2 blocks x 2 convs
    # the second norm of every block starts at zero: at initialisation the deep stem computes the plain one
    strided = [m for m in deep.patch_embed.stem if not isinstance(m, ResidualConvBlock)]
    for target, source in zip(strided, plain.patch_embed.stem, strict=True):
        target.load_state_dict(source.state_dict())
    deep.patch_embed.proj.load_state_dict(plain.patch_embed.proj.state_dict())
    x = torch.randn(2, 1, *plain.img_size)
    with torch.no_grad():
        torch.testing.assert_close(deep.patch_embed(x), plain.patch_embed(x))
    assert deep.config["stem_depth"] == 2 and deep(x).shape == (2, 3)


def test_wrong_input_size_is_a_clear_error():
    with pytest.raises(ValueError, match="img_size"):
        tiny_vit()(torch.randn(1, 1, 40, 40))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_sdpa_and_explicit_attention_agree(spatial_dims):
    sdpa = tiny_vit(spatial_dims=spatial_dims, attn_impl="sdpa").eval()
    explicit = tiny_vit(spatial_dims=spatial_dims, attn_impl="explicit").eval()
    explicit.load_state_dict(sdpa.state_dict())
    x = torch.randn(3, 1, *sdpa.img_size)
    with torch.no_grad():
        a, b = sdpa(x), explicit(x)
        c, weights = sdpa.forward_attention(x)
    assert (a - b).abs().max() <= 1e-5
    assert (a - c).abs().max() <= 1e-5
    assert len(weights) == 2 and weights[0].shape == (3, 4, 1 + sdpa.num_patches, 1 + sdpa.num_patches)
    torch.testing.assert_close(weights[0].sum(-1), torch.ones(3, 4, 1 + sdpa.num_patches))


def test_mean_pooling_and_sincos_position_embedding():
    model = tiny_vit(global_pool="avg", pos_embed="sincos", class_token=False)
    assert model.num_prefix_tokens == 0 and "pos_embed" not in dict(model.named_parameters())
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 3)
    assert "pos_embed" not in model.state_dict()  # fixed table: recomputed, never stored
    with pytest.raises(ValueError, match="class_token"):
        tiny_vit(global_pool="token", class_token=False)


def test_max_pooling_reads_the_strongest_patch_token_only():
    model = tiny_vit(global_pool="max", depth=0).eval()  # no blocks: the pooled tokens are the embeddings
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        tokens = model.embed(x)
        expected = model.head(model.fc_norm(tokens[:, 1:].amax(dim=1)))
        torch.testing.assert_close(model(x), expected)
        model.cls_token.fill_(1e4)  # the class token is not a patch: it cannot win the maximum
        torch.testing.assert_close(model(x), expected)
        hot = x.clone()
        hot[:, :, :8, :8] += 50.0  # one bright patch moves the pooled features (a mean would dilute it 16x)
        assert (model(hot) - expected).abs().max() > 0.1


def test_sincos_table_is_distinct_per_position():
    table = medvit.sincos_grid(48, (3, 4, 5))
    assert table.shape == (60, 48)
    assert torch.cdist(table, table).add(torch.eye(60) * 1e3).min() > 0.1


def test_gradient_checkpointing_gives_same_outputs_and_gradients():
    model = tiny_vit(drop_path_rate=0.2).train()
    x = torch.randn(4, 1, 32, 32)
    torch.manual_seed(1)
    out_plain = model(x)
    out_plain.square().sum().backward()
    grads_plain = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    torch.manual_seed(1)
    out_ckpt = model(x)
    out_ckpt.square().sum().backward()
    torch.testing.assert_close(out_ckpt, out_plain, rtol=0, atol=1e-6)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads_plain[name], rtol=1e-5, atol=1e-6, msg=name)


def test_drop_path_drops_whole_samples_in_training_only():
    drop = medvit.DropPath(0.5).train()
    torch.manual_seed(0)
    out = drop(torch.ones(64, 5, 7))
    per_sample = out.flatten(1)
    assert set(per_sample.unique().tolist()) <= {0.0, 2.0}
    assert (per_sample == per_sample[:, :1]).all()
    assert 10 < (per_sample[:, 0] == 0).sum() < 54
    assert torch.equal(drop.eval()(torch.ones(3, 2)), torch.ones(3, 2))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_compile_fullgraph_has_no_graph_breaks(spatial_dims):
    model = tiny_vit(spatial_dims=spatial_dims, stem="conv").eval()
    x = torch.randn(2, 1, *model.img_size)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))


def test_a_few_training_steps_reduce_the_loss():
    torch.manual_seed(0)
    x = torch.randn(32, 1, 16, 16)
    y = (x[:, 0, :8].mean(dim=(1, 2)) > x[:, 0, 8:].mean(dim=(1, 2))).long()  # top half brighter?
    model = VisionTransformer(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, num_classes=2)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_bf16_autocast_on_cpu_stays_close_to_fp32():
    model = tiny_vit(stem="conv").eval()
    x = torch.randn(4, 1, 32, 32)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
    assert low.dtype == torch.bfloat16
    assert (low.float() - ref).abs().max() < 0.05 * ref.abs().max() + 0.02


def test_set_img_size_resamples_and_keeps_parameter():
    model = tiny_vit()
    param = model.pos_embed
    cls_pos = model.pos_embed[:, :1].clone()
    model.set_img_size(48)
    assert model.pos_embed is param and param.shape == (1, 1 + 36, 32)
    torch.testing.assert_close(model.pos_embed[:, :1], cls_pos)
    assert model(torch.randn(1, 1, 48, 48)).shape == (1, 3)


def test_no_weight_decay_names_exist():
    names = dict(tiny_vit().named_parameters())
    assert tiny_vit().no_weight_decay() <= set(names)


def test_config_holds_every_constructor_argument_as_given():
    import inspect

    params = [p for p in inspect.signature(VisionTransformer.__init__).parameters if p != "self"]
    given = {"img_size": (32, 48), "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 4, "num_classes": 3,
             "global_pool": "max", "pos_embed": "sincos", "stem": "conv", "stem_norm": "group", "stem_depth": 1,
             "drop_rate": 0.1, "pos_drop_rate": 0.2, "attn_drop_rate": 0.3, "drop_path_rate": 0.4, "init_values": 0.5,
             "norm_eps": 1e-5, "attn_impl": "explicit", "qkv_bias": False, "mlp_ratio": 2.0, "in_chans": 2}
    model = VisionTransformer(**given)
    assert list(model.config) == params  # every argument, in signature order
    assert {k: model.config[k] for k in given} == given
    defaults = {p.name: p.default for p in inspect.signature(VisionTransformer.__init__).parameters.values()}
    assert all(model.config[k] == defaults[k] for k in params if k not in given)
    assert VisionTransformer(**model.config).config == model.config


def test_constructor_docstring_explains_every_argument():
    import inspect

    doc = inspect.getdoc(VisionTransformer.__init__)
    params = [p for p in inspect.signature(VisionTransformer.__init__).parameters if p != "self"]
    missing = [p for p in params if f"\n    {p}: " not in doc]
    assert not missing


@pytest.mark.parametrize("class_token", [True, False])
def test_sincos_position_embedding_is_the_shared_table(class_token):
    kw = {"global_pool": "token" if class_token else "avg", "class_token": class_token, "pos_embed": "sincos"}
    model = tiny_vit(img_size=(32, 48), **kw)
    prefix = int(class_token)
    table = medvit.sincos_pos_embed(32, (4, 6), prefix)
    assert torch.equal(model.pos_embed, table)
    prefix_rows, patch_rows = medvit.split_pos_embed(table, prefix)
    assert prefix_rows.shape == (1, prefix, 32) and prefix_rows.abs().sum() == 0
    assert torch.equal(patch_rows[0], medvit.sincos_grid(32, (4, 6)))
    x = torch.randn(2, 1, 32, 48)
    torch.testing.assert_close(model.patch_tokens(x), model.patch_embed(x) + patch_rows)
