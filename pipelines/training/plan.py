"""The training plan: a dataset fingerprint (from the ingest manifest) -> config values, each with a reason.

Pure: no files, no MLflow. ``make_plan`` is a deterministic function of the fingerprint (and of the few
values the user fixed that other keys derive from); ``apply_plan`` fills only the keys the user left unset.
Every number lives in ``Heuristics`` below: mostly starting values; the pooling and the X-ray stem were chosen on
real-base cohorts (docs/benchmarks.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import median
from typing import Any, NamedTuple

import pandas as pd

from pipelines.config import PipelineConfig, explicit_keys, get_key, with_values
from pipelines.data.splits import UNLABELLED


# ---- the heuristics: every number of the planner, in one place ---------------------------------------------
@dataclass(frozen=True)
class Heuristics:
    """The planner's table. Starting values (demo configs, common ViT recipes); where a comment cites a figure,
    it was chosen on real-base cohorts (docs/benchmarks.md)."""

    # validation split: below either count, selecting (and stopping) on validation is noisy
    small_val_series: int = 30              # labelled val series
    small_val_minority: int = 10            # val series of the rarer class
    # X-ray input: the median shorter image side picks the resolution
    xray_large_side: int = 256              # median side >= this -> xray_img_size[1], else xray_img_size[0]
    xray_img_size: tuple[int, int] = (64, 128)
    xray_cpu_img_size: int = 64             # without a GPU: 128 px (patch 16) gained nothing on real-base X-ray
                                            # (0.876 vs 0.882, 2 seeds) for 1.4x the run time (docs/benchmarks.md)
    loader_workers_min_cores: int = 3       # on fewer cores, in-process loading of cached tensors is faster
    xray_patch: tuple[tuple[int, int], ...] = ((64, 8), (128, 16))  # (up to this img side, patch); larger: last
    # MRI input: a fixed grid; the spacing makes the median field of view fit it
    mri_img_size: tuple[int, int, int] = (64, 64, 64)
    mri_cpu_img_size: tuple[int, int, int] = (48, 48, 48)  # without a GPU: 3D steps cost ~(64/48)^3 = 2.4x more
    mri_max_fov_mm: float = 192.0           # a head fits this box: a wider field of view is air, cropped away
    mri_spacing_step: float = 0.5           # mm: spacing rounded up to this step
    mri_min_spacing: float = 1.0            # mm
    mri_fallback_spacing: float = 2.0       # mm, when the headers carry no spacing
    mri_patch: int = 8
    # network: a small hybrid ViT (convolutional stem), average-pooled
    arch: str = "hybrid"
    xray_preset: str = "vit_tiny"
    mri_preset: str = "vit3d_tiny"
    embed_dim: int = 192
    depth: int = 6
    num_heads: int = 3
    drop_path_rate: float = 0.1
    global_pool: str = "max"                # a finding in one token is not averaged away (docs/benchmarks.md)
    xray_stem_depth: int = 1                # one residual block per stem stage: more locality before the tokens
    mri_stem_depth: int = 0                 # not measured on MRI yet; it doubles the 3D stem's cost on a CPU
    xray_stem_norm: str = "batch"
    mri_stem_norm: str = "group"            # 3D batches are tiny: BatchNorm statistics would be noise
    # optimisation
    small_data_series: int = 200            # fewer labelled train series -> the small batch
    xray_batch: tuple[int, int] = (16, 32)  # (small data, otherwise)
    mri_batch: tuple[int, int] = (4, 8)
    base_lr: float = 5e-4                   # at base_lr_batch; scaled by sqrt(effective batch / base_lr_batch)
    base_lr_batch: int = 32
    weight_decay: float = 0.05
    budget_epochs: int = 60                 # step budget: this many epochs' optimizer steps ...
    budget_steps: tuple[int, int] = (300, 3000)  # ... clamped to (min, max)
    warmup_fraction: float = 0.05
    min_steps_fraction: float = 0.4         # early stopping may not stop before this share of the budget
    min_steps_fraction_small_val: float = 0.7
    patience: int = 10                      # validations without a better smoothed criterion
    select_small_val: str = "last"          # the kept model when validation cannot select (docs/benchmarks.md)
    # augmentation strength by labelled train series: fewer than N -> level; more than all -> augment_default
    augment_by_series: tuple[tuple[int, str], ...] = ((300, "strong"), (3000, "medium"))
    augment_default: str = "light"
    # X-ray left-right flip: findings sit in either lung, so a mirrored radiograph keeps its label; it doubles
    # the anatomy a few hundred images show (real-base X-ray, tuning cohorts: 0.854 -> 0.882 over 2 seeds)
    xray_flip_lr: bool = True
    augment: dict[str, dict[str, float]] = field(default_factory=lambda: {
        "strong": {"prob": 0.7, "rotate_deg": 12.0, "scale": 0.15, "translate": 0.08, "noise_std": 0.03},
        "medium": {"prob": 0.5, "rotate_deg": 10.0, "scale": 0.10, "translate": 0.05, "noise_std": 0.02},
        "light": {"prob": 0.3, "rotate_deg": 5.0, "scale": 0.05, "translate": 0.03, "noise_std": 0.01},
    })


HEURISTICS = Heuristics()

# The user's explicit values of these keys are inputs of the plan: other keys derive from them
# (patch size and MRI spacing from the image size, lr and the step budget from the batch, warmup and
# min_steps from the budget). ``train.accumulate`` is always an input (the effective batch).
INPUT_KEYS = ("preprocess.xray.img_size", "preprocess.mri.img_size", "train.batch_size", "train.steps")

# A planned key is also left alone when the user set a key it belongs with: the network's dimensions are
# designed as a whole (or taken from train.init's encoder), so is the augmentation strength, and a user who counts epochs
# owns the step budget.
MODEL_SHAPE = ("model.preset", "model.patch_size", "model.embed_dim", "model.depth", "model.num_heads")
# Chosen on their own (a user who picks the plain ViT or max pooling still gets the planned dimensions), but
# an encoder from train.init fixes them as it fixes the dimensions.
MODEL_CHOICES = ("model.arch", "model.global_pool", "model.stem_norm", "model.stem_depth")
AUGMENT = ("augment.enabled", "augment.prob", "augment.rotate_deg", "augment.scale", "augment.translate",
           "augment.noise_std")


def _group(keys: tuple[str, ...], *also: str) -> dict[str, tuple[str, ...]]:
    return {key: (*(k for k in keys if k != key), *also) for key in keys}


COUPLED: dict[str, tuple[str, ...]] = {
    **_group(MODEL_SHAPE, "train.init"),
    **{key: ("train.init",) for key in MODEL_CHOICES},
    **_group(AUGMENT),
    "train.steps": ("train.epochs", "train.progressive"),
    "train.warmup_steps": ("train.epochs", "train.progressive", "train.warmup_epochs"),
    "train.min_steps": ("train.epochs", "train.progressive"),
}


class Plan(NamedTuple):
    values: dict[str, Any]    # dotted config key -> planned value
    reasons: dict[str, str]   # the same keys -> one line why
    notes: list[str]          # warnings about the dataset (e.g. a validation split too small to select on)


# ---- fingerprint ----------------------------------------------------------------------------------------
def fingerprint(manifest: pd.DataFrame, kind: str) -> dict[str, Any]:
    """Counts and rounded medians of the manifest's ``kind`` series: what the plan depends on, no identifiers."""
    rows = manifest[manifest["kind"] == kind]
    labelled = rows[rows["label"].notna()]
    train, val = labelled[labelled["split"] == "train"], labelled[labelled["split"] == "val"]
    train_pos, val_pos = int(train["label"].astype(int).sum()), int(val["label"].astype(int).sum())
    fp: dict[str, Any] = {
        "n_train": len(train), "n_val": len(val), "n_test": int((labelled["split"] == "test").sum()),
        "n_unlabelled": int((rows["split"] == UNLABELLED).sum()),
        "abnormal_fraction": round(train_pos / len(train), 2) if len(train) else None,
        "val_minority": min(val_pos, len(val) - val_pos),
        "median_rows": _median_int(rows["rows"]), "median_cols": _median_int(rows["columns"]),
    }
    if kind == "mri":
        fp["median_slices"] = _median_int(rows["num_slices"])
    spacings = [list(s) for s in rows["spacing"] if s is not None and len(s)]
    axes = max((len(s) for s in spacings), default=0)
    fp["median_spacing"] = [round(float(median(s[i] for s in spacings if len(s) > i)), 2) for i in range(axes)] or None
    return fp


