"""Shared fixtures: small synthetic cohorts written once per test session as real DICOM files."""

from __future__ import annotations

from pathlib import Path

import pytest

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
