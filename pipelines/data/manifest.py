"""The manifest: one row per usable series, with pseudonymized patient key, label and split (Parquet).

File paths are stored relative to ``data.dicom_root`` so the manifest moves with the data and never holds
where a site keeps its scans. Patient identifiers never enter it: only the keyed-hash ``patient_key``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd

from pipelines.config import ConfigError, PipelineConfig
from pipelines.data.privacy import Pseudonymizer
from pipelines.dicom.reasons import Rejected
from pipelines.dicom.scan import Series
from pipelines.files import atomic_write

COLUMNS = [
    "patient_key", "study_uid", "series_uid", "modality", "kind", "manufacturer", "series_description",
    "body_part", "rows", "columns", "num_slices", "spacing", "multiframe", "transfer_syntax", "photometric",
    "files", "n_files", "label", "split",
]
ERROR_COLUMNS = ["path", "reason_code", "message"]


def _relative(path: str, root: Path) -> str:
    try:
        return os.path.relpath(path, root)
    except ValueError:  # another drive on Windows
        return path


def build_manifest(series: Iterable[Series], labels: Mapping[str, int] | None, pseudonym: Pseudonymizer,
                   dicom_root: Path) -> pd.DataFrame:
    """Rows for the scanned series; ``label`` is NaN for studies the labels CSV does not list."""
    rows = []
    for s in series:
        spacing = list(s.pixel_spacing) + ([s.slice_spacing] if s.kind == "mri" and s.slice_spacing else [])
        rows.append({
            "patient_key": pseudonym(s.patient_id),
            "study_uid": s.study_uid,
            "series_uid": s.series_uid,
            "modality": s.modality,
            "kind": s.kind,
            "manufacturer": s.manufacturer or "unknown",
            "series_description": s.series_description,
            "body_part": s.body_part,
            "rows": s.rows,
            "columns": s.columns,
            "num_slices": s.num_slices,
            "spacing": [float(v) for v in spacing],
            "multiframe": bool(s.multiframe),
            "transfer_syntax": s.transfer_syntax,
            "photometric": s.photometric,
            "files": [_relative(f, dicom_root) for f in s.files],
            "n_files": len(s.files),
            "label": (labels or {}).get(s.study_uid),
        })
    frame = pd.DataFrame(rows, columns=COLUMNS[:-1])
    frame["label"] = frame["label"].astype("Int64")
    return frame.sort_values(["study_uid", "series_uid"], ignore_index=True)


def write_manifest(frame: pd.DataFrame, path: Path) -> None:
    """Parquet, written to a temporary file and renamed into place."""
    atomic_write(path, lambda tmp: frame.to_parquet(tmp, index=False))


def read_manifest(path: Path) -> pd.DataFrame:
    frame = pd.read_parquet(path)
    missing = set(COLUMNS) - set(frame.columns)
    if missing:
        raise ValueError(f"manifest {path} lacks columns {sorted(missing)}: re-run `medvit ingest`")
    return frame


def manifest_path(config: PipelineConfig) -> Path:
    return config.output.dir / "manifest.parquet"


def load_manifest(config: PipelineConfig) -> pd.DataFrame:
    """The ingested manifest of ``config``; ConfigError (one line) when ingest has not run."""
    path = manifest_path(config)
    if not path.is_file():
        raise ConfigError(f"no manifest at '{path}': run `medvit ingest --config ...` first")
    return read_manifest(path)


def write_errors(rejected: Iterable[Rejected], path: Path) -> pd.DataFrame:
    """``errors.csv`` (path, reason_code, message), written atomically; a path that is not valid UTF-8 keeps
    its raw bytes (``surrogateescape``: read it back with ``encoding_errors="surrogateescape"``)."""
    frame = pd.DataFrame([r.as_row() for r in rejected], columns=ERROR_COLUMNS, dtype=object)  # not Arrow: see above
    atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False, errors="surrogateescape"))
    return frame


def manifest_digest(manifest: pd.DataFrame) -> str:
    """Stable content digest of the manifest (series, files, labels, splits)."""
    stable = manifest[["study_uid", "series_uid", "label", "split"]].astype(str)
    stable = stable.assign(files=manifest["files"].map(lambda fs: "|".join(fs)))
    return hashlib.sha256(stable.to_csv(index=False).encode()).hexdigest()[:16]
