"""Early stopping on a smoothed validation criterion, never before ``train.min_steps`` optimizer steps.

Separate from model selection (the kept model is still the best validation AUROC, ties by lower loss):
this only decides when more training stops paying.
"""

from __future__ import annotations

import math
from typing import Any

from pipelines.config import TrainConfig


class EarlyStopping:
    """Counts validations whose EMA-smoothed criterion did not beat the best so far."""

    def __init__(self, train: TrainConfig):
        self.patience, self.min_steps = train.early_stopping_patience, train.min_steps
        self.metric, self.smoothing = train.early_stopping_metric, train.early_stopping_smoothing
        self.ema: float | None = None
        self.best = math.inf
        self.bad = 0

    def criterion(self, metrics: dict[str, float]) -> float:
        """Lower is better: the validation loss, or minus the AUROC."""
        return metrics["val_loss"] if self.metric == "loss" else -metrics["val_auroc"]

    def update(self, metrics: dict[str, float], step: int) -> bool:
        """Record one validation after ``step`` optimizer steps; True when training should stop now."""
        value = self.criterion(metrics)
        if math.isnan(value):  # no validation data: nothing to stop on
            return False
        # s + (1 - a)(x - s): an unchanged value leaves the average exactly unchanged
        self.ema = value if self.ema is None else self.ema + (1 - self.smoothing) * (value - self.ema)
        if self.ema < self.best:
            self.best, self.bad = self.ema, 0
        else:
            self.bad += 1
        return bool(self.patience) and self.bad >= self.patience and step >= self.min_steps

    def state(self) -> dict[str, Any]:
        return {"ema": self.ema, "best": self.best, "bad": self.bad}

    def restore(self, state: dict[str, Any]) -> None:
        self.ema, self.best, self.bad = state["ema"], state["best"], state["bad"]
