"""The predictor: series in, series scores and study scores out. One home for scoring.

``medvit score``, evaluate, the pyfunc (and so ``mlflow models serve`` and ``spark_udf``) and the benchmarks
all score through :class:`Predictor`. It owns the dataset item of a series, the loader (decoding in worker
processes while the model scores the previous batch), device and AMP, error isolation (a series that cannot
be decoded becomes an error record; a dead worker costs a retry), heatmaps, study aggregation and the
threshold.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from pipelines import runtime
from pipelines.config import PipelineConfig
from pipelines.data.dataset import IMAGE, LABEL, CachedDataset, deterministic_transforms, preprocess_digest
from pipelines.dicom.isolation import captured_warnings, is_fatal, warning_note
from pipelines.dicom.reasons import DECODE_ERROR, DicomError
from pipelines.dicom.scan import Series

Aggregate = Literal["max", "mean"]
OnScore = Callable[[int, float, "np.ndarray | None", "np.ndarray | None"], None]  # index, score, picture, heat
OnError = Callable[[int, str, str], None]  # index, reason code, message


# ---- items ---------------------------------------------------------------------------------------------
def image_source(kind: str, files: Sequence[str]) -> str | list[str]:
    """What the reader is given for a series: an X-ray's one file, an MRI volume's list of files."""
    return str(files[0]) if kind == "xray" else [str(f) for f in files]


def series_item(series: Series) -> dict[str, Any]:
    """The dataset item of a scanned series (no label)."""
    return {IMAGE: image_source(series.kind, series.files), LABEL: -1.0, "study_uid": series.study_uid,
            "series_uid": series.series_uid}


def prediction_of(scores: pd.Series | np.ndarray, threshold: float) -> pd.Series:
    """``abnormal`` where the score reaches the threshold, else ``normal``."""
    return pd.Series(np.where(np.asarray(scores, dtype=float) >= threshold, "abnormal", "normal"))


def aggregate_scores(scores: Sequence[float], how: Aggregate) -> float:
    """A study's score from its series' scores."""
    return float(max(scores) if how == "max" else np.mean(scores))


# ---- a dataset that never raises -----------------------------------------------------------------------
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


def _error_record(index: int, exc: BaseException, note: str) -> dict[str, Any]:
    """The error record of one series: its DicomError's reason and message, else ``decode_error``."""
    found = _dicom_error(exc)
    if found is not None:
        reason, message = found.reason_code, one_line(found.message)
    else:
        reason, message = DECODE_ERROR, (f"cannot be decoded or preprocessed ({one_line(exc, 200)}): check the "
                                         "file with `medvit preview`, or exclude it")
    return {"index": index, "error": reason, "message": f"{message} ({note})" if note else message}


class SeriesDataset(torch.utils.data.Dataset):
    """Preprocessed series; a series that cannot be decoded becomes an error record, never an exception.

    Whatever decoding raises counts, ``BaseException`` subclasses from native decoders included (but not
    Ctrl-C or ``sys.exit``); warnings are recorded per series and only their VRs and tags reach a message.
    ``cache_dir`` keeps the preprocessed tensors (safetensors, never pickled) as training does.
    """

    def __init__(self, items: Sequence[dict[str, Any]], config: PipelineConfig, cache_dir: Any = None):
        self.inner = CachedDataset(items, deterministic_transforms(config), None, cache_dir, preprocess_digest(config))

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index: int) -> dict[str, Any]:
        with captured_warnings() as records:
            try:
                image = self.inner[index][IMAGE]
            except BaseException as exc:  # recorded per series; the batch goes on
                if is_fatal(exc):
                    raise
                return _error_record(index, exc, warning_note(records))
        tensor = image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(image)
        return {"index": index, IMAGE: tensor.float()}


