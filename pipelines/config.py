"""Pipeline configuration: a pydantic schema, YAML loading and ``--set a.b=c`` overrides.

Every section forbids unknown keys, so a misspelled key is an error that names it. ``load_config`` turns
every validation problem into one ``ConfigError`` line (the CLI prints it and exits with code 2).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(Exception):
    """A configuration problem, already phrased as one line for the user."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SelectionConfig(Section):
    """Which series of a study are used (by default every eligible one)."""

    modalities: list[str] = ["CR", "DX", "MR"]
    series_description_include: list[str] = Field(default_factory=list, description="regexes; empty = all")
    series_description_exclude: list[str] = Field(default_factory=list)
    image_type_exclude: list[str] = ["LOCALIZER"]
    min_slices: int = Field(8, ge=1)


class LimitsConfig(Section):
    """Bounds on what one DICOM file may cost a process; a file over one is rejected as ``too_large``
    before the costly step, so a crafted file (a deflate bomb, a header claiming gigapixels) cannot exhaust
    memory. The defaults keep one decode under about 1 GiB and admit any real CR/DX or MR file."""

    max_inflated_bytes: int = Field(
        256 << 20, ge=1 << 20, description="a Deflated Explicit VR Little Endian data set is measured by "
                                          "inflating it chunk by chunk before it is read: more than this many "
                                          "bytes once inflated -> too_large (default 256 MiB)")
    max_pixel_bytes: int = Field(
        128 << 20, ge=1 << 20, description="Rows x Columns x frames x samples x BitsAllocated / 8 of one file, "
                                          "checked from the header before any pixel is decoded; decoding takes "
                                          "about 8x this in memory (default 128 MiB: e.g. 8192 x 8192 at 16 bits)")
    max_element_bytes: int = Field(
        128 << 20, ge=1 << 20, description="declared length of any header element or of the pixel data "
                                          "(compressed: all fragments) (default 128 MiB)")


class DataConfig(Section):
    dicom_root: Path
    labels: Path | None = None
    kind: Literal["xray", "mri"]
    study_column: str = "StudyInstanceUID"
    label_column: str = "label"
    workers: int = Field(2, ge=0, description="parallel header-scan workers; 0 = sequential")
    selection: SelectionConfig = Field(default_factory=SelectionConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)


class XrayPreprocess(Section):
    img_size: int = Field(224, ge=8)
    percentiles: tuple[float, float] = (0.5, 99.5)
    voi_window: bool = False
    color: Literal["reject", "gray"] = Field(
        "reject", description="colour (RGB, YBR, PALETTE COLOR) X-rays, for scan and reader alike: reject -> "
                              "unsupported_photometric at ingest and score; gray -> kept and read as luminance")


class MriPreprocess(Section):
    img_size: tuple[int, int, int] = (96, 96, 96)
    spacing: tuple[float, float, float] = (2.0, 2.0, 2.0)
    orientation: str = "RAS"


class PreprocessConfig(Section):
    xray: XrayPreprocess = Field(default_factory=XrayPreprocess)
    mri: MriPreprocess = Field(default_factory=MriPreprocess)
    cache_dir: Path | None = Field(None, description="deterministic-preprocessing cache; default OUTPUT/cache")


class AugmentConfig(Section):
    enabled: bool = True
    prob: float = Field(0.5, ge=0, le=1)
    rotate_deg: float = Field(10.0, ge=0)
    scale: float = Field(0.1, ge=0)
    translate: float = Field(0.05, ge=0, description="fraction of the image size")
    flip_lr: bool = Field(False, description="left-right flip; off by default (chest X-ray anatomy is lateralised)")
    noise_std: float = Field(0.02, ge=0)
    contrast_gamma: tuple[float, float] = (0.8, 1.25)


class SplitConfig(Section):
    val: float = Field(0.15, ge=0, lt=1)
    test: float = Field(0.15, ge=0, lt=1)
    seed: int = 0

    @model_validator(mode="after")
    def _leaves_training_data(self) -> SplitConfig:
        if self.val + self.test >= 0.9:
            raise ValueError("split.val + split.test must leave at least 10% for training")
        return self


class OutputConfig(Section):
    dir: Path = Path("medvit_out")


