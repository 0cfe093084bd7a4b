"""Position embeddings: fixed sin-cos tables for 2D/3D grids, the prefix/patch split, and resampling.

A position embedding here is a (1, prefix + prod(grid), D) tensor: one row per prefix token (class token,
distillation token), then one per patch in row-major order. The ViT and the MAE decoder both use these
helpers, so the two agree on that layout.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F


def sincos_1d(embed_dim: int, positions: torch.Tensor, temperature: float = 10000.0) -> torch.Tensor:
    """(N,) positions -> (N, embed_dim) table, first half sin, second half cos."""
    if embed_dim % 2:
        raise ValueError(f"sin-cos embedding needs an even dimension, got {embed_dim}")
    omega = 1.0 / temperature ** (torch.arange(embed_dim // 2, dtype=torch.float64) / (embed_dim / 2.0))
    angles = positions.double().reshape(-1, 1) * omega.reshape(1, -1)
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


def sincos_grid(embed_dim: int, grid_size: Sequence[int]) -> torch.Tensor:
    """Fixed sin-cos embedding for a 2D or 3D grid, (prod(grid), embed_dim), row-major like flatten().

    Each axis gets an equal, even share of the channels; any leftover channels are zero.
    """
    ndim = len(grid_size)
    per_axis = 2 * (embed_dim // (2 * ndim))
    if per_axis == 0:
        raise ValueError(f"embed_dim {embed_dim} too small for a {ndim}D sin-cos embedding")
    coords = torch.meshgrid(*[torch.arange(s) for s in grid_size], indexing="ij")
    parts = [sincos_1d(per_axis, c.flatten()) for c in coords]
    table = torch.cat(parts, dim=1)
    pad = embed_dim - table.shape[1]
    if pad:
        table = torch.cat([table, table.new_zeros(table.shape[0], pad)], dim=1)
    return table


def sincos_pos_embed(embed_dim: int, grid_size: Sequence[int], num_prefix_tokens: int = 0) -> torch.Tensor:
    """Fixed (1, prefix + prod(grid), embed_dim) embedding: zeros for the prefix tokens, then ``sincos_grid``."""
    table = sincos_grid(embed_dim, grid_size)
    return torch.cat([table.new_zeros(num_prefix_tokens, embed_dim), table]).unsqueeze(0)


def split_pos_embed(pos_embed: torch.Tensor, num_prefix_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, prefix + N, D) -> (the prefix tokens' rows (1, prefix, D), the patches' rows (1, N, D))."""
    return pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]


def resample_pos_embed(
    pos_embed: torch.Tensor,
    new_grid: Sequence[int],
    old_grid: Sequence[int],
    num_prefix_tokens: int = 1,
) -> torch.Tensor:
    """Resample a (1, prefix + prod(old_grid), D) position embedding to ``new_grid``.

    Prefix tokens (class and distillation tokens) are kept as they are. 2D grids use bicubic interpolation with
    antialiasing (the convention timm uses, so ImageNet weights transfer exactly); 3D grids use trilinear,
    since PyTorch has no bicubic for volumes.
    """
    new_grid, old_grid = tuple(new_grid), tuple(old_grid)
    if new_grid == old_grid:
        return pos_embed
    prefix, grid_tokens = split_pos_embed(pos_embed, num_prefix_tokens)
    dim = grid_tokens.shape[-1]
    if grid_tokens.shape[1] != math.prod(old_grid):
        raise ValueError(f"pos_embed has {grid_tokens.shape[1]} grid tokens, old grid {old_grid} needs {math.prod(old_grid)}")
    orig_dtype = grid_tokens.dtype
    grid = grid_tokens.float().reshape(1, *old_grid, dim).movedim(-1, 1)
    if len(old_grid) == 2:
        grid = F.interpolate(grid, size=new_grid, mode="bicubic", antialias=True, align_corners=False)
    else:
        grid = F.interpolate(grid, size=new_grid, mode="trilinear", align_corners=False)
    grid_tokens = grid.movedim(1, -1).reshape(1, math.prod(new_grid), dim).to(orig_dtype)
    return torch.cat([prefix, grid_tokens], dim=1)

