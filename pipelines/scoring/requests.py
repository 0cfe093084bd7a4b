"""Scoring requests: one study per input row, one output row per input row, in input order.

This is the model's Python contract: the pyfunc's ``predict`` (the Python API, ``mlflow models serve`` and
``mlflow.pyfunc.spark_udf``) scores a table of requests through :func:`score_requests` and the one
:class:`~pipelines.scoring.predictor.Predictor`. A request row names a study by ``path`` (its file or folder)
or carries ``dicom`` (the bytes of one DICOM file, for callers that share no file system; base64 in JSON).
A row uses one of the two; the other is missing or empty ("" in JSON, where MLflow cannot convert null to
binary). A bad row is an error row (``status`` a reason code, ``message`` one line with the fix), never an
exception.

Paths under ``mlflow models serve`` are read only below the roots in ``MEDVIT_SERVE_ROOTS`` (os.pathsep
separated; default: none, so a served model takes bytes only). When the variable is set it applies
everywhere; when it is not, the Python API and ``spark_udf`` read any path the caller names. Symbolic links
are followed to their targets before the check, for a named file and for every file of a named folder.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.dicom.reasons import is_failure
from pipelines.dicom.scan import SelectionRules, Series, list_files, scan
from pipelines.scoring.predictor import Predictor, Scored, series_item

ROOTS_ENV = "MEDVIT_SERVE_ROOTS"
SERVING_ENV = "_MLFLOW_IS_IN_SERVING_ENVIRONMENT"  # set by MLflow's scoring server (mlflow models serve)
OUTPUT_COLUMNS = (("StudyInstanceUID", "string"), ("score", "double"), ("prediction", "string"),
                  ("n_series", "long"), ("status", "string"), ("message", "string"))
OK = "ok"
NO_INPUT = "no_input"  # neither path nor dicom
PATH_NOT_ALLOWED = "path_not_allowed"  # outside MEDVIT_SERVE_ROOTS
NOT_FOUND = "not_found"
NO_STUDY = "no_study"  # nothing scorable in the row's files (the first file's reason is in the message)
SEVERAL_STUDIES = "several_studies"  # one row is one study


def signature() -> Any:
    """The pyfunc's MLflow signature: optional ``path`` and ``dicom`` in; every output column declared, so
    ``spark_udf(..., result_type=...)`` can be inferred as a struct."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string", "path", required=False), ColSpec("binary", "dicom", required=False)]),
        outputs=Schema([ColSpec(kind, name) for name, kind in OUTPUT_COLUMNS]))


def allowed_roots() -> list[Path] | None:
    """The roots paths must lie under, or None when any path may be read (not serving, no roots set)."""
    named = os.environ.get(ROOTS_ENV)
    if named is None:
        return [] if os.environ.get(SERVING_ENV, "").lower() == "true" else None
    return [Path(p).resolve() for p in named.split(os.pathsep) if p]


def _outside(path: Path, roots: list[Path]) -> bool:
    resolved = path.resolve()  # symlinks resolved: a link cannot lead out of a root
    return not any(resolved.is_relative_to(root) for root in roots)


def _not_allowed(what: str, roots: list[Path]) -> tuple[str, str]:
    where = ", ".join(map(str, roots)) if roots else "none"
    return PATH_NOT_ALLOWED, (f"{what} outside the roots this server may read ({ROOTS_ENV}: {where}): send the "
                              "file's bytes in the dicom column, or add its folder to " + ROOTS_ENV)


def path_problem(path: str, roots: list[Path] | None) -> tuple[str, str] | None:
    """(reason, message) when ``path`` may not be read or does not exist, else None."""
    if roots is not None and _outside(Path(path), roots):
        return _not_allowed("path is", roots)
    if not Path(path).resolve().exists():
        return NOT_FOUND, "path does not exist on the scoring machine: check it, or send the bytes in dicom"
    return None


def request_files(path: str, roots: list[Path] | None) -> tuple[list[str], tuple[str, str] | None]:
    """The files a path request reads, or its error: under roots, a folder whose files (a symlink among them)
    lead outside every root is refused as a whole."""
    problem = path_problem(path, roots)
    if problem is not None or roots is None:
        return [path], problem
    found, _ = list_files([path])
    leaving = [f for f in found if _outside(f, roots)]
    if leaving:
        return [], _not_allowed(f"{len(leaving)} file(s) of this folder lead (through symbolic links)", roots)
    return [str(f) for f in found] or [path], None


