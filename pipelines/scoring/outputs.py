"""The files of `medvit score`: rows appended while scoring, final files by atomic rename, resume, shard merge.

While a run works, rows go to ``OUT/.partial/*.csv``, one study at a time (its series rows, then its study
row), flushed as they finish. A study counts as scored once its study row is complete: a row cut short by a
kill is truncated away on the next start, and series rows without their study row are dropped. At the end
the previous final files and the partial rows are merged (one row per study, per series, per error) and each
final file is replaced by rename, so a reader sees the old file or the new one, never half of one.

``series_scores.csv`` has one row per scored image: an X-ray (or multi-frame file) is keyed by its
``SOPInstanceUID`` as well as its series, and ``copy`` (1, 2, ...) tells apart files of one study that
repeat the same UIDs. Paths in ``errors.csv`` are written losslessly: a file name that is not valid UTF-8
keeps its raw bytes (Python's ``surrogateescape``), so the CSV is UTF-8 except in exactly those names; read
it with ``pd.read_csv(..., dtype=object, encoding_errors="surrogateescape")`` and ``os.fsencode(path)`` gives the bytes.
"""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from pipelines.files import atomic_write

STUDY_COLUMNS = ["StudyInstanceUID", "score", "prediction", "threshold", "model", "model_sha256", "n_series",
                 "scored_at"]
SERIES_COLUMNS = ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "copy", "score", "modality", "n_files",
                  "model", "model_sha256"]
ERROR_COLUMNS = ["path", "reason_code", "message"]
FILES = {"scores": STUDY_COLUMNS, "series_scores": SERIES_COLUMNS, "errors": ERROR_COLUMNS}
KEYS = {"scores": ["StudyInstanceUID"], "series_scores": ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "copy"],
        "errors": ["path", "reason_code"]}
ENCODING_ERRORS = "surrogateescape"  # file names that are not UTF-8 keep their bytes (see the module docstring)
PARTIAL = ".partial"
SHARDS = "shards"


def _complete_lines(path: Path) -> None:
    """Cut a file back to its last newline (a row half-written when the process was killed)."""
    if not path.is_file():
        return
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end != len(data):
        with open(path, "r+b") as handle:
            handle.truncate(end)


def read_rows(path: Path, columns: Sequence[str]) -> pd.DataFrame:
    """A CSV of ours as strings (missing file: empty frame with ``columns``; a column an older version did not
    write: empty strings). Python strings (dtype object), since Arrow strings cannot hold a path that is not
    valid UTF-8."""
    if not path.is_file() or path.stat().st_size == 0:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})
    frame = pd.read_csv(path, dtype=object, keep_default_na=False, encoding_errors=ENCODING_ERRORS)
    return frame.reindex(columns=list(columns), fill_value="")


def dedupe(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """One row per key (the last one), sorted by key."""
    kept = frame.drop_duplicates(keys, keep="last")
    rows = list(zip(*(kept[k].map(_utf8_order) for k in keys), strict=True))
    order = sorted(range(len(kept)), key=rows.__getitem__)  # stable; pandas would turn paths into Arrow text
    return kept.iloc[order].reset_index(drop=True)


def _utf8_order(value: object) -> object:
    """Text as its (surrogateescape) UTF-8 bytes: code point order, and sortable when a path is not UTF-8."""
    return value.encode("utf-8", ENCODING_ERRORS) if isinstance(value, str) else value


class _Appender:
    """A CSV opened for appending whole rows; the header is written when the file is new."""

    def __init__(self, path: Path, columns: Sequence[str]):
        _complete_lines(path)
        new = not path.is_file() or path.stat().st_size == 0
        self.handle = open(path, "a", newline="", encoding="utf-8", errors=ENCODING_ERRORS)  # noqa: SIM115 - closed by close()
        self.writer = csv.DictWriter(self.handle, fieldnames=list(columns), lineterminator="\n")
        if new:
            self.writer.writeheader()

    def write(self, rows: Iterable[Mapping[str, Any]]) -> None:
        self.writer.writerows(rows)

    def flush(self) -> None:
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


class ScoreOutputs:
    """The output folder of one score run (or one shard of it)."""

    def __init__(self, folder: Path, *, overwrite: bool = False):
        self.folder = folder
        self.partial = folder / PARTIAL
        if overwrite:
            for name in FILES:
                (folder / f"{name}.csv").unlink(missing_ok=True)
            for extra in ("scores.parquet", "series_scores.parquet", "summary.json"):
                (folder / extra).unlink(missing_ok=True)
            shutil.rmtree(self.partial, ignore_errors=True)
            shutil.rmtree(folder / "heatmaps", ignore_errors=True)
        self.partial.mkdir(parents=True, exist_ok=True)
        self._appenders = {name: _Appender(self.partial / f"{name}.csv", cols) for name, cols in FILES.items()}

    def final(self, name: str) -> Path:
        return self.folder / f"{name}.csv"

    def previous(self, name: str) -> pd.DataFrame:
        """Final rows of earlier runs followed by this folder's partial rows (later rows win on merge)."""
        columns = FILES[name]
        self._appenders[name].flush()
        return pd.concat([read_rows(self.final(name), columns), read_rows(self.partial / f"{name}.csv", columns)],
                         ignore_index=True)

    def scored_studies(self, model_sha256: str) -> set[str]:
        """Studies already scored by the model with this weights digest (final or partial rows)."""
        rows = self.previous("scores")
        return set(rows.loc[rows["model_sha256"] == model_sha256, "StudyInstanceUID"])

    def add_study(self, series_rows: Sequence[Mapping[str, Any]], study_row: Mapping[str, Any] | None,
                  errors: Sequence[Mapping[str, Any]] = ()) -> None:
        """Record one finished study: series and error rows first, the study row last (it marks it done)."""
        self._appenders["errors"].write(errors)
        self._appenders["series_scores"].write(series_rows)
        self._appenders["series_scores"].flush()
        self._appenders["errors"].flush()
        if study_row is not None:
            self._appenders["scores"].write([study_row])
            self._appenders["scores"].flush()

    def merged(self, scan_errors: pd.DataFrame, carried_error_paths: set[str]) -> dict[str, pd.DataFrame]:
        """Earlier final rows merged with this run's rows: one row per study, per series, per error.

        ``carried_error_paths``: files of studies skipped as already scored, whose earlier error rows (a
        failed series of a scored study) stay in errors.csv.
        """
        old_errors = read_rows(self.final("errors"), ERROR_COLUMNS)
        scores = dedupe(self.previous("scores"), KEYS["scores"])
        done = dict(zip(scores["StudyInstanceUID"], scores["model_sha256"], strict=True))
        series = self.previous("series_scores")
        series = series[series["StudyInstanceUID"].map(done).eq(series["model_sha256"])]
        errors = pd.concat([scan_errors.astype(object), old_errors[old_errors["path"].isin(carried_error_paths)],
                            read_rows(self.partial / "errors.csv", ERROR_COLUMNS)], ignore_index=True)
        return {"scores": scores, "series_scores": dedupe(series, KEYS["series_scores"]),
                "errors": dedupe(errors, KEYS["errors"])}

    def publish(self, frames: Mapping[str, pd.DataFrame], summary: dict[str, Any], parquet: bool = False) -> None:
        """Replace the final files by atomic rename, then drop the partial rows they now hold."""
        publish(self.folder, frames, summary, parquet)
        self.close()
        shutil.rmtree(self.partial, ignore_errors=True)

    def close(self) -> None:
        for appender in self._appenders.values():
            appender.close()


def publish(folder: Path, frames: Mapping[str, pd.DataFrame], summary: dict[str, Any], parquet: bool) -> None:
    """Write every final file by atomic rename; ``summary.json`` last (its presence means complete)."""
    for name, frame in frames.items():
        atomic_write(folder / f"{name}.csv", lambda tmp, f=frame: f.to_csv(tmp, index=False, lineterminator="\n",
                                                                          errors=ENCODING_ERRORS))
        if parquet and name != "errors":
            atomic_write(folder / f"{name}.parquet", lambda tmp, f=frame: typed(f).to_parquet(tmp, index=False))
    atomic_write(folder / "summary.json", lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=2) + "\n"))


