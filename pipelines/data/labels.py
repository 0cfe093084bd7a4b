"""The labels CSV: ``StudyInstanceUID,label`` with label 0/1 or normal/abnormal (column names configurable)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipelines.config import ConfigError
from pipelines.dicom.reasons import BAD_LABEL, CONFLICTING_LABEL, Rejected

_LABEL_VALUES = {"0": 0, "1": 1, "normal": 0, "abnormal": 1, "0.0": 0, "1.0": 1}


def parse_label(value: object) -> int | None:
    """0/1, normal/abnormal (any case, surrounding spaces ignored) -> 0 or 1; anything else -> None."""
    return _LABEL_VALUES.get(str(value).strip().lower())


def read_labels(path: Path, study_column: str = "StudyInstanceUID",
                label_column: str = "label") -> tuple[dict[str, int], list[Rejected]]:
    """Study UID -> 0/1, plus a Rejected row for each unusable line (bad or conflicting label)."""
    if not path.is_file():
        raise ConfigError(f"labels file '{path}' not found: set data.labels to a CSV with "
                          f"columns {study_column},{label_column}")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ConfigError(f"labels file '{path}' is not a readable CSV: {exc}") from None
    missing = [c for c in (study_column, label_column) if c not in frame.columns]
    if missing:
        raise ConfigError(f"labels file '{path}' lacks column(s) {', '.join(missing)} (has: "
                          f"{', '.join(frame.columns)}); set data.study_column / data.label_column")
    labels: dict[str, int] = {}
    rejected: list[Rejected] = []
    conflicted: set[str] = set()
    for line_no, (study, raw_label) in enumerate(zip(frame[study_column], frame[label_column], strict=True), 2):
        study = study.strip()
        label = parse_label(raw_label)
        where = f"{path.name}:{line_no}"
        if label is None:
            rejected.append(Rejected(where, BAD_LABEL, f"label {raw_label!r} is not 0/1/normal/abnormal; "
                                                       "fix the labels CSV"))
        elif study in labels and labels[study] != label:
            conflicted.add(study)
            rejected.append(Rejected(where, CONFLICTING_LABEL, "study listed with both labels; keep one line "
                                                               "per study in the labels CSV"))
        else:
            labels[study] = label
    for study in conflicted:
        labels.pop(study, None)
    return labels, rejected
