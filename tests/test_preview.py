"""`medvit preview`: a PNG of what the model sees, for X-ray and MRI folders; clear exit codes."""

from __future__ import annotations

import matplotlib.image as mpimg
from click.testing import CliRunner

from pipelines.cli import cli
from pipelines.config import validate_config
from pipelines.dicom.scan import scan
from pipelines.scoring.preview import series_picture


def test_preview_xray_and_mri_write_pngs(xray_cohort, mri_cohort, tmp_path):
    runner = CliRunner()
    for cohort in (xray_cohort, mri_cohort):
        out = tmp_path / f"{cohort.name}.png"
        result = runner.invoke(cli, ["preview", str(cohort / "dicom"), "--out", str(out)])
        assert result.exit_code == 0, result.output
        picture = mpimg.imread(out)
        assert picture.ndim == 3 and picture.shape[0] >= 300 and picture.shape[1] >= 300
        assert picture[..., :3].std() > 0.05  # not a blank canvas


def test_preview_pictures_follow_the_config(xray_cohort, mri_cohort, tmp_path):
    xray = scan([xray_cohort / "dicom" / "study_0001"]).series[0]
    config = validate_config({"data": {"dicom_root": str(xray_cohort), "kind": "xray"},
                              "preprocess": {"xray": {"img_size": 48}}})
    assert series_picture(xray, config).shape == (48, 48)
    mri = scan([mri_cohort / "dicom"]).series[0]
    config = validate_config({"data": {"dicom_root": str(mri_cohort), "kind": "mri"},
                              "preprocess": {"mri": {"img_size": [20, 20, 9], "spacing": [4, 4, 4]}}})
    assert series_picture(mri, config).shape == (3 * 20, 3 * 20)  # 9 slices -> a 3x3 montage


def test_preview_bad_inputs_give_exit_codes_not_tracebacks(tmp_path):
    runner = CliRunner()
    missing = runner.invoke(cli, ["preview", str(tmp_path / "nope"), "--out", str(tmp_path / "x.png")])
    assert missing.exit_code == 2 and "does not exist" in missing.output
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.dcm").write_bytes(b"\x00" * 300)
    junk = runner.invoke(cli, ["preview", str(tmp_path / "junk"), "--out", str(tmp_path / "x.png")])
    assert junk.exit_code == 3 and "not_dicom" in junk.output and "Traceback" not in junk.output
    assert not (tmp_path / "x.png").exists()
