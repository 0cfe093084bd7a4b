"""`medvit score --engine spark` on a real Spark `local[2]`: the same outputs as local scoring, bad files in
errors.csv, and a rerun that scores nothing new (make test installs medvit[spark]; a missing Spark or Java fails)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.pipeline import TINY_MODEL, cohort_config, write_untrained_package

from pipelines.dicom.synth import write_cohort
from pipelines.stages.score import ScoreOptions, run_score


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("spark_in")
    write_cohort(root / "cohort", "xray", studies=30, seed=41, image_size=64, difficulty=0.2)
    bad = root / "not_dicom"
    bad.mkdir()
    (bad / "notes.txt").write_text("not DICOM")
    (bad / "cut.dcm").write_bytes((next((root / "cohort" / "dicom").rglob("*.dcm"))).read_bytes()[:600])
    return [root / "cohort" / "dicom", bad]


@pytest.fixture(scope="module")
def package(xray_cohort, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("spark_model")
    return write_untrained_package(folder, cohort_config(xray_cohort, "xray", folder, model=TINY_MODEL), "spark")


def options(inputs, package, out, engine) -> ScoreOptions:
    return ScoreOptions(inputs=inputs, model=str(package), out=out, device="cpu", workers=0, engine=engine)


def test_spark_engine_gives_the_local_outputs_and_resumes(inputs, package, tmp_path):
    local = run_score(options(inputs, package, tmp_path / "local", "local"))
    spark = run_score(options(inputs, package, tmp_path / "spark", "spark"))
    assert spark.summary["engine"] == "spark" and spark.summary["counts"]["studies_scored"] == 30
    for name, key in (("scores", ["StudyInstanceUID"]), ("series_scores", ["SeriesInstanceUID", "SOPInstanceUID"])):
        a = local.frames[name].sort_values(key, ignore_index=True)
        b = spark.frames[name].sort_values(key, ignore_index=True)
        assert list(a[key].itertuples(index=False)) == list(b[key].itertuples(index=False)), name
        np.testing.assert_allclose(a["score"].astype(float), b["score"].astype(float), atol=1e-6)
    assert (local.frames["scores"].sort_values("StudyInstanceUID")["prediction"].tolist()
            == spark.frames["scores"].sort_values("StudyInstanceUID")["prediction"].tolist())
    errors = {tuple(r) for r in spark.frames["errors"][["path", "reason_code"]].itertuples(index=False)}
    assert errors == {tuple(r) for r in local.frames["errors"][["path", "reason_code"]].itertuples(index=False)}
    assert {Path(p).name for p, _ in errors} == {"notes.txt", "cut.dcm"} and spark.partial
    again = run_score(options(inputs, package, tmp_path / "spark", "spark"))
    assert again.summary["counts"]["studies_scored"] == 0
    assert again.summary["counts"]["studies_skipped_already_scored"] == 30
    pd.testing.assert_frame_equal(again.frames["scores"].sort_values("StudyInstanceUID", ignore_index=True),
                                  spark.frames["scores"].sort_values("StudyInstanceUID", ignore_index=True))
