"""Attention maps for explainability: per-layer weights, attention rollout, heatmaps at input size."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .vit import DistilledVisionTransformer, VisionTransformer


@torch.no_grad()
def attention_maps(model: VisionTransformer, x: torch.Tensor) -> list[torch.Tensor]:
    """Every block's attention weights for input ``x``: a list of (B, heads, T, T) tensors."""
    return model.forward_attention(x)[1]


def attention_rollout(
    weights: list[torch.Tensor], head_fusion: str = "mean", residual_alpha: float = 0.5
) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020): how much each token flows into each token, (B, T, T).

    Heads are fused by ``mean`` or ``max``; the residual connection is modelled as
    ``alpha * I + (1 - alpha) * A`` with rows renormalised, then the layers are multiplied in order.
    """
    if head_fusion not in ("mean", "max"):
        raise ValueError(f"head_fusion must be 'mean' or 'max', got {head_fusion!r}")
    rollout = None
    for w in weights:
        fused = w.float().mean(dim=1) if head_fusion == "mean" else w.float().amax(dim=1)
        eye = torch.eye(fused.shape[-1], device=fused.device).expand_as(fused)
        a = residual_alpha * eye + (1 - residual_alpha) * fused
        a = a / a.sum(dim=-1, keepdim=True)
        rollout = a if rollout is None else a @ rollout
    if rollout is None:
        raise ValueError("attention_rollout needs at least one layer of weights")
    return rollout


@torch.no_grad()
def rollout_heatmap(model: VisionTransformer, x: torch.Tensor, head_fusion: str = "mean") -> torch.Tensor:
    """Rollout relevance of each patch for the prediction, upsampled to input size and scaled to [0, 1].

    Returns (B, *img_size). The rollout rows are weighted by what the head reads (``readout_weights``): the
    class token's row, the mean of the patch rows (``avg``), or the patch rows that win the maximum
    (``max``). Only the patch columns are kept: the class and (DeiT) distillation tokens are skipped.
    """
    rollout = attention_rollout(attention_maps(model, x), head_fusion)
    prefix = model.num_prefix_tokens
    readout = readout_weights(model, x)
    relevance = (readout.unsqueeze(1) @ rollout[:, :, prefix:]).squeeze(1)
    grid = relevance.reshape(x.shape[0], 1, *model.grid_size)
    mode = "bilinear" if model.spatial_dims == 2 else "trilinear"
    heat = F.interpolate(grid, size=model.img_size, mode=mode, align_corners=False)[:, 0]
    flat = heat.flatten(1)
    low, high = flat.min(dim=1, keepdim=True).values, flat.max(dim=1, keepdim=True).values
    return ((flat - low) / (high - low).clamp_min(1e-12)).reshape_as(heat)


@torch.no_grad()
def readout_weights(model: VisionTransformer, x: torch.Tensor) -> torch.Tensor:
    """How much each output token feeds the class head, (B, T), rows summing to 1.

    ``token`` pooling (and a distilled model): the class token. ``avg``: every patch token alike. ``max``:
    each patch token by the channels whose maximum it holds, a channel weighted by the magnitude of its
    head weights (a token that wins no channel contributes nothing).
    """
    prefix, tokens = model.num_prefix_tokens, model.num_prefix_tokens + model.num_patches
    weights = x.new_zeros(x.shape[0], tokens)
    if model.global_pool == "token" or isinstance(model, DistilledVisionTransformer):
        weights[:, 0] = 1.0
    elif model.global_pool == "avg":
        weights[:, prefix:] = 1.0 / model.num_patches
    else:
        patches = model.forward_blocks(model.embed(x))[:, prefix:]
        winner = patches.argmax(dim=1)  # (B, D): which patch token holds each channel's maximum
        channel = model.head.weight.abs().sum(dim=0) if isinstance(model.head, torch.nn.Linear) else None
        channel = torch.ones(patches.shape[-1], device=x.device) if channel is None else channel
        votes = torch.zeros_like(patches[..., 0]).scatter_add_(1, winner, channel.expand_as(winner).to(x.dtype))
        weights[:, prefix:] = votes / votes.sum(dim=1, keepdim=True).clamp_min(1e-12)
    return weights
