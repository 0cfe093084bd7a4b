"""`medvit score --engine spark`: the same scoring, scanned and decoded on Spark executors.

The driver only lists the input files and writes the outputs (``ScoreOutputs``: same files, same resume, same
atomic publish as local scoring). Executors work in two passes over ``mapInPandas``:

1. headers: each file's header is read (``headers.read_header``) to learn its study, or its reason to be
   rejected;
2. studies: files are repartitioned by study, each study is scanned and grouped exactly as ``medvit score``
   does, and scored by the one :class:`~pipelines.scoring.predictor.Predictor` of a model loaded once per
   executor process; each study's rows (``StudyCollector``) travel back to the driver as JSON.

Executors use the driver's Python (``PYSPARK_PYTHON``) and, in ``local[N]``, bind to 127.0.0.1 with the UI off.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from pipelines.dicom.reasons import Rejected

ROW_SCHEMA = "kind string, study string, payload string"  # kind: rejected | study | carried
_MODELS: dict[tuple[str, str | None], Any] = {}  # per executor process: the loaded model of each URI


@dataclass
class SparkScored:
    """What the executors returned, counted on the driver (the studies themselves went to ``on_study``)."""

    n_files: int
    rejected: list[Rejected] = field(default_factory=list)
    carried_files: set[str] = field(default_factory=set)  # files of studies skipped as already scored
    skipped_studies: set[str] = field(default_factory=set)
    studies: int = 0
    scored_studies: int = 0
    found_series: int = 0
    scored_series: int = 0
    failed_series: int = 0


def spark_session(master: str) -> Any:
    """A Spark session for ``master`` (``local[N]`` or a cluster URL) with executors on this Python."""
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = (SparkSession.builder.master(master).appName("medvit-score").config("spark.ui.enabled", "false")
               .config("spark.ui.showConsoleProgress", "false"))
    if master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        builder = builder.config("spark.driver.bindAddress", "127.0.0.1").config("spark.driver.host", "127.0.0.1")
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    return session


def header_pass(limits: dict[str, int]) -> Any:
    """Executor, pass 1 (a ``mapInPandas`` function): (path, study UID) of each file, or its rejection."""

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        yield from _headers(batches, limits)

    return run


def _headers(batches: Iterator[pd.DataFrame], limits: dict[str, int]) -> Iterator[pd.DataFrame]:
    from pipelines.dicom.headers import InstanceHeader, read_header
    from pipelines.dicom.limits import Limits

    bounds = Limits(**limits)
    for batch in batches:
        studies, rejected = [], []
        for path in batch["path"]:
            outcome = read_header(path, bounds)
            if isinstance(outcome, InstanceHeader):
                studies.append(outcome.study_uid)
                rejected.append("")
            else:
                studies.append("")
                rejected.append(json.dumps(outcome.as_row()) if isinstance(outcome, Rejected) else "")
        yield pd.DataFrame({"path": batch["path"], "study": studies, "rejected": rejected})


def _loaded(model: str, tracking: str | None) -> Any:
    from pipelines.scoring.model_package import load_packaged_model

    key = (model, tracking)
    if key not in _MODELS:
        _MODELS[key] = load_packaged_model(model, device="cpu", tracking=tracking)
    return _MODELS[key]


class _ListSink:
    """Collects what ``StudyCollector`` would write, to send it to the driver."""

    def __init__(self) -> None:
        self.studies: list[dict[str, Any]] = []

    def add_study(self, series_rows: Sequence[dict], row: dict | None, errors: Sequence[dict] = ()) -> None:
        self.studies.append({"series_rows": list(series_rows), "row": row, "errors": list(errors)})


def study_pass(model: str, tracking: str | None, done: frozenset[str], batch_size: int, threads: int,
               aggregate: str | None) -> Any:
    """Executor, pass 2 (a ``mapInPandas`` function): scan, group and score the studies of a partition.

    Studies go through the predictor ``STUDIES_PER_CHUNK`` at a time, so its batches mix studies as local
    scoring's do (one study at a time meant one-series batches), and rows leave a chunk at a time."""

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        import torch

        torch.set_num_threads(threads)
        frame = pd.concat(list(batches), ignore_index=True)
        if frame.empty:
            return
        from pipelines.scoring.predictor import Predictor

        loaded = _loaded(model, tracking)
        predictor = Predictor.from_package(loaded, aggregate=aggregate, batch_size=batch_size, workers=0)
        studies = list(frame.groupby("study", sort=True)["path"])
        carried = [("carried", study, json.dumps(sorted(files))) for study, files in studies if study in done]
        if carried:
            yield pd.DataFrame(carried, columns=["kind", "study", "payload"])
        todo = [(study, files) for study, files in studies if study not in done]
        for start in range(0, len(todo), STUDIES_PER_CHUNK):
            chunk = todo[start:start + STUDIES_PER_CHUNK]
            yield pd.DataFrame(_score_chunk(loaded, predictor, [f for _, files in chunk for f in sorted(files)]),
                               columns=["kind", "study", "payload"])

    return run