class PrivacyConfig(Section):
    key_env: str = Field("MEDVIT_PSEUDONYM_KEY", description="env var holding the pseudonymization key")
    key_file: Path | None = Field(None, description="default OUTPUT/.pseudonym_key, created once (mode 600)")


class ModelConfig(Section):
    """The network. Image size comes from ``preprocess``; 2D or 3D from ``data.kind``."""

    arch: Literal["vit", "hybrid", "densenet121", "resnet18", "resnet50"] = Field(
        "vit", description="hybrid = ViT with the convolutional stem; densenet121/resnet* = MONAI CNN baselines")
    preset: str | None = Field(None, description="a medvit preset (vit_tiny|small|base, vit3d_tiny|small|base); "
                                                   "default vit_small for xray, vit3d_small for mri")
    patch_size: int | tuple[int, ...] | None = None
    embed_dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    drop_path_rate: float = Field(0.1, ge=0, lt=1)
    global_pool: Literal["token", "avg", "max"] = "token"
    pos_embed: Literal["learned", "sincos"] = "learned"
    stem_norm: Literal["batch", "group", "instance"] = "batch"
    stem_depth: int = Field(0, ge=0, le=4, description="hybrid only: residual conv blocks after each strided stem "
                                                       "convolution (0: the plain Xiao et al. stem)")
    grad_checkpointing: bool = False


