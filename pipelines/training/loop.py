"""The one optimisation loop of every training stage (train and pretrain).

:class:`TrainingLoop` owns what does not depend on the recipe: mixed precision with loss scaling, gradient
accumulation (DDP gradient sync only on the last micro-batch), clipping, ``torch.compile`` and DDP around the
training forward, the LR schedule stepped per optimizer step, an optional step budget, the progress bar and
the resumable part of the state (optimizer, scheduler, scaler, step). A recipe (``stages/train.py``'s
``Trainer``, ``stages/pretrain.py``'s ``Pretrainer``) owns its model, data, loss and what happens between
epochs, and calls :meth:`TrainingLoop.epoch` with its loss.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from pipelines import runtime

LossOf = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (images, labels) -> scalar loss


class TrainingLoop:
    """Optimizer steps over the batches of a loader for ``module`` (the parameters' owner).

    ``accumulate`` micro-batches make one optimizer step; ``grad_clip`` clips the global gradient norm;
    ``compile`` wraps the forward in ``torch.compile``; ``find_unused_parameters`` is passed to DDP.
    """

    def __init__(self, module: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, *,
                 device: torch.device, info: runtime.Dist, amp: str = "auto", accumulate: int = 1,
                 grad_clip: float | None = None, compile: bool = False, find_unused_parameters: bool = False):
        self.module, self.optimizer, self.scheduler = module, optimizer, scheduler
        self.device, self.info = device, info
        self.amp = runtime.resolve_amp(amp, device)
        self.scaler = runtime.make_scaler(device, self.amp)
        self.accumulate, self.grad_clip, self.compile = accumulate, grad_clip, compile
        self.find_unused_parameters = find_unused_parameters
        self.step = 0
        self.wrap(module)

    def wrap(self, forward: nn.Module) -> None:
        """Put DDP (when distributed) and compile around the training forward: ``module`` or a wrapper of it.
        Call again after a change of parameter shapes (DDP's buckets hold the old ones)."""
        self.model: nn.Module = forward
        if self.info.enabled:
            self.model = nn.parallel.DistributedDataParallel(
                forward, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=self.find_unused_parameters)
        if self.compile:
            self.model = torch.compile(self.model)

    def autocast(self) -> Any:
        return runtime.autocast(self.device, self.amp)

    # ---- one epoch ----------------------------------------------------------------------------------
    def epoch(self, loader: Any, loss_of: LossOf, *, desc: str, progress: bool, budget: int | None = None,
              prepare: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, float]:
        """One pass over ``loader``: ``loss_of(images, labels)`` per micro-batch (under autocast; ``prepare``
        runs on the images before, outside it), an optimizer step per ``accumulate`` micro-batches (and at the
        end), stopping once ``budget`` optimizer steps are reached. Returns the mean loss over every rank,
        images per second and the learning rate."""
        self.model.train()
        total, count = 0.0, 0
        start = time.perf_counter()
        bar = tqdm(total=len(loader), desc=desc, unit="batch", disable=not (progress and self.info.is_main),
                   leave=False)
        self.optimizer.zero_grad(set_to_none=True)
        for i, (images, labels, _) in enumerate(runtime.batches(loader, self.device)):
            last_of_group = (i + 1) % self.accumulate == 0 or i + 1 == len(loader)
            sync = last_of_group or not self.info.enabled
            context = self.model.no_sync() if not sync and hasattr(self.model, "no_sync") else nullcontext()
            if prepare is not None:
                images = prepare(images)
            with context, self.autocast():
                loss = loss_of(images, labels)
            self.scaler.scale(loss / self.accumulate).backward()
            if last_of_group:
                self.optimizer_step()
            total += float(loss.detach()) * len(images)
            count += len(images)
            bar.update(1)
            bar.set_postfix(loss=f"{total / max(count, 1):.4f}")
            if budget is not None and self.step >= budget:  # a step budget: the last epoch ends at it
                break
        bar.close()
        elapsed = time.perf_counter() - start
        return {"loss": runtime.mean_across_ranks(total, count, self.info, self.device),
                "images_per_sec": count * self.info.world_size / elapsed,
                "lr": self.optimizer.param_groups[0]["lr"]}

    def optimizer_step(self) -> None:
        """Unscale and clip (when asked), step, update the loss scale, clear gradients, step the schedule."""
        if self.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.module.parameters(), self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1

    # ---- state --------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The loop's part of a checkpoint (the recipe adds its model, RNG and history)."""
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "step": self.step}

    def restore(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.step = state.get("step", 0)
