"""The registered pyfunc as `mlflow.pyfunc.spark_udf` on a real Spark `local[2]`: many rows per Arrow batch,
and every row still gets its own path's study (the pyfunc returns one row per input row, in order)."""

from __future__ import annotations

import os
import sys

import pandas as pd
import pytest
from helpers.dicom import study_folders
from helpers.pipeline import sqlite_uri, tiny_config

from pipelines.pipeline import run_pipeline


@pytest.fixture(scope="module")
def spark():
    from pyspark.sql import SparkSession  # make test installs medvit[spark]; a missing Spark or Java fails

    os.environ["PYSPARK_PYTHON"] = os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    os.environ["SPARK_LOCAL_IP"] = "127.0.0.1"
    session = (SparkSession.builder.master("local[2]").appName("medvit-test")
               .config("spark.ui.enabled", "false").config("spark.driver.bindAddress", "127.0.0.1")
               .config("spark.sql.execution.arrow.maxRecordsPerBatch", "1000").getOrCreate())
    yield session
    session.stop()


@pytest.fixture(scope="module")
def model_folder(xray_cohort, tmp_path_factory):
    root = tmp_path_factory.mktemp("spark_model")
    return run_pipeline(tiny_config(xray_cohort, root / "run", sqlite_uri(root))).register.local_model


def test_spark_udf_gives_every_row_its_own_study(spark, model_folder, xray_cohort, tmp_path):
    import mlflow
    from pyspark.sql import functions as F

    folders = study_folders(xray_cohort)
    (tmp_path / "notes.txt").write_text("not DICOM")
    paths = folders[::-1] + [str(tmp_path / "notes.txt")] + folders  # bad row in the middle, every study twice
    frame = spark.createDataFrame(pd.DataFrame({"path": paths})).repartition(2)
    udf = mlflow.pyfunc.spark_udf(spark, str(model_folder), env_manager="local")  # result struct from the signature
    rows = frame.withColumn("r", udf(F.struct("path"))).select("path", "r.*").toPandas()
    assert len(rows) == len(paths) and sorted(rows["path"]) == sorted(paths)
    local = mlflow.pyfunc.load_model(str(model_folder)).predict(pd.DataFrame({"path": folders}))
    expected = dict(zip(folders, local["StudyInstanceUID"], strict=True))
    good = rows[rows["path"] != str(tmp_path / "notes.txt")]
    assert (good["StudyInstanceUID"] == good["path"].map(expected)).all()
    assert (good["status"] == "ok").all()
    bad = rows[rows["path"] == str(tmp_path / "notes.txt")].iloc[0]
    assert bad["status"] == "not_dicom" and pd.isna(bad["score"])
