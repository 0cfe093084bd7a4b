"""The ingest stage on synthetic cohorts: manifest, splits, errors.csv, data card, no PHI, CLI exit codes."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from helpers.pipeline import cohort_config

from pipelines.cli import cli
from pipelines.data.manifest import COLUMNS, read_manifest
from pipelines.stages.ingest import run_ingest


def identities(cohort: Path) -> list[str]:
    with open(cohort / "identities.csv") as handle:
        rows = list(csv.DictReader(handle))
    values = {v for row in rows for k, v in row.items() if k != "StudyInstanceUID" and v}
    return sorted(v for v in values if len(v) >= 4)


@pytest.fixture(scope="module")
def xray_ingest(xray_cohort, tmp_path_factory):
    return run_ingest(cohort_config(xray_cohort, "xray", tmp_path_factory.mktemp("ingest_xray")))


def test_manifest_has_every_labelled_study_with_pseudonymized_patients(xray_ingest, xray_cohort):
    manifest = read_manifest(xray_ingest.manifest_path)
    assert list(manifest.columns) == COLUMNS
    labels = pd.read_csv(xray_cohort / "labels.csv")
    assert set(manifest["study_uid"]) == set(labels["StudyInstanceUID"])
    expected = dict(zip(labels["StudyInstanceUID"], labels["label"].map({"normal": 0, "abnormal": 1}), strict=True))
    assert all(expected[s] == lab for s, lab in zip(manifest["study_uid"], manifest["label"], strict=True))
    assert manifest["patient_key"].str.startswith("p_").all()
    assert manifest["kind"].eq("xray").all() and set(manifest["modality"]) <= {"CR", "DX"}
    assert all(not Path(f).is_absolute() for files in manifest["files"] for f in files)
    assert (xray_ingest.config_path).read_text().startswith("name: test_xray")


def test_split_is_patient_grouped_and_covers_train_val_test(xray_ingest):
    manifest = xray_ingest.manifest
    assert set(manifest["split"]) == {"train", "val", "test"}
    assert manifest.groupby("patient_key")["split"].nunique().max() == 1


def test_no_identity_appears_in_any_output(xray_ingest, xray_cohort, mri_cohort, tmp_path):
    mri = run_ingest(cohort_config(mri_cohort, "mri", tmp_path / "mri"))
    for result, cohort in ((xray_ingest, xray_cohort), (mri, mri_cohort)):
        secrets = identities(cohort)
        assert secrets, "the synthetic cohort must list its identities"
        manifest_text = result.manifest.astype(str).to_csv()
        for path in (result.errors_path, result.data_card_path, result.config_path):
            text = path.read_text()
            for secret in secrets:
                assert secret not in text, (secret, path.name)
        for secret in secrets:
            assert secret not in manifest_text


def test_mri_ingest_rejects_localizers_and_keeps_volumes(mri_cohort, tmp_path):
    result = run_ingest(cohort_config(mri_cohort, "mri", tmp_path))
    manifest = result.manifest
    assert manifest["kind"].eq("mri").all() and (manifest["num_slices"] >= 8).all()
    assert manifest["study_uid"].nunique() == 6
    assert all(len(s) == 3 for s in manifest["spacing"])
    card = result.data_card_path.read_text()
    assert "## Rejected items by reason" in card and "| MR |" in card


def test_bad_files_are_listed_and_the_rest_goes_on(xray_cohort, tmp_path):
    root = tmp_path / "mixed"
    shutil.copytree(xray_cohort / "dicom", root)
    (root / "notes.txt").write_text("not a dicom file")
    (root / "empty.dcm").write_bytes(b"")
    first = sorted(root.rglob("*.dcm"))[1]
    (root / "cut.dcm").write_bytes(first.read_bytes()[:1000])
    config = cohort_config(xray_cohort, "xray", tmp_path / "out", data={"dicom_root": str(root)})
    result = run_ingest(config)
    errors = pd.read_csv(result.errors_path)
    by_name = {Path(p).name: code for p, code in zip(errors["path"], errors["reason_code"], strict=True)}
    assert by_name["notes.txt"] == "not_dicom" and by_name["empty.dcm"] == "not_dicom"
    assert by_name["cut.dcm"] == "truncated"
    assert result.manifest["study_uid"].nunique() == 24


def test_cli_ingest_exit_codes_and_one_line_config_errors(xray_cohort, tmp_path):
    runner = CliRunner()
    config = tmp_path / "c.yaml"
    config.write_text(cohort_config(xray_cohort, "xray", tmp_path / "out").model_dump_json())
    ok = runner.invoke(cli, ["ingest", "--config", str(config)])
    assert ok.exit_code == 0, ok.output
    assert "series" in ok.output and "manifest" in ok.output
    bad = runner.invoke(cli, ["ingest", "--config", str(config), "--set", "data.kindd=xray"])
    assert bad.exit_code == 2 and "data.kindd" in bad.output and "Traceback" not in bad.output
    missing = runner.invoke(cli, ["ingest", "--config", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 2 and "not found" in missing.output
    # the cohort root also holds labels.csv, identities.csv, cohort.json: not DICOM -> listed, exit 3
    partial = runner.invoke(cli, ["ingest", "--config", str(config), "--set", f"data.dicom_root={xray_cohort}"])
    assert partial.exit_code == 3, partial.output
    assert "rejected: not_dicom" in partial.output
