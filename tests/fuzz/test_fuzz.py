"""Hostile input through the real CLI: `medvit score` and `medvit ingest` over the seeded corpus of ``corpus``.

Every input file must be scored (its UIDs in series_scores.csv) or named by exactly one errors.csv row with a
reason code; the run exits 3, prints no traceback, leaks no patient identifier (stdout, stderr, outputs),
never hangs (a timeout) and stays under 2 GB of peak RSS. A small corpus runs in `make test`; the full one
(a few hundred files) is marked ``slow``. As root, the CLI runs with the capabilities that bypass file
permissions dropped (``setpriv``), so the mode-000 file is really unreadable.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import warnings
from collections import Counter
from io import BytesIO
from pathlib import Path

import pandas as pd
import pydicom
import pytest
import yaml
from corpus import Corpus, build
from helpers.pipeline import TINY_MODEL, cohort_config, sqlite_uri, write_untrained_package

from pipelines.dicom import reasons

REPO = Path(__file__).resolve().parents[2]
MAX_RSS_BYTES = 2 << 30
EXPECTED = {  # corpus kind -> the reason its file must get (None: it must be scored)
    "fifo": reasons.NOT_A_FILE, "socket": reasons.NOT_A_FILE, "symlink_loop": reasons.UNREADABLE,
    "dangling_symlink": reasons.UNREADABLE, "empty": reasons.NOT_DICOM, "deflate_bomb": reasons.TOO_LARGE,
    "corrupt_rle": reasons.DECODE_ERROR, "sr": reasons.NOT_AN_IMAGE, "seg": reasons.NOT_AN_IMAGE,
    "image_named_dicomdir": None, "in_folder_named_x.dcm": None,
}


def drop_file_permission_bypass() -> list[str]:
    """A command prefix that makes root obey file permissions (CAP_DAC_* dropped), [] when not root."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    caps = "-dac_override,-dac_read_search"
    prefix = [setpriv, f"--inh-caps={caps}", f"--bounding-set={caps}"] if setpriv else []
    if not prefix or subprocess.run([*prefix, "true"], capture_output=True).returncode != 0:
        pytest.skip("running as root without a working setpriv: a mode-000 file cannot be made unreadable")
    return prefix


def run_cli(args: list[str], timeout: int) -> subprocess.CompletedProcess:
    """The real `medvit` CLI in a fresh interpreter (file permissions enforced), with a hang guard."""
    command = [*drop_file_permission_bypass(), sys.executable, "-m", "pipelines.cli", *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, timeout=timeout)


@pytest.fixture(scope="module")
def xray_package(tmp_path_factory) -> Path:
    """An untrained tiny X-ray ViT in the package format `register` writes (all that scoring needs)."""
    folder = tmp_path_factory.mktemp("fuzz_model")
    cohort = folder / "unused"
    return write_untrained_package(folder, cohort_config(cohort, "xray", folder, model=TINY_MODEL), "fuzz")


def read_errors(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=object, keep_default_na=False, encoding_errors="surrogateescape")


def uids_of(path: str) -> tuple[str, str, str]:
    """(study, series, SOP instance) UIDs of a file as pydicom reads them."""
    with open(os.fsencode(path), "rb") as handle, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # damaged UIDs of the mutants
        ds = pydicom.dcmread(BytesIO(handle.read()), stop_before_pixels=True, force=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)


def assert_clean(corpus: Corpus, result: subprocess.CompletedProcess, out: Path) -> None:
    """No traceback, no identifier of any seed on stdout, stderr or in any output file."""
    stderr = result.stderr.decode("utf-8", "replace")
    assert "Traceback" not in stderr and "panicked" not in stderr, stderr[-3000:]
    assert "UserWarning" not in stderr and "pydicom" not in stderr, stderr[-3000:]  # no decoder warning
    blobs = {"stdout": result.stdout, "stderr": result.stderr}
    blobs |= {str(p): p.read_bytes() for p in out.rglob("*") if p.is_file() and p.suffix != ".parquet"}
    leaks = [(label, secret) for label, data in blobs.items() for secret in corpus.identities
             if secret.encode() in data]
    assert not leaks, leaks[:10]
    failures = [line for line in stderr.splitlines() if line.startswith("medvit: /")]
    assert failures and all(line.count(": ") >= 2 for line in failures)  # item: reason: message + fix


def assert_peak_rss_bounded() -> None:
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # Linux: KiB
    assert peak <= MAX_RSS_BYTES, f"a CLI process peaked at {peak / 2**30:.2f} GiB"


