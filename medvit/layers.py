"""Building blocks of the Vision Transformer: patch embedding, convolutional stem, attention, MLP, block.

Every layer works for 2D images and 3D volumes; ``spatial_dims`` picks Conv2d or Conv3d where it matters.
Parameter names follow timm's ``vision_transformer.py`` so that timm-format weights map one to one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

AttnImpl = str  # "sdpa" | "explicit"


def to_tuple(value: int | Sequence[int], spatial_dims: int) -> tuple[int, ...]:
    """Expand an int to a ``spatial_dims``-tuple, or check a sequence has that length."""
    if isinstance(value, int):
        return (value,) * spatial_dims
    out = tuple(int(v) for v in value)
    if len(out) != spatial_dims:
        raise ValueError(f"expected {spatial_dims} values, got {out}")
    return out


def conv_nd(spatial_dims: int) -> type[nn.Conv2d] | type[nn.Conv3d]:
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    return nn.Conv2d if spatial_dims == 2 else nn.Conv3d


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample with probability ``drop_prob``."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep_prob = 1.0 - self.drop_prob
        mask_shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = x.new_empty(mask_shape).bernoulli_(keep_prob)
        return x * mask / keep_prob

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class LayerScale(nn.Module):
    """Per-channel learnable scaling of a residual branch (CaiT / DeiT III)."""

    def __init__(self, dim: int, init_values: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens with one strided convolution (2D or 3D)."""

    def __init__(self, spatial_dims: int, in_chans: int, embed_dim: int, patch_size: Sequence[int]):
        super().__init__()
        self.patch_size = tuple(patch_size)
        self.proj = conv_nd(spatial_dims)(
            in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, *spatial) -> (B, num_patches, embed_dim)."""
        return self.proj(x).flatten(2).transpose(1, 2)


def _stem_norm(kind: str, spatial_dims: int, channels: int) -> nn.Module:
    if kind == "batch":
        return (nn.BatchNorm2d if spatial_dims == 2 else nn.BatchNorm3d)(channels)
    if kind == "instance":
        return (nn.InstanceNorm2d if spatial_dims == 2 else nn.InstanceNorm3d)(channels, affine=True)
    if kind == "group":
        return nn.GroupNorm(math.gcd(8, channels), channels)
    raise ValueError(f"stem_norm must be 'batch', 'instance' or 'group', got {kind!r}")


class ResidualConvBlock(nn.Module):
    """ResNet basic block at constant width: x + norm(conv(relu(norm(conv(x))))), then ReLU."""

    def __init__(self, spatial_dims: int, channels: int, norm: str = "batch"):
        super().__init__()
        conv = conv_nd(spatial_dims)
        self.conv1 = conv(channels, channels, kernel_size=3, padding=1, bias=False)
        self.norm1 = _stem_norm(norm, spatial_dims, channels)
        self.conv2 = conv(channels, channels, kernel_size=3, padding=1, bias=False)
        self.norm2 = _stem_norm(norm, spatial_dims, channels)
        nn.init.zeros_(self.norm2.weight)  # starts as the identity (Goyal et al. 2017)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.norm2(self.conv2(F.relu(self.norm1(self.conv1(x)))))
        return F.relu(x + out)


class ConvStem(nn.Module):
    """Hybrid stem (Xiao et al. 2021, "Early Convolutions Help Transformers See Better").

    A stack of 3x3 stride-2 convolutions with norm and ReLU, channels doubling each step, then a 1x1
    projection to ``embed_dim``. Total stride equals ``patch_size`` (each entry a power of two); an axis
    whose patch size is already reached keeps stride 1, so anisotropic 3D patches work too.
    ``blocks_per_stage`` residual blocks after each strided convolution make it a ResNet-style stem (the
    ViT paper's hybrid): more local, translation-equivariant computation before the tokens.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_chans: int,
        embed_dim: int,
        patch_size: Sequence[int],
        channels: Sequence[int] | None = None,
        norm: str = "batch",
        blocks_per_stage: int = 0,
    ):
        super().__init__()
        self.patch_size = tuple(patch_size)
        for p in self.patch_size:
            if p < 2 or p & (p - 1):
                raise ValueError(f"conv stem needs power-of-two patch sizes >= 2, got {self.patch_size}")
        num_convs = max(int(math.log2(p)) for p in self.patch_size)
        if channels is None:
            channels = [max(16, embed_dim // 2 ** (num_convs - i)) for i in range(num_convs)]
        if len(channels) != num_convs:
            raise ValueError(f"conv stem for patch {self.patch_size} needs {num_convs} channel entries")
        conv = conv_nd(spatial_dims)
        layers: list[nn.Module] = []
        remaining = list(self.patch_size)
        prev = in_chans
        for ch in channels:
            stride = tuple(2 if r > 1 else 1 for r in remaining)
            remaining = [r // s for r, s in zip(remaining, stride, strict=True)]
            layers += [
                conv(prev, ch, kernel_size=3, stride=stride, padding=1, bias=False),
                _stem_norm(norm, spatial_dims, ch),
                nn.ReLU(inplace=True),
            ]
            layers += [ResidualConvBlock(spatial_dims, ch, norm) for _ in range(blocks_per_stage)]
            prev = ch
        self.stem = nn.Sequential(*layers)
        self.proj = conv(prev, embed_dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, *spatial) -> (B, num_patches, embed_dim)."""
        return self.proj(self.stem(x)).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention. ``sdpa`` uses the fused kernel; ``explicit`` can return the weights."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        attn_impl: AttnImpl = "sdpa",
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        if attn_impl not in ("sdpa", "explicit"):
            raise ValueError(f"attn_impl must be 'sdpa' or 'explicit', got {attn_impl!r}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.attn_impl = attn_impl
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def _split_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, N, D) -> q, k, v of shape (B, heads, N, head_dim), as strided views (no copies)."""
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, self.head_dim).unbind(2)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

    def _merge_heads(self, x: torch.Tensor) -> torch.Tensor:
        b, _, n, _ = x.shape
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, n, -1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.attn_impl == "explicit":
            return self.forward_with_weights(x)[0]
        q, k, v = self._split_heads(x)
        dropout_p = self.attn_drop.p if self.training else 0.0
        return self._merge_heads(F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p))

    def forward_with_weights(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Explicit softmax(QK^T / sqrt(d)) V; returns (output, weights of shape (B, heads, N, N))."""
        q, k, v = self._split_heads(x)
        weights = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        out = self.attn_drop(weights) @ v
        return self._merge_heads(out), weights


class Mlp(nn.Module):
    """Two linear layers with GELU between."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm transformer block: x + DropPath(Attn(LN(x))), then x + DropPath(MLP(LN(x)))."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        init_values: float | None = None,
        norm_eps: float = 1e-6,
        attn_impl: AttnImpl = "sdpa",
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop, drop, attn_impl)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path2 = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))

    def forward_with_weights(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Same as ``forward`` but also returns this block's attention weights."""
        attn_out, weights = self.attn.forward_with_weights(self.norm1(x))
        x = x + self.drop_path1(self.ls1(attn_out))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x)))), weights
