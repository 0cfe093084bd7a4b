"""Data-efficient training pieces used by the train stage: start from a pretrained encoder (``train.init``),
layer-wise learning-rate decay, DeiT distillation from a frozen teacher, and progressive resizing.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import medvit
from pipelines.config import ConfigError, PipelineConfig
from pipelines.training.modeling import check_input_size, input_size, no_weight_decay_names

# Keys that may differ between an encoder and the classifier it starts: heads, and the distillation token.
HEAD_KEYS = ("head.", "head_dist.", "fc_norm.")
ALLOWED_NEW = ("dist_token",)
SHAPE_KEYS = ("spatial_dims", "patch_size", "embed_dim", "depth", "num_heads", "stem", "in_chans")


# ---- train.init -------------------------------------------------------------------------------------
def fetch(uri: str, dest: Path, tracking: str | None = None) -> Path:
    """A local file for ``uri``: an existing path, or an MLflow ``runs:/`` / ``models:/`` artifact URI resolved
    against the store ``tracking`` (the config's ``tracking.uri``; the environment's store when None)."""
    if not uri.startswith(("runs:/", "models:/", "mlflow-artifacts:/")):
        path = Path(uri)
        if not path.is_file():
            raise ConfigError(f"train.init '{uri}' is not a file: pass the `encoder:` line of `medvit pretrain`")
        return path
    from pipelines.scoring.model_package import download
    from pipelines.tracking import tracking_uri

    return download(uri, dest, tracking or tracking_uri(), what="train.init")


def _read_encoder(path: Path, target: medvit.VisionTransformer) -> dict[str, torch.Tensor]:
    """Weights of ``path`` fitted to ``target``'s image size: a medvit encoder or timm-format weights."""
    import json

    from safetensors import safe_open

    meta: dict[str, str] = {}
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
    if "model_kwargs" not in meta:  # timm format (.safetensors or .pth, read with weights_only=True)
        try:
            weights = medvit.timm_weights.strip_prefix(medvit.timm_weights.load_state_dict(path))
            weights = {k: v for k, v in weights.items() if not k.startswith(HEAD_KEYS[:2])}  # any class count
            model = medvit.from_timm(weights, num_heads=target.config["num_heads"], in_chans=target.config["in_chans"],
                                     img_size=target.img_size, distilled=_is_distilled(target))
        except Exception as exc:
            raise ConfigError(f"train.init '{path.name}' is neither a medvit encoder nor timm ViT weights "
                              f"({str(exc).splitlines()[0][:160]})") from None
        _check_shapes(dict(model.config), target, path.name)
        return model.state_dict()
    kwargs = json.loads(meta["model_kwargs"])
    _check_shapes(kwargs, target, path.name)
    source = medvit.build_vit(**kwargs)
    from safetensors.torch import load_file

    source.load_state_dict(load_file(str(path)))
    if tuple(source.img_size) != tuple(target.img_size):
        source.set_img_size(target.img_size)  # position embeddings resampled to the new grid
    state = source.state_dict()
    if _is_distilled(source) != _is_distilled(target):
        state = medvit.timm_weights.match_distillation(state, _is_distilled(target))
    return state


def _is_distilled(model: nn.Module) -> bool:
    return isinstance(model, medvit.DistilledVisionTransformer)


def _check_shapes(kwargs: dict[str, Any], target: medvit.VisionTransformer, name: str) -> None:
    mine = target.config
    for key in SHAPE_KEYS:
        theirs, ours = kwargs.get(key), mine.get(key)
        if key == "patch_size":
            theirs = tuple(medvit.layers.to_tuple(theirs, kwargs.get("spatial_dims", 2)))
            ours = tuple(target.patch_size)
        if theirs is not None and theirs != ours:
            raise ConfigError(f"train.init '{name}': {key} is {theirs} in the encoder but {ours} in model.*: use the "
                              f"same model settings as the pretraining run")


def load_init(module: nn.Module, uri: str, tracking: str | None = None) -> dict[str, list[str]]:
    """Load encoder weights into ``module`` (an MLflow URI resolved against the store ``tracking``); returns the
    missing and unexpected keys (only heads may differ)."""
    if not isinstance(module, medvit.VisionTransformer):
        raise ConfigError("train.init needs a ViT (model.arch vit or hybrid): the CNN baselines start from scratch")
    with tempfile.TemporaryDirectory(prefix="medvit-init-") as tmp:
        state = _read_encoder(fetch(uri, Path(tmp), tracking), module)
    state = {k: v for k, v in state.items() if not k.startswith(HEAD_KEYS)}
    if module.global_pool != "token":  # MAE's fine-tuning recipe: pool the patch tokens, a fresh fc_norm
        state = {k: v for k, v in state.items() if not k.startswith("norm.")}
    result = module.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(HEAD_KEYS) and k not in ALLOWED_NEW]
    if missing or result.unexpected_keys:
        raise ConfigError(f"train.init: the encoder does not fit the model (missing {missing[:5]}, unexpected "
                          f"{result.unexpected_keys[:5]}): use the model settings of the pretraining run")
    return {"missing": list(result.missing_keys), "unexpected": list(result.unexpected_keys)}


# ---- layer-wise lr decay ---------------------------------------------------------------------------------
def layer_decay_groups(model: nn.Module, weight_decay: float, lr: float, layer_decay: float) -> list[dict[str, Any]]:
    """AdamW groups with lr scaled by ``layer_decay ** (depth + 1 - layer)``: early layers move least."""
    if not isinstance(model, medvit.VisionTransformer):
        raise ConfigError("train.layer_decay needs a ViT (model.arch vit or hybrid)")
    skip = no_weight_decay_names(model)
    top = len(model.blocks) + 1
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        layer = model.layer_id(name)
        no_decay = name in skip
        group = groups.setdefault((layer, no_decay), {
            "params": [], "weight_decay": 0.0 if no_decay else weight_decay,
            "lr": lr * layer_decay ** (top - layer)})
        group["params"].append(param)
    return [groups[k] for k in sorted(groups)]


