"""Attention maps for explainability: per-layer weights, attention rollout, heatmaps at input size."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .vit import VisionTransformer


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

    Returns (B, *img_size). With a class token the class-token row is used; without one, the mean over
    all token rows. Only the patch columns are kept: the class and (DeiT) distillation tokens are skipped.
    """
    rollout = attention_rollout(attention_maps(model, x), head_fusion)
    prefix = model.num_prefix_tokens
    relevance = rollout[:, 0, prefix:] if prefix else rollout.mean(dim=1)
    grid = relevance.reshape(x.shape[0], 1, *model.grid_size)
    mode = "bilinear" if model.spatial_dims == 2 else "trilinear"
    heat = F.interpolate(grid, size=model.img_size, mode=mode, align_corners=False)[:, 0]
    flat = heat.flatten(1)
    low, high = flat.min(dim=1, keepdim=True).values, flat.max(dim=1, keepdim=True).values
    return ((flat - low) / (high - low).clamp_min(1e-12)).reshape_as(heat)
