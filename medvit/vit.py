"""VisionTransformer for 2D images and 3D volumes, with an optional convolutional (hybrid) stem.

Read top to bottom: tokens from patches (or a conv stem), a class token (and optionally a DeiT
distillation token), position embeddings, a stack of pre-norm blocks, a final norm, pooling and a linear
head. Names match timm where the concept is the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .layers import Block, ConvStem, PatchEmbed, to_tuple
from .pos_embed import resample_pos_embed, sincos_grid


class VisionTransformer(nn.Module):
    """ViT classifier (Dosovitskiy et al. 2021) for ``spatial_dims`` 2 or 3.

    ``stem="conv"`` swaps the patchify convolution for the Xiao et al. (2021) convolutional stem.
    ``pos_embed`` is ``"learned"`` or fixed ``"sincos"``; ``global_pool`` is ``"token"``, ``"avg"`` or ``"max"``
    (the per-channel maximum over patch tokens: a local finding in one token is not averaged away).
    ``stem_depth`` residual blocks follow each strided convolution of the conv stem (0: Xiao et al.'s stem).
    ``attn_impl`` is ``"sdpa"`` (fused, default) or ``"explicit"``; both compute the same function.
    ``distilled=True`` adds the DeiT (Touvron et al. 2021) distillation token after the class token and a
    second head ``head_dist``: ``forward_distill`` returns both heads' logits (the class head is trained on
    the labels, the distillation head on a teacher), ``forward`` their mean, as DeiT does at inference. With
    ``global_pool="avg"`` the class head reads the mean of the patch tokens and the distillation head its token.
    The constructor arguments are kept in ``self.config`` so a model can be rebuilt from its config.
    """

    def __init__(
        self,
        *,
        spatial_dims: int = 2,
        img_size: int | Sequence[int] = 224,
        patch_size: int | Sequence[int] = 16,
        in_chans: int = 1,
        num_classes: int = 2,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        class_token: bool = True,
        global_pool: str = "token",
        distilled: bool = False,
        pos_embed: str = "learned",
        stem: str = "patch",
        stem_channels: Sequence[int] | None = None,
        stem_norm: str = "batch",
        stem_depth: int = 0,
        drop_rate: float = 0.0,
        pos_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        init_values: float | None = None,
        norm_eps: float = 1e-6,
        attn_impl: str = "sdpa",
    ):
        super().__init__()
        self.config: dict[str, Any] = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        if global_pool not in ("token", "avg", "max"):
            raise ValueError(f"global_pool must be 'token', 'avg' or 'max', got {global_pool!r}")
        if global_pool == "token" and not class_token:
            raise ValueError("global_pool='token' needs class_token=True")
        if distilled and not class_token:
            raise ValueError("distilled=True needs class_token=True")
        if pos_embed not in ("learned", "sincos"):
            raise ValueError(f"pos_embed must be 'learned' or 'sincos', got {pos_embed!r}")
        self.spatial_dims = spatial_dims
        self.patch_size = to_tuple(patch_size, spatial_dims)
        self.img_size = to_tuple(img_size, spatial_dims)
        self.grid_size = self._grid_for(self.img_size)
        self.num_classes = num_classes
        self.embed_dim = self.num_features = embed_dim
        self.global_pool = global_pool
        self.distilled = distilled
        self.num_prefix_tokens = int(class_token) + int(distilled)
        self.pos_embed_kind = pos_embed
        self.grad_checkpointing = False

        if stem == "patch":
            self.patch_embed = PatchEmbed(spatial_dims, in_chans, embed_dim, self.patch_size)
        elif stem == "conv":
            self.patch_embed = ConvStem(spatial_dims, in_chans, embed_dim, self.patch_size, stem_channels, stem_norm,
                                        stem_depth)
        else:
            raise ValueError(f"stem must be 'patch' or 'conv', got {stem!r}")
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        self.dist_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if distilled else None
        num_tokens = self.num_prefix_tokens + self.num_patches
        if pos_embed == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, embed_dim))
        else:
            self.register_buffer("pos_embed", self._sincos_table(), persistent=False)
        self.pos_drop = nn.Dropout(pos_drop_rate)

        drop_path_rates = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, dpr, init_values,
                  norm_eps, attn_impl)
            for dpr in drop_path_rates
        )
        use_fc_norm = global_pool != "token"
        self.norm = nn.Identity() if use_fc_norm else nn.LayerNorm(embed_dim, eps=norm_eps)
        self.fc_norm = nn.LayerNorm(embed_dim, eps=norm_eps) if use_fc_norm else nn.Identity()
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.head_dist = None
        if distilled:  # only registered when used, so plain models keep their state-dict keys
            self.head_dist = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.reset_parameters()

    # ---- construction helpers -------------------------------------------------------------------
    @property
    def num_patches(self) -> int:
        n = 1
        for g in self.grid_size:
            n *= g
        return n

    def _grid_for(self, img_size: tuple[int, ...]) -> tuple[int, ...]:
        for s, p in zip(img_size, self.patch_size, strict=True):
            if s % p:
                raise ValueError(f"img_size {img_size} is not divisible by patch_size {self.patch_size}")
        return tuple(s // p for s, p in zip(img_size, self.patch_size, strict=True))

    def _sincos_table(self) -> torch.Tensor:
        table = sincos_grid(self.embed_dim, self.grid_size)
        prefix = table.new_zeros(self.num_prefix_tokens, self.embed_dim)
        return torch.cat([prefix, table], dim=0).unsqueeze(0)

    def reset_parameters(self) -> None:
        """timm-style init: truncated normal (std 0.02) for linear layers and learned embeddings."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        if isinstance(self.pos_embed, nn.Parameter):
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        if self.dist_token is not None:
            nn.init.trunc_normal_(self.dist_token, std=0.02)

    def no_weight_decay(self) -> set[str]:
        """Parameter names that should not get weight decay (embeddings; norms and biases by ndim)."""
        return {"pos_embed", "cls_token"} | ({"dist_token"} if self.distilled else set())

    def layer_id(self, param_name: str) -> int:
        """Depth of a parameter for layer-wise learning-rate decay (BEiT / MAE fine-tuning).

        0: the embedding (``patch_embed``, ``cls_token``, ``dist_token``, ``pos_embed``); ``i + 1`` for
        ``blocks.i``; ``depth + 1`` for everything after the blocks (``norm``, ``fc_norm``, ``head``,
        ``head_dist``). Depends on the name only; ``module.`` (DDP) and ``_orig_mod.`` (torch.compile)
        prefixes are ignored. A typical scale is ``decay ** (depth + 1 - layer_id(name))``.
        """
        name = param_name
        while name.startswith(("module.", "_orig_mod.")):
            name = name.split(".", 1)[1]
        if name in ("cls_token", "dist_token", "pos_embed") or name.startswith("patch_embed."):
            return 0
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
        return len(self.blocks) + 1

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block activations in backward to save memory; results are unchanged."""
        self.grad_checkpointing = enable

    def set_img_size(self, img_size: int | Sequence[int]) -> None:
        """Change the input size in place, resampling the position embedding to the new grid.

        A learned embedding keeps its Parameter object (only its data changes shape).
        """
        new_size = to_tuple(img_size, self.spatial_dims)
        new_grid = self._grid_for(new_size)
        old_grid = self.grid_size
        self.img_size, self.grid_size = new_size, new_grid
        self.config["img_size"] = new_size
        if self.pos_embed_kind == "sincos":
            self.pos_embed = self._sincos_table().to(self.pos_embed.device)
        else:
            with torch.no_grad():
                self.pos_embed.data = resample_pos_embed(
                    self.pos_embed.data, new_grid, old_grid, self.num_prefix_tokens
                )

    # ---- forward --------------------------------------------------------------------------------
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> tokens with position embedding added and class token prepended (B, T, D)."""
        if tuple(x.shape[2:]) != self.img_size:
            raise ValueError(f"input spatial size {tuple(x.shape[2:])} != model img_size {self.img_size}")
        x = self.patch_embed(x)
        prefix = [t for t in (self.cls_token, self.dist_token) if t is not None]
        if prefix:
            x = torch.cat([t.expand(x.shape[0], -1, -1) for t in prefix] + [x], dim=1)
        return self.pos_drop(x + self.pos_embed)

    def forward_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """Run the transformer blocks on tokens (B, T, D), with gradient checkpointing when enabled."""
        for block in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> normalised tokens (B, T, D)."""
        return self.norm(self.forward_blocks(self.embed(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Tokens -> logits (or the pooled features when ``pre_logits``).

        A distilled model returns the mean of its two heads (the mean of both features for ``pre_logits``).
        """
        if self.distilled:
            if pre_logits:
                return sum(self._distill_features(x)) / 2
            cls_logits, dist_logits = self.forward_head_distill(x)
            return (cls_logits + dist_logits) / 2
        x = self._pooled(x)
        return x if pre_logits else self.head(x)

    def _pooled(self, x: torch.Tensor) -> torch.Tensor:
        """The class head's features: the class token, or the mean or maximum of the patch tokens (then
        ``fc_norm``)."""
        if self.global_pool == "token":
            return self.head_drop(self.fc_norm(x[:, 0]))
        patches = x[:, self.num_prefix_tokens:]
        pooled = patches.mean(dim=1) if self.global_pool == "avg" else patches.amax(dim=1)
        return self.head_drop(self.fc_norm(pooled))

    def _distill_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(class-head features, distillation-token features); with ``avg`` pooling both pass ``fc_norm``."""
        return self._pooled(x), self.head_drop(self.fc_norm(x[:, 1]))

    def forward_head_distill(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens of a distilled model -> (class-head logits, distillation-head logits)."""
        if not self.distilled:
            raise RuntimeError("forward_distill needs a model built with distilled=True")
        cls_feat, dist_feat = self._distill_features(x)
        return self.head(cls_feat), self.head_dist(dist_feat)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_distill(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images -> (class-head logits, distillation-head logits), each (B, num_classes), for training.

        The class head learns from the labels, the distillation head from a teacher's predictions.
        """
        return self.forward_head_distill(self.forward_features(x))

    def forward_attention(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits plus every block's attention weights, each (B, heads, T, T), via the explicit path."""
        x = self.embed(x)
        weights = []
        for block in self.blocks:
            x, w = block.forward_with_weights(x)
            weights.append(w)
        return self.forward_head(self.norm(x)), weights


# ---- presets ---------------------------------------------------------------------------------------
_DIMS = {
    "tiny": {"embed_dim": 192, "depth": 12, "num_heads": 3},
    "small": {"embed_dim": 384, "depth": 12, "num_heads": 6},
    "base": {"embed_dim": 768, "depth": 12, "num_heads": 12},
}

PRESETS: dict[str, dict[str, Any]] = {
    **{f"vit_{size}": {"spatial_dims": 2, "img_size": 224, "patch_size": 16, **dims} for size, dims in _DIMS.items()},
    # 3D presets for MRI: a 96^3 volume (e.g. 1.5-2 mm isotropic brain) in 16^3 patches = 216 tokens.
    **{f"vit3d_{size}": {"spatial_dims": 3, "img_size": 96, "patch_size": 16, **dims} for size, dims in _DIMS.items()},
}


def list_models() -> list[str]:
    """Names accepted by ``create_model``."""
    return sorted(PRESETS)


def create_model(name: str, **overrides: Any) -> VisionTransformer:
    """Build a preset (``vit_small``, ``vit3d_base``, ...); keyword arguments override any setting.

    ``create_model("vit_small", stem="conv")`` gives the hybrid ViT-S/16.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(list_models())}")
    return VisionTransformer(**{**PRESETS[name], **overrides})
