"""Data card (markdown) for a manifest, from ``data_cards/TEMPLATE.md``: counts only, nothing identifying."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from string import Template

import pandas as pd

TEMPLATE_PATH = Path(__file__).resolve().parents[2] / "data_cards" / "TEMPLATE.md"


def markdown_table(frame: pd.DataFrame) -> str:
    """A small DataFrame as a GitHub markdown table (no extra dependency)."""
    if frame.empty:
        return "_none_"
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def _template_text() -> str:
    if not TEMPLATE_PATH.is_file():
        raise FileNotFoundError(f"data card template {TEMPLATE_PATH} missing: install medvit from its repository")
    return TEMPLATE_PATH.read_text()


def _split_table(manifest: pd.DataFrame) -> pd.DataFrame:
    label = manifest["label"].map({0: "normal", 1: "abnormal"}).astype(object).fillna("unlabelled")
    table = pd.crosstab(manifest["split"], label)
    table["studies"] = manifest.groupby("split")["study_uid"].nunique()
    table["patients"] = manifest.groupby("split")["patient_key"].nunique()
    return table.reset_index().rename(columns={"split": "split (series)"})


def _count(manifest: pd.DataFrame, column: str) -> pd.DataFrame:
    return manifest.groupby(column).agg(series=("series_uid", "count"), studies=("study_uid", "nunique")).reset_index()


def _sizes(manifest: pd.DataFrame) -> pd.DataFrame:
    shape = manifest["rows"].astype(str) + "x" + manifest["columns"].astype(str)
    shape = shape.where(manifest["kind"] == "xray", shape + "x" + manifest["num_slices"].astype(str))
    return shape.value_counts().rename_axis("size").reset_index(name="series").head(20)


def render_data_card(manifest: pd.DataFrame, errors: pd.DataFrame, *, name: str, kind: str, digest: str,
                     n_files: int, label_source: str, key_source: str) -> str:
    """Markdown for ``manifest`` and its ``errors`` table."""
    rejects = errors.groupby("reason_code").size().rename("items").reset_index() if len(errors) else errors
    return Template(_template_text()).substitute(
        name=name,
        generated=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        digest=digest,
        kind=kind,
        label_source=label_source,
        n_files=n_files,
        n_series=len(manifest),
        n_studies=manifest["study_uid"].nunique(),
        n_patients=manifest["patient_key"].nunique(),
        split_table=markdown_table(_split_table(manifest)) if len(manifest) else "_none_",
        modality_table=markdown_table(_count(manifest, "modality")),
        manufacturer_table=markdown_table(_count(manifest, "manufacturer")),
        size_table=markdown_table(_sizes(manifest)) if len(manifest) else "_none_",
        reject_table=markdown_table(rejects) if len(errors) else "_none_",
        key_source=key_source,
    )
