"""Train: the classifier on the manifest's train split, validated each epoch, checkpointed atomically, resumable.

Reads ``OUTPUT/manifest.parquet`` (from ingest). With ``train.plan: auto`` the keys the config leaves unset
come from the dataset's plan (``OUTPUT/plan.json``). Writes ``OUTPUT/train/last.safetensors`` (full training
state, every epoch), ``OUTPUT/train/best.safetensors`` (weights of the best validation AUROC, with the
model's constructor arguments) and ``OUTPUT/train/summary.json``. Runs under torchrun as DDP. The recipe
(data, loss, loop, best model, early stopping) is ``training.trainer.Trainer``; this stage plans, resumes and
records.
"""

from __future__ import annotations

import json
from dataclasses import asdict

from pipelines import runtime
from pipelines.config import PipelineConfig
from pipelines.data.manifest import manifest_digest
from pipelines.layout import train_dir
from pipelines.reporting.plots import loss_figure, save_figure
from pipelines.reporting.review import train_minutes, train_note
from pipelines.tracking import model_label, stage_run
from pipelines.training import planning
from pipelines.training.checkpoint import load_state
from pipelines.training.modeling import input_size
from pipelines.training.trainer import Trainer, TrainResult


def run_train(config: PipelineConfig, *, resume: bool = False, progress: bool = False,
              track: bool = True) -> TrainResult:
    """Entry point of the train stage."""
    with runtime.process_group(config.train.device) as info:
        return _train(config, info, resume, progress, track)


def _train(config: PipelineConfig, info: runtime.Dist, resume: bool, progress: bool, track: bool) -> TrainResult:
    device = runtime.resolve_device(config.train.device, info)
    runtime.set_deterministic(config.train.deterministic)
    resolved = planning.resolve(config)
    config = resolved.config
    if resolved.record and info.is_main:
        planning.write_plan(resolved.record, planning.plan_path(config))
    out = train_dir(config)
    last_path = out / "last.safetensors"
    trainer = Trainer(config, info, device)
    if resume and last_path.is_file():
        trainer.restore(load_state(last_path))
    elif resume and info.is_main:
        print(f"medvit: --resume: no checkpoint at '{last_path}', starting from epoch 1")
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
        result = trainer.fit(out, run, progress)
        if info.is_main:  # paths relative to output.dir: no site path goes to MLflow
            summary = asdict(result) | {"best_path": "train/best.safetensors", "last_path": "train/last.safetensors",
                                        "select": config.train.select}
            (out / "summary.json").write_text(json.dumps(summary, indent=2))
            run.log_metrics({"best_val_auroc": result.best_val_auroc, "best_epoch": result.best_epoch,
                             "train_minutes": train_minutes(result.history)})
            run.log_artifact(out / "summary.json")
            run.log_artifact(save_figure(loss_figure(result.history, result.best_epoch), out / "loss.png"), "plots")
            n_train = int((trainer.manifest["split"] == "train").sum())
            run.set_note(train_note(model_label(config), input_size(config), n_train, summary))
    return result
