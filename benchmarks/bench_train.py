"""End-to-end training throughput (loader + model) against model-only steps, in one process.

    python benchmarks/bench_train.py                         # CPU: demo-sized X-ray ViT, cached data
    python benchmarks/bench_train.py --config configs/xray_vit_s16.yaml --studies 512 --amp bf16   # on a GPU

A synthetic cohort is written and ingested, the preprocessing cache is filled, then one training epoch runs
through the pipeline's own Trainer (DataLoader workers, augmentation, AMP) and the same number of steps runs
on batches already in memory. Target: end-to-end >= 0.8x model-only once the cache is warm. On CUDA, AMP
bf16 is also compared with fp32.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from pipelines import runtime
from pipelines.config import load_config
from pipelines.dicom.synth import write_cohort
from pipelines.stages.ingest import run_ingest
from pipelines.training.trainer import Trainer

ROOT = Path(__file__).resolve().parent.parent


def model_only(trainer: Trainer, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """images/s of forward + backward + optimizer step on in-memory batches."""
    trainer.model.train()
    images_seen = 0
    start = time.perf_counter()
    for images, labels in batches:
        with runtime.autocast(trainer.device, trainer.amp):
            loss = trainer.loss_fn(trainer.model(images).float().reshape(-1), labels)
        trainer.loop.scaler.scale(loss).backward()
        trainer.loop.optimizer_step()
        images_seen += len(labels)
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    return images_seen / (time.perf_counter() - start)


def measure(config_path: Path, studies: int, amp: str, workers: int | None, tmp: Path) -> dict[str, float]:
    kind = load_config(config_path, [f"data.dicom_root={tmp}", f"output.dir={tmp}"]).data.kind
    cohort = tmp / "cohort"
    if not (cohort / "labels.csv").is_file():
        write_cohort(cohort, kind, studies, seed=0)
    overrides = [f"data.dicom_root={cohort / 'dicom'}", f"data.labels={cohort / 'labels.csv'}",
                 f"output.dir={tmp / 'run'}", f"train.amp={amp}", "train.compile=false", "tracking.system_metrics=false"]
    if workers is not None:
        overrides.append(f"train.num_workers={workers}")
    config = load_config(config_path, overrides)
    if not (tmp / "run" / "manifest.parquet").is_file():
        run_ingest(config, track=False)
    trainer = Trainer(config, runtime.Dist(), runtime.resolve_device(config.train.device, runtime.Dist()))
    trainer.train_epoch(progress=False)  # fills the cache, warms up kernels
    trainer.epoch += 1
    loader = runtime.make_loader(trainer.train_set, batch_size=config.train.batch_size, num_workers=0,
                                shuffle=True, seed=0, epoch=99, info=trainer.info)
    batches = [(i, y) for i, y, _ in runtime.batches(loader, trainer.device)]
    end_to_end = trainer.train_epoch(progress=False)["images_per_sec"]
    return {"end_to_end": end_to_end, "model_only": model_only(trainer, batches)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "xray_tiny_hybrid.yaml",
                        help="explicit network (demo_xray.yaml leaves it to the plan, which this bench does not apply)")
    parser.add_argument("--studies", type=int, default=300)
    parser.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "off"])
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: the config's)")
    args = parser.parse_args()
    print(f"# bench_train: {args.config.name}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"cuda={torch.cuda.is_available()}")
    with tempfile.TemporaryDirectory() as tmp:
        result = measure(args.config, args.studies, args.amp, args.workers, Path(tmp))
        print(f"model-only steps       {result['model_only']:9.1f} img/s   1.00x")
        print(f"end-to-end (cached)    {result['end_to_end']:9.1f} img/s   "
              f"{result['end_to_end'] / result['model_only']:.2f}x")
        if torch.cuda.is_available() and args.amp in ("auto", "bf16"):
            fp32 = measure(args.config, args.studies, "off", args.workers, Path(tmp))
            print(f"fp32 model-only        {fp32['model_only']:9.1f} img/s   "
                  f"bf16 speedup {result['model_only'] / fp32['model_only']:.2f}x")


if __name__ == "__main__":
    main()
