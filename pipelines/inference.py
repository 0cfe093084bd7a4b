"""Scoring series with a trained model, and study scores from series scores (evaluate, pyfunc, score)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch
from torch import nn

from . import engine
from .config import PipelineConfig
from .data import IMAGE, LABEL, CachedDataset, deterministic_transforms, preprocess_digest
from .dicom.scan import Series


def series_items(series: Sequence[Series]) -> list[dict[str, Any]]:
    """Dataset items for scanned series (no labels)."""
    return [{IMAGE: s.files[0] if s.kind == "xray" else list(s.files), LABEL: -1.0,
             "study_uid": s.study_uid, "series_uid": s.series_uid} for s in series]


def score_items(model: nn.Module, items: list[dict[str, Any]], config: PipelineConfig, *, device: torch.device,
                batch_size: int = 16, num_workers: int = 0, cache: bool = True) -> pd.DataFrame:
    """Series-level scores: columns study_uid, series_uid, label, score."""
    dataset = CachedDataset(items, deterministic_transforms(config), None,
                            config.cache_dir if cache else None, preprocess_digest(config))
    loader = engine.make_loader(dataset, batch_size=batch_size, num_workers=num_workers, shuffle=False,
                                seed=0, epoch=0, info=engine.Dist(), device=device)
    amp = engine.resolve_amp("auto", device)
    return pd.DataFrame(engine.predict(model.to(device), loader, device, amp))


def aggregate_studies(series_scores: pd.DataFrame, how: str = "max") -> pd.DataFrame:
    """One row per study: its score (max or mean over series), label, and number of series."""
    grouped = series_scores.groupby("study_uid", sort=True)
    out = grouped.agg(score=("score", how), label=("label", "first"), n_series=("series_uid", "nunique"))
    return out.reset_index()