@dataclass
class _Row:
    """One request row on its way: its series (indices into the scored items) or its error."""

    study_uid: str = ""
    items: list[int] = field(default_factory=list)
    error: tuple[str, str] | None = None
    note: str = ""


def _cell(frame: pd.DataFrame, column: str, i: int) -> Any:
    """The row's value of ``column``; None when the column is absent or the value is missing or empty (a JSON
    caller sends "" for the column a row does not use: MLflow cannot convert null to binary)."""
    if column not in frame.columns:
        return None
    value = frame[column].iloc[i]
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return value if len(value) else None


def _series_of(sources: Sequence[str], rules: SelectionRules, limits: Any) -> tuple[list[Series], _Row]:
    """The scorable series of one request's files, and the row so far (its error when there are none)."""
    scanned = scan(list(sources), rules, limits=limits)
    failures = [r for r in scanned.rejected if is_failure(r.reason_code)]
    first = (failures or list(scanned.rejected) or [None])[0]
    studies = sorted({s.study_uid for s in scanned.series})
    if not studies:
        if first is None:
            return [], _Row(error=(NO_STUDY, "no DICOM image in the request: send one study's files"))
        return [], _Row(error=(NO_STUDY if not is_failure(first.reason_code) else first.reason_code,
                               f"nothing to score: {first.reason_code}: {first.message}"))
    if len(studies) > 1:
        return [], _Row(error=(SEVERAL_STUDIES, f"{len(studies)} studies in one request: send one study per row "
                               "(`medvit score` scores whole folders, one row per study)"))
    note = f"{len(scanned.rejected)} file(s) not scored (first: {first.reason_code})" if first is not None else ""
    return list(scanned.series), _Row(study_uid=studies[0], note=note)


def score_requests(predictor: Predictor, rules: SelectionRules, limits: Any, requests: pd.DataFrame) -> pd.DataFrame:
    """One output row per request row, in order: the study's UID, score, prediction, number of series scored,
    ``status`` (``ok`` or a reason code) and ``message``. All rows' series are scored in one batched pass."""
    roots = allowed_roots()
    rows: list[_Row] = []
    series: list[Series] = []
    with tempfile.TemporaryDirectory(prefix="medvit-request-") as tmp:
        for i in range(len(requests)):
            path, data = _cell(requests, "path", i), _cell(requests, "dicom", i)
            if data is not None:
                source = Path(tmp, f"request_{i}.dcm")
                source.write_bytes(bytes(data))
                sources = [str(source)]
            elif path is not None:
                sources, problem = request_files(str(path), roots)
                if problem is not None:
                    rows.append(_Row(error=problem))
                    continue
            else:
                rows.append(_Row(error=(NO_INPUT, "the row has neither a path nor dicom bytes: give one")))
                continue
            found, row = _series_of(sources, rules, limits)
            row.items = list(range(len(series), len(series) + len(found)))
            series += found
            rows.append(row)
        scored = predictor.score([series_item(s) for s in series]) if series else None
    return _output(rows, scored, predictor)


def _output(rows: Sequence[_Row], scored: Scored | None, predictor: Predictor) -> pd.DataFrame:
    scores = dict(zip(scored.series["item"], scored.series["score"], strict=True)) if scored is not None else {}
    errors = ({int(i): (reason, message) for i, reason, message in scored.errors.itertuples(index=False)}
              if scored is not None else {})
    out = []
    for row in rows:
        got = [scores[i] for i in row.items if i in scores]
        failed = [errors[i] for i in row.items if i in errors]
        if row.error is None and not got:
            row.error = failed[0] if failed else (NO_STUDY, "no series could be scored")
        if row.error is not None:
            out.append((row.study_uid, float("nan"), "", 0, *row.error))
            continue
        note = "; ".join(filter(None, [row.note, f"{len(failed)} series failed (first: {failed[0][0]})" if failed
                                       else ""]))
        score = predictor.study_score(got)
        out.append((row.study_uid, score, predictor.prediction(score), len(got), OK, note))
    frame = pd.DataFrame(out, columns=[name for name, _ in OUTPUT_COLUMNS])
    return frame.astype({"StudyInstanceUID": str, "score": "float64", "prediction": str, "n_series": "int64",
                         "status": str, "message": str})
