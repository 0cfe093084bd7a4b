"""The network a config asks for, its optimizer parameter groups, and its saved form (config + safetensors).

Two families share one interface: the medvit Vision Transformer (``model.arch`` ``vit`` or ``hybrid``) and the
MONAI CNN baselines (``densenet121``, ``resnet18``, ``resnet50``; 2D for X-ray, 3D for MRI, one input channel,
one logit, randomly initialised: no pretrained weights are ever fetched). ``model_kwargs`` gives the JSON
constructor arguments that ``save_model`` stores in the safetensors metadata; ``build_model`` rebuilds the
network from them alone. ViT kwargs are medvit's constructor arguments exactly as before (no ``arch`` key, so
models saved earlier still load; ``medvit.build_vit`` picks the DeiT class for ``distilled=True``); CNN kwargs
carry ``"arch"`` plus the MONAI constructor arguments. ``no_weight_decay_names`` is the one weight-decay rule.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

import medvit
from pipelines.config import ConfigError, PipelineConfig
from pipelines.files import atomic_write

VIT_ARCHS = ("vit", "hybrid")
CNN_ARCHS = ("densenet121", "resnet18", "resnet50")  # monai.networks.nets.DenseNet121 / resnet18 / resnet50
_INFO_KEYS = ("arch", "img_size")  # in CNN kwargs, but not constructor arguments (CNNs take any input size)


def input_size(config: PipelineConfig) -> tuple[int, ...]:
    """Spatial size of the preprocessed tensors (and of the model input)."""
    if config.data.kind == "xray":
        return (config.preprocess.xray.img_size,) * 2
    return tuple(config.preprocess.mri.img_size)


def model_kwargs(config: PipelineConfig) -> dict[str, Any]:
    """JSON constructor arguments of the network this config asks for (one logit: P(abnormal))."""
    m = config.model
    if m.arch in CNN_ARCHS:
        return _cnn_kwargs(config)
    kwargs: dict[str, Any] = dict(medvit.PRESETS[m.preset])
    kwargs.update(img_size=input_size(config), in_chans=1, num_classes=1, drop_path_rate=m.drop_path_rate,
                  global_pool=m.global_pool, pos_embed=m.pos_embed, stem="conv" if m.arch == "hybrid" else "patch",
                  stem_norm=m.stem_norm)
    if m.arch == "hybrid" and m.stem_depth:
        kwargs["stem_depth"] = m.stem_depth  # only when set: older packages rebuild unchanged
    for key in ("patch_size", "embed_dim", "depth", "num_heads"):
        if getattr(m, key) is not None:
            kwargs[key] = getattr(m, key)
    if isinstance(kwargs.get("img_size"), tuple):
        kwargs["img_size"] = list(kwargs["img_size"])
    return kwargs


def _cnn_kwargs(config: PipelineConfig) -> dict[str, Any]:
    """``arch``, the input size (for the record) and the MONAI constructor arguments, all JSON values.

    The ViT-only model settings (preset, patch_size, embed_dim, depth, num_heads, drop_path_rate, global_pool,
    pos_embed, stem_norm) do not apply and are ignored; ``grad_checkpointing`` is refused.
    """
    arch, size = config.model.arch, list(input_size(config))
    if config.model.grad_checkpointing:
        raise ConfigError(f"model.grad_checkpointing is for the ViT only: set it to false for model.arch={arch}")
    spatial_dims = len(size)
    check_input_size(arch, size, "preprocess.xray.img_size" if spatial_dims == 2 else "preprocess.mri.img_size")
    if arch == "densenet121":
        return {"arch": arch, "img_size": size, "spatial_dims": spatial_dims, "in_channels": 1, "out_channels": 1,
                "init_features": 64, "growth_rate": 32, "block_config": [6, 12, 24, 16], "bn_size": 4,
                "dropout_prob": 0.0}
    # conv1 with stride 2 and no bias in the downsampling shortcuts, as in the ImageNet ResNet (MONAI's default
    # stride 1 costs 4x (2D) / 8x (3D) the compute)
    return {"arch": arch, "img_size": size, "spatial_dims": spatial_dims, "n_input_channels": 1, "num_classes": 1,
            "conv1_t_size": 7, "conv1_t_stride": 2, "no_max_pool": False, "shortcut_type": "B",
            "bias_downsample": False}


def check_input_size(arch: str, size: Sequence[int], setting: str) -> None:
    """ConfigError when ``arch`` cannot take inputs of ``size`` (densenet121: 29 pixels per side at least)."""
    if arch == "densenet121" and any(_densenet_feature_size(s) < 1 for s in size):
        raise ConfigError(f"model.arch=densenet121 needs at least 29 pixels per side (it downsamples 5 times), "
                          f"got {list(size)}: raise {setting}")


def _densenet_feature_size(n: int) -> int:
    """Side of DenseNet's last feature map for an input side ``n``: conv0 and pool0 halve (rounding up),
    each of the three transitions halves (rounding down)."""
    n = -(-n // 2)
    n = -(-n // 2)
    for _ in range(3):
        n //= 2
    return n


def arch_of(kwargs: dict[str, Any]) -> str:
    """The ``model.arch`` saved kwargs describe (ViT kwargs have no ``arch`` key: their stem tells)."""
    if "arch" in kwargs:
        return str(kwargs["arch"])
    return "hybrid" if kwargs.get("stem") == "conv" else "vit"


def build_model(kwargs: dict[str, Any]) -> nn.Module:
    """A network from its saved constructor arguments (randomly initialised; weights come from the file)."""
    arch = arch_of(kwargs)
    if arch in VIT_ARCHS:
        return medvit.build_vit(**{k: v for k, v in kwargs.items() if k != "arch"})  # distilled: the DeiT class
    if arch not in CNN_ARCHS:
        raise ConfigError(f"unknown model architecture {arch!r} in the saved model: expected one of "
                          f"{', '.join(VIT_ARCHS + CNN_ARCHS)}")
    from monai.networks import nets

    args = {k: v for k, v in kwargs.items() if k not in _INFO_KEYS}
    if arch == "densenet121":
        return nets.DenseNet121(pretrained=False, **args)
    return getattr(nets, arch)(pretrained=False, progress=False, **args)  # the resnet18 / resnet50 factories


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside DDP (``.module``) and torch.compile (``._orig_mod``) wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def is_vit(model: nn.Module) -> bool:
    """True for a medvit Vision Transformer (attention heatmaps, layer decay, distillation, MAE init apply)."""
    return isinstance(unwrap(model), medvit.VisionTransformer)


_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """The one rule for which parameters get no weight decay: every 1-D tensor, every bias, every
    parameter of a norm layer, and the names the model's own ``no_weight_decay()`` lists (embeddings)."""
    listed = set(getattr(model, "no_weight_decay", lambda: set())())
    owners = dict(model.named_modules())
    names = set()
    for name, param in model.named_parameters():
        owner_name, _, leaf = name.rpartition(".")
        if param.ndim <= 1 or leaf == "bias" or isinstance(owners.get(owner_name), _NORMS) or name in listed:
            names.add(name)
    return names


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: ``weight_decay`` for most weights, none for ``no_weight_decay_names(model)``."""
    skip = no_weight_decay_names(model)
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if name in skip else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def save_model(path: Path, model: nn.Module, kwargs: dict[str, Any], extra: dict[str, Any] | None = None) -> None:
    """Weights as safetensors with the constructor arguments (and any extra JSON) in its metadata."""
    module = unwrap(model)  # DDP and torch.compile wrappers
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
