"""Masked autoencoder (He et al. 2021, "Masked Autoencoders Are Scalable Vision Learners") for 2D and 3D.

Read top to bottom: cut images into patches, hide a random share of them, run the ViT encoder on the
visible patches only, let a small decoder fill in the hidden ones from a learned mask token, and score the
reconstruction on the hidden patches. After pretraining, ``encoder_state_dict()`` goes into a
``VisionTransformer`` for fine-tuning.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from .layers import Block, ConvStem
from .pos_embed import sincos_pos_embed
from .vit import VisionTransformer


# ---- patches <-> images ----------------------------------------------------------------------------
def patchify(imgs: torch.Tensor, patch_size: Sequence[int]) -> torch.Tensor:
    """(B, C, *spatial) -> (B, N, prod(patch_size) * C), patches in the encoder's token order (row-major).

    Each patch is flattened pixel by pixel with the channels last, like the MAE reference.
    """
    b, c, *spatial = imgs.shape
    nd = len(spatial)
    if len(patch_size) != nd:
        raise ValueError(f"patch_size {tuple(patch_size)} does not match a {nd}D image")
    grid = [s // p for s, p in zip(spatial, patch_size, strict=True)]
    if any(g * p != s for g, p, s in zip(grid, patch_size, spatial, strict=True)):
        raise ValueError(f"image size {tuple(spatial)} is not divisible by patch_size {tuple(patch_size)}")
    shape = [b, c] + [n for g, p in zip(grid, patch_size, strict=True) for n in (g, p)]
    x = imgs.reshape(shape)  # B, C, g1, p1, g2, p2[, g3, p3]
    order = [0] + [2 + 2 * i for i in range(nd)] + [3 + 2 * i for i in range(nd)] + [1]
    return x.permute(order).reshape(b, math.prod(grid), math.prod(patch_size) * c)


def unpatchify(patches: torch.Tensor, patch_size: Sequence[int], grid: Sequence[int]) -> torch.Tensor:
    """Inverse of ``patchify``: (B, N, prod(patch_size) * C) -> (B, C, *(grid * patch_size))."""
    b, n, dim = patches.shape
    nd = len(grid)
    if n != math.prod(grid) or dim % math.prod(patch_size):
        raise ValueError(f"patches {tuple(patches.shape)} do not fit grid {tuple(grid)} x patch {tuple(patch_size)}")
    c = dim // math.prod(patch_size)
    x = patches.reshape(b, *grid, *patch_size, c)  # B, g1..gn, p1..pn, C
    order = [0, 1 + 2 * nd] + [i for d in range(nd) for i in (1 + d, 1 + nd + d)]
    return x.permute(order).reshape(b, c, *(g * p for g, p in zip(grid, patch_size, strict=True)))


def patch_mask_to_pixels(mask: torch.Tensor, patch_size: Sequence[int], grid: Sequence[int]) -> torch.Tensor:
    """(B, N) per-patch mask -> (B, 1, *spatial) per-pixel mask."""
    x = mask.reshape(mask.shape[0], 1, *grid)
    for d, p in enumerate(patch_size):
        x = x.repeat_interleave(p, dim=2 + d)
    return x


# ---- masking -----------------------------------------------------------------------------------------
def num_visible(num_patches: int, mask_ratio: float) -> int:
    """How many patches stay visible: ``round(N * (1 - mask_ratio))``, at least one."""
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    return max(1, int(round(num_patches * (1.0 - mask_ratio))))


def random_masking(
    batch: int, num_patches: int, mask_ratio: float, device: torch.device | str | None = None,
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pick a random subset of patches per sample by sorting uniform noise.

    Returns ``ids_keep`` (B, K) indices of the visible patches, ``mask`` (B, N) with 1 = masked and
    0 = visible, and ``ids_restore`` (B, N) that undoes the shuffle. ``noise`` (B, N) fixes the choice:
    the patches with the smallest noise stay visible.
    """
    keep = num_visible(num_patches, mask_ratio)
    if noise is None:
        noise = torch.rand(batch, num_patches, device=device)
    ids_shuffle = noise.argsort(dim=1)
    ids_restore = ids_shuffle.argsort(dim=1)
    ids_keep = ids_shuffle[:, :keep]
    mask = torch.ones(batch, num_patches, device=noise.device)
    mask[:, :keep] = 0
    return ids_keep, mask.gather(1, ids_restore), ids_restore