class TrainConfig(Section):
    plan: Literal["auto", "off"] = Field(
        "auto", description="auto: keys you leave unset come from the dataset fingerprint (OUTPUT/plan.json); "
                            "off: the schema defaults")
    epochs: int = Field(20, ge=1, description="used when train.steps is unset")
    steps: int | None = Field(
        None, ge=1, description="optimizer-step budget: epochs = ceil(steps / steps per epoch), the last one cut "
                                "short; the cosine schedule spans exactly these steps")
    batch_size: int = Field(32, ge=1)
    lr: float = Field(5e-4, gt=0)
    min_lr: float = Field(1e-6, ge=0)
    weight_decay: float = Field(0.05, ge=0)
    warmup_epochs: float = Field(1.0, ge=0)
    warmup_steps: int | None = Field(None, ge=0, description="linear warmup in optimizer steps (overrides warmup_epochs)")
    grad_clip: float | None = Field(1.0, gt=0)
    accumulate: int = Field(1, ge=1, description="gradient accumulation steps")
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"
    compile: bool = False
    class_balance: Literal["pos_weight", "sampler", "none"] = "pos_weight"
    early_stopping_patience: int | None = Field(5, ge=1, description="validations without a better smoothed "
                                                                        "criterion before stopping; null = never")
    early_stopping_metric: Literal["loss", "auroc"] = Field(
        "loss", description="criterion of early stopping (not of model selection, which is AUROC first): the "
                            "validation loss keeps moving when a small validation split's AUROC saturates or ties")
    early_stopping_smoothing: float = Field(
        0.6, ge=0, lt=1, description="EMA factor on the criterion (0 = raw): one lucky or unlucky validation "
                                     "neither resets nor spends the patience")
    min_steps: int = Field(0, ge=0, description="early stopping never stops before this many optimizer steps")
    select: Literal["best", "last"] = Field(
        "best", description="the model kept: best = highest validation AUROC (ties: lower loss); last = the end of "
                            "the schedule, for validation splits too small to select on")
    num_workers: int = Field(2, ge=0)
    seed: int = 0
    deterministic: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    init: str | None = Field(None, description="start the ViT from an encoder: a `medvit pretrain` URI or path, "
                                               "or a timm-format .safetensors/.pth file")
    layer_decay: float | None = Field(None, gt=0, le=1, description="layer-wise lr decay, e.g. 0.75 (fine-tuning)")
    distill: DistillConfig | None = None
    progressive: list[ProgressiveStage] | None = Field(
        None, description="train small first: stages of epochs at a smaller img_size; the rest at full size")
    progressive_batch: Literal["fixed", "auto"] = Field(
        "fixed", description="auto: scale the batch size with the pixel count so memory stays flat")
    save_every: int | None = Field(
        None, ge=1, description="also keep the (full-size) model every N epochs as train/epochs/epoch_NNN.safetensors, "
                                "loadable like best.safetensors: learning curves, later evaluation of any epoch")

    @field_validator("plan", "amp", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        """YAML reads a bare ``off`` as false: ``train.plan: off`` and ``train.amp: off`` mean the word."""
        return "off" if value is False else value


class DistillConfig(Section):
    """DeiT distillation: the ViT gets a distillation token whose head learns from a frozen teacher."""

    teacher: str = Field(description="model URI of the teacher (models:/NAME@ALIAS, runs:/ID/model, a folder)")
    kind: Literal["hard", "soft"] = "hard"
    temperature: float = Field(1.0, gt=0, description="soft distillation: temperature of both sigmoids")
    alpha: float = Field(0.5, ge=0, le=1, description="weight of the distillation loss (1 - alpha: labels)")
    unlabelled: bool = Field(
        False, description="also train on the manifest's unlabelled series: the teacher labels them for the "
                           "distillation head; the class head learns from labelled series only")


class ProgressiveStage(Section):
    epochs: int = Field(ge=1)
    img_size: int | tuple[int, int, int] = Field(description="an int for X-ray, [x, y, z] for MRI")


class EvaluateConfig(Section):
    threshold: Literal["youden", "sensitivity"] = "youden"
    target_sensitivity: float = Field(0.9, gt=0, le=1)
    bootstrap: int = Field(1000, ge=0)
    aggregate: Literal["max", "mean"] = Field("max", description="series scores -> study score")


class PretrainConfig(Section):
    """Masked-autoencoder pretraining (`medvit pretrain`) on every eligible series, labelled or not."""

    dicom_root: Path | None = Field(None, description="default: data.dicom_root")
    epochs: int = Field(100, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1.5e-4, gt=0)
    min_lr: float = Field(1e-6, ge=0)
    weight_decay: float = Field(0.05, ge=0)
    warmup_epochs: float = Field(5.0, ge=0)
    mask_ratio: float = Field(0.75, ge=0, lt=1)
    norm_pix_loss: bool = Field(False, description=(
        "normalise each target patch (MAE paper default); off by default here: a patch's intensity level is the "
        "finding in radiographs (opacity, density), and normalising it away cost 0.12-0.24 AUROC downstream "
        "(docs/benchmarks.md)"))
    decoder_dim: int = Field(128, ge=8)
    decoder_depth: int = Field(2, ge=1)
    decoder_heads: int = Field(4, ge=1)


class TrackingConfig(Section):
    uri: str | None = Field(None, description="else $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    experiment: str = "medvit"
    system_metrics: bool = True


class RegistryConfig(Section):
    name: str = "medvit"
    alias: str = "candidate"


class PipelineConfig(Section):
    name: str = "medvit"
    data: DataConfig
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)

    @model_validator(mode="after")
    def _preset_matches_kind(self) -> PipelineConfig:
        from medvit import list_models

        if self.model.preset is None:
            self.model.preset = "vit_small" if self.data.kind == "xray" else "vit3d_small"
            self.model.model_fields_set.discard("preset")  # a default, not the user's choice (train.plan)
        if self.model.preset not in list_models():
            raise ValueError(f"model.preset {self.model.preset!r} is not one of {', '.join(list_models())}")
        is_3d = self.model.preset.startswith("vit3d_")
        if is_3d != (self.data.kind == "mri"):
            want = "a vit3d_* preset" if self.data.kind == "mri" else "a 2D vit_* preset"
            raise ValueError(f"model.preset {self.model.preset!r} does not fit data.kind={self.data.kind}: use {want}")
        return self

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not value or any(c in value for c in "/\\ "):
            raise ValueError("name must be non-empty, without slashes or spaces")
        return value

    @property
    def cache_dir(self) -> Path:
        return self.preprocess.cache_dir or self.output.dir / "cache"


# ---- loading -----------------------------------------------------------------------------------------
def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=c`` -> (["a", "b"], value parsed as YAML, so numbers, booleans and lists work)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set train.epochs=5")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each ``a.b=c`` in the nested dict (creating sections as needed); the schema checks the keys."""
    for text in overrides:
        parts, value = parse_override(text)
        node = raw
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if child is None:  # an optional section left empty (e.g. train.distill: null)
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {text!r}: '{part}' is a value, not a section")
            node = child
        node[parts[-1]] = value
    return raw


# Keys that were removed in favour of another: the unknown-key error names the replacement.
REPLACED_KEYS = {
    "data.selection.allow_color": "preprocess.xray.color (reject|gray), which now decides colour X-rays for "
                                  "scan and reader alike",
}


def _describe(error: dict[str, Any]) -> str:
    key = ".".join(str(p) for p in error["loc"]) or "(top level)"
    if error["type"] == "extra_forbidden" and key in REPLACED_KEYS:
        return f"unknown config key '{key}': it was replaced by {REPLACED_KEYS[key]}"
    if error["type"] == "extra_forbidden":
        return f"unknown config key '{key}': check its spelling against configs/ and the README"
    if error["type"] == "missing":
        return f"missing config key '{key}': add it to the YAML or pass --set {key}=..."
    return f"config key '{key}': {error['msg']} (got {error.get('input')!r})"


def without_replaced_keys(raw: dict[str, Any]) -> dict[str, Any]:
    """A copy of a config written by an earlier version (a packaged model's ``config.yaml``) without the keys of
    ``REPLACED_KEYS``, so it still validates; user configs are validated as they are and fail on them."""
    out = copy.deepcopy(raw)
    for key in REPLACED_KEYS:
        *parents, leaf = key.split(".")
        node: Any = out
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return out


def validate_config(raw: dict[str, Any], source: str = "config") -> PipelineConfig:
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        lines = [_describe(e) for e in exc.errors()]
        raise ConfigError(f"{source}: " + "; ".join(lines)) from None


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> PipelineConfig:
    """Read YAML (or start empty when ``path`` is None), apply overrides, validate; ConfigError on problems."""
    raw: dict[str, Any] = {}
    source = "config"
    if path is not None:
        path = Path(path)
        source = path.name
        if not path.is_file():
            raise ConfigError(f"config file '{path}' not found: pass an existing YAML, e.g. configs/demo_xray.yaml")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file '{path}' is not valid YAML: {str(exc).splitlines()[0]}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"config file '{path}' must hold a mapping of sections at the top level")
    raw = apply_overrides(raw, overrides or [])
    return validate_config(raw, source)