def machine_fingerprint(device: str = "auto") -> dict[str, Any]:
    """What the plan needs of the machine it trains on: an accelerator or not, and the CPU cores."""
    import os

    import torch

    cuda = device != "cpu" and torch.cuda.is_available()
    return {"accelerator": "cuda" if cuda else "cpu", "cpu_cores": os.cpu_count() or 1}


def _median_int(values: pd.Series) -> int | None:
    return int(round(float(values.median()))) if len(values) else None


# ---- plan -------------------------------------------------------------------------------------------------
def make_plan(fp: dict[str, Any], kind: str, given: dict[str, Any] | None = None,
              h: Heuristics = HEURISTICS) -> Plan:
    """Config values for a dataset fingerprint; ``given``: the user's values of ``INPUT_KEYS`` (and
    ``train.accumulate``) that derived keys follow. Deterministic: same inputs, same plan."""
    given = given or {}
    values: dict[str, Any] = {}
    reasons: dict[str, str] = {}
    notes: list[str] = []

    def put(key: str, value: Any, reason: str) -> None:
        values[key], reasons[key] = value, reason

    n_train = fp["n_train"]
    small_data = n_train < h.small_data_series
    small_val = fp["n_val"] < h.small_val_series or fp["val_minority"] < h.small_val_minority
    if small_val:
        notes.append(f"validation split too small to select on ({fp['n_val']} labelled series, "
                     f"{fp['val_minority']} of the rarer class; want >= {h.small_val_series} and "
                     f">= {h.small_val_minority}): training relies on min_steps more than on early stopping")

    # input
    if kind == "xray":
        side = min(fp["median_rows"] or 0, fp["median_cols"] or 0)
        size = h.xray_img_size[1] if side >= h.xray_large_side else h.xray_img_size[0]
        reason = f"median image side {side} px {'>=' if side >= h.xray_large_side else '<'} {h.xray_large_side}"
        if fp.get("accelerator", "cpu") == "cpu" and size > h.xray_cpu_img_size:
            size, reason = h.xray_cpu_img_size, reason + (f", but no GPU: {h.xray_cpu_img_size} px keeps a run in "
                                                          "minutes (128 px scored no better on real-base X-ray)")
        put("preprocess.xray.img_size", size, reason)
        size = given.get("preprocess.xray.img_size", size)
        preferred = next((p for limit, p in h.xray_patch if size <= limit), h.xray_patch[-1][1])
        grid: tuple[int, ...] = (size, size)
    else:
        cpu = fp.get("accelerator", "cpu") == "cpu"
        grid = tuple(h.mri_cpu_img_size if cpu else h.mri_img_size)
        put("preprocess.mri.img_size", list(grid), "a fixed 3D grid the small 3D ViT trains on within memory"
            + (" (smaller without a GPU)" if cpu else ""))
        grid = tuple(given.get("preprocess.mri.img_size", grid))
        put("preprocess.mri.spacing", *_mri_spacing(fp, grid, h))
        preferred = h.mri_patch
    patch = _patch_for(grid, preferred)
    put("model.patch_size", patch, f"{'x'.join(map(str, grid))} input in {patch}-pixel patches "
                                   f"({math.prod(g // patch for g in grid)} tokens)")

    # network
    put("model.arch", h.arch, "convolutional stem: trains from scratch on few labels more stably than patchify")
    put("model.preset", h.xray_preset if kind == "xray" else h.mri_preset, "a tiny ViT: few labelled series")
    put("model.embed_dim", h.embed_dim, "a tiny ViT's width")
    put("model.depth", h.depth, f"{h.depth} blocks (the presets have 12): small data, CPU-trainable")
    put("model.num_heads", h.num_heads, f"{h.embed_dim // h.num_heads} dimensions per head")
    put("model.drop_path_rate", h.drop_path_rate, "stochastic depth against overfitting")
    put("model.global_pool", h.global_pool, "maximum over the patch tokens: a small finding in one token decides "
                                            "(the mean dilutes it; real-base X-ray 0.72 -> 0.82)")
    stem_depth = h.xray_stem_depth if kind == "xray" else h.mri_stem_depth
    put("model.stem_depth", stem_depth, f"{stem_depth} residual block(s) per stem stage" + (
        ": conv locality before the tokens (real-base X-ray 0.82 -> 0.83)" if stem_depth else
        ": the plain stem (a deeper 3D stem is not measured yet and doubles its cost)"))
    put("model.stem_norm", h.xray_stem_norm if kind == "xray" else h.mri_stem_norm,
        "BatchNorm at 2D batch sizes" if kind == "xray" else "GroupNorm: 3D batches are too small for BatchNorm")

    # optimisation
    small_batch, batch = h.xray_batch if kind == "xray" else h.mri_batch
    put("train.batch_size", small_batch if small_data else batch,
        f"{n_train} labelled train series {'<' if small_data else '>='} {h.small_data_series}")
    effective = given.get("train.batch_size", values["train.batch_size"]) * given.get("train.accumulate", 1)
    lr = float(f"{h.base_lr * math.sqrt(effective / h.base_lr_batch):.2g}")
    put("train.lr", lr, f"{h.base_lr:g} x sqrt(effective batch {effective} / {h.base_lr_batch})")
    put("train.weight_decay", h.weight_decay, "AdamW default of ViT recipes")
    per_epoch = max(1, math.ceil(n_train / effective))
    low, high = h.budget_steps
    put("train.steps", min(high, max(low, h.budget_epochs * per_epoch)),
        f"{h.budget_epochs} epochs of {per_epoch} steps, clamped to [{low}, {high}]")
    steps = given.get("train.steps", values["train.steps"])
    put("train.warmup_steps", round(h.warmup_fraction * steps), f"{h.warmup_fraction:.0%} of {steps} steps")
    fraction = h.min_steps_fraction_small_val if small_val else h.min_steps_fraction
    put("train.min_steps", round(fraction * steps), f"{fraction:.0%} of {steps} steps" + (
        ": the validation split is too small to stop on early" if small_val else " before early stopping may stop"))
    put("train.early_stopping_patience", h.patience, "validations without a better smoothed criterion")
    put("train.select", h.select_small_val if small_val else "best", (
        f"keep the {h.select_small_val} model: the validation split is too small to select an epoch on"
        if small_val else "keep the model of the best validation AUROC"))
    cores = int(fp.get("cpu_cores", 1))
    workers = 0 if cores < h.loader_workers_min_cores else min(8, cores - 1)
    put("train.num_workers", workers, f"{cores} CPU cores: " + (
        "in-process loading of cached tensors beats worker processes" if workers == 0 else "one loader per spare core"))

    # augmentation
    level = next((name for limit, name in h.augment_by_series if n_train < limit), h.augment_default)
    for key, value in h.augment[level].items():
        put(f"augment.{key}", value, f"{level} augmentation for {n_train} labelled train series")
    if kind == "xray":
        put("augment.flip_lr", h.xray_flip_lr, "left-right flip: a finding keeps its label in the mirrored image"
            if h.xray_flip_lr else "no left-right flip")
    return Plan(values, reasons, notes)