def _gather_tokens(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """x (B, N, D), ids (B, K) -> (B, K, D)."""
    return x.gather(1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


class MAEOutput(NamedTuple):
    loss: torch.Tensor  # scalar, mean squared error over the masked patches
    pred: torch.Tensor  # (B, N, prod(patch_size) * C), predicted pixels of every patch
    mask: torch.Tensor  # (B, N), 1 = masked


# ---- the model -----------------------------------------------------------------------------------------
class MaskedAutoencoder(nn.Module):
    """MAE pretraining around a ``VisionTransformer`` encoder (2D or 3D, patch or conv stem).

    The encoder sees only the visible patch tokens plus its prefix tokens (class / distillation), with its
    own position embeddings (learned or sin-cos), blocks (gradient checkpointing included) and final norm.
    The encoder builds that sequence (``patch_tokens``, ``prepend_prefix_tokens``); the MAE only drops the
    masked patch tokens in between.
    The decoder is small and is thrown away after pretraining: a linear map to ``decoder_dim``, a learned
    mask token for every hidden patch, fixed sin-cos position embeddings, ``decoder_depth`` blocks, a norm
    and a linear map to the pixels of a patch. With ``norm_pix_loss`` the target of each patch is that
    patch normalised to zero mean and unit variance.

    Conv stem: its 3x3 convolutions overlap patch borders, so a visible token would see pixels of its
    masked neighbours. The masked patches are therefore set to zero in pixel space before the stem, and
    their tokens are dropped after it; the stem still runs on the full image. (With a BatchNorm stem the
    zeros also enter the batch statistics, which is harmless for pretraining.)

    ``set_img_size`` changes the input size of the encoder and the decoder together; ``forward`` never
    changes the module's buffers.

    The encoder's classification head (and ``fc_norm`` of an average-pooling encoder) is not used; build
    the encoder with ``num_classes=0`` when training with DDP so that no parameter goes without gradient.
    """

    def __init__(
        self,
        encoder: VisionTransformer,
        *,
        decoder_dim: int = 128,
        decoder_depth: int = 2,
        decoder_heads: int = 4,
        mask_ratio: float = 0.75,
        norm_pix_loss: bool = True,
    ):
        super().__init__()
        num_visible(encoder.num_patches, mask_ratio)  # validates the ratio
        self.encoder = encoder
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
        self.patch_size = encoder.patch_size
        self.in_chans = encoder.config["in_chans"]
        self.conv_stem = isinstance(encoder.patch_embed, ConvStem)
        patch_dim = math.prod(self.patch_size) * self.in_chans

        self.decoder_embed = nn.Linear(encoder.embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.register_buffer("decoder_pos_embed", self._decoder_pos_table(decoder_dim), persistent=False)
        self.decoder_blocks = nn.ModuleList(Block(decoder_dim, decoder_heads) for _ in range(decoder_depth))
        self.decoder_norm = nn.LayerNorm(decoder_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(decoder_dim, patch_dim)
        self._init_decoder()

    def _decoder_pos_table(self, dim: int) -> torch.Tensor:
        """(1, prefix + N, dim): zeros for the prefix tokens, then the sin-cos grid of the encoder."""
        return sincos_pos_embed(dim, self.encoder.grid_size, self.encoder.num_prefix_tokens)

    def set_img_size(self, img_size: int | Sequence[int]) -> None:
        """Change the input size: the encoder resamples its position embedding (see
        ``VisionTransformer.set_img_size``) and the decoder's sin-cos table is rebuilt for the new grid."""
        self.encoder.set_img_size(img_size)
        table = self._decoder_pos_table(self.decoder_pos_embed.shape[-1])
        self.decoder_pos_embed = table.to(self.decoder_pos_embed)

    def _init_decoder(self) -> None:
        for name, module in self.named_modules():
            if name.startswith("decoder") and isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.mask_token, std=0.02)

    def no_weight_decay(self) -> set[str]:
        """Parameter names that should not get weight decay."""
        return {f"encoder.{n}" for n in self.encoder.no_weight_decay()} | {"mask_token"}

    # ---- encoder ----------------------------------------------------------------------------------------
    def forward_encoder(
        self, imgs: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mask, then encode the visible tokens: (latent (B, prefix + K, D), mask (B, N), ids_restore)."""
        enc = self.encoder
        if tuple(imgs.shape[2:]) != enc.img_size:
            raise ValueError(f"input spatial size {tuple(imgs.shape[2:])} != encoder img_size {enc.img_size}")
        ids_keep, mask, ids_restore = random_masking(imgs.shape[0], enc.num_patches, mask_ratio, imgs.device, noise)
        if self.conv_stem:  # hide the masked pixels from the overlapping convolutions
            visible = 1.0 - patch_mask_to_pixels(mask, self.patch_size, enc.grid_size)
            imgs = imgs * visible.to(imgs.dtype)
        x = enc.prepend_prefix_tokens(_gather_tokens(enc.patch_tokens(imgs), ids_keep))
        x = enc.forward_blocks(enc.pos_drop(x))
        return enc.norm(x), mask, ids_restore

    # ---- decoder ----------------------------------------------------------------------------------------
    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Encoded visible tokens -> predicted pixels of every patch (B, N, prod(patch_size) * C)."""
        prefix = self.encoder.num_prefix_tokens
        x = self.decoder_embed(latent)
        b, n = ids_restore.shape
        visible = x[:, prefix:]
        mask_tokens = self.mask_token.to(x.dtype).expand(b, n - visible.shape[1], -1)
        x_patches = _gather_tokens(torch.cat([visible, mask_tokens], dim=1), ids_restore)  # unshuffle
        if self.decoder_pos_embed.shape[1] != prefix + n:
            raise ValueError(f"the decoder's position table is for {self.decoder_pos_embed.shape[1] - prefix} "
                             f"patches, the encoder gave {n}: change the input size with "
                             "MaskedAutoencoder.set_img_size, not on the encoder alone")
        x = torch.cat([x[:, :prefix], x_patches], dim=1) + self.decoder_pos_embed
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))[:, prefix:]

    # ---- loss -------------------------------------------------------------------------------------------
    def target(self, imgs: torch.Tensor) -> torch.Tensor:
        """Pixels of every patch (B, N, P), normalised per patch when ``norm_pix_loss``."""
        target = patchify(imgs.float(), self.patch_size)
        if self.norm_pix_loss:
            mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6).sqrt()
        return target

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error per patch, averaged over the masked patches only (in float32)."""
        per_patch = (pred.float() - self.target(imgs)).square().mean(dim=-1)
        mask = mask.float()
        return (per_patch * mask).sum() / mask.sum().clamp_min(1.0)

    def forward(
        self, imgs: torch.Tensor, mask_ratio: float | None = None, noise: torch.Tensor | None = None
    ) -> MAEOutput:
        """Images (B, C, *spatial) -> MAEOutput(loss, pred, mask). ``noise`` (B, N) fixes the mask."""
        ratio = self.mask_ratio if mask_ratio is None else mask_ratio
        latent, mask, ids_restore = self.forward_encoder(imgs, ratio, noise)
        pred = self.forward_decoder(latent, ids_restore)
        return MAEOutput(self.forward_loss(imgs, pred, mask), pred, mask)

    # ---- after training ---------------------------------------------------------------------------------
    @torch.no_grad()
    def reconstruct(self, imgs: torch.Tensor, out: MAEOutput) -> torch.Tensor:
        """Image for a preview: predicted pixels in the masked patches, the input in the visible ones.

        With ``norm_pix_loss`` the predictions are mapped back with each patch's own mean and variance
        taken from the input (the usual MAE visualisation; the model never predicts those).
        """
        target = patchify(imgs.float(), self.patch_size)
        pred = out.pred.float()
        if self.norm_pix_loss:
            mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
            pred = pred * (var + 1e-6).sqrt() + mean
        patches = torch.where(out.mask.bool().unsqueeze(-1), pred, target)
        return unpatchify(patches, self.patch_size, self.encoder.grid_size).to(imgs.dtype)

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """The encoder's weights with ``VisionTransformer`` keys, without the (untrained) head weights.

        ``VisionTransformer(...).load_state_dict(sd, strict=False)`` then reports only the head as missing.
        """
        return {
            k: v for k, v in self.encoder.state_dict().items() if not k.startswith(("head.", "head_dist."))
        }
