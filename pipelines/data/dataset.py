"""MONAI transforms per modality, and a dataset that caches the deterministic part without pickle.

X-ray: load (our DICOM reader), percentile intensity scaling to [0, 1], aspect-preserving resize of the
longest side, centred pad to a square. MRI: load as a RAS volume, reorient, resample to the target spacing,
crop/pad to the model size, z-score on the foreground. Training adds MONAI random transforms on top.

The cache stores each deterministic result as a ``.safetensors`` file (tensor + affine + a JSON string),
keyed by the content of the DICOM files and the preprocessing config, so it is never stale and never
unpickles anything (unlike MONAI's PersistentDataset).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    EnsureChannelFirst,
    EnsureTyped,
    MapTransform,
    NormalizeIntensityd,
    Orientationd,
    RandAdjustContrastd,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
    Resized,
    ResizeWithPadOrCropd,
    Spacingd,
    SpatialPadd,
)
from safetensors import safe_open
from safetensors.torch import save_file

from pipelines.config import PipelineConfig
from pipelines.data.scan_settings import scan_limits
from pipelines.dicom.read import DicomSeriesReader
from pipelines.files import atomic_write

IMAGE = "image"
LABEL = "label"


# ---- transforms -------------------------------------------------------------------------------------
class ScalePercentilesd(MapTransform):
    """Map the ``lower``..``upper`` intensity percentiles to 0..1 and clip.

    Same result as MONAI's ScaleIntensityRangePercentilesd up to sampling, but the percentiles come from a
    regular subsample of at most ``max_samples`` pixels: MONAI sorts every pixel twice, which costs ~100 ms
    on a 256x256 image and seconds on a full-size radiograph (see docs/benchmarks.md).
    """

    def __init__(self, keys: str | Sequence[str], lower: float, upper: float, max_samples: int = 65536):
        super().__init__(keys)
        self.lower, self.upper, self.max_samples = lower, upper, max_samples

    def __call__(self, data: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(data)
        for key in self.key_iterator(out):
            image = out[key]
            flat = image.as_tensor().reshape(-1) if isinstance(image, MetaTensor) else torch.as_tensor(image).reshape(-1)
            step = max(1, flat.numel() // self.max_samples)
            low, high = np.percentile(flat[::step].float().numpy(), [self.lower, self.upper])
            scale = 1.0 / (high - low) if high > low else 0.0
            out[key] = ((image - float(low)) * scale).clamp(0.0, 1.0)
        return out


class LoadDicomd(MapTransform):
    """Load a DICOM file or series into a channel-first MetaTensor with our reader.

    Like ``LoadImaged(reader=DicomSeriesReader())``, minus MONAI's fallback readers (built on every
    construction) and minus the file name in the metadata, which stays out of anything we log.
    """

    def __init__(self, keys: str | Sequence[str], reader: DicomSeriesReader):
        super().__init__(keys)
        self.reader = reader
        self.channel_first = EnsureChannelFirst()

    def __call__(self, data: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(data)
        for key in self.key_iterator(out):
            array, meta = self.reader.get_data(self.reader.read(out[key]))
            image = MetaTensor.ensure_torch_and_prune_meta(array, meta)
            out[key] = self.channel_first(image, meta_dict=meta)
        return out


def deterministic_transforms(config: PipelineConfig) -> Compose:
    """Load + preprocess: the part that is the same every epoch and therefore cached."""
    pre = config.preprocess
    load = LoadDicomd(IMAGE, DicomSeriesReader(voi_window=pre.xray.voi_window, color=pre.xray.color,
                                               limits=scan_limits(config)))
    if config.data.kind == "xray":
        size = pre.xray.img_size
        low, high = pre.xray.percentiles
        return Compose([
            load,
            ScalePercentilesd(IMAGE, lower=low, upper=high),
            Resized(IMAGE, spatial_size=size, size_mode="longest", mode="area"),
            SpatialPadd(IMAGE, spatial_size=(size, size), mode="constant"),
            EnsureTyped(IMAGE, dtype=torch.float32, track_meta=True),
        ])
    mri = pre.mri
    return Compose([
        load,
        Orientationd(IMAGE, axcodes=mri.orientation, labels=None),  # axis labels from the RAS meta space
        Spacingd(IMAGE, pixdim=mri.spacing, mode="bilinear"),
        ResizeWithPadOrCropd(IMAGE, spatial_size=mri.img_size),
        NormalizeIntensityd(IMAGE, nonzero=True, channel_wise=True),
        EnsureTyped(IMAGE, dtype=torch.float32, track_meta=True),
    ])


def augment_transforms(config: PipelineConfig) -> Compose:
    """Train-time MONAI random transforms (no left-right flip unless ``augment.flip_lr``)."""
    aug = config.augment
    if not aug.enabled:
        return Compose([])
    spatial_dims = 2 if config.data.kind == "xray" else 3
    size = ((config.preprocess.xray.img_size,) * 2 if spatial_dims == 2 else config.preprocess.mri.img_size)
    angle = math.radians(aug.rotate_deg)
    transforms: list[Any] = [
        RandAffined(IMAGE, prob=aug.prob, rotate_range=(angle,) if spatial_dims == 2 else (angle,) * 3,
                    scale_range=(aug.scale,) * spatial_dims,
                    translate_range=tuple(aug.translate * s for s in size), padding_mode="zeros"),
    ]
    if aug.flip_lr:  # X-ray arrays are (rows, cols): columns run left-right; RAS volumes: axis 0 is L-R
        transforms.append(RandFlipd(IMAGE, prob=0.5, spatial_axis=1 if spatial_dims == 2 else 0))
    if aug.contrast_gamma != (1.0, 1.0):
        transforms.append(RandAdjustContrastd(IMAGE, prob=aug.prob, gamma=aug.contrast_gamma))
    if aug.noise_std > 0:
        transforms.append(RandGaussianNoised(IMAGE, prob=aug.prob, std=aug.noise_std))
    return Compose(transforms)


def preprocess_digest(config: PipelineConfig) -> str:
    """Hash of everything that changes the deterministic output (cache key part)."""
    relevant = {"kind": config.data.kind, "preprocess": config.preprocess.model_dump(mode="json", exclude={"cache_dir"}),
                "selection_color": config.preprocess.xray.color == "gray", "version": 1}  # keeps old cache keys
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


# ---- no-pickle cache --------------------------------------------------------------------------------
class FileDigests:
    """Content digest (BLAKE2b) per file, remembered per (path, size, mtime) so each file is read once."""

    def __init__(self) -> None:
        self._memo: dict[tuple[str, int, int], str] = {}

    def __call__(self, path: str) -> str:
        stat = os.stat(path)
        memo_key = (path, stat.st_size, stat.st_mtime_ns)
        if memo_key not in self._memo:
            digest = hashlib.blake2b(digest_size=16)
            with open(path, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
            self._memo[memo_key] = digest.hexdigest()
        return self._memo[memo_key]


def _save_entry(path: Path, image: MetaTensor) -> None:
    """Atomically write tensor + affine + small JSON meta as safetensors (no fsync: a cache is recomputable)."""
    meta = {"spatial_shape": [int(s) for s in image.meta.get("spatial_shape", image.shape[1:])]}
    tensors = {"image": image.as_tensor().contiguous(), "affine": torch.as_tensor(image.affine).double().contiguous()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"meta": json.dumps(meta)}), durable=False)


def _load_entry(path: Path) -> MetaTensor:
    with safe_open(str(path), framework="pt") as handle:
        meta = json.loads((handle.metadata() or {}).get("meta", "{}"))
        return MetaTensor(handle.get_tensor("image"), affine=handle.get_tensor("affine"), meta=meta)


class CachedDataset(torch.utils.data.Dataset):
    """Items are dicts with ``image`` (a DICOM file or list of files) and any other fields.

    ``deterministic`` runs once per distinct content and config and is stored under ``cache_dir``;
    ``random`` (augmentation) runs on every access. ``cache_dir=None`` disables the cache.
    """

    def __init__(self, items: Sequence[Mapping[str, Any]], deterministic: Callable, random: Callable | None,
                 cache_dir: Path | None, config_digest: str):
        self.items = list(items)
        self.deterministic = deterministic
        self.random = random
        self.cache_dir = cache_dir
        self.config_digest = config_digest
        self.digests = FileDigests()

    def __len__(self) -> int:
        return len(self.items)

    def cache_path(self, item: Mapping[str, Any]) -> Path:
        files = item[IMAGE] if isinstance(item[IMAGE], (list, tuple)) else [item[IMAGE]]
        key = hashlib.sha256(self.config_digest.encode())
        for f in files:  # order matters only through content: the reader sorts slices by position
            key.update(self.digests(str(f)).encode())
        digest = key.hexdigest()
        return self.cache_dir / digest[:2] / f"{digest}.safetensors"

    def _prepared(self, item: Mapping[str, Any]) -> dict[str, Any]:
        if self.cache_dir is None:
            return self.deterministic(dict(item))
        path = self.cache_path(item)
        out = {k: v for k, v in item.items() if k != IMAGE}
        if path.is_file():
            out[IMAGE] = _load_entry(path)
            return out
        result = self.deterministic(dict(item))
        _save_entry(path, result[IMAGE])
        return result

    def __getitem__(self, index: int) -> dict[str, Any]:
        data = self._prepared(self.items[index])
        return self.random(data) if self.random is not None else data


def manifest_items(manifest: pd.DataFrame, dicom_root: Path) -> list[dict[str, Any]]:
    """Dataset items from manifest rows: absolute file(s), label (float, -1 if unlabelled), ids."""
    items = []
    for row in manifest.itertuples(index=False):
        files = [str(Path(dicom_root, f)) for f in row.files]
        label = row.label
        items.append({
            IMAGE: files[0] if row.kind == "xray" else files,
            LABEL: float(label) if not pd.isna(label) else -1.0,
            "study_uid": row.study_uid,
            "series_uid": row.series_uid,
        })
    return items


def build_dataset(manifest: pd.DataFrame, config: PipelineConfig, *, train: bool,
                  cache: bool = True) -> CachedDataset:
    """The dataset for some manifest rows: deterministic part cached, augmentation when ``train``."""
    return CachedDataset(
        manifest_items(manifest, config.data.dicom_root),
        deterministic_transforms(config),
        augment_transforms(config) if train else None,
        config.cache_dir if cache else None,
        preprocess_digest(config),
    )