def dump_config(config: PipelineConfig) -> str:
    """The resolved config as YAML, to be saved with every run."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def flatten_tree(tree: dict[str, Any]) -> dict[str, str]:
    """``{"data": {"kind": "xray"}}`` -> ``{"data.kind": "xray"}`` (lists as their text), for MLflow params."""
    out: dict[str, str] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            out[prefix[:-1]] = str(node)

    walk(tree, "")
    return out


def flatten(config: PipelineConfig) -> dict[str, str]:
    """The config as dotted keys."""
    return flatten_tree(config.model_dump(mode="json"))


# ---- explicit keys (what the user chose, as opposed to defaults) ------------------------------------------
def explicit_keys(section: BaseModel, prefix: str = "") -> set[str]:
    """Dotted keys the YAML or ``--set`` gave a value (pydantic's ``model_fields_set``), never the defaults."""
    keys: set[str] = set()
    for name in section.model_fields_set:
        value = getattr(section, name)
        if isinstance(value, BaseModel):
            keys |= explicit_keys(value, f"{prefix}{name}.")
        else:
            keys.add(f"{prefix}{name}")
    return keys


def get_key(config: PipelineConfig, key: str) -> Any:
    """The value of a dotted key, e.g. ``get_key(config, "train.lr")``."""
    node: Any = config
    for part in key.split("."):
        node = getattr(node, part)
    return node


def with_values(config: PipelineConfig, values: dict[str, Any]) -> PipelineConfig:
    """A validated copy with ``values`` (dotted keys) set; they stay unmarked, like defaults.

    So ``explicit_keys`` of the copy is that of ``config``: values derived for the user never pass for the
    user's own choices.
    """
    if not values:
        return config
    raw = config.model_dump(exclude_unset=True)
    for key, value in values.items():
        *parents, leaf = key.split(".")
        node = raw
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    out = validate_config(raw)
    for key in values:
        parent, _, leaf = key.rpartition(".")
        (get_key(out, parent) if parent else out).model_fields_set.discard(leaf)
    return out
