"""VisionTransformer for 2D images and 3D volumes, with an optional convolutional (hybrid) stem.

Read top to bottom: tokens from patches (or a conv stem), a class token, position embeddings, a stack of
pre-norm blocks, a final norm, pooling and a linear head. ``DistilledVisionTransformer`` adds DeiT's
distillation token and second head. Names match timm where the concept is the same; ``build_vit`` picks
the class from constructor arguments (``distilled``), so a saved ``config`` rebuilds the right one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .layers import Block, ConvStem, PatchEmbed, to_tuple
from .pos_embed import resample_pos_embed, sincos_pos_embed, split_pos_embed


def _new_head(embed_dim: int, num_classes: int) -> nn.Module:
    """A linear classifier, or the identity when ``num_classes`` is 0 (the pooled features come out)."""
    return nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()


def _strip_wrappers(param_name: str) -> str:
    """A parameter name without the ``module.`` (DDP) and ``_orig_mod.`` (torch.compile) prefixes."""
    name = param_name
    while name.startswith(("module.", "_orig_mod.")):
        name = name.split(".", 1)[1]
    return name


class VisionTransformer(nn.Module):
    """ViT classifier (Dosovitskiy et al. 2021) for 2D images and 3D volumes.

    The constructor arguments are kept in ``self.config``; ``build_vit(**model.config)`` rebuilds the
    same architecture.
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
        """Build the network with timm's initialisation (``reset_parameters``).

        Args:
            spatial_dims: 2 for images (B, C, H, W), 3 for volumes (B, C, D, H, W).
            img_size: input size, one int for every axis or one value per axis; a multiple of
                ``patch_size``. ``set_img_size`` changes it later.
            patch_size: patch side, one int or one value per axis; every patch becomes one token.
            in_chans: input channels (1 for X-ray and MRI).
            num_classes: outputs of the head; 0 means no head (``forward`` returns the pooled features).
            embed_dim: width of every token.
            depth: number of transformer blocks.
            num_heads: attention heads per block; must divide ``embed_dim``.
            mlp_ratio: hidden width of each block's MLP as a multiple of ``embed_dim``.
            qkv_bias: give the query/key/value projection a bias.
            class_token: put a learned class token in front of the patch tokens.
            global_pool: what the head reads: ``"token"`` (the class token, normalised by ``norm``),
                ``"avg"`` (the mean of the patch tokens) or ``"max"`` (the per-channel maximum over the patch
                tokens, so a local finding in one token is not averaged away); ``avg`` and ``max`` normalise
                after pooling (``fc_norm``) instead.
            distilled: must be False here: DeiT's distillation token is ``DistilledVisionTransformer``. It
                is an argument so that every model's ``config`` has the same keys and ``build_vit`` can pick
                the class from it.
            pos_embed: ``"learned"`` or fixed ``"sincos"`` (a buffer, recomputed and never saved).
            stem: ``"patch"`` (one strided convolution) or ``"conv"`` (the convolutional stem of Xiao et al.
                2021: the hybrid ViT).
            stem_channels: widths of the conv stem's strided convolutions, one per halving; None picks
                widths that double at each one up to ``embed_dim / 2`` (at least 16).
            stem_norm: normalisation in the conv stem: ``"batch"``, ``"group"`` or ``"instance"``.
            stem_depth: residual blocks after each strided convolution of the conv stem (0: Xiao et al.).
            drop_rate: dropout after the attention projection, in the MLPs, and on the pooled features.
            pos_drop_rate: dropout on the tokens once the position embedding is added.
            attn_drop_rate: dropout on the attention weights.
            drop_path_rate: stochastic depth of the last block; it rises linearly from 0 at the first.
            init_values: LayerScale (CaiT, DeiT III) starting value; None or 0 means no LayerScale.
            norm_eps: epsilon of every LayerNorm.
            attn_impl: ``"sdpa"`` (fused, default) or ``"explicit"`` (softmax(QK^T)V, can return the
                weights); both compute the same function.
        """
        super().__init__()
        self.config: dict[str, Any] = {
            "spatial_dims": spatial_dims,
            "img_size": img_size,
            "patch_size": patch_size,
            "in_chans": in_chans,
            "num_classes": num_classes,
            "embed_dim": embed_dim,
            "depth": depth,
            "num_heads": num_heads,
            "mlp_ratio": mlp_ratio,
            "qkv_bias": qkv_bias,
            "class_token": class_token,
            "global_pool": global_pool,
            "distilled": distilled,
            "pos_embed": pos_embed,
            "stem": stem,
            "stem_channels": stem_channels,
            "stem_norm": stem_norm,
            "stem_depth": stem_depth,
            "drop_rate": drop_rate,
            "pos_drop_rate": pos_drop_rate,
            "attn_drop_rate": attn_drop_rate,
            "drop_path_rate": drop_path_rate,
            "init_values": init_values,
            "norm_eps": norm_eps,
            "attn_impl": attn_impl,
        }
        if distilled:
            raise ValueError("distilled=True builds a DistilledVisionTransformer: use that class or "
                             "medvit.build_vit(**kwargs)")
        if global_pool not in ("token", "avg", "max"):
            raise ValueError(f"global_pool must be 'token', 'avg' or 'max', got {global_pool!r}")
        if global_pool == "token" and not class_token:
            raise ValueError("global_pool='token' needs class_token=True")
        if pos_embed not in ("learned", "sincos"):
            raise ValueError(f"pos_embed must be 'learned' or 'sincos', got {pos_embed!r}")
        self.spatial_dims = spatial_dims
        self.patch_size = to_tuple(patch_size, spatial_dims)
        self.img_size = to_tuple(img_size, spatial_dims)
        self.grid_size = self._grid_for(self.img_size)
        self.num_classes = num_classes
        self.embed_dim = self.num_features = embed_dim
        self.global_pool = global_pool
        self.pos_embed_kind = pos_embed
        self.grad_checkpointing = False

        if stem == "patch":
            self.patch_embed = PatchEmbed(spatial_dims, in_chans, embed_dim, self.patch_size)
        elif stem == "conv":
            self.patch_embed = ConvStem(spatial_dims, in_chans, embed_dim, self.patch_size, stem_channels, stem_norm,
                                        stem_depth)
        else:
            raise ValueError(f"stem must be 'patch' or 'conv', got {stem!r}")
        self._build_prefix_tokens(class_token)
        self.num_prefix_tokens = len(self.prefix_parameters())
        if pos_embed == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, self.num_prefix_tokens + self.num_patches, embed_dim))
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
        self._build_heads(num_classes)
        self.reset_parameters()

    # ---- construction helpers -------------------------------------------------------------------
    def _build_prefix_tokens(self, class_token: bool) -> None:
        """Register the learned tokens that go in front of the patch tokens: the class token."""
        self.cls_token = nn.Parameter(torch.zeros(1, 1, self.embed_dim)) if class_token else None

    def _build_heads(self, num_classes: int) -> None:
        """Register the classifier: ``head``."""
        self.head = _new_head(self.embed_dim, num_classes)

    def prefix_parameters(self) -> list[nn.Parameter]:
        """The learned tokens in front of the patch tokens, in sequence order (each (1, 1, D))."""
        return [] if self.cls_token is None else [self.cls_token]

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
        return sincos_pos_embed(self.embed_dim, self.grid_size, self.num_prefix_tokens)

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

    def no_weight_decay(self) -> set[str]:
        """Parameter names that should not get weight decay (embeddings; norms and biases by ndim)."""
        return {"pos_embed", "cls_token"}

    def layer_id(self, param_name: str) -> int:
        """Depth of a parameter for layer-wise learning-rate decay (BEiT / MAE fine-tuning).

        0: the embedding (``patch_embed``, ``cls_token``, ``pos_embed``); ``i + 1`` for ``blocks.i``;
        ``depth + 1`` for everything after the blocks (``norm``, ``fc_norm``, ``head``). Depends on the name
        only; ``module.`` (DDP) and ``_orig_mod.`` (torch.compile) prefixes are ignored. A typical scale is
        ``decay ** (depth + 1 - layer_id(name))``.
        """
        name = _strip_wrappers(param_name)
        if name in ("cls_token", "pos_embed") or name.startswith("patch_embed."):
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
            self.pos_embed = self._sincos_table().to(self.pos_embed)
        else:
            with torch.no_grad():
                self.pos_embed.data = resample_pos_embed(
                    self.pos_embed.data, new_grid, old_grid, self.num_prefix_tokens
                )

    # ---- forward --------------------------------------------------------------------------------
    def patch_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> patch tokens with their position embedding added (B, N, D)."""
        return self.patch_embed(x) + split_pos_embed(self.pos_embed, self.num_prefix_tokens)[1]

    def prepend_prefix_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Put the prefix tokens, with their position embedding, in front of ``tokens`` (B, K, D)."""
        prefix = self.prefix_parameters()
        if not prefix:
            return tokens
        prefix_pos = split_pos_embed(self.pos_embed, self.num_prefix_tokens)[0]
        prefix_tokens = (torch.cat(prefix, dim=1) + prefix_pos).expand(tokens.shape[0], -1, -1)
        return torch.cat([prefix_tokens, tokens], dim=1)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> the token sequence the blocks read: prefix tokens, then patch tokens (B, T, D)."""
        if tuple(x.shape[2:]) != self.img_size:
            raise ValueError(f"input spatial size {tuple(x.shape[2:])} != model img_size {self.img_size}")
        return self.pos_drop(self.prepend_prefix_tokens(self.patch_tokens(x)))

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

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens -> the class head's features (B, D): the class token, or the mean or maximum of the patch
        tokens (then ``fc_norm``)."""
        if self.global_pool == "token":
            return self.head_drop(self.fc_norm(x[:, 0]))
        patches = x[:, self.num_prefix_tokens:]
        pooled = patches.mean(dim=1) if self.global_pool == "avg" else patches.amax(dim=1)
        return self.head_drop(self.fc_norm(pooled))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Tokens -> logits (B, num_classes), or the pooled features when ``pre_logits``."""
        x = self.pool(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_attention(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits plus every block's attention weights, each (B, heads, T, T), via the explicit path."""
        x = self.embed(x)
        weights = []
        for block in self.blocks:
            x, w = block.forward_with_weights(x)
            weights.append(w)
        return self.forward_head(self.norm(x)), weights


