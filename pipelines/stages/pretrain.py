"""Pretrain: masked-autoencoder (MAE) self-supervision of the ViT encoder on every eligible series, no labels.

Scans ``pretrain.dicom_root`` (default ``data.dicom_root``) with the same selection rules, preprocessing,
cache and augmentation as ingest/train, so unlabelled studies count. Writes ``OUTPUT/pretrain/last.safetensors``
(full state every epoch; ``--resume``), ``OUTPUT/pretrain/encoder.safetensors`` (the encoder that
``train.init`` loads), ``reconstruction.png`` (input, mask, reconstruction) and ``summary.json``. The MLflow run
is tagged ``medvit.stage=pretrain``; the encoder is logged as ``encoder/encoder.safetensors``.

The optimisation runs in the same loop as ``train`` (``training.loop``): ``pretrain.*`` sets its schedule
(epochs, batch size, lr, warmup, weight decay); the ``train`` keys of the loop apply as in training
(``amp``, ``accumulate``, ``grad_clip``, ``compile``, ``num_workers``, ``seed``, ``device``, ``deterministic``).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

import medvit
from pipelines import runtime
from pipelines.config import ConfigError, PipelineConfig
from pipelines.data.dataset import (
    IMAGE,
    CachedDataset,
    augment_transforms,
    deterministic_transforms,
    preprocess_digest,
)
from pipelines.data.scan_settings import selection_rules
from pipelines.dicom.scan import scan
from pipelines.layout import pretrain_dir
from pipelines.scoring.predictor import series_item
from pipelines.tracking import stage_run
from pipelines.training.checkpoint import load_state, save_state
from pipelines.training.loop import TrainingLoop
from pipelines.training.modeling import build_model, model_kwargs, param_groups, save_model
from pipelines.training.schedule import make_scheduler

ENCODER_ARTIFACT = "encoder/encoder.safetensors"


@dataclass
class PretrainResult:
    encoder_uri: str
    encoder_path: str
    epochs_run: int
    final_loss: float
    n_series: int
    run_id: str | None
    history: list[dict[str, float]]


def pretrain_dataset(config: PipelineConfig, progress: bool) -> CachedDataset:
    """Every eligible series of ``data.kind`` under the pretraining root (labels are not read)."""
    root = config.pretrain.dicom_root or config.data.dicom_root
    if not Path(root).is_dir():
        raise ConfigError(f"pretrain.dicom_root '{root}' is not a folder: point it at the (unlabelled) DICOM folder")
    scanned = scan([root], selection_rules(config), workers=config.data.workers, progress=progress)
    series = scanned.series  # of data.kind only: the scan's rules
    if not series:
        raise ConfigError(f"no usable {config.data.kind} series under pretrain.dicom_root '{root}'")
    return CachedDataset([series_item(s) for s in series], deterministic_transforms(config), augment_transforms(config),
                         config.cache_dir, preprocess_digest(config))


class Pretrainer:
    """MAE model, optimizer and schedule; ``state()`` / ``restore()`` make it resumable."""

    def __init__(self, config: PipelineConfig, info: runtime.Dist, device: torch.device, progress: bool):
        if config.model.arch not in ("vit", "hybrid"):
            raise ConfigError(f"medvit pretrain trains a ViT encoder: model.arch is {config.model.arch}, use vit or "
                              "hybrid")
        self.config, self.info, self.device = config, info, device
        self.dataset = pretrain_dataset(config, progress and info.is_main)
        pre = config.pretrain
        self.kwargs = {**model_kwargs(config), "num_classes": 0}  # no head: every parameter gets a gradient
        runtime.seed_everything(config.train.seed)
        self.encoder = build_model(self.kwargs)
        self.encoder.set_grad_checkpointing(config.model.grad_checkpointing)
        self.mae = medvit.MaskedAutoencoder(self.encoder, decoder_dim=pre.decoder_dim, decoder_depth=pre.decoder_depth,
                                            decoder_heads=pre.decoder_heads, mask_ratio=pre.mask_ratio,
                                            norm_pix_loss=pre.norm_pix_loss).to(device)
        t = config.train  # the loop keys train and pretrain share: amp, accumulate, grad_clip, compile
        optimizer = torch.optim.AdamW(param_groups(self.mae, pre.weight_decay), lr=pre.lr, betas=(0.9, 0.95))
        n_batches = math.ceil(len(self.dataset) / (pre.batch_size * info.world_size))
        steps = runtime.steps_per_epoch(n_batches, t.accumulate)
        self.loop = TrainingLoop(self.mae, optimizer,
                                 make_scheduler(optimizer, [steps] * pre.epochs, pre.warmup_epochs, pre.min_lr),
                                 device=device, info=info, amp=t.amp, accumulate=t.accumulate, grad_clip=t.grad_clip,
                                 compile=t.compile, find_unused_parameters=config.model.global_pool != "token")
        self.epoch, self.history, self.run_id = 0, [], None

    @property
    def amp(self) -> torch.dtype | None:
        return self.loop.amp

    def state(self) -> dict[str, Any]:
        return {"model": self.mae.state_dict(), **self.loop.state(), "rng": runtime.rng_state(), "epoch": self.epoch, "history": self.history, "run_id": self.run_id,
                "model_kwargs": json.dumps(self.kwargs)}

    def restore(self, state: dict[str, Any]) -> None:
        if json.loads(state["model_kwargs"]) != self.kwargs:
            raise ConfigError("the pretraining checkpoint has another model config: resume with the same config")
        self.mae.load_state_dict(state["model"])
        self.loop.restore(state)
        runtime.set_rng_state(state["rng"])
        self.epoch, self.history, self.run_id = state["epoch"], state["history"], state["run_id"]

    def train_epoch(self, progress: bool) -> dict[str, float]:
        pre, seed = self.config.pretrain, self.config.train.seed
        loader = runtime.make_loader(self.dataset, batch_size=pre.batch_size, num_workers=self.config.train.num_workers,
                                    shuffle=True, seed=seed, epoch=self.epoch, info=self.info, device=self.device)
        torch.manual_seed(runtime.epoch_seed(seed, self.epoch) + 1 + self.info.rank)  # masks, drop path
        metrics = self.loop.epoch(loader, lambda images, _labels: self.loop.model(images).loss,
                                  desc=f"pretrain {self.epoch + 1}/{pre.epochs}", progress=progress)
        return {"pretrain_loss": metrics.pop("loss"), **metrics}

    @torch.no_grad()
    def preview(self, path: Path, n: int = 4) -> None:
        """Input, masked input and reconstruction of the first ``n`` series (a middle slice for MRI)."""
        import matplotlib.pyplot as plt

        from medvit.mae import patch_mask_to_pixels

        plain = CachedDataset(self.dataset.items[:n], self.dataset.deterministic, None, self.dataset.cache_dir,
                              self.dataset.config_digest)
        images = torch.stack([torch.as_tensor(plain[i][IMAGE]).float() for i in range(len(plain))]).to(self.device)
        noise = torch.rand(len(images), self.encoder.num_patches, generator=torch.Generator().manual_seed(0))
        self.mae.eval()
        out = self.mae(images, noise=noise.to(self.device))
        recon = self.mae.reconstruct(images, out)
        shown = images * (1 - patch_mask_to_pixels(out.mask, self.encoder.patch_size, self.encoder.grid_size))
        rows = [("input", images), ("visible (mask %.0f%%)" % (100 * self.mae.mask_ratio), shown),
                ("reconstruction", recon)]
        fig, axes = plt.subplots(len(rows), len(images), figsize=(2.5 * len(images), 2.5 * len(rows)), squeeze=False)
        for r, (title, batch) in enumerate(rows):
            for c in range(len(images)):
                picture = batch[c, 0].float().cpu().numpy()
                if picture.ndim == 3:  # RAS volume: the middle axial slice, anterior up
                    picture = picture[:, :, picture.shape[2] // 2].T[::-1]
                axes[r, c].imshow(picture, cmap="gray")
                axes[r, c].axis("off")
            axes[r, 0].set_title(title, fontsize=9, loc="left")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)


def run_pretrain(config: PipelineConfig, *, resume: bool = False, progress: bool = False,
                 track: bool = True) -> PretrainResult:
    """Entry point of the pretrain stage."""
    with runtime.process_group(config.train.device) as info:
        return _pretrain(config, info, resume, progress, track)


def _pretrain(config: PipelineConfig, info: runtime.Dist, resume: bool, progress: bool, track: bool) -> PretrainResult:
    device = runtime.resolve_device(config.train.device, info)
    runtime.set_deterministic(config.train.deterministic)
    out = pretrain_dir(config)
    last_path, encoder_path = out / "last.safetensors", out / "encoder.safetensors"
    trainer = Pretrainer(config, info, device, progress)
    if resume and last_path.is_file():
        trainer.restore(load_state(last_path))
    with stage_run(config, "pretrain", enabled=track, run_id=trainer.run_id) as run:
        trainer.run_id = run.run_id
        if info.is_main:
            run.set_tags({"medvit.amp": str(trainer.amp).replace("torch.", ""), "medvit.device": device.type,
                          "medvit.pretrain_series": str(len(trainer.dataset))})
        while trainer.epoch < config.pretrain.epochs:
            metrics = trainer.train_epoch(progress)
            trainer.epoch += 1
            trainer.history.append({"epoch": trainer.epoch, **metrics})
            if info.is_main:
                run.log_metrics(metrics, step=trainer.epoch)
                save_model(encoder_path, trainer.encoder, trainer.kwargs, {"epoch": trainer.epoch, "stage": "pretrain"})
                save_state(last_path, trainer.state())
                if progress:
                    print(f"pretrain epoch {trainer.epoch}: " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        uri = str(encoder_path.resolve())
        if info.is_main:
            trainer.preview(out / "reconstruction.png")
            run.log_artifact(out / "reconstruction.png")
            run.log_artifact(encoder_path, "encoder")
            if run.run_id is not None:
                uri = f"runs:/{run.run_id}/{ENCODER_ARTIFACT}"
        result = PretrainResult(uri, str(encoder_path), trainer.epoch,
                                trainer.history[-1]["pretrain_loss"] if trainer.history else float("nan"),
                                len(trainer.dataset), run.run_id, trainer.history)
        if info.is_main:
            summary = asdict(result) | {"encoder_path": "pretrain/encoder.safetensors",
                                        "encoder_uri": uri if uri.startswith("runs:/") else "pretrain/encoder.safetensors"}
            (out / "summary.json").write_text(json.dumps(summary, indent=2))
            run.log_artifact(out / "summary.json")
    return result
