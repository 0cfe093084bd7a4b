"""The supervised training recipe: a classifier (ViT, hybrid or CNN) on the manifest's labelled splits.

:class:`Trainer` owns what is particular to it: the data (train split, plus the unlabelled series a distilled
student also learns from), the loss (class balance, distillation), the epoch plan (step budget, progressive
sizes), validation at the full size, the best-model rule and early stopping, and its checkpoint; the
optimisation itself runs in :class:`pipelines.training.loop.TrainingLoop`. ``fit`` is the recipe's loop.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from medvit import VisionTransformer, resample_pos_embed
from pipelines import runtime
from pipelines.config import ConfigError, PipelineConfig
from pipelines.data.dataset import build_dataset
from pipelines.data.manifest import load_manifest, manifest_path
from pipelines.data.splits import UNLABELLED
from pipelines.tracking import tracking_uri
from pipelines.training import techniques
from pipelines.training.checkpoint import save_state
from pipelines.training.early_stopping import EarlyStopping
from pipelines.training.loop import TrainingLoop
from pipelines.training.modeling import (
    build_model,
    input_size,
    is_vit,
    model_kwargs,
    param_groups,
    save_model,
)
from pipelines.training.schedule import make_scheduler


@dataclass
class TrainResult:
    best_path: str
    last_path: str
    best_epoch: int
    best_val_auroc: float
    epochs_run: int
    steps_run: int
    stopped_early: bool
    run_id: str | None
    history: list[dict[str, float]]


def load_splits(config: PipelineConfig) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    manifest = load_manifest(config)
    labelled = manifest[manifest["label"].notna()]
    train, val = labelled[labelled["split"] == "train"], labelled[labelled["split"] == "val"]
    if train.empty or train["label"].nunique() < 2:
        raise ConfigError(f"the train split of '{manifest_path(config)}' needs normal and abnormal studies: "
                          "label more studies")
    return manifest, train, val


def distill_unlabelled_rows(manifest: pd.DataFrame, config: PipelineConfig) -> pd.DataFrame:
    """The unlabelled series a distilled student also trains on (``train.distill.unlabelled``), else none.

    Only the manifest's ``unlabelled`` split: validation and test series never reach training, labelled or not.
    """
    spec = config.train.distill
    if spec is None or not spec.unlabelled:
        return manifest.iloc[:0]
    rows = manifest[manifest["split"] == UNLABELLED]  # ingest puts exactly the studies without a label here
    if rows.empty:
        raise ConfigError("train.distill.unlabelled: the manifest has no unlabelled series; add unlabelled "
                          "studies under data.dicom_root and re-run ingest, or set train.distill.unlabelled=false")
    if config.train.class_balance == "sampler":
        raise ConfigError("train.distill.unlabelled cannot weight unlabelled series by class: use "
                          "train.class_balance=pos_weight")
    return rows


def safe_auroc(labels: list[float], scores: list[float]) -> float:
    return float(roc_auc_score(labels, scores)) if len(set(labels)) == 2 else float("nan")


def val_metrics(model: nn.Module, loader: Any, loss_fn: nn.Module, device: torch.device,
                amp: torch.dtype | None, info: runtime.Dist) -> dict[str, float]:
    preds = runtime.gather_lists(runtime.predict(model, loader, device, amp), info)
    frame = pd.DataFrame(preds).drop_duplicates("series_uid")  # DistributedSampler pads with repeats
    scores = torch.tensor(frame["score"].to_numpy()).clamp(1e-7, 1 - 1e-7)
    logits = torch.log(scores) - torch.log1p(-scores)
    loss = float(loss_fn(logits, torch.tensor(frame["label"].to_numpy(), dtype=torch.float32))) if len(frame) else float("nan")
    return {"val_auroc": safe_auroc(frame["label"].tolist(), frame["score"].tolist()), "val_loss": loss}


class Trainer:
    """Holds everything an epoch needs; ``state()`` / ``restore()`` make the run resumable."""

    def __init__(self, config: PipelineConfig, info: runtime.Dist, device: torch.device):
        self.config, self.info, self.device = config, info, device
        self.manifest, train_rows, val_rows = load_splits(config)
        unlabelled_rows = distill_unlabelled_rows(self.manifest, config)
        self.n_unlabelled = len(unlabelled_rows)
        train_set_rows = pd.concat([train_rows, unlabelled_rows]) if len(unlabelled_rows) else train_rows
        self.train_set = build_dataset(train_set_rows, config, train=True)
        self.val_set = build_dataset(val_rows, config, train=False) if len(val_rows) else None
        labels = train_rows["label"].astype(int).to_numpy()
        n_pos, n_neg = int(labels.sum()), int(len(labels) - labels.sum())
        balance = config.train.class_balance
        pos_weight = torch.tensor([n_neg / n_pos]) if balance == "pos_weight" else None
        self.sample_weights = ([1 / n_pos if y else 1 / n_neg for y in labels]
                               if balance == "sampler" and not info.enabled else None)
        self.loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight.to(device) if pos_weight is not None else None)
        self.val_loss_fn = nn.BCEWithLogitsLoss()
        self.kwargs = model_kwargs(config)
        if config.train.distill is not None:
            if config.model.arch not in ("vit", "hybrid"):
                raise ConfigError("train.distill needs a ViT student (model.arch vit or hybrid)")
            self.kwargs["distilled"] = True
        runtime.seed_everything(config.train.seed)
        self.module = build_model(self.kwargs).to(device)
        if config.train.init:
            techniques.load_init(self.module, config.train.init, tracking_uri(config))
        if hasattr(self.module, "set_grad_checkpointing"):
            self.module.set_grad_checkpointing(config.model.grad_checkpointing)
        self.teacher = techniques.load_teacher(config, device) if config.train.distill is not None else None
        self.full_size = tuple(input_size(config))
        self.sizes, epoch_steps = self._epoch_plan()
        self.n_epochs, self.budget = len(self.sizes), sum(epoch_steps)
        techniques.check_patch_fit(self.module, self.sizes)
        t = config.train
        groups = (techniques.layer_decay_groups(self.module, t.weight_decay, t.lr, t.layer_decay) if t.layer_decay
                  else param_groups(self.module, t.weight_decay))
        optimizer = torch.optim.AdamW(groups, lr=t.lr)
        self.loop = TrainingLoop(self.module, optimizer,
                                 make_scheduler(optimizer, epoch_steps, t.warmup_epochs, t.min_lr, t.warmup_steps),
                                 device=device, info=info, amp=t.amp, accumulate=t.accumulate, grad_clip=t.grad_clip,
                                 compile=t.compile)
        self._wrap()
        self.epoch = 0
        self.best_auroc, self.best_epoch = -math.inf, -1
        self.stopper = EarlyStopping(t)
        self.history: list[dict[str, float]] = []
        self.run_id: str | None = None

    def _epoch_plan(self) -> tuple[list[tuple[int, ...]], list[int]]:
        """Input size and optimizer steps of every epoch. With ``train.steps``: as many epochs as that budget
        needs, the last one cut short, so the steps add up to it exactly."""
        config, t = self.config, self.config.train

        def steps_at(size: tuple[int, ...]) -> int:
            return runtime.steps_per_epoch(self._n_batches(techniques.epoch_batch_size(config, size)), t.accumulate)

        if t.steps is None:
            sizes = techniques.epoch_sizes(config)
            return sizes, [steps_at(size) for size in sizes]
        staged = sum(stage.epochs for stage in t.progressive or [])
        sizes, steps = [], []
        for size in techniques.epoch_sizes(config, staged + math.ceil(t.steps / steps_at(self.full_size))):
            if sum(steps) >= t.steps:
                break
            sizes.append(size)
            steps.append(min(steps_at(size), t.steps - sum(steps)))
        if len(sizes) <= staged and staged:
            raise ConfigError(f"train.steps={t.steps} ends within the train.progressive stages: raise train.steps "
                              "or shorten the stages (the last epochs must run at the full size)")
        return sizes, steps

    def _drop_last(self, batch_size: int) -> bool:
        """Drop a last batch of one image for CNNs: BatchNorm cannot train on it (ViTs keep every batch)."""
        per_rank = math.ceil(len(self.train_set) / self.info.world_size)
        return per_rank > 1 and per_rank % batch_size == 1 and not is_vit(self.module)

    def _n_batches(self, batch_size: int) -> int:
        per_rank = math.ceil(len(self.train_set) / self.info.world_size)
        return per_rank // batch_size if self._drop_last(batch_size) else math.ceil(per_rank / batch_size)

    @property
    def step(self) -> int:
        """Optimizer steps taken so far."""
        return self.loop.step

    @property
    def amp(self) -> torch.dtype | None:
        return self.loop.amp

    @property
    def model(self) -> nn.Module:
        """The training forward as the loop runs it (DDP, compile, distillation)."""
        return self.loop.model

    def _wrap(self) -> None:
        """The training forward: the model, or its distillation forward (DDP and compile: the loop's)."""
        self.loop.wrap(techniques.DistillForward(self.module) if self.teacher is not None else self.module)

    def set_size(self, size: tuple[int, ...]) -> None:
        """Progressive resizing: a ViT's position embeddings follow the input size (same Parameters)."""
        module = self.module
        if not isinstance(module, VisionTransformer) or tuple(module.img_size) == tuple(size):
            return
        old_grid = module.grid_size
        module.set_img_size(size)
        state = self.loop.optimizer.state.get(module.pos_embed, {}) if hasattr(self, "loop") else {}
        for key in ("exp_avg", "exp_avg_sq"):  # AdamW moments of a learned embedding follow its grid
            if key in state:
                moved = resample_pos_embed(state[key], module.grid_size, old_grid, module.num_prefix_tokens)
                state[key] = moved.clamp_min(0) if key == "exp_avg_sq" else moved
        if self.info.enabled:  # DDP's buckets hold the old shapes
            self._wrap()

    def full_size_module(self) -> nn.Module:
        """The model at the registered (full) size: a resized copy during a progressive stage."""
        if not isinstance(self.module, VisionTransformer) or tuple(self.module.img_size) == self.full_size:
            return self.module
        full = copy.deepcopy(self.module)
        full.set_img_size(self.full_size)
        return full

    # ---- state ------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "model": self.module.state_dict(), **self.loop.state(),
            "rng": runtime.rng_state(), "epoch": self.epoch, "history": self.history,
            "best_auroc": self.best_auroc, "best_epoch": self.best_epoch, "early_stopping": self.stopper.state(),
            "run_id": self.run_id, "model_kwargs": json.dumps(self.kwargs),
            "img_size": json.dumps(list(getattr(self.module, "img_size", self.full_size))),
        }

    def restore(self, state: dict[str, Any]) -> None:
        if json.loads(state["model_kwargs"]) != self.kwargs:
            raise ConfigError("the checkpoint was trained with another model config: resume with the same "
                              "config, or train without --resume into a new output.dir")
        if "img_size" in state:  # a progressive run saved during a smaller stage
            self.set_size(tuple(json.loads(state["img_size"])))
        self.module.load_state_dict(state["model"])
        self.loop.restore(state)
        runtime.set_rng_state(state["rng"])
        self.epoch, self.history = state["epoch"], state["history"]
        self.best_auroc, self.best_epoch = state["best_auroc"], state["best_epoch"]
        if "early_stopping" in state:  # older checkpoints: the patience count starts afresh
            self.stopper.restore(state["early_stopping"])
        self.run_id = state["run_id"]

    # ---- one epoch ----------------------------------------------------------------------------------
    def train_epoch(self, progress: bool) -> dict[str, float]:
        cfg = self.config.train
        size = self.sizes[self.epoch]
        self.set_size(size)
        batch_size = techniques.epoch_batch_size(self.config, size)
        loader = runtime.make_loader(self.train_set, batch_size=batch_size, num_workers=cfg.num_workers, shuffle=True,
                                    seed=cfg.seed, epoch=self.epoch, info=self.info, sample_weights=self.sample_weights,
                                    device=self.device, drop_last=self._drop_last(batch_size))
        torch.manual_seed(runtime.epoch_seed(cfg.seed, self.epoch) + 1 + self.info.rank)  # dropout, drop path
        metrics = self.loop.epoch(loader, self._loss, desc=f"epoch {self.epoch + 1}/{self.n_epochs}",
                                  progress=progress, budget=self.budget,
                                  prepare=lambda images: techniques.resize_batch(images, size))
        return {"train_loss": metrics.pop("loss"), **metrics}

    def _loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.teacher is None:
            return self.loss_fn(self.model(images).float().reshape(-1), labels)
        cls_logits, dist_logits = self.model(images)
        return self.teacher.loss(cls_logits.float().reshape(-1), dist_logits.float().reshape(-1), labels,
                                 self.teacher.logits(images), self.loss_fn)

    def validate(self) -> dict[str, float]:
        if self.val_set is None:
            return {"val_auroc": float("nan"), "val_loss": float("nan")}
        cfg = self.config.train
        loader = runtime.make_loader(self.val_set, batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                                    shuffle=False, seed=cfg.seed, epoch=self.epoch, info=self.info, device=self.device)
        # Always at the full size: the model is judged (and the best one kept) as it will be registered,
        # also during a progressive stage (a copy with position embeddings resampled to the full grid).
        return val_metrics(self.full_size_module(), loader, self.val_loss_fn, self.device, self.amp, self.info)

    # ---- the recipe's loop ----------------------------------------------------------------------
    def improved(self, metrics: dict[str, float]) -> bool:
        """Whether this epoch's model replaces the kept one: a higher validation AUROC, or the same AUROC with a
        lower validation loss (a small validation split often ties, e.g. at 1.0, and the first tie is rarely the
        best); always under ``train.select: last``."""
        auroc = metrics["val_auroc"]
        if math.isnan(auroc) or self.config.train.select == "last":  # no validation data, or the rule keeps the latest
            return True
        if auroc != self.best_auroc:
            return auroc > self.best_auroc
        best = next((h for h in self.history if h["epoch"] == self.best_epoch), {})
        return metrics["val_loss"] < best.get("val_loss", math.inf)

    def fit(self, out: Path, run: Any, progress: bool = False) -> TrainResult:
        """Train until the planned epochs end or early stopping fires, from wherever ``restore`` left off.

        Every epoch: train, validate, keep the best model (at the full size) in ``out/best.safetensors`` and
        every ``train.save_every``-th in ``out/epochs/``, the whole state in ``out/last.safetensors`` and the
        metrics in ``run`` (``log_metrics``; the main rank writes)."""
        last_path, best_path = out / "last.safetensors", out / "best.safetensors"
        stopped_early, is_main = False, self.info.is_main
        while self.epoch < self.n_epochs:
            started = time.perf_counter()
            metrics = {**self.train_epoch(progress), **self.validate()}
            metrics["epoch_seconds"] = time.perf_counter() - started
            self.epoch += 1
            self.history.append({"epoch": self.epoch, **metrics})
            saves = []
            if self.improved(metrics):
                self.best_auroc = metrics["val_auroc"] if not math.isnan(metrics["val_auroc"]) else self.best_auroc
                self.best_epoch = self.epoch
                saves.append(best_path)
            stop = self.stopper.update(metrics, self.step)
            if self.config.train.save_every and self.epoch % self.config.train.save_every == 0:
                saves.append(epoch_path(out, self.epoch))
            if is_main and saves:
                full = self.full_size_module()  # one full-size copy per epoch, also during a progressive stage
                for path in saves:
                    save_model(path, full, self.kwargs, {"epoch": self.epoch, "val_auroc": metrics["val_auroc"]})
            if is_main:
                run.log_metrics(metrics, step=self.epoch)
                save_state(last_path, self.state())
                if progress:
                    print(f"epoch {self.epoch}: " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
            if stop:
                stopped_early = True
                break
        return TrainResult(str(best_path), str(last_path), self.best_epoch,
                           self.best_auroc if self.best_auroc > -math.inf else float("nan"),
                           self.epoch, self.step, stopped_early, self.run_id, self.history)


def epoch_path(out: Path, epoch: int) -> Path:
    """Where ``train.save_every`` keeps the model of ``epoch`` (1-based)."""
    return out / "epochs" / f"epoch_{epoch:03d}.safetensors"
