"""Training machinery shared by the stages: devices, AMP, distributed helpers, seeding, loaders, inference."""

from __future__ import annotations

import contextlib
import math
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from monai.data import DataLoader
from monai.data.utils import set_rnd
from torch.utils.data import DistributedSampler, RandomSampler, SequentialSampler, WeightedRandomSampler

from pipelines.data.dataset import IMAGE, LABEL


# ---- devices, precision, distributed ----------------------------------------------------------------
@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_kind: str) -> Dist:
    """Join the process group that torchrun describes in the environment (no-op for a single process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    info = Dist(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
    return info


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def process_group(device_choice: str) -> Iterator[Dist]:
    """The torchrun process group (if any) for a stage on ``device_choice`` (auto|cpu|cuda), left on exit."""
    kind = "cuda" if device_choice == "cuda" or (device_choice == "auto" and torch.cuda.is_available()) else "cpu"
    info = init_distributed(kind)
    try:
        yield info
    finally:
        shutdown_distributed()


def resolve_device(choice: str, info: Dist) -> torch.device:
    """``auto`` picks CUDA when available; with several processes each takes its LOCAL_RANK GPU."""
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("train.device=cuda but no CUDA device is visible: use train.device=auto or cpu")
        torch.cuda.set_device(info.local_rank)
        return torch.device("cuda", info.local_rank)
    return torch.device("cpu")


def resolve_amp(choice: str, device: torch.device) -> torch.dtype | None:
    """``auto``: bf16 on GPUs that support it, else fp16; off on CPU. Explicit choices are honoured."""
    if choice == "off" or (choice == "auto" and device.type != "cuda"):
        return None
    if choice == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if choice == "bf16" else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def make_scaler(device: torch.device, dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """A GradScaler that is active only for fp16 (bf16 and fp32 need no loss scaling)."""
    return torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)


# ---- seeding ----------------------------------------------------------------------------------------
def epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7919) % (2**31)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(),
                             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def set_deterministic(enabled: bool) -> None:
    torch.use_deterministic_algorithms(enabled, warn_only=True)
    torch.backends.cudnn.benchmark = not enabled


# ---- loaders ----------------------------------------------------------------------------------------
def make_loader(dataset: torch.utils.data.Dataset, *, batch_size: int, num_workers: int, shuffle: bool,
                seed: int, epoch: int, info: Dist, sample_weights: list[float] | None = None,
                device: torch.device | None = None, drop_last: bool = False) -> DataLoader:
    """A loader whose order and augmentation depend only on (seed, epoch): resuming replays them exactly."""
    generator = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    if info.enabled:
        sampler: torch.utils.data.Sampler = DistributedSampler(dataset, info.world_size, info.rank,
                                                               shuffle=shuffle, seed=seed)
        sampler.set_epoch(epoch)
    elif shuffle and sample_weights is not None:
        sampler = WeightedRandomSampler(sample_weights, len(sample_weights), replacement=True, generator=generator)
    elif shuffle:
        sampler = RandomSampler(dataset, generator=generator)
    else:
        sampler = SequentialSampler(dataset)
    if num_workers == 0:  # MONAI seeds transforms in workers; in-process we seed them here
        set_rnd(dataset, epoch_seed(seed, epoch) + info.rank)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      generator=generator, pin_memory=device is not None and device.type == "cuda", drop_last=drop_last,
                      persistent_workers=False)


def batches(loader: DataLoader, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor, dict]]:
    for batch in loader:
        images = torch.as_tensor(batch[IMAGE]).to(device, non_blocking=True)
        labels = torch.as_tensor(batch[LABEL]).to(device, non_blocking=True).float()  # copy the pinned batch, cast there
        yield images, labels, batch


# ---- inference and reductions ---------------------------------------------------------------------
@torch.inference_mode()
def predict(model: torch.nn.Module, loader: DataLoader, device: torch.device, amp: torch.dtype | None,
            keys: tuple[str, ...] = ("study_uid", "series_uid")) -> dict[str, list]:
    """Scores (sigmoid of the logit), labels and id fields for every item of ``loader``."""
    model.eval()
    out: dict[str, list] = {"score": [], LABEL: [], **{k: [] for k in keys}}
    for images, labels, batch in batches(loader, device):
        with autocast(device, amp):
            logits = model(images)
        out["score"] += torch.sigmoid(logits.float().reshape(-1)).cpu().tolist()
        out[LABEL] += labels.cpu().tolist()
        for key in keys:
            out[key] += list(batch[key])
    return out


def gather_lists(local: dict[str, list], info: Dist) -> dict[str, list]:
    """Concatenate per-rank prediction lists on every rank (small objects: scores and ids)."""
    if not info.enabled:
        return local
    parts: list[dict[str, list] | None] = [None] * info.world_size
    dist.all_gather_object(parts, local)
    return {k: [v for part in parts for v in part[k]] for k in local}


def mean_across_ranks(total: float, count: int, info: Dist, device: torch.device) -> float:
    if info.enabled:
        t = torch.tensor([total, float(count)], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        total, count = float(t[0]), int(t[1])
    return total / max(count, 1)


def steps_per_epoch(n_batches: int, accumulate: int) -> int:
    return max(1, math.ceil(n_batches / accumulate))
