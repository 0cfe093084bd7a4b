"""Attention maps and rollout heatmaps at input resolution."""

from __future__ import annotations

import pytest
import torch

import medvit
from medvit import VisionTransformer


@pytest.mark.parametrize(("spatial_dims", "img_size"), [(2, (32, 48)), (3, (16, 32, 32))])
def test_rollout_heatmap_has_input_resolution_and_unit_range(spatial_dims, img_size):
    torch.manual_seed(0)
    model = VisionTransformer(spatial_dims=spatial_dims, img_size=img_size, patch_size=8, embed_dim=32,
                              depth=3, num_heads=4).eval()
    heat = medvit.rollout_heatmap(model, torch.randn(2, 1, *img_size))
    assert heat.shape == (2, *img_size)
    assert heat.min() >= 0 and heat.max() <= 1
    assert torch.allclose(heat.flatten(1).amax(1), torch.ones(2))


def test_rollout_rows_are_distributions_and_identity_without_attention():
    torch.manual_seed(0)
    weights = [torch.rand(2, 4, 10, 10).softmax(-1) for _ in range(3)]
    rollout = medvit.attention_rollout(weights)
    torch.testing.assert_close(rollout.sum(-1), torch.ones(2, 10))
    eye = torch.eye(10).expand(2, 4, 10, 10)
    torch.testing.assert_close(medvit.attention_rollout([eye, eye]), torch.eye(10).expand(2, 10, 10))


def test_rollout_follows_attention_to_a_patch():
    # every token attends only to patch token 5 -> rollout of the class token points at patch 5
    attn = torch.zeros(1, 2, 17, 17)
    attn[..., 5] = 1.0
    rollout = medvit.attention_rollout([attn, attn])
    assert rollout[0, 0, 1:].argmax() == 4


def test_heatmap_highlights_where_the_model_attends():
    # Zero input: only position embeddings differ between tokens. Give grid cell (row 1, col 2) = token 1 + 6
    # a distinct embedding and make every query attend to its key; the heatmap must peak in that cell.
    torch.manual_seed(0)
    model = VisionTransformer(img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=1).eval()
    signs = torch.tensor([1.0] * 8 + [-1.0] * 8)
    with torch.no_grad():
        model.patch_embed.proj.bias.zero_()
        model.cls_token.zero_()
        model.pos_embed.zero_()
        model.pos_embed[0, 1 + 6] = 5.0 * signs  # LayerNorm turns this into +-1, all other tokens stay 0
        qkv = model.blocks[0].attn.qkv
        qkv.weight.zero_()
        qkv.bias.zero_()
        qkv.bias[:16] = 1.0  # every query is all ones
        qkv.weight[16:32] = torch.diag(signs) * 20  # key of the marked token: 20 * ones; others 0
    heat = medvit.rollout_heatmap(model, torch.zeros(1, 1, 32, 32))
    row, col = divmod(int(heat[0].argmax()), 32)
    assert 8 <= row < 16 and 16 <= col < 24


def test_max_pooled_heatmap_follows_the_token_that_wins_the_maximum():
    """Uniform attention (zero qkv): the rollout is the same for every token, so only the readout decides.
    A bright patch at grid cell (2, 1) holds the per-channel maxima; the class token's row would be flat."""
    torch.manual_seed(0)
    model = VisionTransformer(img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=1,
                              global_pool="max").eval()
    with torch.no_grad():
        model.blocks[0].attn.qkv.weight.zero_()
        model.blocks[0].attn.qkv.bias.zero_()
        model.patch_embed.proj.weight.abs_()  # a brighter patch gives larger tokens in every channel
        model.pos_embed.zero_()
    x = torch.zeros(1, 1, 32, 32)
    x[:, :, 16:24, 8:16] = 3.0
    weights = medvit.readout_weights(model, x)
    assert weights[0, 0] == 0 and int(weights[0, 1:].argmax()) == 2 * 4 + 1
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(1))
    heat = medvit.rollout_heatmap(model, x)
    row, col = divmod(int(heat[0].argmax()), 32)
    assert 16 <= row < 24 and 8 <= col < 16
