"""Pretrain: masked-autoencoder (MAE) self-supervision of the ViT encoder on every eligible series, no labels.

Writes ``OUTPUT/pretrain/last.safetensors`` (full state every epoch; ``--resume``),
``OUTPUT/pretrain/encoder.safetensors`` (the encoder that ``train.init`` loads), ``reconstruction.png`` (input,
mask, reconstruction) and ``summary.json``. The MLflow run is tagged ``medvit.stage=pretrain``; the encoder is
logged as ``encoder/encoder.safetensors``. The recipe is ``training.pretrainer.Pretrainer``.
"""

from __future__ import annotations

import json
from dataclasses import asdict

from pipelines import runtime
from pipelines.config import PipelineConfig
from pipelines.layout import pretrain_dir
from pipelines.reporting.review import pretrain_note
from pipelines.tracking import model_label, stage_run
from pipelines.training.checkpoint import load_state
from pipelines.training.modeling import input_size
from pipelines.training.pretrainer import ENCODER_ARTIFACT, Pretrainer, PretrainResult


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
        trainer.fit(out, run, progress)
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
            run.set_note(pretrain_note(config.data.kind, model_label(config), input_size(config), result.n_series,
                                       config.pretrain.mask_ratio, result.epochs_run, result.final_loss))
    return result