def _patch_for(grid: tuple[int, ...], preferred: int) -> int:
    """The largest power of two up to ``preferred`` dividing every side (the conv stem needs a power of two)."""
    patch = preferred
    while patch > 2 and any(g % patch for g in grid):
        patch //= 2
    return patch


def _mri_spacing(fp: dict[str, Any], grid: tuple[int, ...], h: Heuristics) -> tuple[list[float], str]:
    """Voxel spacing (RAS order) so the median field of view (cols, rows, slices; axial) fits ``grid``."""
    spacing = fp.get("median_spacing") or []
    if len(spacing) < 3 or not all((fp["median_cols"], fp["median_rows"], fp.get("median_slices"))):
        return [h.mri_fallback_spacing] * 3, "the headers give no 3D spacing: a common brain MRI spacing"
    fov = (fp["median_cols"] * spacing[1], fp["median_rows"] * spacing[0], fp["median_slices"] * spacing[2])
    step = h.mri_spacing_step
    box = [min(f, h.mri_max_fov_mm) for f in fov]
    out = [max(h.mri_min_spacing, math.ceil(f / g / step - 1e-9) * step) for f, g in zip(box, grid, strict=True)]
    return out, (f"median field of view {' x '.join(f'{f:.0f}' for f in fov)} mm (axial assumed), at most "
                 f"{h.mri_max_fov_mm:.0f} mm (the head) fits the grid")


