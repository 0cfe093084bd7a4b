"""The MAE pretraining recipe: masked-autoencoder self-supervision of the ViT encoder on every eligible
series, no labels (the pretrain stage runs it).

Its data is every series under ``pretrain.dicom_root`` (default ``data.dicom_root``) with the same selection
rules, preprocessing, cache and augmentation as ingest/train, so unlabelled studies count. The optimisation runs in the same loop as ``train`` (``training.loop``): ``pretrain.*`` sets its schedule
(epochs, batch size, lr, warmup, weight decay); the ``train`` keys of the loop apply as in training
(``amp``, ``accumulate``, ``grad_clip``, ``compile``, ``num_workers``, ``seed``, ``device``, ``deterministic``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
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
from pipelines.scoring.predictor import series_item
from pipelines.training.checkpoint import save_state
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

    def fit(self, out: Path, run: Any, progress: bool = False) -> None:
        """Pretrain until ``pretrain.epochs``, from wherever ``restore`` left off; every epoch the encoder goes to
        ``out/encoder.safetensors``, the whole state to ``out/last.safetensors`` and the metrics to ``run``."""
        while self.epoch < self.config.pretrain.epochs:
            metrics = self.train_epoch(progress)
            self.epoch += 1
            self.history.append({"epoch": self.epoch, **metrics})
            if self.info.is_main:
                run.log_metrics(metrics, step=self.epoch)
                save_model(out / "encoder.safetensors", self.encoder, self.kwargs,
                           {"epoch": self.epoch, "stage": "pretrain"})
                save_state(out / "last.safetensors", self.state())
                if progress:
                    print(f"pretrain epoch {self.epoch}: " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))

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
