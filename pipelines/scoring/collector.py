"""Study bookkeeping of `medvit score`: series results gathered until each study is complete, then written
(rows, the study's score and prediction from the predictor, its heatmap)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.dicom.reasons import Rejected
from pipelines.dicom.scan import Series
from pipelines.scoring.model_package import LoadedModel
from pipelines.scoring.outputs import ScoreOutputs
from pipelines.scoring.predictor import Predictor


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

    def __init__(self, series: Sequence[Series], loaded: LoadedModel, predictor: Predictor, outputs: ScoreOutputs,
                 heatmap_dir: Path | None):
        self.series = list(series)
        self.loaded = loaded
        self.predictor = predictor
        self.outputs = outputs
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
            score = self.predictor.study_score([r["score"] for r in study.series_rows])
            row = {"StudyInstanceUID": study_uid, "score": score, "prediction": self.predictor.prediction(score),
                   "threshold": self.predictor.threshold, "model": self.loaded.label,
                   "model_sha256": self.loaded.digest, "n_series": len(study.series_rows),
                   "scored_at": datetime.now(UTC).isoformat(timespec="seconds")}
            if study.best is not None and self.heatmap_dir is not None:
                from pipelines.scoring.heatmaps import write_heatmap

                write_heatmap(self.heatmap_dir / f"{study_uid}.png", study.best[1], study.best[2])
                self.heatmaps += 1
            self.studies_scored += 1
        self.series_scored += len(study.series_rows)
        self.series_failed += len(study.errors)
        self.outputs.add_study(study.series_rows, row, study.errors)
        return True
