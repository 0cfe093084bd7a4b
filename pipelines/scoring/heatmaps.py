"""Attention-rollout heatmaps over the preprocessed image, as PNGs a person can look at.

X-ray: the model input with the heatmap blended over it. MRI: a slice montage of the volume with the heatmap
of each slice. Pictures are enlarged by a whole factor (nearest neighbour) so the short side is at least
``MIN_SIDE`` pixels; nothing but pixels is written (no titles, no names).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import torch

from pipelines.files import atomic_write
from pipelines.scoring.preview import montage

MIN_SIDE = 256
ALPHA = 0.45


def heatmap_batch(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor | None:
    """Rollout heatmaps (B, *spatial) in [0, 1] for a medvit ViT; None for networks without attention."""
    import medvit

    if not isinstance(model, medvit.VisionTransformer):
        return None
    return medvit.rollout_heatmap(model, images.float()).cpu()


def overlay(image: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """RGB uint8 picture: the gray image (min-max scaled) with the heatmap blended in colour."""
    low, high = float(image.min()), float(image.max())
    gray = (image - low) / (high - low) if high > low else np.zeros_like(image)
    colours = matplotlib.colormaps["inferno"](np.clip(heat, 0.0, 1.0))[..., :3]
    blended = (1 - ALPHA) * gray[..., None] + ALPHA * colours
    return (np.clip(blended, 0.0, 1.0) * 255).round().astype(np.uint8)


def picture(image: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """The overlay picture of one input: ``image``/``heat`` are (H, W) for X-ray or (X, Y, Z) RAS for MRI."""
    if image.ndim == 3:
        image, heat = montage(image), montage(heat)
    rgb = overlay(image, heat)
    scale = max(1, -(-MIN_SIDE // min(rgb.shape[:2])))
    return np.repeat(np.repeat(rgb, scale, axis=0), scale, axis=1)


def picture_size(spatial: tuple[int, ...], n_slices: int = 16) -> tuple[int, int]:
    """(height, width) of the PNG written for an input of this spatial size (what the tests check)."""
    if len(spatial) == 3:
        x, y, z = spatial
        tiles = min(n_slices, z)
        cols = int(np.ceil(np.sqrt(tiles)))
        rows = int(np.ceil(tiles / cols))
        h, w = rows * y, cols * x  # slices are rotated 90 degrees in the montage
    else:
        h, w = spatial
    scale = max(1, -(-MIN_SIDE // min(h, w)))
    return h * scale, w * scale


def write_heatmap(path: Path, image: np.ndarray, heat: np.ndarray) -> None:
    """Write the overlay PNG atomically (a killed run never leaves half a picture)."""
    import matplotlib.pyplot as plt

    rgb = picture(image, heat)
    atomic_write(path, lambda tmp: plt.imsave(tmp, rgb, format="png"), durable=False)
