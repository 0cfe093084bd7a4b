"""Can a network learn the MRI findings at this data size? The plan's 3D ViT against a small 3D CNN, in-process.

    python benchmarks/probe_mri_learnability.py --train COHORT --fresh COHORT --model vit --steps 900
    python benchmarks/probe_mri_learnability.py --train COHORT --fresh COHORT --model cnn --steps 3000 --lr 1e-3
    python benchmarks/probe_mri_learnability.py ... --model cnn --no-augment       # does it memorise instead?
    python benchmarks/probe_mri_learnability.py ... --model cnn --cnn-stages 1     # a local detector, then max

COHORT is a ``medvit synth --kind mri`` folder (``dicom/`` and ``labels.csv``). Both cohorts are ingested and go
once through the pipeline's own deterministic preprocessing (``deterministic_transforms``: orientation, the plan's
spacing and 3D grid, z-score) into memory. All labelled studies of the training cohort are then learned by a plain
loop, without a validation split: the pipeline's augmentation (``augment_transforms`` at the plan's level), AdamW,
the pipeline's warmup-then-cosine schedule (``make_scheduler``), BCE. Every ``--every`` steps it prints one JSON
line: the mean loss, AUROC on 80 training studies and AUROC on the fresh cohort. This is a diagnostic, not the
user's path. It has no early stopping and no model selection, so each line is a reading on the fresh cohort: use it
on tuning cohorts only. It answers one question: is the ViT what fails, or the task at this size? Results are in
docs/benchmarks.md, "MRI (real base) at difficulty 0: a small 3D CNN does not learn it either".
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from monai.data import MetaTensor
from sklearn.metrics import roc_auc_score
from torch import nn

from pipelines.config import PipelineConfig, load_config
from pipelines.data.dataset import augment_transforms, build_dataset
from pipelines.stages.ingest import run_ingest
from pipelines.training.modeling import build_model, model_kwargs, param_groups
from pipelines.training.planning import resolve
from pipelines.training.schedule import make_scheduler

ROOT = Path(__file__).resolve().parent.parent


def cohort_config(cohort: Path, out: Path, sets: list[str]) -> PipelineConfig:
    return load_config(ROOT / "configs" / "plan_mri.yaml", [
        f"data.dicom_root={cohort / 'dicom'}", f"data.labels={cohort / 'labels.csv'}", f"output.dir={out}",
        f"preprocess.cache_dir={out / 'cache'}", "split.test=0.0", f"tracking.uri=sqlite:///{out / 'mlflow.db'}",
        "tracking.system_metrics=false", *sets])


def load_volumes(config: PipelineConfig, manifest: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The labelled series preprocessed as training sees them: (N, *grid) float32 and 0/1 labels."""
    manifest = manifest[manifest["label"].notna()].reset_index(drop=True)
    dataset = build_dataset(manifest, config, train=False)
    volumes = np.stack([dataset[i]["image"].as_tensor().numpy()[0] for i in range(len(dataset))])
    return volumes, manifest["label"].astype(int).to_numpy()


CNN_WIDTHS = (16, 32, 64, 128)


def small_cnn(widths: tuple[int, ...] = CNN_WIDTHS, pool: str = "max") -> nn.Module:
    """Stride-2 stages of two 3x3x3 convolutions (GroupNorm, ReLU), a global pool and one logit."""
    layers: list[nn.Module] = []
    previous = 1
    for width in widths:
        layers += [nn.Conv3d(previous, width, 3, stride=2, padding=1), nn.GroupNorm(8, width), nn.ReLU(),
                   nn.Conv3d(width, width, 3, padding=1), nn.GroupNorm(8, width), nn.ReLU()]
        previous = width
    head_pool = nn.AdaptiveMaxPool3d(1) if pool == "max" else nn.AdaptiveAvgPool3d(1)
    return nn.Sequential(*layers, head_pool, nn.Flatten(), nn.Linear(previous, 1))