STUDIES_PER_CHUNK = 64
FILES_PER_PARTITION = 1024


def _score_chunk(loaded: Any, predictor: Any, files: list[str]) -> list[tuple[str, str, str]]:
    """Scan and score the files of whole studies; (kind, study, payload) rows."""
    from pipelines.data.scan_settings import scan_limits, selection_rules
    from pipelines.dicom.scan import scan
    from pipelines.scoring.collector import StudyCollector
    from pipelines.scoring.predictor import series_item

    scanned = scan(files, selection_rules(loaded.config), limits=scan_limits(loaded.config))
    rows = [("rejected", "", json.dumps(r.as_row())) for r in scanned.rejected]
    sink = _ListSink()
    collector = StudyCollector(scanned.series, loaded, predictor, sink, None)
    predictor.stream([series_item(s) for s in scanned.series],
                     lambda i, score, _p, _h: collector.add_score(i, score, None, None),
                     lambda i, reason, message: collector.add_error(i, reason, message))
    return rows + [("study", "", json.dumps(result, default=str)) for result in sink.studies]


def score_on_spark(inputs: Sequence[Path], model: str, tracking: str | None, done: set[str], master: str,
                   batch_size: int, limits: Any, aggregate: str | None,
                   on_study: Callable[[dict[str, Any]], None]) -> SparkScored:
    """List the files here, scan and score them on Spark; each study's rows (``{"series_rows", "row",
    "errors"}``) go to ``on_study`` as they arrive, so the driver holds no more than a partition's results.

    Pass 2 has at least one partition per ``FILES_PER_PARTITION`` files: tasks stay short and results stream."""
    from pipelines.dicom.scan import list_files

    found, unlisted = list_files([str(p) for p in inputs])
    paths = [str(p) for p in found]
    result = SparkScored(len(paths), unlisted)
    if not paths:
        return result
    spark = spark_session(master)
    parallelism = spark.sparkContext.defaultParallelism
    partitions = max(parallelism, -(-len(paths) // FILES_PER_PARTITION))
    files = spark.createDataFrame(pd.DataFrame({"path": paths})).repartition(parallelism)
    headers = files.mapInPandas(header_pass(vars(limits)), "path string, study string, rejected string").cache()
    threads = max(1, (os.cpu_count() or 1) // max(1, parallelism))
    scored = (headers.filter("study != ''").select("path", "study").repartition(partitions, "study")
              .mapInPandas(study_pass(model, tracking, frozenset(done), batch_size, threads, aggregate), ROW_SCHEMA))
    unreadable = headers.filter("rejected != ''").selectExpr("'rejected' AS kind", "'' AS study", "rejected AS payload")
    for row in unreadable.unionByName(scored).toLocalIterator(prefetchPartitions=True):  # one job, streamed
        payload = json.loads(row["payload"])
        if row["kind"] == "rejected":
            result.rejected.append(Rejected(**payload))
        elif row["kind"] == "carried":
            result.carried_files.update(payload)
            result.skipped_studies.add(row["study"])
        else:
            on_study(payload)
            result.studies += 1
            result.scored_studies += payload["row"] is not None
            result.scored_series += len(payload["series_rows"])
            result.failed_series += len(payload["errors"])
    result.found_series = result.scored_series + result.failed_series
    headers.unpersist()
    return result
