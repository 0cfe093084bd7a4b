"""Build a medvit model from timm-format ViT weights a user brings as a file (nothing is downloaded)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch

from .pos_embed import resample_pos_embed
from .vit import DistilledVisionTransformer, VisionTransformer, build_vit

_PATCH_KEY = "patch_embed.proj.weight"
_UNSUPPORTED = {
    "reg_token": "register tokens",
    "attn.q_norm": "query/key normalisation",
    "patch_embed.backbone": "a ResNet hybrid backbone",
    "attn_pool": "attention pooling",
}
_DIST_KEYS = ("dist_token", "head_dist.weight", "head_dist.bias")


def load_state_dict(source: Mapping[str, torch.Tensor] | str | Path) -> dict[str, torch.Tensor]:
    """A dict as is, a ``.safetensors`` file, or a torch file loaded with ``weights_only=True``."""
    if isinstance(source, Mapping):
        return dict(source)
    path = Path(source)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper_key in ("state_dict", "model", "module"):
        if isinstance(loaded, Mapping) and isinstance(loaded.get(wrapper_key), Mapping):
            loaded = loaded[wrapper_key]
    return dict(loaded)


def strip_prefix(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keep the ViT's own keys: whatever prefix stands before ``patch_embed.proj.weight`` is removed."""
    patch_keys = [k for k in state_dict if k.endswith(_PATCH_KEY)]
    if len(patch_keys) != 1:
        raise ValueError(f"expected one '{_PATCH_KEY}' key in a timm ViT state dict, found {len(patch_keys)}")
    prefix = patch_keys[0][: -len(_PATCH_KEY)]
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


def adapt_input_channels(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Patch-projection filters for another number of input channels.

    1 channel: the RGB filters are summed (a gray image equals R=G=B, so the response is preserved).
    Other counts: channel ``c`` takes source filter ``c % src``, divided by how often that filter is used,
    so a constant image gives the same response as before.
    """
    src = weight.shape[1]
    if in_chans == src:
        return weight
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    source = torch.arange(in_chans) % src
    uses = torch.bincount(source, minlength=src).to(weight.dtype)
    return weight[:, source] / uses[source].reshape(1, -1, *([1] * (weight.ndim - 2)))


def _infer_config(sd: Mapping[str, torch.Tensor], num_heads: int) -> dict:
    for fragment, what in _UNSUPPORTED.items():
        if any(fragment in k for k in sd):
            raise ValueError(f"timm weights use {what} ({fragment}), which medvit does not implement")
    patch_w = sd[_PATCH_KEY]
    embed_dim, src_chans, *patch_size = patch_w.shape
    depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k)))
    class_token = "cls_token" in sd
    distilled = "dist_token" in sd
    num_prefix = int(class_token) + int(distilled)
    grid_tokens = sd["pos_embed"].shape[1] - num_prefix
    side = round(grid_tokens ** (1 / len(patch_size)))
    if side ** len(patch_size) != grid_tokens:
        raise ValueError(f"pos_embed has {grid_tokens} grid tokens, not a square/cubic grid")
    head_w = sd.get("head.weight")
    return {
        "spatial_dims": len(patch_size),
        "img_size": tuple(side * p for p in patch_size),
        "patch_size": tuple(patch_size),
        "in_chans": src_chans,
        "num_classes": 0 if head_w is None else head_w.shape[0],
        "embed_dim": embed_dim,
        "depth": depth,
        "num_heads": num_heads,
        "mlp_ratio": sd["blocks.0.mlp.fc1.weight"].shape[0] / embed_dim,
        "qkv_bias": "blocks.0.attn.qkv.bias" in sd,
        "class_token": class_token,
        "distilled": distilled,
        "global_pool": "avg" if "fc_norm.weight" in sd else "token",
        "init_values": 1.0 if "blocks.0.ls1.gamma" in sd else None,
    }


def match_distillation(sd: dict[str, torch.Tensor], distilled: bool) -> dict[str, torch.Tensor]:
    """Make a timm state dict fit a model with (``distilled``) or without a distillation token.

    DeiT weights into a plain model: the distillation token, its position slot and ``head_dist`` are
    dropped (the class-token path is kept). Plain weights into a distilled model: the distillation
    token's position slot copies the class token's; ``dist_token`` and ``head_dist`` are not in the
    weights and stay at their fresh initialisation.
    """
    has_dist = "dist_token" in sd
    if has_dist == distilled or "cls_token" not in sd:
        return sd
    pos = sd["pos_embed"]
    if has_dist:
        sd = {k: v for k, v in sd.items() if k not in _DIST_KEYS}
        sd["pos_embed"] = torch.cat([pos[:, :1], pos[:, 2:]], dim=1)
    else:
        sd = dict(sd)
        sd["pos_embed"] = torch.cat([pos[:, :1], pos[:, :1], pos[:, 1:]], dim=1)
    return sd


def from_timm(
    state_dict_or_path: Mapping[str, torch.Tensor] | str | Path,
    *,
    num_heads: int,
    in_chans: int | None = None,
    img_size: int | tuple[int, ...] | None = None,
    **overrides,
) -> VisionTransformer:
    """Build a ``VisionTransformer`` from timm-format ViT weights.

    Dimensions, depth, pooling and head size are read from the tensors; ``num_heads`` cannot be and must
    be given. ``in_chans`` adapts the patch projection (3 -> 1 sums the RGB filters); ``img_size``
    resamples the position embedding to the new grid (bicubic, antialiased, class token kept).
    Other keyword arguments (``drop_path_rate``, ``attn_impl``, ...) go to the constructor.

    DeiT distilled weights (``dist_token``, ``head_dist``) build a ``DistilledVisionTransformer``. ``distilled=True``
    with plain ViT weights starts the distillation token and head from their initialisation (its position
    embedding from the class token's); ``distilled=False`` with DeiT weights drops them, see
    ``match_distillation``.
    """
    sd = strip_prefix(load_state_dict(state_dict_or_path))
    config = _infer_config(sd, num_heads)
    src_grid = tuple(s // p for s, p in zip(config["img_size"], config["patch_size"], strict=True))
    if in_chans is not None:
        sd[_PATCH_KEY] = adapt_input_channels(sd[_PATCH_KEY], in_chans)
        config["in_chans"] = in_chans
    if img_size is not None:
        config["img_size"] = img_size
    config.update(overrides)
    model = build_vit(**config)
    distilled = isinstance(model, DistilledVisionTransformer)
    sd = match_distillation(sd, distilled)
    sd["pos_embed"] = resample_pos_embed(sd["pos_embed"], model.grid_size, src_grid, model.num_prefix_tokens)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if distilled and "dist_token" not in sd:  # plain weights into a distilled model
        missing = [k for k in missing if k not in _DIST_KEYS]
    if missing or unexpected:
        raise ValueError(f"timm weights do not match the inferred model: missing {missing}, unexpected {unexpected}")
    return model