class DistilledVisionTransformer(VisionTransformer):
    """DeiT (Touvron et al. 2021): a ViT with a distillation token after the class token and a second head.

    ``forward_distill`` returns both heads' logits for training: the class head ``head`` learns from the
    labels, the distillation head ``head_dist`` from a teacher. ``forward`` returns their mean, as DeiT does
    at inference. With ``global_pool="avg"`` (or ``"max"``) the class head reads the pooled patch tokens and
    the distillation head its own token. The state-dict keys are timm's (``dist_token``, ``head_dist.*``).
    """

    distilled = True  # plain models have no such attribute; isinstance tells the two apart

    def __init__(self, *, distilled: bool = True, **kwargs: Any):
        """The ``VisionTransformer`` arguments; ``class_token`` must stay True."""
        if not distilled:
            raise ValueError("distilled=False is a plain VisionTransformer: use that class or medvit.build_vit")
        if not kwargs.get("class_token", True):
            raise ValueError("distilled=True needs class_token=True (the distillation token follows it)")
        super().__init__(**kwargs)
        self.config["distilled"] = True

    def _build_prefix_tokens(self, class_token: bool) -> None:
        super()._build_prefix_tokens(class_token)
        self.dist_token = nn.Parameter(torch.zeros(1, 1, self.embed_dim))

    def _build_heads(self, num_classes: int) -> None:
        super()._build_heads(num_classes)
        self.head_dist = _new_head(self.embed_dim, num_classes)

    def prefix_parameters(self) -> list[nn.Parameter]:
        return [self.cls_token, self.dist_token]

    def reset_parameters(self) -> None:
        super().reset_parameters()
        nn.init.trunc_normal_(self.dist_token, std=0.02)

    def no_weight_decay(self) -> set[str]:
        return super().no_weight_decay() | {"dist_token"}

    def layer_id(self, param_name: str) -> int:
        """As ``VisionTransformer.layer_id``; ``dist_token`` is part of the embedding (0), ``head_dist``
        comes after the blocks."""
        return 0 if _strip_wrappers(param_name) == "dist_token" else super().layer_id(param_name)

    def pool_distill(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens -> (class-head features, distillation-head features), each (B, D); with ``avg`` or ``max``
        pooling both pass ``fc_norm``."""
        return self.pool(x), self.head_drop(self.fc_norm(x[:, 1]))

    def forward_head_distill(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens -> (class-head logits, distillation-head logits)."""
        cls_features, dist_features = self.pool_distill(x)
        return self.head(cls_features), self.head_dist(dist_features)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Tokens -> the mean of both heads' logits (the mean of both features when ``pre_logits``)."""
        if pre_logits:
            cls_features, dist_features = self.pool_distill(x)
            return (cls_features + dist_features) / 2
        cls_logits, dist_logits = self.forward_head_distill(x)
        return (cls_logits + dist_logits) / 2

    def forward_distill(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images -> (class-head logits, distillation-head logits), each (B, num_classes), for training."""
        return self.forward_head_distill(self.forward_features(x))


def build_vit(**kwargs: Any) -> VisionTransformer:
    """A ViT from constructor arguments, e.g. a saved ``model.config``: ``distilled=True`` gives a
    ``DistilledVisionTransformer``, anything else a ``VisionTransformer``."""
    cls = DistilledVisionTransformer if kwargs.get("distilled") else VisionTransformer
    return cls(**kwargs)


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

    ``create_model("vit_small", stem="conv")`` gives the hybrid ViT-S/16; ``distilled=True`` a DeiT.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(list_models())}")
    return build_vit(**{**PRESETS[name], **overrides})