def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the decoded series; pass the error records through."""
    good = [b for b in batch if "error" not in b]
    return {"index": [b["index"] for b in good],
            IMAGE: torch.stack([b[IMAGE] for b in good]) if good else None,
            "errors": [b for b in batch if "error" in b]}


# ---- loader failures -----------------------------------------------------------------------------------
class LoaderFailed(Exception):
    """The DataLoader itself failed (a worker process died): its unfinished items are retried."""


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


# ---- the predictor -------------------------------------------------------------------------------------
@dataclass
class Scored:
    """What :meth:`Predictor.score` returns: series scores (one row per scored item, in item order: the item's
    index, study_uid, series_uid, label and score) and error rows (index, reason_code, message)."""

    series: pd.DataFrame
    errors: pd.DataFrame


class Predictor:
    """Scores dataset items (see :func:`series_item`) with one model and its preprocessing config.

    ``threshold`` and ``aggregate`` turn series scores into study predictions; ``workers`` decode in separate
    processes (0: in this one); ``cache_dir`` reuses preprocessed tensors; ``heatmaps`` passes an attention
    rollout per scored series to the callback.
    """

    def __init__(self, model: torch.nn.Module, config: PipelineConfig, *, threshold: float = 0.5,
                 aggregate: Aggregate = "max", device: torch.device | str = "cpu", amp: str = "auto",
                 batch_size: int = 16, workers: int = 0, cache_dir: Any = None, heatmaps: bool = False):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.config, self.threshold, self.aggregate = config, float(threshold), aggregate
        self.amp = runtime.resolve_amp(amp, self.device)
        self.batch_size, self.workers, self.cache_dir, self.heatmaps = batch_size, workers, cache_dir, heatmaps

    @classmethod
    def from_package(cls, loaded: Any, *, aggregate: Aggregate | None = None, **options: Any) -> Predictor:
        """A predictor for a loaded model package (its threshold and study aggregation unless overridden)."""
        return cls(loaded.model, loaded.config, threshold=loaded.threshold,
                   aggregate=aggregate or loaded.meta.get("aggregate", "max"), **options)

    # -- studies
    def study_score(self, scores: Sequence[float]) -> float:
        return aggregate_scores(scores, self.aggregate)

    def prediction(self, score: float) -> str:
        return "abnormal" if score >= self.threshold else "normal"

    def studies(self, series_scores: pd.DataFrame) -> pd.DataFrame:
        """One row per study (sorted by UID): score, label (of its first series), n_series, prediction."""
        grouped = series_scores.groupby("study_uid", sort=True)
        out = grouped.agg(score=("score", self.aggregate), label=("label", "first"),
                          n_series=("series_uid", "nunique")).reset_index()
        return out.assign(prediction=prediction_of(out["score"], self.threshold).to_numpy())

    # -- series
    def score(self, items: Sequence[dict[str, Any]]) -> Scored:
        """Series scores and error rows for ``items``, collected in memory."""
        scores: dict[int, float] = {}
        errors: list[dict[str, Any]] = []
        self.stream(items, lambda i, s, _p, _h: scores.__setitem__(i, s),
                    lambda i, reason, message: errors.append({"index": i, "reason_code": reason, "message": message}))
        rows = [{"item": i, "study_uid": items[i]["study_uid"], "series_uid": items[i]["series_uid"],
                 "label": items[i].get(LABEL, -1.0), "score": scores[i]} for i in sorted(scores)]
        return Scored(pd.DataFrame(rows, columns=["item", "study_uid", "series_uid", "label", "score"]),
                      pd.DataFrame(errors, columns=["index", "reason_code", "message"]))

    def loader(self, items: Sequence[dict[str, Any]]) -> torch.utils.data.DataLoader:
        """The loader :meth:`stream` scores from: batches of decoded series and error records."""
        return torch.utils.data.DataLoader(SeriesDataset(items, self.config, self.cache_dir), batch_size=self.batch_size,
                                           shuffle=False, num_workers=self.workers, collate_fn=collate,
                                           pin_memory=self.device.type == "cuda",
                                           prefetch_factor=4 if self.workers else None)

    def stream(self, items: Sequence[dict[str, Any]], on_score: OnScore, on_error: OnError,
               notify: Callable[[str], None] = lambda message: None) -> None:
        """Score ``items``, calling ``on_score`` / ``on_error`` per item as results arrive (not in order).

        A worker process that dies costs a retry: its unfinished items are decoded again one at a time in a
        fresh worker; ``notify`` gets a line saying so.
        """
        loader = self.loader(items)
        dataset = loader.dataset
        reported: set[int] = set()

        def score_cb(i: int, s: float, p: np.ndarray | None, h: np.ndarray | None) -> None:
            reported.add(i)
            on_score(i, s, p, h)

        def error_cb(i: int, reason: str, message: str) -> None:
            reported.add(i)
            on_error(i, reason, message)

        with inference_threads(self.workers if self.device.type == "cpu" else 0):
            try:
                self._run_loader(loader, score_cb, error_cb)
            except LoaderFailed as failed:
                left = [i for i in range(len(dataset)) if i not in reported]
                notify(f"medvit: a decoding worker process failed ({failed}): its {len(left)} unfinished series are "
                       "decoded again, one at a time, in a fresh worker process")
                self._retry_one_by_one(dataset, left, reported, score_cb, error_cb)

    def _retry_one_by_one(self, dataset: SeriesDataset, left: list[int], reported: set[int], on_score: OnScore,
                          on_error: OnError) -> None:
        """Decode ``left`` one series at a time in one worker process (never in this one: a file that crashes
        its decoder would take the run with it). A worker that dies twice with the same first unreported series
        died on it (once could be a series decoded but not yet delivered): it gets a ``decode_error`` row and
        the rest go on in a fresh worker."""
        suspect = None
        while left:
            retry = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, left), batch_size=1, shuffle=False,
                                                num_workers=1, collate_fn=collate, prefetch_factor=1,
                                                pin_memory=self.device.type == "cuda")
            try:
                self._run_loader(retry, on_score, on_error)
                return
            except LoaderFailed as failed:
                left = [i for i in left if i not in reported]
                if left and left[0] == suspect:
                    on_error(suspect, DECODE_ERROR, (
                        f"the decoding process died on this file twice ({failed}): a crash in a native decoder or "
                        "the memory limit; check it with `medvit preview`, or exclude it"))
                    left, suspect = left[1:], None
                else:
                    suspect = left[0] if left else None

    def _run_loader(self, loader: Any, on_score: OnScore, on_error: OnError) -> None:
        """Score every batch; error records and scores go to the callbacks as they arrive."""
        release = _heap_trimmer()
        with contextlib.closing(_batches(loader)) as batches:
            for batch in batches:
                for record in batch["errors"]:
                    on_error(record["index"], record["error"], record["message"])
                if batch[IMAGE] is not None:
                    self._score_batch(batch, on_score)
                del batch
                release()

    def _score_batch(self, batch: dict[str, Any], on_score: OnScore) -> None:
        images = batch[IMAGE].to(self.device, non_blocking=True)
        with torch.inference_mode(), runtime.autocast(self.device, self.amp):
            scores = torch.sigmoid(self.model(images).float().reshape(-1)).cpu().tolist()
        heats = None
        if self.heatmaps:
            from pipelines.scoring.heatmaps import heatmap_batch

            with runtime.autocast(self.device, self.amp):
                found = heatmap_batch(self.model, images)
            heats = None if found is None else found.float().numpy()
        pictures = batch[IMAGE][:, 0].float().numpy() if heats is not None else None
        for j, (index, score) in enumerate(zip(batch["index"], scores, strict=True)):
            on_score(index, score, None if pictures is None else pictures[j].copy(),  # not views of the batch
                     None if heats is None else heats[j].copy())
