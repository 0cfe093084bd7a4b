"""Where each stage writes under ``output.dir``: one home for the run folder's layout."""

from __future__ import annotations

from pathlib import Path

from pipelines.config import PipelineConfig


def train_dir(config: PipelineConfig) -> Path:
    """Train stage: checkpoints, the trained model, history."""
    return config.output.dir / "train"


def evaluate_dir(config: PipelineConfig) -> Path:
    """Evaluate stage: test-split scores, metrics, plots."""
    return config.output.dir / "evaluate"


def pretrain_dir(config: PipelineConfig) -> Path:
    """Pretrain stage: MAE checkpoints and the encoder."""
    return config.output.dir / "pretrain"