def typed(frame: pd.DataFrame) -> pd.DataFrame:
    """Numbers as numbers for Parquet (the CSVs are handled as strings so they round-trip exactly)."""
    out = frame.copy()
    for column in ("score", "threshold"):
        if column in out:
            out[column] = out[column].astype(float)
    for column in ("n_series", "n_files", "copy"):
        if column in out:
            out[column] = out[column].astype(int)
    return out


# ---- shards -------------------------------------------------------------------------------------------
def shard_folder(out: Path, index: int, count: int) -> Path:
    return out / SHARDS / f"{index}-of-{count}"


def merge_shards(out: Path, parquet: bool = False) -> dict[str, Any] | None:
    """Merge complete shard outputs under ``out/shards`` into ``out``; None while a shard is missing.

    Every shard folder must name the same shard count and hold its ``summary.json`` (written last).
    """
    folders = sorted((out / SHARDS).glob("*-of-*")) if (out / SHARDS).is_dir() else []
    counts = {f.name.split("-of-")[1] for f in folders}
    if len(counts) != 1:
        return None
    count = int(counts.pop())
    ordered = [shard_folder(out, i, count) for i in range(count)]
    if not all((f / "summary.json").is_file() for f in ordered):
        return None
    frames = {name: dedupe(pd.concat([read_rows(f / f"{name}.csv", columns) for f in ordered], ignore_index=True),
                           KEYS[name]) for name, columns in FILES.items()}
    summary = merge_summaries([json.loads((f / "summary.json").read_text()) for f in ordered])
    for folder in ordered:  # copies, so merging twice (two shards finishing together) is harmless
        for png in sorted((folder / "heatmaps").glob("*.png")):
            (out / "heatmaps").mkdir(parents=True, exist_ok=True)
            shutil.copy2(png, out / "heatmaps" / png.name)
    publish(out, frames, summary, parquet)
    return summary


def merge_summaries(summaries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Counts summed over shards (files: every shard scans them all); the model and options from the first."""
    merged = {k: v for k, v in summaries[0].items() if k not in ("counts", "timings_s", "rejected_by_reason")}
    merged["shard"] = None
    merged["shards"] = len(summaries)
    merged["counts"] = {k: sum(s["counts"].get(k, 0) for s in summaries) for k in summaries[0]["counts"]}
    merged["counts"]["files"] = summaries[0]["counts"].get("files", 0)
    reasons: dict[str, int] = {}
    for s in summaries:
        for code, n in s.get("rejected_by_reason", {}).items():
            reasons[code] = reasons.get(code, 0) + n
    merged["rejected_by_reason"] = dict(sorted(reasons.items()))
    merged["timings_s"] = {k: max(s["timings_s"].get(k, 0.0) for s in summaries) for k in summaries[0]["timings_s"]}
    return merged