def check_score(corpus: Corpus, package: Path, out: Path, timeout: int) -> None:
    result = run_cli(["score", str(corpus.root), "--model", str(package), "--out", str(out), "--workers", "0",
                      "--device", "cpu"], timeout)
    assert result.returncode == 3, result.stderr.decode("utf-8", "replace")[-3000:]
    assert_clean(corpus, result, out)
    errors = read_errors(out / "errors.csv")
    assert max(Counter(errors["path"]).values()) == 1, "one row per item"
    assert set(errors["reason_code"]) <= set(reasons.ALL_REASONS)
    by_path = dict(zip(errors["path"], errors["reason_code"], strict=True))
    assert set(by_path) <= set(corpus.files), set(by_path) - set(corpus.files)
    for path, kind in corpus.files.items():
        if kind in EXPECTED:
            assert by_path.get(path) == EXPECTED[kind], (kind, path, by_path.get(path))
    assert by_path[corpus.unreadable] == reasons.UNREADABLE
    assert corpus.dicomdir_index not in by_path  # skipped: an index, never followed
    scored = [p for p in corpus.files if p not in by_path and p != corpus.dicomdir_index]
    series = pd.read_csv(out / "series_scores.csv", dtype=str, keep_default_na=False)
    assert len(series) == len(scored), "one series row per scored image"
    keys = set(zip(series["StudyInstanceUID"], series["SeriesInstanceUID"], series["SOPInstanceUID"], strict=True))
    assert {uids_of(p) for p in scored} == keys
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["files"] == len(corpus.files)
    assert summary["counts"]["series_scored"] == len(series)
    studies = pd.read_csv(out / "scores.csv", dtype=str)
    assert studies["n_series"].astype(int).sum() == len(series)
    assert_peak_rss_bounded()


def check_ingest(corpus: Corpus, tmp_path: Path, timeout: int) -> None:
    out = tmp_path / "ingest"
    config = cohort_config(tmp_path, "xray", out, data={"dicom_root": str(corpus.root), "labels": None},
                           tracking={"uri": sqlite_uri(tmp_path), "system_metrics": False})
    (tmp_path / "ingest.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json")))
    result = run_cli(["ingest", "--config", str(tmp_path / "ingest.yaml")], timeout)
    assert result.returncode == 3, result.stderr.decode("utf-8", "replace")[-3000:]
    assert_clean(corpus, result, out)
    errors = read_errors(out / "errors.csv")
    assert max(Counter(errors["path"]).values()) == 1
    manifest = pd.read_parquet(out / "manifest.parquet")
    listed = {os.path.normpath(os.path.join(corpus.root, f)) for files in manifest["files"] for f in files}
    named = set(errors["path"])
    assert not listed & named
    assert listed | named | {corpus.dicomdir_index} == set(corpus.files)
    not_utf8 = {p for p in corpus.files if not p.isprintable() or _not_utf8(p)}
    assert not_utf8 <= named  # the manifest (Parquet text) cannot hold them: listed, never a crash
    assert_peak_rss_bounded()


def _not_utf8(path: str) -> bool:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory) -> Corpus:
    return build(tmp_path_factory.mktemp("fuzz_small") / "corpus", per_kind=1, seed=1)


def test_small_corpus_score_accounts_for_every_file(small_corpus, xray_package, tmp_path):
    check_score(small_corpus, xray_package, tmp_path / "out", timeout=240)


def test_small_corpus_ingest_accounts_for_every_file(small_corpus, tmp_path):
    check_ingest(small_corpus, tmp_path, timeout=240)


def test_corpus_is_reproducible(tmp_path):
    first = build(tmp_path / "a" / "corpus", per_kind=1, seed=3, bomb=False)
    second = build(tmp_path / "b" / "corpus", per_kind=1, seed=3, bomb=False)
    assert len(first.files) == len(second.files) > 60
    for path, kind in first.files.items():
        twin = path.replace(str(tmp_path / "a"), str(tmp_path / "b"), 1)
        assert second.files[twin] == kind
        if os.path.isfile(path) and not os.path.islink(path) and kind != "unreadable":
            assert Path(path).read_bytes() == Path(twin).read_bytes(), path


@pytest.mark.slow
def test_full_corpus_score_and_ingest(xray_package, tmp_path):
    corpus = build(tmp_path / "corpus", per_kind=6, seed=0)
    assert len(corpus.files) >= 300
    check_score(corpus, xray_package, tmp_path / "out", timeout=900)
    check_ingest(corpus, tmp_path, timeout=900)
