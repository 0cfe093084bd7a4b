"""Score: new DICOM folders in, a score per study out; resumable, shardable, and never stopped by a bad file.

The model URI brings its own preprocessing, selection rules, threshold and study aggregation (the package
``register`` writes), so scoring needs no training config. Files are scanned and grouped exactly as ingest
does; the predictor (``scoring.predictor``) decodes series in DataLoader workers while the model scores the
previous batch and turns series scores into study scores; ``scoring.collector`` writes each study once it is
complete. Outputs and their crash safety: ``scoring.outputs``.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipelines import runtime
from pipelines.config import ConfigError
from pipelines.data.scan_settings import scan_limits, selection_rules
from pipelines.dicom.reasons import Rejected, is_failure
from pipelines.dicom.scan import scan
from pipelines.files import writable_folder
from pipelines.scoring.collector import StudyCollector
from pipelines.scoring.model_package import LoadedModel, load_packaged_model
from pipelines.scoring.outputs import ScoreOutputs, merge_shards, shard_folder
from pipelines.scoring.predictor import Predictor, series_item


class ScoreOptions(BaseModel):
    """Everything `medvit score` takes; the model supplies the rest."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    inputs: list[Path] = Field(min_length=1)
    model: str
    out: Path
    heatmaps: bool = False
    shard: tuple[int, int] | None = None  # (index, count), index 0-based; None: from torchrun env, else all
    overwrite: bool = False
    log_mlflow: bool = False
    tracking_uri: str | None = None
    batch_size: int = Field(16, ge=1)
    workers: int | None = Field(None, ge=0)  # None: cores - 1, at most 8 (0 on one core); see auto_workers
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"
    aggregate: Literal["max", "mean"] | None = None  # None: the model's own (chosen at evaluate)
    parquet: bool = False
    progress: bool = False
    engine: Literal["local", "spark"] = "local"
    spark_master: str = "local[2]"  # local[N] or a cluster URL (engine spark)

    @field_validator("shard")
    @classmethod
    def _valid_shard(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is not None:
            problem = shard_problem(*value)
            if problem:
                raise ValueError(f"shard {value[0]}/{value[1]}: {problem}")
        return value


@dataclass
class ScoreResult:
    folder: Path
    summary: dict[str, Any]
    frames: dict[str, pd.DataFrame]
    merged: bool = False  # shard outputs were merged into the top folder

    @property
    def partial(self) -> bool:
        return any(is_failure(code) for code in self.frames["errors"]["reason_code"])


def shard_problem(index: int, count: int) -> str | None:
    """What is wrong with shard ``index`` of ``count``, or None."""
    if count < 1:
        return f"N must be at least 1 (got {count}): e.g. 0/4 for the first of four"
    if not 0 <= index < count:
        return f"I must be 0..{count - 1} for N={count} (shards are numbered from 0)"
    return None


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` (0-based I) -> (I, N)."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard '{text}' is not I/N (e.g. 0/4 for the first of four)") from None
    problem = shard_problem(index, count)
    if problem:
        raise ConfigError(f"--shard '{text}': {problem}")
    return index, count


def resolve_shard(options: ScoreOptions) -> tuple[int, int] | None:
    """The explicit shard, else the torchrun rank, else None (everything in one process)."""
    if options.shard is not None:
        return options.shard if options.shard[1] > 1 else None
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return (int(os.environ.get("RANK", "0")), world) if world > 1 else None


def in_shard(key: str, shard: tuple[int, int] | None) -> bool:
    """Deterministic assignment of a study (or a rejected file) to one shard."""
    digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()  # file names need not be UTF-8
    return shard is None or int(digest[:12], 16) % shard[1] == shard[0]


def auto_workers(requested: int | None) -> int:
    """Loader workers: one decodes while the model scores (on 2 cores: 1 worker + 1 torch thread, see
    docs/benchmarks.md); more cores, up to 8 workers."""
    if requested is not None:
        return requested
    cores = os.cpu_count() or 1
    return 0 if cores < 2 else min(8, cores - 1)


# ---- the stage -------------------------------------------------------------------------------------------
def _check_inputs(inputs: Sequence[Path]) -> None:
    for path in inputs:
        if not path.exists():
            raise ConfigError(f"input '{path}' does not exist: check the path")
        if not os.access(path, os.R_OK | (os.X_OK if path.is_dir() else 0)):
            raise ConfigError(f"input '{path}' cannot be read: check its permissions")


@dataclass
class Counted:
    """What an engine scored, for the outputs and the summary."""

    aggregate: str
    n_files: int
    rejected: list[Rejected]
    carried_files: set[str]
    studies_found: int
    series_found: int
    studies_skipped: int
    studies_scored: int
    series_scored: int
    series_failed: int
    heatmaps: int = 0
    scan_s: float = 0.0


def _score_here(options: ScoreOptions, loaded: LoadedModel, outputs: ScoreOutputs, done: set[str],
                shard: tuple[int, int] | None, device: Any, folder: Path) -> Counted:
    """This process scans (header workers) and scores (loader workers) every series not scored yet."""
    from tqdm import tqdm

    t0 = time.perf_counter()
    scanned = scan([str(p) for p in options.inputs], selection_rules(loaded.config),
                   workers=auto_workers(options.workers), progress=options.progress, limits=scan_limits(loaded.config))
    scan_s = time.perf_counter() - t0
    # the rules name the model's kind: files of another kind are unsupported_modality exclusions already
    rejected = [r for r in scanned.rejected if in_shard(r.path, shard)]
    mine = [s for s in scanned.series if in_shard(s.study_uid, shard)]
    todo = [s for s in mine if s.study_uid not in done]
    predictor = Predictor.from_package(loaded, aggregate=options.aggregate, device=device, amp=options.amp,
                                       batch_size=options.batch_size, workers=auto_workers(options.workers),
                                       heatmaps=options.heatmaps)
    collector = StudyCollector(todo, loaded, predictor, outputs, folder / "heatmaps" if options.heatmaps else None)
    with tqdm(total=len(collector.pending), desc="score", unit="study", disable=not options.progress) as bar:
        predictor.stream([series_item(s) for s in todo],
                         lambda i, score, picture, heat: bar.update(int(collector.add_score(i, score, picture, heat))),
                         lambda i, reason, message: bar.update(int(collector.add_error(i, reason, message))),
                         lambda message: bar.write(message, file=sys.stderr))
    studies = {s.study_uid for s in mine}
    return Counted(predictor.aggregate, scanned.n_files, rejected,
                   {f for s in mine if s.study_uid in done for f in s.files}, len(studies), len(mine),
                   len(studies & done), collector.studies_scored, collector.series_scored, collector.series_failed,
                   collector.heatmaps, scan_s)


def _score_on_spark(options: ScoreOptions, loaded: LoadedModel, outputs: ScoreOutputs, done: set[str],
                    shard: tuple[int, int] | None, device: Any, folder: Path) -> Counted:
    """Executors scan and score (``scoring.spark_engine``); this process lists the files and writes the rows."""
    from pipelines.scoring.spark_engine import score_on_spark

    got = score_on_spark(options.inputs, options.model, options.tracking_uri, done, options.spark_master,
                         options.batch_size, scan_limits(loaded.config), options.aggregate,
                         lambda study: outputs.add_study(study["series_rows"], study["row"], study["errors"]))
    return Counted(options.aggregate or loaded.meta.get("aggregate", "max"), got.n_files, got.rejected,
                   got.carried_files, got.studies + len(got.skipped_studies), got.found_series,
                   len(got.skipped_studies), got.scored_studies, got.scored_series, got.failed_series)


def run_score(options: ScoreOptions) -> ScoreResult:
    """Entry point of the score stage: scan, score what is not scored yet, publish, merge shards."""
    from pipelines.reporting.review import score_note
    from pipelines.tracking import stage_run

    started, t0 = datetime.now(UTC), time.perf_counter()
    _check_inputs(options.inputs)
    if options.engine == "spark" and (options.shard is not None or options.heatmaps):
        raise ConfigError("--engine spark partitions the work itself and writes no heatmaps: drop --shard and "
                          "--heatmaps, or use --engine local")
    writable_folder(options.out, "--out")
    shard = resolve_shard(options)
    device = runtime.resolve_device(options.device, runtime.Dist(local_rank=int(os.environ.get("LOCAL_RANK", "0"))))
    loaded = load_packaged_model(options.model, device="cpu", tracking=options.tracking_uri)
    t_model = time.perf_counter()
    config = loaded.config
    folder = options.out if shard is None else shard_folder(options.out, *shard)
    outputs = ScoreOutputs(folder, overwrite=options.overwrite)

    done = outputs.scored_studies(loaded.digest)
    engine = _score_on_spark if options.engine == "spark" else _score_here
    scored = engine(options, loaded, outputs, done, shard, device, folder)
    t_score = time.perf_counter()
    scan_errors = pd.DataFrame([r.as_row() for r in scored.rejected], columns=["path", "reason_code", "message"],
                               dtype=object)  # object, not Arrow strings: a path need not be valid UTF-8
    summary = _summary(options, loaded, shard, scored, started,
                       {"load_model": t_model - t0, "scan": scored.scan_s, "score": t_score - t_model - scored.scan_s})
    frames = outputs.merged(scan_errors, scored.carried_files)
    summary["counts"]["studies_in_scores"] = len(frames["scores"])
    summary["timings_s"]["total"] = round(time.perf_counter() - t0, 3)
    outputs.publish(frames, summary, parquet=options.parquet)
    merged = shard is not None and merge_shards(options.out, parquet=options.parquet) is not None
    if options.log_mlflow:
        tracked = config.model_copy(deep=True)
        if options.tracking_uri:
            tracked.tracking.uri = options.tracking_uri
        with stage_run(tracked, "score") as run:
            run.set_tags({"medvit.model": loaded.label, "medvit.model_sha256": loaded.digest,
                          "medvit.model_source": loaded.source, "medvit.shard": summary["shard"] or "all"})
            run.log_metrics({**{f"n_{k}": float(v) for k, v in summary["counts"].items()},
                             **{f"time_{k}_s": float(v) for k, v in summary["timings_s"].items()},
                             "studies_per_sec": float(summary["studies_per_sec"])})
            run.log_params({"score.engine": options.engine, "score.batch_size": str(options.batch_size),
                            "score.device": options.device, "score.aggregate": scored.aggregate,
                            "score.heatmaps": str(options.heatmaps).lower()})
            run.log_dict(summary, "summary.json")
            run.set_note(score_note(loaded.label, summary))
    return ScoreResult(folder, summary, frames, merged)


def _summary(options: ScoreOptions, loaded: LoadedModel, shard: tuple[int, int] | None, scored: Counted,
             started: datetime, timings: dict[str, float]) -> dict[str, Any]:
    reasons: dict[str, int] = {}
    for r in scored.rejected:
        reasons[r.reason_code] = reasons.get(r.reason_code, 0) + 1
    return {
        "model": {"label": loaded.label, "name": loaded.name, "version": loaded.version, "sha256": loaded.digest,
                  "source": loaded.source},
        "kind": loaded.config.data.kind, "threshold": loaded.threshold, "aggregate": scored.aggregate,
        "shard": None if shard is None else f"{shard[0]}/{shard[1]}", "engine": options.engine,
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "counts": {"files": scored.n_files, "studies_found": scored.studies_found, "series_found": scored.series_found,
                   "studies_skipped_already_scored": scored.studies_skipped, "studies_scored": scored.studies_scored,
                   "series_scored": scored.series_scored, "series_failed": scored.series_failed,
                   "rejected_items": len(scored.rejected), "heatmaps": scored.heatmaps,
                   "failures": scored.series_failed + sum(is_failure(r.reason_code) for r in scored.rejected)},
        "rejected_by_reason": dict(sorted(reasons.items())),
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "studies_per_sec": round(scored.studies_scored / max(timings["score"], 1e-9), 3),
    }
