"""Score: new DICOM folders in, a score per study out; resumable, shardable, and never stopped by a bad file.

The model URI brings its own preprocessing, selection rules, threshold and study aggregation (the package
``register`` writes), so scoring needs no training config. Files are scanned and grouped exactly as ingest
does; series are decoded and preprocessed in DataLoader workers while the model scores the previous batch;
series scores become study scores (max by default). Outputs and their crash safety: ``score_outputs``.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from .. import engine
from ..config import ConfigError
from ..data import IMAGE, deterministic_transforms
from ..dicom.isolation import captured_warnings, is_fatal, warning_note
from ..dicom.reasons import DECODE_ERROR, UNSUPPORTED_MODALITY, DicomError, Rejected, is_failure
from ..dicom.scan import Series, scan
from ..folders import writable_folder
from ..model_package import LoadedModel, load_packaged_model
from ..scan_settings import scan_limits, selection_rules
from ..score_outputs import ScoreOutputs, merge_shards, shard_folder


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
    workers: int | None = Field(None, ge=0)  # None: 1 on <= 2 cores, else up to 8 (cores - 1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"
    aggregate: Literal["max", "mean"] | None = None  # None: the model's own (chosen at evaluate)
    parquet: bool = False
    progress: bool = False

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


@contextlib.contextmanager
def inference_threads(workers: int) -> Iterator[None]:
    """Leave the workers' cores to them: torch uses the remaining cores while scoring, then is restored."""
    before = torch.get_num_threads()
    if workers:
        torch.set_num_threads(max(1, min(before, (os.cpu_count() or 1) - workers)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ---- data ---------------------------------------------------------------------------------------------
def _dicom_error(exc: BaseException) -> DicomError | None:
    """The DicomError behind an exception (MONAI wraps transform errors in RuntimeError)."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, DicomError):
            return exc
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


def one_line(text: object, limit: int = 300) -> str:
    """One line, without object addresses (``<... at 0x7f..>``), so reruns give the same message."""
    return re.sub(r" at 0x[0-9a-fA-F]+", "", " ".join(str(text).split()))[:limit]


class SeriesDataset(torch.utils.data.Dataset):
    """Preprocessed series; a series that cannot be decoded becomes an error record, never an exception.

    Whatever decoding raises counts, ``BaseException`` subclasses from native decoders included (but not
    Ctrl-C or ``sys.exit``); warnings are recorded per series and only their VRs and tags reach a message.
    """

    def __init__(self, series: Sequence[Series], transform: Any):
        self.series = list(series)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.series)

    def __getitem__(self, index: int) -> dict[str, Any]:
        s = self.series[index]
        with captured_warnings() as records:
            try:
                image = self.transform({IMAGE: s.files[0] if s.kind == "xray" else list(s.files)})[IMAGE]
            except BaseException as exc:  # recorded per series; the batch goes on
                if is_fatal(exc):
                    raise
                return _error_record(index, exc, warning_note(records))
        tensor = image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(image)
        return {"index": index, IMAGE: tensor.float()}


def _error_record(index: int, exc: BaseException, note: str) -> dict[str, Any]:
    """The error record of one series: its DicomError's reason and message, else ``decode_error``."""
    found = _dicom_error(exc)
    if found is not None:
        reason, message = found.reason_code, one_line(found.message)
    else:
        reason, message = DECODE_ERROR, (f"cannot be decoded or preprocessed ({one_line(exc, 200)}): check the "
                                         "file with `medvit preview`, or exclude it")
    return {"index": index, "error": reason, "message": f"{message} ({note})" if note else message}


def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the decoded series; pass the error records through."""
    good = [b for b in batch if "error" not in b]
    return {"index": [b["index"] for b in good],
            IMAGE: torch.stack([b[IMAGE] for b in good]) if good else None,
            "errors": [b for b in batch if "error" in b]}


# ---- study bookkeeping ----------------------------------------------------------------------------------
def image_keys(series: Sequence[Series]) -> list[tuple[str, int]]:
    """(SOPInstanceUID, copy) per series: what tells apart the rows of series that share a SeriesInstanceUID.

    An X-ray or multi-frame file is its own scored image, keyed by its SOP Instance UID (an MR slice series by
    its SeriesInstanceUID alone: ""); ``copy`` numbers files of one study that repeat the same series and SOP
    UIDs (copies, or damaged exports), 1, 2, ... in path order, so every scored image keeps its row.
    """
    seen: dict[tuple[str, str, str], int] = {}
    keys = []
    for s in series:
        sop_uid = s.sop_instance_uid if s.kind == "xray" or s.multiframe else ""
        key = (s.study_uid, s.series_uid, sop_uid)
        seen[key] = seen.get(key, 0) + 1
        keys.append((sop_uid, seen[key]))
    return keys



@dataclass
class _Study:
    expected: int
    series_rows: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)
    best: tuple[float, np.ndarray, np.ndarray] | None = None  # (score, image, heatmap) of the top series


class StudyCollector:
    """Gathers series results until each study is complete, then writes it (and its heatmap)."""

    def __init__(self, series: Sequence[Series], loaded: LoadedModel, outputs: ScoreOutputs, aggregate: str,
                 heatmap_dir: Path | None):
        self.series = list(series)
        self.loaded = loaded
        self.outputs = outputs
        self.aggregate = aggregate
        self.heatmap_dir = heatmap_dir
        self.pending: dict[str, _Study] = {}
        for s in self.series:
            self.pending.setdefault(s.study_uid, _Study(0)).expected += 1
        self.images = image_keys(self.series)
        self.reported: set[int] = set()  # indices whose score or error arrived
        self.studies_scored = self.series_scored = self.series_failed = self.heatmaps = 0

    def add_score(self, index: int, score: float, image: np.ndarray | None, heat: np.ndarray | None) -> bool:
        s = self.series[index]
        self.reported.add(index)
        study = self.pending[s.study_uid]
        sop_uid, copy = self.images[index]
        study.series_rows.append({
            "StudyInstanceUID": s.study_uid, "SeriesInstanceUID": s.series_uid, "SOPInstanceUID": sop_uid,
            "copy": copy, "score": score, "modality": s.modality, "n_files": len(s.files), "model": self.loaded.label,
            "model_sha256": self.loaded.digest})
        if heat is not None and (study.best is None or score > study.best[0]):
            study.best = (score, image, heat)
        return self._maybe_finish(s.study_uid)

    def add_error(self, index: int, reason_code: str, message: str) -> bool:
        s = self.series[index]
        self.reported.add(index)
        self.pending[s.study_uid].errors.append(Rejected(s.files[0], reason_code, message).as_row())
        return self._maybe_finish(s.study_uid)

    def _maybe_finish(self, study_uid: str) -> bool:
        study = self.pending[study_uid]
        if len(study.series_rows) + len(study.errors) < study.expected:
            return False
        del self.pending[study_uid]
        row = None
        if study.series_rows:
            scores = [r["score"] for r in study.series_rows]
            score = float(max(scores) if self.aggregate == "max" else np.mean(scores))
            row = {"StudyInstanceUID": study_uid, "score": score,
                   "prediction": "abnormal" if score >= self.loaded.threshold else "normal",
                   "threshold": self.loaded.threshold, "model": self.loaded.label,
                   "model_sha256": self.loaded.digest, "n_series": len(study.series_rows),
                   "scored_at": datetime.now(UTC).isoformat(timespec="seconds")}
            if study.best is not None and self.heatmap_dir is not None:
                from ..heatmaps import write_heatmap

                write_heatmap(self.heatmap_dir / f"{study_uid}.png", study.best[1], study.best[2])
                self.heatmaps += 1
            self.studies_scored += 1
        self.series_scored += len(study.series_rows)
        self.series_failed += len(study.errors)
        self.outputs.add_study(study.series_rows, row, study.errors)
        return True


# ---- the stage -------------------------------------------------------------------------------------------
def _check_inputs(inputs: Sequence[Path]) -> None:
    for path in inputs:
        if not path.exists():
            raise ConfigError(f"input '{path}' does not exist: check the path")
        if not os.access(path, os.R_OK | (os.X_OK if path.is_dir() else 0)):
            raise ConfigError(f"input '{path}' cannot be read: check its permissions")


def _score_batches(loaded: LoadedModel, dataset: SeriesDataset, collector: StudyCollector, options: ScoreOptions,
                   device: torch.device, progress: Any) -> None:
    amp = engine.resolve_amp(options.amp, device)
    workers = auto_workers(options.workers)
    loader = torch.utils.data.DataLoader(dataset, batch_size=options.batch_size, shuffle=False, num_workers=workers,
                                         collate_fn=collate, pin_memory=device.type == "cuda",
                                         prefetch_factor=4 if workers else None)
    model = loaded.model.to(device).eval()
    heatmaps = None
    if options.heatmaps:
        from ..heatmaps import heatmap_batch as heatmaps
    with inference_threads(workers if device.type == "cpu" else 0):
        try:
            _run_loader(loader, model, collector, device, amp, progress, heatmaps)
        except LoaderFailed as failed:
            left = [i for i in range(len(dataset)) if i not in collector.reported]
            progress.write(f"medvit: a decoding worker process failed ({failed}): its {len(left)} unfinished "
                           "series are decoded again, one at a time, in a fresh worker process", file=sys.stderr)
            _retry_one_by_one(dataset, left, model, collector, device, amp, progress, heatmaps)


def _retry_one_by_one(dataset: SeriesDataset, left: list[int], model: torch.nn.Module, collector: StudyCollector,
                      device: torch.device, amp: torch.dtype | None, progress: Any, heatmaps: Any | None) -> None:
    """Decode ``left`` one series at a time in one worker process (never in this one: a file that crashes its
    decoder would take the run with it). A worker that dies twice with the same first unreported series died
    on it (once could be a series decoded but not yet delivered): it gets a ``decode_error`` row and the rest
    go on in a fresh worker."""
    suspect = None
    while left:
        retry = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, left), batch_size=1, shuffle=False,
                                            num_workers=1, collate_fn=collate, prefetch_factor=1)
        try:
            _run_loader(retry, model, collector, device, amp, progress, heatmaps)
            return
        except LoaderFailed as failed:
            left = [i for i in left if i not in collector.reported]
            if left and left[0] == suspect:
                progress.update(int(collector.add_error(suspect, DECODE_ERROR, (
                    f"the decoding process died on this file twice ({failed}): a crash in a native decoder or "
                    "the memory limit; check it with `medvit preview`, or exclude it"))))
                left, suspect = left[1:], None
            else:
                suspect = left[0] if left else None


class LoaderFailed(Exception):
    """The DataLoader itself failed (a worker process died): its unfinished items are retried once here."""


@contextlib.contextmanager
def _worker_errors_between_batches() -> Iterator[Callable[[], None]]:
    """Report a dead loader worker where the next batch is fetched, not wherever the main thread happens to be.

    torch raises "DataLoader worker (pid ...) is killed by signal" from its SIGCHLD handler, i.e. in the middle
    of the model's forward or of writing a study's rows. Inside this block SIGCHLD only sets a flag; the check
    it yields runs the previous handler (torch's, which raises that error) just before the next fetch.
    Outside the main thread there is no such handler (torch installs none) and nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return
    previous = signal.getsignal(signal.SIGCHLD)
    arrived = threading.Event()
    signal.signal(signal.SIGCHLD, lambda signum, frame: arrived.set())

    def check() -> None:
        if arrived.is_set():
            arrived.clear()
            if callable(previous):
                previous(signal.SIGCHLD, None)

    try:
        yield check
    finally:
        signal.signal(signal.SIGCHLD, previous)


def _batches(loader: Any) -> Iterator[dict[str, Any]]:
    """The loader's batches; a failure of the loader (not of the scoring) becomes ``LoaderFailed``."""
    try:
        iterator = iter(loader)  # starts the workers (and installs torch's SIGCHLD handler, once per process)
    except Exception as exc:
        raise LoaderFailed(one_line(exc, 120) or type(exc).__name__) from exc
    with _worker_errors_between_batches() as check:
        try:
            while True:
                try:
                    check()
                    batch = next(iterator)
                except StopIteration:
                    return
                except Exception as exc:  # e.g. "DataLoader worker (pid ...) is killed by signal", or an EOFError
                    raise LoaderFailed(one_line(exc, 120) or type(exc).__name__) from exc  # of a half-sent batch
                yield batch
        finally:
            _stop_workers(iterator)


def _stop_workers(iterator: Any) -> None:
    """Shut the loader's workers down and unregister their pids before torch's SIGCHLD handler is back: a
    registered dead worker would make it raise again later, anywhere (e.g. inside a progress-bar write)."""
    shutdown = getattr(iterator, "_shutdown_workers", None)  # multi-process iterators only
    if shutdown is not None:
        shutdown()


def _heap_trimmer() -> Callable[[], object]:
    """glibc's ``malloc_trim(0)`` (a no-op where the C library has none, e.g. macOS or musl).

    Each batch's activations are large blocks (MiB each at 224 px) that glibc, after the first free, serves
    from its heap instead of fresh mappings; small long-lived blocks in between keep the freed space from
    being returned, so the resident size of a long run grows although nothing is referenced (bench_score
    --memory-studies: 760 -> 1318 MiB over 2000 studies; trimmed after every 200 studies it stays at 598).
    Trimming after each batch hands the freed pages back.
    """
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):
        return lambda: None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return lambda: trim(0)


def _run_loader(loader: Any, model: torch.nn.Module, collector: StudyCollector, device: torch.device,
                amp: torch.dtype | None, progress: Any, heatmap_batch: Any | None) -> None:
    """Score every batch; error records and scores go to the collector as they arrive."""
    release = _heap_trimmer()
    with contextlib.closing(_batches(loader)) as batches:
        for batch in batches:
            for record in batch["errors"]:
                progress.update(int(collector.add_error(record["index"], record["error"], record["message"])))
            if batch[IMAGE] is None:
                continue
            _score_batch(batch, model, collector, device, amp, progress, heatmap_batch)
            del batch
            release()


def _score_batch(batch: dict[str, Any], model: torch.nn.Module, collector: StudyCollector, device: torch.device,
                 amp: torch.dtype | None, progress: Any, heatmap_batch: Any | None) -> None:
    images = batch[IMAGE].to(device, non_blocking=True)
    with torch.inference_mode(), engine.autocast(device, amp):
        scores = torch.sigmoid(model(images).float().reshape(-1)).cpu().tolist()
    heats = None
    if heatmap_batch is not None:
        with engine.autocast(device, amp):
            found = heatmap_batch(model, images)
        heats = None if found is None else found.float().numpy()
    pictures = batch[IMAGE][:, 0].float().numpy() if heats is not None else None
    for j, (index, score) in enumerate(zip(batch["index"], scores, strict=True)):
        finished = collector.add_score(index, score, None if pictures is None else pictures[j].copy(),
                                       None if heats is None else heats[j].copy())  # not views of the batch
        progress.update(int(finished))


def run_score(options: ScoreOptions) -> ScoreResult:
    """Entry point of the score stage: scan, score what is not scored yet, publish, merge shards."""
    from tqdm import tqdm

    from ..tracking import stage_run

    started, t0 = datetime.now(UTC), time.perf_counter()
    _check_inputs(options.inputs)
    writable_folder(options.out, "--out")
    shard = resolve_shard(options)
    device = engine.resolve_device(options.device, engine.Dist(local_rank=int(os.environ.get("LOCAL_RANK", "0"))))
    loaded = load_packaged_model(options.model, device="cpu", tracking=options.tracking_uri)
    t_model = time.perf_counter()
    config = loaded.config
    kind = config.data.kind
    folder = options.out if shard is None else shard_folder(options.out, *shard)
    outputs = ScoreOutputs(folder, overwrite=options.overwrite)

    scanned = scan([str(p) for p in options.inputs], selection_rules(config), workers=auto_workers(options.workers),
                   progress=options.progress, limits=scan_limits(config))
    t_scan = time.perf_counter()
    rejected = list(scanned.rejected) + [
        Rejected(s.files[0], UNSUPPORTED_MODALITY, f"{s.modality} series is {s.kind}, but the model scores {kind}: "
                 f"score it with a {s.kind} model") for s in scanned.series if s.kind != kind]
    rejected = [r for r in rejected if in_shard(r.path, shard)]
    mine = [s for s in scanned.series if s.kind == kind and in_shard(s.study_uid, shard)]
    done = outputs.scored_studies(loaded.digest)
    todo = [s for s in mine if s.study_uid not in done]
    carried = {f for s in mine if s.study_uid in done for f in s.files}
    aggregate = options.aggregate or loaded.meta.get("aggregate", "max")
    collector = StudyCollector(todo, loaded, outputs, aggregate, folder / "heatmaps" if options.heatmaps else None)
    n_todo_studies = len(collector.pending)
    with tqdm(total=n_todo_studies, desc="score", unit="study", disable=not options.progress) as bar:
        _score_batches(loaded, SeriesDataset(todo, deterministic_transforms(config)), collector, options, device, bar)
    t_score = time.perf_counter()

    scan_errors = pd.DataFrame([r.as_row() for r in rejected], columns=["path", "reason_code", "message"],
                               dtype=object)  # object, not Arrow strings: a path need not be valid UTF-8
    summary = _summary(options, loaded, shard, aggregate, started, scanned.n_files, mine, done, collector,
                       rejected, {"load_model": t_model - t0, "scan": t_scan - t_model, "score": t_score - t_scan})
    frames = outputs.merged(scan_errors, carried)
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
            run.log_dict(summary, "summary.json")
    return ScoreResult(folder, summary, frames, merged)


def _summary(options: ScoreOptions, loaded: LoadedModel, shard: tuple[int, int] | None, aggregate: str,
             started: datetime, n_files: int, mine: list[Series], done: set[str], collector: StudyCollector,
             rejected: list[Rejected], timings: dict[str, float]) -> dict[str, Any]:
    reasons: dict[str, int] = {}
    for r in rejected:
        reasons[r.reason_code] = reasons.get(r.reason_code, 0) + 1
    studies = {s.study_uid for s in mine}
    return {
        "model": {"label": loaded.label, "name": loaded.name, "version": loaded.version, "sha256": loaded.digest,
                  "source": loaded.source},
        "kind": loaded.config.data.kind, "threshold": loaded.threshold, "aggregate": aggregate,
        "shard": None if shard is None else f"{shard[0]}/{shard[1]}",
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "counts": {"files": n_files, "studies_found": len(studies), "series_found": len(mine),
                   "studies_skipped_already_scored": len(studies & done), "studies_scored": collector.studies_scored,
                   "series_scored": collector.series_scored, "series_failed": collector.series_failed,
                   "rejected_items": len(rejected), "heatmaps": collector.heatmaps,
                   "failures": collector.series_failed + sum(is_failure(r.reason_code) for r in rejected)},
        "rejected_by_reason": dict(sorted(reasons.items())),
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "studies_per_sec": round(collector.studies_scored / max(timings["score"], 1e-9), 3),
    }