# ---- distillation ---------------------------------------------------------------------------------------
class DistillForward(nn.Module):
    """Training forward of a distilled student: (class logits, distillation logits), so DDP can wrap it."""

    def __init__(self, student: medvit.DistilledVisionTransformer):
        super().__init__()
        if not isinstance(student, medvit.DistilledVisionTransformer):
            raise TypeError(f"distillation needs a DistilledVisionTransformer student, got {type(student).__name__}")
        self.student = student

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.student.forward_distill(x)


@dataclass
class Teacher:
    """A frozen model of this pipeline; its predictions train the student's distillation head."""

    model: nn.Module
    img_size: tuple[int, ...]
    label: str
    kind: str
    temperature: float
    alpha: float

    @torch.no_grad()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        if tuple(images.shape[2:]) != self.img_size:
            images = resize_batch(images, self.img_size)
        return self.model(images).float().reshape(-1)

    def loss(self, cls_logits: torch.Tensor, dist_logits: torch.Tensor, labels: torch.Tensor,
             teacher_logits: torch.Tensor, label_loss: nn.Module) -> torch.Tensor:
        """(1 - alpha) * label loss of the class head + alpha * teacher loss of the distillation head.

        Unlabelled items (label -1, from ``train.distill.unlabelled``) count for the teacher loss only.
        """
        if self.kind == "hard":
            target = (teacher_logits > 0).float()
            dist = F.binary_cross_entropy_with_logits(dist_logits, target)
        else:  # soft: match the teacher's tempered probability (binary KL up to a constant)
            t = self.temperature
            dist = F.binary_cross_entropy_with_logits(dist_logits / t, torch.sigmoid(teacher_logits / t)) * t * t
        labelled = labels >= 0
        if bool(labelled.any()):
            supervised = label_loss(cls_logits[labelled], labels[labelled])
        else:  # a batch of unlabelled series only: the class head gets no signal (zero keeps the graph)
            supervised = cls_logits.sum() * 0.0
        return (1 - self.alpha) * supervised + self.alpha * dist


def load_teacher(config: PipelineConfig, device: torch.device) -> Teacher:
    """The frozen teacher of ``train.distill`` (any registered or logged model of this pipeline)."""
    from pipelines.scoring.model_package import load_packaged_model
    from pipelines.tracking import tracking_uri

    spec = config.train.distill
    loaded = load_packaged_model(spec.teacher, device=device, tracking=tracking_uri(config))
    if loaded.config.data.kind != config.data.kind:
        raise ConfigError(f"train.distill.teacher scores {loaded.config.data.kind}, but data.kind is "
                          f"{config.data.kind}: use a teacher trained on the same kind of data")
    model = loaded.model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return Teacher(model, tuple(input_size(loaded.config)), loaded.label, spec.kind, spec.temperature, spec.alpha)


# ---- progressive resizing -----------------------------------------------------------------------------
def resize_batch(images: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resize a batch (B, C, *spatial) to ``size``: area averaging when shrinking 2D, trilinear in 3D."""
    if tuple(images.shape[2:]) == tuple(size):
        return images
    mode = "area" if images.ndim == 4 else "trilinear"
    return F.interpolate(images, size=tuple(size), mode=mode, **({} if mode == "area" else {"align_corners": False}))


def epoch_sizes(config: PipelineConfig, epochs: int | None = None) -> list[tuple[int, ...]]:
    """The input size of every epoch (``train.epochs`` of them unless given): the progressive stages in order,
    then the full (preprocess) size."""
    epochs = config.train.epochs if epochs is None else epochs
    full = tuple(input_size(config))
    sizes: list[tuple[int, ...]] = []
    for stage in config.train.progressive or []:
        size = (stage.img_size,) * len(full) if isinstance(stage.img_size, int) else tuple(stage.img_size)
        if len(size) != len(full) or any(s > f for s, f in zip(size, full, strict=True)):
            raise ConfigError(f"train.progressive img_size {stage.img_size} must be {len(full)}D and at most the "
                              f"model size {list(full)}")
        check_input_size(config.model.arch, size, "train.progressive img_size")
        sizes += [size] * stage.epochs
    if len(sizes) > epochs:
        raise ConfigError(f"train.progressive stages add up to {len(sizes)} epochs, more than train.epochs="
                          f"{epochs}: the last epochs must run at the full size")
    return sizes + [full] * (epochs - len(sizes))


def epoch_batch_size(config: PipelineConfig, size: Sequence[int]) -> int:
    """``train.batch_size`` at full size; with ``progressive_batch: auto`` scaled by the pixel ratio."""
    base = config.train.batch_size
    if config.train.progressive_batch != "auto":
        return base
    ratio = math.prod(input_size(config)) / math.prod(size)
    return max(1, int(base * ratio))


def check_patch_fit(model: nn.Module, sizes: Sequence[Sequence[int]]) -> None:
    """Every progressive size must be a whole number of patches for a ViT."""
    if not isinstance(model, medvit.VisionTransformer):
        return
    patch = model.patch_size
    for size in {tuple(s) for s in sizes}:
        if any(s % p for s, p in zip(size, patch, strict=True)):
            raise ConfigError(f"train.progressive img_size {list(size)} is not a multiple of the patch size "
                              f"{list(patch)}: pick sizes divisible by it")