def plain(image: torch.Tensor) -> torch.Tensor:
    """A MONAI MetaTensor as a plain tensor (a transform that did not fire returns its input unchanged)."""
    return image.as_tensor() if isinstance(image, MetaTensor) else image


@torch.no_grad()
def auroc(model: nn.Module, volumes: np.ndarray, labels: np.ndarray) -> float:
    model.eval()
    logits = [model(torch.from_numpy(volumes[i:i + 8][:, None])).reshape(-1) for i in range(0, len(volumes), 8)]
    model.train()
    return float(roc_auc_score(labels, torch.cat(logits).numpy()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=Path, required=True, help="cohort to learn (its train and val studies)")
    parser.add_argument("--fresh", type=Path, required=True, help="cohort of another seed to score")
    parser.add_argument("--model", choices=["vit", "cnn"], default="vit", help="the plan's ViT, or the small CNN")
    parser.add_argument("--pool", choices=["max", "avg"], default="max", help="the small CNN's global pool")
    parser.add_argument("--cnn-stages", type=int, default=4, choices=range(1, 5),
                        help="stride-2 stages of the small CNN before its global pool (fewer: a more local detector)")
    parser.add_argument("--steps", type=int, default=900)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--lr", type=float, default=None, help="default: the plan's")
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--no-augment", action="store_true")
    parser.add_argument("--every", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="e.g. model.stem_depth=1")
    args = parser.parse_args()
    torch.set_num_threads(2)

    with tempfile.TemporaryDirectory(prefix="mri_probe_") as work:
        train_config = cohort_config(args.train, Path(work) / "train", args.set)
        manifest = run_ingest(train_config, track=False).manifest
        train_config = resolve(train_config, manifest).config  # the plan's grid, spacing, model, lr, augmentation
        planned = [f"preprocess.mri.img_size={json.dumps(list(train_config.preprocess.mri.img_size))}",
                   f"preprocess.mri.spacing={json.dumps(list(train_config.preprocess.mri.spacing))}"]
        x_train, y_train = load_volumes(train_config, manifest)
        fresh_config = cohort_config(args.fresh, Path(work) / "fresh", planned)
        x_fresh, y_fresh = load_volumes(fresh_config, run_ingest(fresh_config, track=False).manifest)

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    model = (build_model(model_kwargs(train_config)) if args.model == "vit"
             else small_cnn(CNN_WIDTHS[:args.cnn_stages], args.pool))
    params = param_groups(model, train_config.train.weight_decay) if args.model == "vit" else model.parameters()
    lr = args.lr or train_config.train.lr
    optimizer = torch.optim.AdamW(params, lr=lr)
    schedule = make_scheduler(optimizer, [args.steps], 0.0, train_config.train.min_lr, warmup_steps=args.warmup)
    augment = None if args.no_augment else augment_transforms(train_config)
    loss_fn = nn.BCEWithLogitsLoss()
    print(json.dumps({"model": args.model, "cnn_stages": args.cnn_stages, "train_studies": len(y_train),
                      "fresh_studies": len(y_fresh), "lr": lr, "grid": list(x_train.shape[1:]),
                      "augment": augment is not None, "set": args.set}), flush=True)
    started, losses = time.perf_counter(), []
    for step in range(1, args.steps + 1):
        picks = rng.choice(len(y_train), args.batch, replace=False)
        batch = [torch.from_numpy(x_train[i][None].copy()) for i in picks]
        if augment is not None:
            batch = [plain(augment({"image": b})["image"]) for b in batch]
        loss = loss_fn(model(torch.stack(batch)).reshape(-1), torch.from_numpy(y_train[picks].astype(np.float32)))
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if step % args.every == 0 or step == args.steps:
            print(json.dumps({"step": step, "loss": round(float(np.mean(losses[-100:])), 3),
                              "train_auroc": round(auroc(model, x_train[:80], y_train[:80]), 3),
                              "fresh_auroc": round(auroc(model, x_fresh, y_fresh), 3),
                              "seconds": round(time.perf_counter() - started)}), flush=True)


if __name__ == "__main__":
    main()
