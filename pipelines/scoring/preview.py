"""What the model sees: the preprocessed image (X-ray) or a slice montage (MRI) of each series, as one PNG."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from pipelines.config import PipelineConfig, validate_config
from pipelines.data.dataset import IMAGE, deterministic_transforms
from pipelines.data.scan_settings import selection_rules
from pipelines.dicom.scan import ScanResult, Series, scan
from pipelines.scoring.predictor import series_item


def montage(volume: np.ndarray, n_slices: int = 16) -> np.ndarray:
    """(X, Y, Z) RAS volume -> a grid of ``n_slices`` axial slices, shown radiologically (anterior up)."""
    z = volume.shape[2]
    picks = np.linspace(0, z - 1, min(n_slices, z)).round().astype(int)
    tiles = [np.rot90(volume[:, :, k]) for k in picks]
    cols = int(np.ceil(np.sqrt(len(tiles))))
    rows = int(np.ceil(len(tiles) / cols))
    h, w = tiles[0].shape
    grid = np.zeros((rows * h, cols * w), dtype=np.float32)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        grid[r * h:(r + 1) * h, c * w:(c + 1) * w] = tile
    return grid


def series_picture(series: Series, config: PipelineConfig) -> np.ndarray:
    """The preprocessed tensor of one series as a 2D picture."""
    image = deterministic_transforms(config)(series_item(series))[IMAGE]
    array = torch.as_tensor(image)[0].float().numpy()
    return array if series.kind == "xray" else montage(array)


def default_config(path: Path, kind: str) -> PipelineConfig:
    return validate_config({"data": {"dicom_root": str(path), "kind": kind}}, "preview")


def render_preview(path: Path, out: Path, config: PipelineConfig | None = None,
                   max_series: int = 8) -> tuple[int, ScanResult]:
    """Write ``out`` (PNG) with up to ``max_series`` preprocessed series found under ``path``.

    Titles show modality, series number within the preview and the preprocessed shape, nothing identifying.
    Returns the number of series drawn and the scan result (for rejects).
    """
    # every kind is shown (series of the config's other kind with default preprocessing)
    rules = dataclasses.replace(selection_rules(config or default_config(path, "xray")), kinds=("xray", "mri"))
    scanned = scan([path], rules)
    series = scanned.series[:max_series]
    if not series:
        return 0, scanned
    pictures, titles = [], []
    for i, s in enumerate(series, 1):
        cfg = config if config and config.data.kind == s.kind else default_config(path, s.kind)
        picture = series_picture(s, cfg)
        pictures.append(picture)
        titles.append(f"#{i} {s.modality} {s.kind} -> {'x'.join(str(d) for d in picture.shape)}")
    cols = min(4, len(pictures))
    rows = int(np.ceil(len(pictures) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, picture, title in zip(axes.flat, pictures, titles, strict=False):
        ax.imshow(picture, cmap="gray")
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return len(pictures), scanned