# ---- applying it ------------------------------------------------------------------------------------------
def plan_inputs(config: PipelineConfig) -> dict[str, Any]:
    """``given`` for ``make_plan``: the explicit values of ``INPUT_KEYS`` (null ones are no input) and
    ``train.accumulate``."""
    explicit = explicit_keys(config)
    given = {key: get_key(config, key) for key in INPUT_KEYS if key in explicit}
    return {k: v for k, v in given.items() if v is not None} | {"train.accumulate": config.train.accumulate}


def split_plan(values: dict[str, Any], explicit: set[str]) -> tuple[dict[str, Any], list[str], dict[str, str]]:
    """(keys to apply with their values, keys the user set, keys kept because the user set a related key)."""
    apply, overridden, kept = {}, [], {}
    for key, value in values.items():
        related = [k for k in COUPLED.get(key, ()) if k in explicit]
        if key in explicit:
            overridden.append(key)
        elif related:
            kept[key] = f"{related[0]} is set"
        else:
            apply[key] = value
    return apply, overridden, kept


def apply_plan(config: PipelineConfig, plan: Plan) -> PipelineConfig:
    """``config`` with the planned keys the user did not set (in the YAML or by ``--set``), nor a related key."""
    apply, _, _ = split_plan(plan.values, explicit_keys(config))
    return with_values(config, apply)
