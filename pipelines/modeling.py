"""The network a config asks for, its optimizer parameter groups, and its saved form (config + safetensors)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

import medvit

from .checkpoint import atomic_write
from .config import PipelineConfig


def input_size(config: PipelineConfig) -> tuple[int, ...]:
    """Spatial size of the preprocessed tensors (and of the model input)."""
    if config.data.kind == "xray":
        return (config.preprocess.xray.img_size,) * 2
    return tuple(config.preprocess.mri.img_size)


def model_kwargs(config: PipelineConfig) -> dict[str, Any]:
    """Constructor arguments of the medvit VisionTransformer for this config (one logit: P(abnormal))."""
    m = config.model
    kwargs: dict[str, Any] = dict(medvit.PRESETS[m.preset])
    kwargs.update(img_size=input_size(config), in_chans=1, num_classes=1, drop_path_rate=m.drop_path_rate,
                  global_pool=m.global_pool, pos_embed=m.pos_embed, stem="conv" if m.arch == "hybrid" else "patch",
                  stem_norm=m.stem_norm)
    for key in ("patch_size", "embed_dim", "depth", "num_heads"):
        if getattr(m, key) is not None:
            kwargs[key] = getattr(m, key)
    if isinstance(kwargs.get("img_size"), tuple):
        kwargs["img_size"] = list(kwargs["img_size"])
    return kwargs


def build_model(kwargs: dict[str, Any]) -> nn.Module:
    """A network from its saved constructor arguments."""
    return medvit.VisionTransformer(**kwargs)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay for norms, biases (1-D tensors) and embeddings (``no_weight_decay``)."""
    skip = set(getattr(model, "no_weight_decay", lambda: set())())
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 or name in skip else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def save_model(path: Path, model: nn.Module, kwargs: dict[str, Any], extra: dict[str, Any] | None = None) -> None:
    """Weights as safetensors with the constructor arguments (and any extra JSON) in its metadata."""
    module = model.module if hasattr(model, "module") else model
    module = getattr(module, "_orig_mod", module)  # torch.compile wrapper
    weights = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    metadata = {"model_kwargs": json.dumps(kwargs), "extra": json.dumps(extra or {})}
    atomic_write(path, lambda tmp: save_file(weights, tmp, metadata=metadata))


def load_model(path: Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """(model in eval mode, constructor kwargs, extra metadata) from a file written by ``save_model``."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata() or {}
    kwargs = json.loads(meta["model_kwargs"])
    model = build_model(kwargs)
    model.load_state_dict(load_file(str(path), device=str(map_location)))
    return model.eval(), kwargs, json.loads(meta.get("extra", "{}"))
