"""Train: the ViT on the manifest's train split, validated each epoch, checkpointed atomically, resumable.

Reads ``OUTPUT/manifest.parquet`` (from ingest). With ``train.plan: auto`` the keys the config leaves unset
come from the dataset's plan (``OUTPUT/plan.json``). Writes ``OUTPUT/train/last.safetensors`` (full training
state, every epoch), ``OUTPUT/train/best.safetensors`` (weights of the best validation AUROC, with the
model's constructor arguments) and ``OUTPUT/train/summary.json``. Runs under torchrun as DDP.
"""

from __future__ import annotations

import copy
import json
import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from sklearn.metrics import roc_auc_score
from torch import nn
from tqdm import tqdm

from medvit import VisionTransformer, resample_pos_embed

from .. import engine, planning, recipes
from ..checkpoint import load_state, save_state
from ..config import ConfigError, PipelineConfig
from ..data import build_dataset
from ..early_stopping import EarlyStopping
from ..manifest import load_manifest, manifest_path
from ..modeling import build_model, input_size, is_vit, model_kwargs, param_groups, save_model
from ..splits import UNLABELLED
from ..tracking import stage_run
from .ingest import manifest_digest


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


def train_dir(config: PipelineConfig) -> Path:
    return config.output.dir / "train"


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
                amp: torch.dtype | None, info: engine.Dist) -> dict[str, float]:
    preds = engine.gather_lists(engine.predict(model, loader, device, amp), info)
    frame = pd.DataFrame(preds).drop_duplicates("series_uid")  # DistributedSampler pads with repeats
    scores = torch.tensor(frame["score"].to_numpy()).clamp(1e-7, 1 - 1e-7)
    logits = torch.log(scores) - torch.log1p(-scores)
    loss = float(loss_fn(logits, torch.tensor(frame["label"].to_numpy(), dtype=torch.float32))) if len(frame) else float("nan")
    return {"val_auroc": safe_auroc(frame["label"].tolist(), frame["score"].tolist()), "val_loss": loss}


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


