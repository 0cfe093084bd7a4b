"""`medvit score`: model URIs, mixed folders with bad files, resume after SIGKILL, shards, heatmaps, MLflow.

A tiny X-ray model is trained and registered once (module fixture) in a sqlite store of its own; the MRI
package is an untrained 3D ViT written in the package format ``register`` uses, which is all scoring needs.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pydicom
import pytest
from click.testing import CliRunner
from helpers.dicom import (
    ENHANCED_MR_STORAGE,
    SEG_STORAGE,
    copy_test_file,
    make_image,
    new_uid,
    study_folders,
    write,
    write_jpeg_xl,
)
from helpers.pipeline import REGISTRY_NAME, cohort_config, sqlite_uri, tiny_config, write_untrained_package
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless, RLELossless, generate_uid

from pipelines.cli import cli
from pipelines.dicom import reasons
from pipelines.dicom.synth import write_cohort
from pipelines.pipeline import run_pipeline
from pipelines.scoring.heatmaps import picture_size
from pipelines.scoring.model_package import load_packaged_model
from pipelines.scoring.outputs import PARTIAL, merge_shards
from pipelines.stages.score import ScoreOptions, run_score

REPO = Path(__file__).resolve().parent.parent
STABLE = ["StudyInstanceUID", "prediction", "threshold", "model", "model_sha256", "n_series"]


@pytest.fixture(scope="module")
def registered(xray_cohort, tmp_path_factory):
    """(tracking uri, local model folder, register run id) of a tiny X-ray model trained on the cohort."""
    root = tmp_path_factory.mktemp("score_model")
    uri = sqlite_uri(root)
    result = run_pipeline(tiny_config(xray_cohort, root / "run", uri))
    return uri, result.register.local_model, result.register.run_id


@pytest.fixture(scope="module")
def new_folder(tmp_path_factory) -> Path:
    """A fresh synthetic X-ray cohort (other seed): the folder people score."""
    out = tmp_path_factory.mktemp("new_xray")
    write_cohort(out, "xray", studies=40, seed=21, image_size=64, difficulty=0.2)
    return out


def options(inputs, model, out, **kw) -> ScoreOptions:
    return ScoreOptions(inputs=[Path(p) for p in inputs], model=str(model), out=out, device="cpu", workers=0, **kw)


def invoke(args: list[str], tracking: str | None = None):
    env = {"MLFLOW_TRACKING_URI": tracking} if tracking else {}
    return CliRunner().invoke(cli, args, env=env, catch_exceptions=False)


# ---- model URIs ---------------------------------------------------------------------------------------
def test_every_model_uri_form_gives_the_same_scores(registered, new_folder, tmp_path):
    uri, local, run_id = registered
    frames = {}
    for name, model in [("alias", f"models:/{REGISTRY_NAME}@candidate"), ("version", f"models:/{REGISTRY_NAME}/1"),
                        ("run", f"runs:/{run_id}/model"), ("local", local)]:
        result = run_score(options([new_folder / "dicom"], model, tmp_path / name, tracking_uri=uri))
        frames[name] = result.frames["scores"]
        assert len(frames[name]) == 40 and not result.partial
    for name in ("version", "run", "local"):
        pd.testing.assert_series_equal(frames[name]["score"], frames["alias"]["score"])
    assert set(frames["alias"]["model"]) == {f"{REGISTRY_NAME}/1"}
    assert frames["local"]["model"].iloc[0].startswith(f"{REGISTRY_NAME}@sha256:")
    labels = pd.read_csv(new_folder / "labels.csv")
    assert set(frames["alias"]["StudyInstanceUID"]) == set(labels["StudyInstanceUID"])


def test_scores_match_the_registered_pyfunc(registered, new_folder, tmp_path):
    uri, local, _ = registered
    ours = run_score(options([new_folder / "dicom"], local, tmp_path / "out")).frames["scores"]
    pyfunc = mlflow.pyfunc.load_model(str(local)).predict(pd.DataFrame({"path": study_folders(new_folder)}))
    joined = ours.merge(pyfunc, on="StudyInstanceUID", suffixes=("", "_pyfunc"))
    assert len(joined) == 40
    np.testing.assert_allclose(joined["score"].astype(float), joined["score_pyfunc"], atol=1e-6)
    assert (joined["prediction"] == joined["prediction_pyfunc"]).all()


def test_mr_files_in_a_folder_an_xray_model_scores_are_exclusions_and_exit_0(registered, new_folder, tmp_path):
    """MR files without slice or per-frame geometry (which an MRI run rejects as failures) next to X-rays that
    all score: the X-ray model lists them as unsupported_modality exclusions and the run exits 0."""
    folder = tmp_path / "in"
    shutil.copytree(new_folder / "dicom", folder / "xray")
    slice_ = make_image("MR", series=new_uid())
    del slice_.ImagePositionPatient, slice_.ImageOrientationPatient
    enhanced = make_image("MR", sop_class=ENHANCED_MR_STORAGE, series=new_uid(), frames=3)
    del enhanced.ImagePositionPatient, enhanced.ImageOrientationPatient
    mr = [write(slice_, folder / "mr" / "slice"), write(enhanced, folder / "mr" / "enhanced")]
    result = invoke(["score", str(folder), "--model", str(registered[1]), "--out", str(tmp_path / "out"),
                     "--device", "cpu", "--workers", "0"])
    assert result.exit_code == 0, result.output
    errors = pd.read_csv(tmp_path / "out" / "errors.csv")
    assert dict(zip(errors["path"], errors["reason_code"], strict=True)) == dict.fromkeys(map(str, mr),
                                                                                      "unsupported_modality")
    assert len(pd.read_csv(tmp_path / "out" / "scores.csv")) == 40


@pytest.mark.parametrize("model, message", [
    ("models:/no_such_model@candidate", "cannot be resolved"),
    ("models:/justaname", "is not models:/NAME@ALIAS"),
    ("runs:/0123456789abcdef0123456789abcdef/model", "cannot be resolved"),
    ("/no/such/folder", "neither a models:/ or runs:/ URI nor an existing folder"),
])
def test_a_bad_model_uri_is_one_line_and_exit_2(registered, new_folder, tmp_path, model, message):
    result = invoke(["score", str(new_folder / "dicom"), "--model", model, "--out", str(tmp_path / "o")],
                    registered[0])
    assert result.exit_code == 2
    assert message in result.output and result.output.count("\n") == 1 and "Traceback" not in result.output


def test_a_folder_without_a_package_is_exit_2(new_folder, tmp_path):
    (tmp_path / "empty_model").mkdir()
    result = invoke(["score", str(new_folder / "dicom"), "--model", str(tmp_path / "empty_model"),
                     "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "holds no medvit package" in result.output


def test_missing_or_unreadable_input_is_exit_2(registered, tmp_path):
    missing = invoke(["score", str(tmp_path / "nope"), "--model", str(registered[1]), "--out", str(tmp_path / "o")])
    assert missing.exit_code == 2 and "does not exist" in missing.output
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0)
    try:
        if os.access(locked, os.R_OK):  # running as root: permissions do not apply
            pytest.skip("permissions are not enforced for this user")
        result = invoke(["score", str(locked), "--model", str(registered[1]), "--out", str(tmp_path / "o")])
        assert result.exit_code == 2 and "cannot be read" in result.output
    finally:
        locked.chmod(0o755)


# ---- a folder as it arrives from a PACS export ------------------------------------------------------------
def build_mixed_folder(root: Path, cohort: Path, studies: int = 6) -> dict[str, str]:
    """Synthetic studies + pydicom's real files + crafted bad files; returns the expected reason per bad file."""
    labels = pd.read_csv(cohort / "labels.csv")
    for uid in labels["StudyInstanceUID"][:studies]:
        for path in (cohort / "dicom").rglob("*"):
            if path.is_file() and pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID == uid:
                dest = root / "good" / path.relative_to(cohort / "dicom")
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, dest)
    expect: dict[Path, str] = {}
    bad = root / "bad"
    bad.mkdir(parents=True)
    (bad / "empty").write_bytes(b"")
    (bad / "random.bin").write_bytes(random.Random(3).randbytes(5000))
    (bad / "notes.txt").write_text("export log\n")
    expect.update({bad / n: reasons.NOT_DICOM for n in ("empty", "random.bin", "notes.txt")})
    source = next(p for p in (root / "good").rglob("*") if p.is_file())
    data = source.read_bytes()
    (bad / "truncated.dcm").write_bytes(data[: len(data) // 2])
    expect[bad / "truncated.dcm"] = reasons.TRUNCATED
    expect[copy_test_file("test-SR.dcm", bad / "sr.dcm")] = reasons.NOT_AN_IMAGE
    expect[write(make_image("SEG", sop_class=SEG_STORAGE, series=new_uid()), bad / "seg.dcm")] = reasons.NOT_AN_IMAGE
    expect[write_jpeg_xl(bad / "jpegxl.dcm")] = reasons.UNSUPPORTED_TRANSFER_SYNTAX
    expect[copy_test_file("MR_truncated.dcm", bad / "MR_truncated.dcm")] = reasons.TRUNCATED
    expect[copy_test_file("CT_small.dcm", bad / "CT_small.dcm")] = reasons.UNSUPPORTED_MODALITY
    expect[copy_test_file("JPEG2000.dcm", bad / "JPEG2000.dcm")] = reasons.UNSUPPORTED_MODALITY
    broken = make_image("CR", series=new_uid(), study=generate_uid(), rows=16, columns=16)
    broken.PixelData = encapsulate([b"\xff\x4f\xff\x51" + random.Random(5).randbytes(60)])  # a corrupt J2K stream:
    broken["PixelData"].VR = "OB"  # the header is fine, decoding fails
    expect[write(broken, bad / "corrupt_j2k.dcm", syntax=JPEG2000Lossless)] = reasons.DECODE_ERROR
    return {str(k): v for k, v in expect.items()}


def test_mixed_folder_every_file_scored_or_listed_and_exit_3(registered, xray_cohort, tmp_path):
    expect = build_mixed_folder(tmp_path / "in", xray_cohort)
    out = tmp_path / "out"
    result = invoke(["score", str(tmp_path / "in"), "--model", str(registered[1]), "--out", str(out)])
    assert result.exit_code == 3, result.output
    errors = pd.read_csv(out / "errors.csv", dtype=str)
    assert dict(zip(errors["path"], errors["reason_code"], strict=True)) == expect
    assert errors["message"].str.len().gt(20).all()
    series = pd.read_csv(out / "series_scores.csv", dtype=str)
    for path in (tmp_path / "in" / "good").rglob("*"):
        if path.is_file():
            assert pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID in set(series["SeriesInstanceUID"])
    scores = pd.read_csv(out / "scores.csv")
    assert len(scores) == 6 and scores["score"].between(0, 1).all()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["files"] == 6 + len(expect)
    assert summary["counts"]["series_failed"] == 1 and summary["rejected_by_reason"][reasons.NOT_DICOM] == 3
    assert "decode_error" in result.output and "corrupt_j2k.dcm" in result.output  # one line per failure


def test_only_exclusions_give_exit_0(registered, xray_cohort, tmp_path):
    build_mixed_folder(tmp_path / "in", xray_cohort, studies=2)
    shutil.rmtree(tmp_path / "in" / "bad")
    copy_test_file("CT_small.dcm", tmp_path / "in" / "ct.dcm")  # not an X-ray: excluded, not failed
    result = invoke(["score", str(tmp_path / "in"), "--model", str(registered[1]), "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert pd.read_csv(tmp_path / "o" / "errors.csv")["reason_code"].tolist() == [reasons.UNSUPPORTED_MODALITY]


def test_lossless_encodings_of_one_image_get_identical_scores(registered, new_folder, tmp_path):
    source = next(p for p in sorted((new_folder / "dicom").rglob("*")) if p.is_file())
    (tmp_path / "in").mkdir()
    for i, syntax in enumerate((ExplicitVRLittleEndian, RLELossless, JPEGLSLossless, JPEG2000Lossless)):
        ds = pydicom.dcmread(source)
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            ds.decompress()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        if syntax != ExplicitVRLittleEndian:
            ds.compress(syntax)
        ds.save_as(tmp_path / "in" / f"encoding_{i}.dcm", enforce_file_format=True)
    result = run_score(options([tmp_path / "in"], registered[1], tmp_path / "out"))
    series = result.frames["series_scores"]
    assert len(series) == 4 and series["score"].nunique() == 1, series


# ---- resume, overwrite, SIGKILL -------------------------------------------------------------------------------
def test_rerun_skips_scored_studies_and_overwrite_redoes_them(registered, new_folder, tmp_path):
    first = run_score(options([new_folder / "dicom"], registered[1], tmp_path / "out"))
    again = run_score(options([new_folder / "dicom"], registered[1], tmp_path / "out"))
    assert again.summary["counts"]["studies_scored"] == 0
    assert again.summary["counts"]["studies_skipped_already_scored"] == 40
    pd.testing.assert_frame_equal(again.frames["scores"], first.frames["scores"])
    redo = run_score(options([new_folder / "dicom"], registered[1], tmp_path / "out", overwrite=True))
    assert redo.summary["counts"]["studies_scored"] == 40
    assert not (tmp_path / "out" / PARTIAL).exists()


def test_a_half_written_row_is_dropped_and_its_study_rescored(registered, new_folder, tmp_path):
    out = tmp_path / "out"
    full = run_score(options([new_folder / "dicom"], registered[1], out)).frames
    # The state a kill leaves: final files gone, partial rows for 10 studies, the 10th row cut mid-line.
    (out / PARTIAL).mkdir()
    for name in ("scores.csv", "series_scores.csv", "errors.csv"):
        (out / name).rename(out / PARTIAL / name)
    (out / "summary.json").unlink()
    rows = (out / PARTIAL / "scores.csv").read_text().splitlines(keepends=True)
    (out / PARTIAL / "scores.csv").write_text("".join(rows[:10]) + rows[10][:25])
    result = run_score(options([new_folder / "dicom"], registered[1], out))
    assert result.summary["counts"]["studies_skipped_already_scored"] == 9
    assert result.summary["counts"]["studies_scored"] == 31
    assert_same_outputs(result.frames, full)


def assert_same_outputs(got: dict[str, pd.DataFrame], want: dict[str, pd.DataFrame]) -> None:
    """Same rows (no duplicates, none lost); scores equal up to batch-composition rounding."""
    for name in ("scores", "series_scores"):
        g, w = got[name], want[name]
        assert g.iloc[:, 0].is_unique if name == "scores" else g["SeriesInstanceUID"].is_unique
        cols = [c for c in w.columns if c not in ("score", "scored_at")]
        pd.testing.assert_frame_equal(g[cols].reset_index(drop=True), w[cols].reset_index(drop=True))
        np.testing.assert_allclose(g["score"].astype(float), w["score"].astype(float), atol=1e-5)
    pd.testing.assert_frame_equal(got["errors"].reset_index(drop=True), want["errors"].reset_index(drop=True))


def read_outputs(folder: Path) -> dict[str, pd.DataFrame]:
    return {name: pd.read_csv(folder / f"{name}.csv", dtype=str, keep_default_na=False)
            for name in ("scores", "series_scores", "errors")}


def test_sigkill_then_rerun_gives_complete_outputs(registered, xray_cohort, tmp_path):
    folder = tmp_path / "in"
    write_cohort(folder, "xray", studies=120, seed=31, image_size=64, difficulty=0.2)
    build_mixed_folder(tmp_path / "in" / "mixed", xray_cohort, studies=1)
    reference = run_score(options([folder / "dicom", folder / "mixed"], registered[1], tmp_path / "ref")).frames
    out = tmp_path / "out"
    command = [sys.executable, "-m", "pipelines.cli", "score", str(folder / "dicom"), str(folder / "mixed"),
               "--model", str(registered[1]), "--out", str(out), "--batch-size", "1", "--workers", "0",
               "--device", "cpu"]
    for kill_after in (5, 60):  # two kills at different points, then a run to the end
        process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        partial = out / PARTIAL / "scores.csv"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            if partial.is_file() and partial.read_bytes().count(b"\n") > kill_after:
                break
            time.sleep(0.01)
        assert process.poll() is None, "the run ended before it could be killed: give it more work"
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert not (out / "summary.json").exists()
    finished = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 3, finished.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["studies_skipped_already_scored"] >= 60
    assert_same_outputs(read_outputs(out), {k: v.astype(str) for k, v in reference.items()})


def test_a_killed_loader_worker_costs_only_a_retry(registered, xray_cohort, tmp_path):
    """A DataLoader worker process killed for real (SIGKILL, as the OOM killer does) while `medvit score
    --workers 2` runs: its unfinished series are decoded again in a fresh worker, the run ends with the
    same outputs as an undisturbed one, one stderr line names the dead worker, and there is no traceback."""
    import psutil

    folder = tmp_path / "in"
    write_cohort(folder, "xray", studies=120, seed=31, image_size=64, difficulty=0.2)
    build_mixed_folder(folder / "mixed", xray_cohort, studies=1)
    inputs = [folder / "dicom", folder / "mixed"]
    reference = run_score(options(inputs, registered[1], tmp_path / "ref")).frames
    out = tmp_path / "out"
    command = [sys.executable, "-m", "pipelines.cli", "score", *map(str, inputs), "--model", str(registered[1]),
               "--out", str(out), "--batch-size", "1", "--workers", "2", "--device", "cpu"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    partial, killed = out / PARTIAL / "scores.csv", None
    deadline = time.monotonic() + 120
    while killed is None and time.monotonic() < deadline and process.poll() is None:
        if partial.is_file() and partial.read_bytes().count(b"\n") > 5:  # header + 5 studies written
            workers = psutil.Process(process.pid).children()
            if workers:
                killed = workers[0].pid
                os.kill(killed, signal.SIGKILL)
        time.sleep(0.005)
    assert killed is not None, "the run ended before a worker could be killed: give it more work"
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 3, stderr[-2000:]  # the mixed folder's bad files fail; nothing else does
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if "decoding worker process failed" in line]
    assert len(lines) == 1 and "unfinished series are decoded again" in lines[0], lines
    got = read_outputs(out)
    n_files = sum(p.is_file() for root in inputs for p in root.rglob("*"))
    assert len(got["series_scores"]) + len(got["errors"]) == n_files and got["errors"]["path"].is_unique
    assert_same_outputs(got, {k: v.astype(str) for k, v in reference.items()})
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["studies_scored"] == len(reference["scores"]) == 121


# ---- shards ----------------------------------------------------------------------------------------------------
def test_shards_merge_to_a_single_run(registered, new_folder, xray_cohort, tmp_path):
    build_mixed_folder(tmp_path / "mixed", xray_cohort, studies=2)
    inputs = [new_folder / "dicom", tmp_path / "mixed"]
    single = run_score(options(inputs, registered[1], tmp_path / "single")).frames
    out = tmp_path / "sharded"
    parts = [run_score(options(inputs, registered[1], out, shard=(i, 3))) for i in range(3)]
    assert [p.merged for p in parts] == [False, False, True]  # the last shard to finish merges
    sizes = [len(p.frames["scores"]) for p in parts]
    assert sum(sizes) == 42 and min(sizes) > 0
    assert_same_outputs(read_outputs(out), {k: v.astype(str) for k, v in single.items()})
    (out / "scores.csv").unlink()
    assert merge_shards(out)["counts"]["studies_in_scores"] == 42  # `medvit merge-scores` does the same
    result = invoke(["merge-scores", str(out)])
    assert result.exit_code == 0 and "merged 3 shards" in result.output


def test_torchrun_environment_selects_the_shard(registered, new_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    result = run_score(options([new_folder / "dicom"], registered[1], tmp_path / "out"))
    assert result.folder == tmp_path / "out" / "shards" / "1-of-2" and result.summary["shard"] == "1/2"
    assert 0 < len(result.frames["scores"]) < 40


def test_torchrun_scores_one_shard_per_rank_and_merges(registered, new_folder, tmp_path):
    torchrun = Path(sys.executable).parent / "torchrun"
    out = tmp_path / "out"
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "pipelines.cli", "score",
                           str(new_folder / "dicom"), "--model", str(registered[1]), "--out", str(out),
                           "--device", "cpu"], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {p.name for p in (out / "shards").iterdir()} == {"0-of-2", "1-of-2"}
    single = run_score(options([new_folder / "dicom"], registered[1], tmp_path / "single")).frames
    assert_same_outputs(read_outputs(out), {k: v.astype(str) for k, v in single.items()})


def test_merge_before_all_shards_finish_is_exit_2(tmp_path):
    (tmp_path / "shards" / "0-of-2").mkdir(parents=True)
    result = invoke(["merge-scores", str(tmp_path)])
    assert result.exit_code == 2 and "every shard" in result.output


# ---- heatmaps ---------------------------------------------------------------------------------------------------
def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        image.load()
        return image.height, image.width


def test_xray_heatmaps_are_one_png_per_study_of_the_right_size(registered, new_folder, tmp_path):
    result = run_score(options([new_folder / "dicom"], registered[1], tmp_path / "out", heatmaps=True))
    pngs = sorted((tmp_path / "out" / "heatmaps").glob("*.png"))
    assert [p.stem for p in pngs] == sorted(result.frames["scores"]["StudyInstanceUID"])
    assert {png_size(p) for p in pngs} == {picture_size((32, 32))} == {(256, 256)}
    with Image.open(pngs[0]) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=float)
    assert pixels.std() > 5  # a picture, not a blank


@pytest.fixture(scope="module")
def mri_package(mri_cohort, tmp_path_factory) -> Path:
    """An (untrained) 3D ViT written in the package format, with its preprocessing config and threshold."""
    folder = tmp_path_factory.mktemp("mri_model")
    config = cohort_config(mri_cohort, "mri", folder, model={"preset": "vit3d_tiny", "embed_dim": 32, "depth": 2,
                                                             "num_heads": 2, "patch_size": 4})
    return write_untrained_package(folder, config, "mri_test")


def test_mri_scores_and_montage_heatmaps(mri_package, mri_cohort, tmp_path):
    result = run_score(options([mri_cohort / "dicom"], mri_package, tmp_path / "out", heatmaps=True,
                               aggregate="mean"))
    labels = pd.read_csv(mri_cohort / "labels.csv")
    assert set(result.frames["scores"]["StudyInstanceUID"]) == set(labels["StudyInstanceUID"])
    pngs = sorted((tmp_path / "out" / "heatmaps").glob("*.png"))
    assert len(pngs) == 6
    assert {png_size(p) for p in pngs} == {picture_size((16, 16, 16))} == {(256, 256)}
    assert result.summary["aggregate"] == "mean"


def test_an_mri_model_rejects_xray_series_as_another_modality(mri_package, new_folder, tmp_path):
    result = run_score(options([new_folder / "dicom"], mri_package, tmp_path / "out"))
    assert len(result.frames["scores"]) == 0 and not result.partial
    assert set(result.frames["errors"]["reason_code"]) == {reasons.UNSUPPORTED_MODALITY}


# ---- MLflow and privacy ------------------------------------------------------------------------------------------
def test_log_mlflow_records_a_score_run_without_identifiers(registered, new_folder, tmp_path):
    uri = sqlite_uri(tmp_path)
    result = run_score(options([new_folder / "dicom"], registered[1], tmp_path / "out", log_mlflow=True,
                               tracking_uri=uri))
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              "tags.`medvit.stage` = 'score'")
    assert len(runs) == 1
    run = runs[0]
    assert run.data.metrics["n_studies_scored"] == 40 and run.data.metrics["studies_per_sec"] > 0
    assert run.data.tags["medvit.model"] == result.summary["model"]["label"]
    assert run.data.tags["mlflow.note.content"].startswith("score: 40 studies (")
    assert run.data.params["score.engine"] == "local" and not any(k.startswith("train.") for k in run.data.params)
    held = json.dumps([run.data.params, run.data.tags, run.data.metrics])
    artifact = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="summary.json",
                                                        dst_path=str(tmp_path / "dl"), tracking_uri=uri))
    held += artifact.read_text()
    for uid in result.frames["scores"]["StudyInstanceUID"]:
        assert uid not in held
    assert str(new_folder) not in held and str(tmp_path) not in held


def test_loaded_package_is_the_registered_model(registered):
    loaded = load_packaged_model(str(registered[1]))
    assert loaded.version is None and loaded.source == "local folder"
    assert 0 < loaded.threshold < 1 and loaded.config.data.kind == "xray"
