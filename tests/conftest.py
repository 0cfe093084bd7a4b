"""Shared fixtures: small synthetic cohorts written once per test session as real DICOM files."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.config import PipelineConfig, validate_config
from pipelines.dicom.synth import write_cohort


@pytest.fixture(scope="session")
def xray_cohort(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("xray_cohort")
    write_cohort(out, "xray", studies=24, seed=11, image_size=96, difficulty=0.2)
    return out


@pytest.fixture(scope="session")
def mri_cohort(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mri_cohort")
    write_cohort(out, "mri", studies=6, seed=5, image_size=32, slices=12, difficulty=0.2)
    return out


def cohort_config(cohort: Path, kind: str, out: Path, **sections) -> PipelineConfig:
    """A config for a synthetic cohort with small CPU-sized preprocessing."""
    raw = {
        "name": f"test_{kind}",
        "data": {"dicom_root": str(cohort / "dicom"), "labels": str(cohort / "labels.csv"), "kind": kind,
                 "workers": 2},
        "preprocess": {"xray": {"img_size": 32}, "mri": {"img_size": [16, 16, 16], "spacing": [4.0, 4.0, 4.0]}},
        "split": {"val": 0.2, "test": 0.2, "seed": 0},
        "output": {"dir": str(out)},
        "privacy": {"key_env": "MEDVIT_TEST_NO_SUCH_ENV"},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return validate_config(raw)