class Trainer:
    """Holds everything an epoch needs; ``state()`` / ``restore()`` make the run resumable."""

    def __init__(self, config: PipelineConfig, info: engine.Dist, device: torch.device):
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
        engine.seed_everything(config.train.seed)
        self.module = build_model(self.kwargs).to(device)
        if config.train.init:
            recipes.load_init(self.module, config.train.init)
        if hasattr(self.module, "set_grad_checkpointing"):
            self.module.set_grad_checkpointing(config.model.grad_checkpointing)
        self.teacher = recipes.load_teacher(config, device) if config.train.distill is not None else None
        self.full_size = tuple(input_size(config))
        self.sizes, epoch_steps = self._epoch_plan()
        self.n_epochs, self.budget = len(self.sizes), sum(epoch_steps)
        recipes.check_patch_fit(self.module, self.sizes)
        self._wrap()
        self.amp = engine.resolve_amp(config.train.amp, device)
        self.scaler = engine.make_scaler(device, self.amp)
        t = config.train
        groups = (recipes.layer_decay_groups(self.module, t.weight_decay, t.lr, t.layer_decay) if t.layer_decay
                  else param_groups(self.module, t.weight_decay))
        self.optimizer = torch.optim.AdamW(groups, lr=t.lr)
        self.scheduler = make_scheduler(self.optimizer, epoch_steps, t.warmup_epochs, t.min_lr, t.warmup_steps)
        self.epoch, self.step = 0, 0
        self.best_auroc, self.best_epoch = -math.inf, -1
        self.stopper = EarlyStopping(t)
        self.history: list[dict[str, float]] = []
        self.run_id: str | None = None

    def _epoch_plan(self) -> tuple[list[tuple[int, ...]], list[int]]:
        """Input size and optimizer steps of every epoch. With ``train.steps``: as many epochs as that budget
        needs, the last one cut short, so the steps add up to it exactly."""
        config, t = self.config, self.config.train

        def steps_at(size: tuple[int, ...]) -> int:
            return engine.steps_per_epoch(self._n_batches(recipes.epoch_batch_size(config, size)), t.accumulate)

        if t.steps is None:
            sizes = recipes.epoch_sizes(config)
            return sizes, [steps_at(size) for size in sizes]
        staged = sum(stage.epochs for stage in t.progressive or [])
        sizes, steps = [], []
        for size in recipes.epoch_sizes(config, staged + math.ceil(t.steps / steps_at(self.full_size))):
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

    def _wrap(self) -> None:
        """The training forward: DDP and compile around the model (or its distillation forward)."""
        train_module: nn.Module = recipes.DistillForward(self.module) if self.teacher is not None else self.module
        self.model = train_module
        if self.info.enabled:
            self.model = nn.parallel.DistributedDataParallel(
                train_module, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if self.config.train.compile:
            self.model = torch.compile(self.model)

    def set_size(self, size: tuple[int, ...]) -> None:
        """Progressive resizing: a ViT's position embeddings follow the input size (same Parameters)."""
        module = self.module
        if not isinstance(module, VisionTransformer) or tuple(module.img_size) == tuple(size):
            return
        old_grid = module.grid_size
        module.set_img_size(size)
        state = self.optimizer.state.get(module.pos_embed, {}) if hasattr(self, "optimizer") else {}
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
            "model": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "rng": engine.rng_state(), "epoch": self.epoch, "step": self.step, "history": self.history,
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
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        engine.set_rng_state(state["rng"])
        self.epoch, self.step, self.history = state["epoch"], state["step"], state["history"]
        self.best_auroc, self.best_epoch = state["best_auroc"], state["best_epoch"]
        if "early_stopping" in state:  # older checkpoints: the patience count starts afresh
            self.stopper.restore(state["early_stopping"])
        self.run_id = state["run_id"]

    # ---- one epoch ----------------------------------------------------------------------------------
    def train_epoch(self, progress: bool) -> dict[str, float]:
        cfg = self.config.train
        size = self.sizes[self.epoch]
        self.set_size(size)
        batch_size = recipes.epoch_batch_size(self.config, size)
        loader = engine.make_loader(self.train_set, batch_size=batch_size, num_workers=cfg.num_workers, shuffle=True,
                                    seed=cfg.seed, epoch=self.epoch, info=self.info, sample_weights=self.sample_weights,
                                    device=self.device, drop_last=self._drop_last(batch_size))
        torch.manual_seed(engine.epoch_seed(cfg.seed, self.epoch) + 1 + self.info.rank)  # dropout, drop path
        self.model.train()
        total, count, seen = 0.0, 0, 0
        start = time.perf_counter()
        bar = tqdm(total=len(loader), desc=f"epoch {self.epoch + 1}/{self.n_epochs}", unit="batch",
                   disable=not (progress and self.info.is_main), leave=False)
        self.optimizer.zero_grad(set_to_none=True)
        for i, (images, labels, _) in enumerate(engine.batches(loader, self.device)):
            last_of_group = (i + 1) % cfg.accumulate == 0 or i + 1 == len(loader)
            sync = last_of_group or not self.info.enabled
            context = self.model.no_sync() if not sync and hasattr(self.model, "no_sync") else nullcontext()
            images = recipes.resize_batch(images, size)
            with context, engine.autocast(self.device, self.amp):
                loss = self._loss(images, labels)
            self.scaler.scale(loss / cfg.accumulate).backward()
            if last_of_group:
                self._optimizer_step()
            total += float(loss.detach()) * len(labels)
            count += len(labels)
            seen += len(labels)
            bar.update(1)
            bar.set_postfix(loss=f"{total / max(count, 1):.4f}")
            if self.step >= self.budget:  # train.steps: the last epoch ends at the budget
                break
        bar.close()
        elapsed = time.perf_counter() - start
        return {"train_loss": engine.mean_across_ranks(total, count, self.info, self.device),
                "images_per_sec": seen * self.info.world_size / elapsed,
                "lr": self.optimizer.param_groups[0]["lr"]}

    def _loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.teacher is None:
            return self.loss_fn(self.model(images).float().reshape(-1), labels)
        cls_logits, dist_logits = self.model(images)
        return self.teacher.loss(cls_logits.float().reshape(-1), dist_logits.float().reshape(-1), labels,
                                 self.teacher.logits(images), self.loss_fn)

    def _optimizer_step(self) -> None:
        if self.config.train.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.module.parameters(), self.config.train.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1

    def validate(self) -> dict[str, float]:
        if self.val_set is None:
            return {"val_auroc": float("nan"), "val_loss": float("nan")}
        cfg = self.config.train
        loader = engine.make_loader(self.val_set, batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                                    shuffle=False, seed=cfg.seed, epoch=self.epoch, info=self.info, device=self.device)
        # Always at the full size: the model is judged (and the best one kept) as it will be registered,
        # also during a progressive stage (a copy with position embeddings resampled to the full grid).
        return val_metrics(self.full_size_module(), loader, self.val_loss_fn, self.device, self.amp, self.info)


def improved(trainer: Trainer, metrics: dict[str, float]) -> bool:
    """Whether this epoch's validation beats the best so far: a higher AUROC, or the same AUROC with a lower
    validation loss (a small validation split often ties, e.g. at 1.0, and the first tie is rarely the best)."""
    auroc = metrics["val_auroc"]
    if math.isnan(auroc):  # no validation data: the latest epoch is the best we know
        return True
    if auroc != trainer.best_auroc:
        return auroc > trainer.best_auroc
    best = next((h for h in trainer.history if h["epoch"] == trainer.best_epoch), {})
    return metrics["val_loss"] < best.get("val_loss", math.inf)


def epoch_path(out: Path, epoch: int) -> Path:
    """Where ``train.save_every`` keeps the model of ``epoch`` (1-based)."""
    return out / "epochs" / f"epoch_{epoch:03d}.safetensors"


def run_train(config: PipelineConfig, *, resume: bool = False, progress: bool = False,
              track: bool = True) -> TrainResult:
    """Entry point of the train stage."""
    with engine.process_group(config.train.device) as info:
        return _train(config, info, resume, progress, track)


def _train(config: PipelineConfig, info: engine.Dist, resume: bool, progress: bool, track: bool) -> TrainResult:
    device = engine.resolve_device(config.train.device, info)
    engine.set_deterministic(config.train.deterministic)
    resolved = planning.resolve(config)
    config = resolved.config
    if resolved.record and info.is_main:
        planning.write_plan(resolved.record, planning.plan_path(config))
    out = train_dir(config)
    last_path, best_path = out / "last.safetensors", out / "best.safetensors"
    trainer = Trainer(config, info, device)
    if resume and last_path.is_file():
        trainer.restore(load_state(last_path))
    elif resume and info.is_main:
        print(f"medvit: --resume: no checkpoint at '{last_path}', starting from epoch 1")
    stopped_early = False
    with stage_run(config, "train", enabled=track, run_id=trainer.run_id) as run:
        trainer.run_id = run.run_id
        if trainer.epoch == 0 and info.is_main:
            run.log_manifest(trainer.manifest, manifest_digest(trainer.manifest), context="training")
            run.set_tags({"medvit.amp": str(trainer.amp).replace("torch.", ""), "medvit.device": device.type,
                          "medvit.world_size": str(info.world_size),
                          "medvit.distill_unlabelled_series": str(trainer.n_unlabelled),
                          "medvit.plan": config.train.plan})
            if resolved.record:
                run.log_params(planning.plan_params(resolved.record))
                run.log_artifact(planning.plan_path(config))
        while trainer.epoch < trainer.n_epochs:
            metrics = {**trainer.train_epoch(progress), **trainer.validate()}
            trainer.epoch += 1
            trainer.history.append({"epoch": trainer.epoch, **metrics})
            saves = []
            if improved(trainer, metrics):
                trainer.best_auroc = metrics["val_auroc"] if not math.isnan(metrics["val_auroc"]) else trainer.best_auroc
                trainer.best_epoch = trainer.epoch
                saves.append(best_path)
            stop = trainer.stopper.update(metrics, trainer.step)
            if config.train.save_every and trainer.epoch % config.train.save_every == 0:
                saves.append(epoch_path(out, trainer.epoch))
            if info.is_main and saves:
                full = trainer.full_size_module()  # one full-size copy per epoch, also during a progressive stage
                for path in saves:
                    save_model(path, full, trainer.kwargs, {"epoch": trainer.epoch, "val_auroc": metrics["val_auroc"]})
            if info.is_main:
                run.log_metrics(metrics, step=trainer.epoch)
                save_state(last_path, trainer.state())
                if progress:
                    print(f"epoch {trainer.epoch}: " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
            if stop:
                stopped_early = True
                break
        result = TrainResult(str(best_path), str(last_path), trainer.best_epoch,
                             trainer.best_auroc if trainer.best_auroc > -math.inf else float("nan"),
                             trainer.epoch, trainer.step, stopped_early, run.run_id, trainer.history)
        if info.is_main:  # paths relative to output.dir: no site path goes to MLflow
            summary = asdict(result) | {"best_path": "train/best.safetensors", "last_path": "train/last.safetensors"}
            (out / "summary.json").write_text(json.dumps(summary, indent=2))
            run.log_metrics({"best_val_auroc": result.best_val_auroc, "best_epoch": result.best_epoch})
            run.log_artifact(out / "summary.json")
    return result
