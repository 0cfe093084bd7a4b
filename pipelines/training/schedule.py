"""Learning-rate schedule of every training loop: linear warmup, then cosine decay, per optimizer step."""

from __future__ import annotations

from typing import Any

import torch


def make_scheduler(optimizer: torch.optim.Optimizer, epoch_steps: list[int], warmup_epochs: float,
                   eta_min: float, warmup_steps: int | None = None) -> Any:
    """Linear warmup then cosine decay to ``eta_min`` over ``sum(epoch_steps)``, stepped once per optimizer step.

    ``epoch_steps``: optimizer steps of each epoch (they differ when the batch size changes with the image size);
    ``warmup_steps``, when given, replaces ``warmup_epochs``.
    """
    total = sum(epoch_steps)
    if warmup_steps is None:
        whole = int(warmup_epochs)
        partial = epoch_steps[whole] if whole < len(epoch_steps) else 0
        warmup = sum(epoch_steps[:whole]) + (warmup_epochs - whole) * partial
    else:
        warmup = warmup_steps
    warmup = min(int(round(warmup)), total - 1)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total - warmup), eta_min=eta_min)
    if warmup <= 0:
        return cosine
    linear = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1e-3, end_factor=1.0, total_iters=warmup)
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [linear, cosine], milestones=[warmup])
