"""Discovery, header reading, truncation detection, classification and grouping of DICOM folders (scan)."""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pydicom
import pytest
from helpers.dicom import (
    AXIAL,
    JPEG_XL,
    KO_STORAGE,
    MR_STORAGE,
    OBLIQUE,
    SAGITTAL,
    SEG_STORAGE,
    TEST_FILES,
    copy_test_file,
    make_image,
    new_uid,
    normal_of,
    shear_of,
    write,
    write_enhanced_mr,
    write_jpeg_xl,
    write_mr_series,
)
from pydicom import config as pydicom_config
from pydicom import hooks as pydicom_hooks
from pydicom.dataset import Dataset
from pydicom.pixels.decoders.base import Decoder
from pydicom.uid import JPEG2000, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from pipelines.dicom import headers as headers_module
from pipelines.dicom import rawheader, reasons
from pipelines.dicom import scan as scan_module
from pipelines.dicom.geometry import frame_geometries, sort_along_normal
from pipelines.dicom.header_worker import HeaderWorker, decode_outcome, encode_outcome
from pipelines.dicom.headers import (
    InstanceHeader,
    Skipped,
    read_header,
)
from pipelines.dicom.read import read_volume
from pipelines.dicom.reasons import DicomError
from pipelines.dicom.rules import COLOR_KEY, decoder_problem
from pipelines.dicom.scan import (
    IN_SERIES,
    SKIPPED,
    ScanResult,
    SelectionRules,
    iter_dicom_files,
    scan,
)


def all_files(root: Path) -> set[str]:
    """Every non-hidden file under root (what a scan must account for)."""
    return {str(p) for p in root.rglob("*") if p.is_file() and not any(part.startswith(".") for part in
                                                                          p.relative_to(root).parts)}


def assert_accounted(result: ScanResult, expected_files: set[str]) -> None:
    """Every file is in exactly one place: a series, one rejection, or the skipped list."""
    assert set(result.file_outcomes) == expected_files
    assert result.n_files == len(expected_files)
    series_files = [f for s in result.series for f in s.files]
    assert len(series_files) == len(set(series_files))
    assert {f for f, o in result.file_outcomes.items() if o == IN_SERIES} == set(series_files)
    assert {f for f, o in result.file_outcomes.items() if o == SKIPPED} == set(result.skipped)
    for row in result.rejected:
        if Path(row.path).exists():  # rows for missing roots name no file
            assert result.file_outcomes[row.path] == row.reason_code
    rejected_files = {f for f, o in result.file_outcomes.items() if o not in (IN_SERIES, SKIPPED)}
    assert {r.path for r in result.rejected if Path(r.path).exists()} <= rejected_files


def outcome(result: ScanResult, path: Path) -> str:
    return result.file_outcomes[str(path)]


def build_mixed_tree(root: Path) -> dict[Path, str]:
    """A tree holding every kind of item; returns the expected outcome of each file."""
    expect: dict[Path, str] = {}
    cr = make_image("CR", series=new_uid())
    expect[write(cr, root / "xr" / "foo.txt")] = IN_SERIES
    expect[write(make_image("DX", series=new_uid()), root / "xr" / "noextension")] = IN_SERIES
    expect[write(make_image("MR", series=new_uid(), description="T2"), root / "raw" / "bare", preamble=False)] = \
        reasons.TOO_FEW_SLICES
    for path in write_mr_series(root / "mr_axial", n=9, seed=3):
        expect[path] = IN_SERIES
    (root / "junk").mkdir()
    (root / "junk" / "notes.dcm").write_text("not a dicom file\n")
    (root / "junk" / "random.bin").write_bytes(random.Random(7).randbytes(3000))
    (root / "junk" / "empty").write_bytes(b"")
    expect.update({root / "junk" / n: reasons.NOT_DICOM for n in ("notes.dcm", "random.bin", "empty")})
    expect[copy_test_file("MR_truncated.dcm", root / "pyd" / "MR_truncated.dcm")] = reasons.TRUNCATED
    expect[copy_test_file("CT_small.dcm", root / "pyd" / "CT_small.dcm")] = reasons.UNSUPPORTED_MODALITY
    expect[copy_test_file("JPEG2000.dcm", root / "pyd" / "JPEG2000.dcm")] = reasons.UNSUPPORTED_MODALITY
    for name in ("test-SR.dcm", "rtplan.dcm", "rtstruct.dcm", "waveform_ecg.dcm", "liver_1frame.dcm"):
        expect[copy_test_file(name, root / "pyd" / name)] = reasons.NOT_AN_IMAGE
    expect[copy_test_file("no_meta.dcm", root / "pyd" / "no_meta.dcm")] = reasons.NOT_DICOM
    expect[copy_test_file("dicomdirtests/DICOMDIR", root / "pyd" / "DICOMDIR")] = SKIPPED
    seg = make_image("SEG", sop_class=SEG_STORAGE, series=new_uid())
    expect[write(seg, root / "own" / "seg")] = reasons.NOT_AN_IMAGE
    expect[write(make_image("MR", series=new_uid(), pixels=False), root / "own" / "nopix")] = reasons.NO_PIXEL_DATA
    expect[write_jpeg_xl(root / "own" / "jpegxl")] = reasons.UNSUPPORTED_TRANSFER_SYNTAX
    rgb = make_image("CR", series=new_uid(), photometric="RGB")
    expect[write(rgb, root / "own" / "rgb_cr")] = reasons.UNSUPPORTED_PHOTOMETRIC
    expect[write(make_image("DX", series=new_uid(), frames=2), root / "own" / "dx_2frames")] = \
        reasons.INCONSISTENT_SERIES
    short = make_image("MR", series=new_uid())
    short.PixelData = bytes(10)  # rows x columns x 2 bytes = 32 needed
    expect[write(short, root / "own" / "short_pixels")] = reasons.DECODE_ERROR
    for path in write_mr_series(root / "scout", n=3, description="3-plane localizer"):
        expect[path] = reasons.LOCALIZER
    for path in write_mr_series(root / "excluded", n=9, description="DWI b1000"):
        expect[path] = reasons.NOT_SELECTED
    hidden = write(make_image("CR", series=new_uid()), root / ".hidden_dir" / "cr")
    write(make_image("CR", series=new_uid()), root / "xr" / ".hidden.dcm")
    assert hidden.exists()
    return expect


RULES = SelectionRules(series_description_exclude=("dwi",))
SCAN_REASONS = {  # the reason codes scan can emit (labels CSV codes belong to ingest)
    reasons.NOT_DICOM, reasons.TRUNCATED, reasons.NO_PIXEL_DATA, reasons.NOT_AN_IMAGE,
    reasons.UNSUPPORTED_TRANSFER_SYNTAX, reasons.UNSUPPORTED_PHOTOMETRIC, reasons.UNSUPPORTED_MODALITY,
    reasons.INCONSISTENT_SERIES, reasons.TOO_FEW_SLICES, reasons.LOCALIZER, reasons.NOT_SELECTED,
    reasons.DECODE_ERROR, reasons.UNREADABLE,
}


def test_mixed_tree_outcomes_and_accounting(tmp_path):
    expect = build_mixed_tree(tmp_path / "data")
    result = scan([tmp_path / "data", tmp_path / "missing"], RULES)
    assert {Path(p): o for p, o in result.file_outcomes.items()} == expect
    assert_accounted(result, all_files(tmp_path / "data"))
    assert [r.reason_code for r in result.rejected if r.path == str(tmp_path / "missing")] == [reasons.UNREADABLE]
    emitted = {r.reason_code for r in result.rejected}
    assert emitted == SCAN_REASONS  # every reason code scan emits is produced by a real file
    assert all("\n" not in r.message and r.message for r in result.rejected)
    assert sorted(s.kind for s in result.series) == ["mri", "xray", "xray"]


def test_messages_name_the_cause(tmp_path):
    expect = build_mixed_tree(tmp_path)
    by_path = {Path(r.path): r for r in scan([tmp_path], RULES).rejected}
    jxl = by_path[tmp_path / "own" / "jpegxl"].message
    assert JPEG_XL in jxl and "no pixel decoder" in jxl
    assert "Segmentation Storage" in by_path[tmp_path / "own" / "seg"].message
    assert "12-lead ECG" in by_path[tmp_path / "pyd" / "waveform_ecg.dcm"].message
    assert COLOR_KEY in by_path[tmp_path / "own" / "rgb_cr"].message
    scout = next(r for p, r in by_path.items() if r.reason_code == reasons.LOCALIZER)
    assert "3 files" in scout.message and expect[Path(scout.path)] == reasons.LOCALIZER


class CountingWorker(HeaderWorker):
    """A real header worker process that counts how many were started and how many chunks each read."""

    started: list[CountingWorker] = []

    def __init__(self, *args):
        super().__init__(*args)
        self.chunks = 0
        CountingWorker.started.append(self)

    def read(self, paths):
        self.chunks += 1
        return super().read(paths)


class DyingWorker(CountingWorker):
    """A worker process that dies after its first chunk (as on a crash or an out-of-memory kill)."""

    def read(self, paths):
        if self.chunks:
            self._process.kill()
        return super().read(paths)


def test_parallel_scan_equals_sequential(tmp_path, monkeypatch):
    build_mixed_tree(tmp_path)
    write_enhanced_mr(tmp_path / "enhanced" / "enh.dcm")
    write_mr_series(tmp_path / "sagittal", iop=SAGITTAL, n=12, seed=5)
    monkeypatch.setattr(scan_module, "HeaderWorker", CountingWorker)
    CountingWorker.started = []
    sequential = scan([tmp_path], RULES, workers=0)
    small = scan([tmp_path], RULES, workers=2)  # fewer files than PARALLEL_MIN_FILES: read here
    assert CountingWorker.started == [] and small.series == sequential.series and small.rejected == sequential.rejected
    parallel = scan([tmp_path], RULES, workers=2, parallel_min_files=1)
    assert len(CountingWorker.started) == 2 and all(w.chunks > 0 for w in CountingWorker.started)  # both worked
    assert all(w._process.poll() is not None for w in CountingWorker.started)  # and were ended
    assert parallel.series == sequential.series
    assert parallel.rejected == sequential.rejected
    assert parallel.file_outcomes == sequential.file_outcomes and parallel.skipped == sequential.skipped
    assert list(parallel.file_outcomes) == list(sequential.file_outcomes)  # same order too
    keys = [(s.study_uid, s.series_uid, s.files[0]) for s in sequential.series]
    assert keys == sorted(keys) and [r.path for r in sequential.rejected] == sorted(r.path for r in sequential.rejected)
    assert len(sequential.series) == 5


def test_parallel_scan_survives_failing_workers(tmp_path, monkeypatch):
    write_mr_series(tmp_path / "a", n=20, seed=1)
    write_mr_series(tmp_path / "b", n=20, seed=2)
    sequential = scan([tmp_path])
    monkeypatch.setattr(scan_module, "HeaderWorker", DyingWorker)
    with pytest.warns(RuntimeWarning, match="worker processes failed"):
        dying = scan([tmp_path], workers=2, parallel_min_files=1)
    assert dying.series == sequential.series and len(dying.series) == 2 and dying.n_files == 40

    def cannot_start(*_args):
        raise OSError("no processes here")

    monkeypatch.setattr(scan_module, "HeaderWorker", cannot_start)
    with pytest.warns(RuntimeWarning, match="worker processes failed"):
        assert scan([tmp_path], workers=2, parallel_min_files=1).series == sequential.series


def test_discovery_by_content_not_extension(tmp_path):
    dicom_txt = write(make_image("CR", series=new_uid()), tmp_path / "foo.txt")
    bare = write(make_image("CR", series=new_uid()), tmp_path / "sub" / "IM0001")
    write(make_image("CR", series=new_uid()), tmp_path / ".hidden.dcm")
    write(make_image("CR", series=new_uid()), tmp_path / ".cache" / "x.dcm")
    (tmp_path / "fake.dcm").write_text("hello")
    (tmp_path / "zeros").write_bytes(bytes(1 << 20))
    (tmp_path / "group8").write_bytes(b"\x08\x00\x10\x00" + random.Random(3).randbytes(5000))  # parses, no UIDs
    found = list(iter_dicom_files([tmp_path]))
    junk = [tmp_path / n for n in ("fake.dcm", "group8", "zeros")]
    assert sorted(found) == sorted([dicom_txt, bare, *junk])
    assert list(iter_dicom_files([dicom_txt, tmp_path])) == [dicom_txt, *junk, bare]
    result = scan([tmp_path])
    assert outcome(result, dicom_txt) == outcome(result, bare) == IN_SERIES
    assert [outcome(result, p) for p in junk] == [reasons.NOT_DICOM] * 3


def test_file_without_preamble_is_read(tmp_path):
    path = write(make_image("MR", series=new_uid()), tmp_path / "raw", preamble=False)
    assert path.read_bytes()[128:132] != b"DICM"
    header = read_header(path)
    assert isinstance(header, InstanceHeader) and header.has_pixel_data and header.modality == "MR"
    assert header.transfer_syntax == ImplicitVRLittleEndian
    assert read_header(copy_test_file("rtstruct.dcm", tmp_path / "rts")).modality == "RTSTRUCT"  # no preamble


@pytest.mark.parametrize("name", ["MR_small.dcm", "MR_small_RLE.dcm", "MR_small_bigendian.dcm", "MR_small_expb.dcm",
                                  "MR_small_implicit.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm",
                                  "MR_small_padded.dcm"])
def test_mr_small_in_every_encoding(name):
    header = read_header(TEST_FILES / name)
    assert isinstance(header, InstanceHeader)
    assert (header.rows, header.columns, header.has_pixel_data) == (64, 64, True)
    assert header.orientation == AXIAL and len(header.positions) == 1


def test_same_positions_across_files_are_inconsistent(tmp_path):
    names = [n for n in os.listdir(TEST_FILES) if n.startswith("MR_small")]
    for name in names:
        copy_test_file(name, tmp_path / name)
    result = scan([tmp_path], SelectionRules(min_slices=1))
    assert [r.reason_code for r in result.rejected] == [reasons.INCONSISTENT_SERIES]
    assert "repeat the position" in result.rejected[0].message and f"{len(names)} files" in result.rejected[0].message
    assert set(result.file_outcomes.values()) == {reasons.INCONSISTENT_SERIES}


def test_deflated_file_has_pixel_data():
    header = read_header(TEST_FILES / "image_dfl.dcm")
    assert isinstance(header, InstanceHeader) and header.has_pixel_data


@pytest.mark.parametrize("name", ["MR_small.dcm", "MR_small_jp2klossless.dcm", "MR_small_implicit.dcm",
                                  "MR_small_bigendian.dcm", "rtplan.dcm"])
def test_truncated_copies(tmp_path, name):
    data = (TEST_FILES / name).read_bytes()
    target = tmp_path / "cut"
    pixel_start = data.rfind(b"\xe0\x7f\x10\x00") if name != "MR_small_bigendian.dcm" else data.rfind(b"\x7f\xe0\x00\x10")
    cuts = {"preamble": 60, "before_dicm": 130, "meta": 150, "dataset": 400, "end_minus_1": len(data) - 1}
    if "rtplan" not in name:
        cuts.update({"pixel_header": pixel_start + 6, "pixels": pixel_start + 40, "pixels_late": len(data) - 100})
    for where, offset in cuts.items():
        target.write_bytes(data[:offset])
        got = read_header(target)
        want = reasons.NOT_DICOM if offset < 132 else reasons.TRUNCATED
        assert getattr(got, "reason_code", None) == want, (name, where, offset, got)
    target.write_bytes(data)
    assert isinstance(read_header(target), InstanceHeader)


def test_truncation_sweep_never_passes_as_complete_image(tmp_path):
    data = (TEST_FILES / "MR_small_RLE.dcm").read_bytes()
    target = tmp_path / "cut"
    for offset in range(0, len(data), 37):
        target.write_bytes(data[:offset])
        got = read_header(target)
        if offset < 132:
            assert got.reason_code == reasons.NOT_DICOM
        elif isinstance(got, InstanceHeader):
            assert not got.has_pixel_data  # a cut exactly between two header elements: no pixel data left
        else:
            assert got.reason_code == reasons.TRUNCATED, (offset, got)


def test_pydicom_truncated_samples():
    assert read_header(TEST_FILES / "MR_truncated.dcm").reason_code == reasons.TRUNCATED
    assert read_header(TEST_FILES / "rtplan_truncated.dcm").reason_code == reasons.TRUNCATED


def test_dicomdir_is_skipped_and_not_followed(tmp_path):
    tree = tmp_path / "A"
    shutil.copytree(TEST_FILES / "dicomdirtests", tree)
    only_index = scan([tree / "DICOMDIR"])  # its referenced files lie beside it, outside this root
    assert only_index.skipped == [str(tree / "DICOMDIR")] and only_index.n_files == 1
    assert not only_index.series and not only_index.rejected
    renamed = tmp_path / "scan_root" / "index.bin"  # a DICOMDIR found by content, whatever its name
    copy_test_file("dicomdirtests/DICOMDIR", renamed)
    by_content = scan([renamed.parent])
    assert by_content.skipped == [str(renamed)] and set(by_content.file_outcomes) == {str(renamed)}
    assert isinstance(read_header(renamed), Skipped)
    whole = scan([tree])
    assert_accounted(whole, all_files(tree))
    dicomdirs = {str(p) for p in tree.rglob("DICOMDIR*")}
    assert set(whole.skipped) == dicomdirs and len(dicomdirs) == 8
    assert len([s for s in whole.series if s.modality == "CR"]) == 3


@pytest.mark.parametrize("iop", [AXIAL, SAGITTAL, OBLIQUE], ids=["axial", "sagittal", "oblique"])
def test_mr_slices_sorted_by_position_not_instance_number(tmp_path, iop):
    in_order = write_mr_series(tmp_path, iop=iop, n=10, step=2.5, seed=11)
    result = scan([tmp_path])
    (series,) = result.series
    assert series.files == tuple(str(p) for p in in_order)
    assert series.files != tuple(sorted(series.files))  # the file names alone would give another order
    numbers = [pydicom.dcmread(f, stop_before_pixels=True).InstanceNumber for f in series.files]
    assert numbers != sorted(numbers) and numbers != sorted(numbers, reverse=True)
    assert series.kind == "mri" and series.num_slices == 10 and not series.multiframe
    step = 2.5 * normal_of(iop) + shear_of(iop, seed=11)  # the reader's slice step, sheared like gantry tilt
    assert series.slice_spacing == pytest.approx(np.linalg.norm(step), abs=1e-6)
    assert read_volume(list(series.files)).spacing[2] == pytest.approx(series.slice_spacing)
    assert series.orientation == pytest.approx(iop) and series.pixel_spacing == (0.5, 0.5)
    projections = np.asarray(series.positions) @ normal_of(iop)
    assert np.all(np.diff(projections) > 0)


def test_sort_along_normal_uses_the_normal():
    positions = [(0, 0, 5), (0, 0, -5), (0, 0, 0)]
    order, projected = sort_along_normal(AXIAL, positions)
    assert order == [1, 2, 0] and list(projected) == [-5, 0, 5]
    order, _ = sort_along_normal(SAGITTAL, [(3, 9, 0), (1, -9, 0), (2, 0, 0)])  # normal is -x
    assert order == [0, 2, 1]


def test_enhanced_multiframe_mr(tmp_path):
    positions = write_enhanced_mr(tmp_path / "enh.dcm", n=9, step=3.0)
    (series,) = scan([tmp_path]).series
    assert series.multiframe and series.num_slices == 9 and series.files == (str(tmp_path / "enh.dcm"),)
    assert series.slice_spacing == pytest.approx(3.0) and series.pixel_spacing == (0.7, 0.7)
    assert [positions[i] for i in series.frame_order] == list(series.positions)
    assert series.frame_order != tuple(range(9))
    projections = np.asarray(series.positions) @ normal_of(SAGITTAL)
    assert np.allclose(np.diff(projections), 3.0)


def test_frame_geometry_single_and_multiframe(tmp_path):
    write_enhanced_mr(tmp_path / "enh.dcm", n=4)
    frames = frame_geometries(pydicom.dcmread(tmp_path / "enh.dcm", stop_before_pixels=True))
    assert [f.orientation for f in frames] == [SAGITTAL] * 4 and all(f.pixel_spacing == (0.7, 0.7) for f in frames)
    header = read_header(tmp_path / "enh.dcm")
    assert header.frames == tuple(frames) and header.orientation == SAGITTAL and header.geometry_error is None
    (frame,) = frame_geometries(make_image("MR", iop=OBLIQUE, ipp=(1.0, 2.0, 3.0)))
    assert frame.orientation == pytest.approx(OBLIQUE) and frame.position == (1.0, 2.0, 3.0)
    with pytest.raises(DicomError) as caught:
        frame_geometries(make_image("CR"))
    assert caught.value.reason_code == reasons.INCONSISTENT_SERIES
    cr = read_header(write(make_image("CR", series=new_uid()), tmp_path / "cr"))
    assert cr.frames == () and cr.orientation is None and cr.geometry_error.message == caught.value.message


def test_mixed_sizes_are_inconsistent(tmp_path):
    paths = write_mr_series(tmp_path, n=9)
    odd = make_image("MR", series=pydicom.dcmread(paths[0]).SeriesInstanceUID, rows=8, ipp=(0, 0, 100.0))
    write(odd, tmp_path / "odd")
    result = scan([tmp_path])
    (row,) = result.rejected
    assert row.reason_code == reasons.INCONSISTENT_SERIES and "4x4" in row.message and "8x4" in row.message
    assert "10 files" in row.message and not result.series
    assert set(result.file_outcomes.values()) == {reasons.INCONSISTENT_SERIES} and len(result.file_outcomes) == 10


def test_mixed_orientation_and_gaps_are_inconsistent(tmp_path):
    paths = write_mr_series(tmp_path / "tilt", n=9)
    uid = pydicom.dcmread(paths[0]).SeriesInstanceUID
    write(make_image("MR", series=uid, iop=SAGITTAL, ipp=(0, 0, 90.0)), tmp_path / "tilt" / "z")
    paths = write_mr_series(tmp_path / "gap", n=10)
    paths[4].unlink()
    result = scan([tmp_path], SelectionRules(min_slices=2))
    by_folder = {Path(r.path).parent.name: r for r in result.rejected}
    assert [r.reason_code for r in result.rejected] == [reasons.INCONSISTENT_SERIES] * 2
    assert "ImageOrientationPatient" in by_folder["tilt"].message and "10 files" in by_folder["tilt"].message
    assert "unevenly spaced (gaps 2.5 to 5 mm)" in by_folder["gap"].message and "9 files" in by_folder["gap"].message


def write_slices(folder: Path, positions, edit: Callable[[int, Dataset], None] = lambda k, ds: None) -> list[Path]:
    """One axial MR series with a slice at each of ``positions``; ``edit(k, ds)`` may alter slice k first."""
    series = new_uid()
    paths = []
    for k, position in enumerate(positions):
        ds = make_image("MR", series=series, ipp=tuple(float(v) for v in position), instance=k + 1)
        ds.FrameOfReferenceUID = "1.2.3.1.9"
        edit(k, ds)
        paths.append(write(ds, folder / f"s{k:03d}"))
    return paths


def axial_positions(steps) -> np.ndarray:
    """Slice origins along +z starting at (-40, 12.5, 7) with the given steps between them."""
    return np.array([-40.0, 12.5, 7.0]) + np.outer(np.concatenate([[0.0], np.cumsum(steps)]), [0.0, 0.0, 1.0])


def set_on(index: int, **values) -> Callable[[int, Dataset], None]:
    """An ``edit`` for ``write_slices`` that sets header values on slice ``index`` only."""
    def edit(k: int, ds: Dataset) -> None:
        for keyword, value in values.items():
            if value is None:
                delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)
                if keyword == "Rows":
                    ds.PixelData = bytes(value * ds.Columns * 2)
    return lambda k, ds: edit(k, ds) if k == index else None


def enhanced_missing_frame(folder: Path) -> None:
    positions = write_enhanced_mr(folder / "enh.dcm", n=9, step=3.0)
    ds = pydicom.dcmread(folder / "enh.dcm")
    gone = int(np.argsort(np.asarray(positions) @ normal_of(SAGITTAL))[4])  # the middle slice
    del ds.PerFrameFunctionalGroupsSequence[gone]
    ds.NumberOfFrames, ds.PixelData = 8, bytes(4 * 4 * 2 * 8)
    ds.save_as(folder / "enh.dcm")


REGULAR = axial_positions([2.5] * 8)  # 9 evenly spaced axial slices
JITTER = np.random.default_rng(0).uniform(-0.01, 0.01, REGULAR.shape)  # position rounding of a real scanner
SHIFT_ONE = 2.0 * np.outer(np.arange(len(REGULAR)) == 4, [1.0, 0.0, 0.0])  # slice 5 moved 2 mm along x only


def regular(edit: Callable[[int, Dataset], None]) -> Callable[[Path], object]:
    return lambda folder: write_slices(folder, REGULAR, edit)


GEOMETRY_CASES: dict[str, tuple[Callable[[Path], object], str | None]] = {  # writer, reader's words (None = usable)
    "good_shuffled_sheared": (lambda f: write_mr_series(f, iop=OBLIQUE, n=9, seed=4), None),
    "good_with_jitter": (lambda f: write_slices(f, REGULAR + JITTER), None),
    "good_enhanced_multiframe": (lambda f: write_enhanced_mr(f / "enh.dcm", n=9), None),
    "good_single_slice": (lambda f: write_slices(f, REGULAR[:1]), None),
    "missing_slice": (lambda f: write_mr_series(f, n=10)[4].unlink(), "a slice is probably missing"),
    "missing_frame_enhanced": (enhanced_missing_frame, "a slice is probably missing"),
    # every step below 1.5 x the median (no "gap"), but no single affine fits these slices
    "uneven_spacing": (lambda f: write_slices(f, axial_positions([2.5, 2.5, 3.2, 1.8, 2.5, 2.5])), "unevenly spaced"),
    "shifted_in_plane": (lambda f: write_slices(f, REGULAR + SHIFT_ONE), "within its plane"),
    "duplicate_position": (lambda f: write_slices(f, axial_positions([2.5, 2.5, 0.0, 2.5, 2.5])), "repeat the position"),
    "mixed_orientation": (regular(set_on(3, ImageOrientationPatient=list(SAGITTAL))), "another orientation"),
    "mixed_size": (regular(set_on(5, Rows=8)), "image size"),
    "mixed_pixel_spacing": (regular(set_on(2, PixelSpacing=[0.5, 0.6])), "PixelSpacing"),
    "missing_pixel_spacing": (regular(set_on(2, PixelSpacing=None)), "PixelSpacing"),  # the reader assumes 1 mm
    "other_frame_of_reference": (regular(set_on(4, FrameOfReferenceUID="1.2.3.1.10")), "FrameOfReferenceUID"),
    "missing_position": (regular(set_on(6, ImagePositionPatient=None)), "has no ImagePositionPatient"),
    "non_orthogonal_orientation": (regular(set_on(1, ImageOrientationPatient=[1, 0, 0, 0.5, 0.866, 0])),
                                   "not orthogonal"),
}


@pytest.mark.parametrize("case", GEOMETRY_CASES)
def test_scan_rejects_exactly_the_series_the_reader_rejects(tmp_path, case):
    """Ingest must never accept a series that training cannot load, nor drop one it can: same verdict, same words."""
    writer, words = GEOMETRY_CASES[case]
    writer(tmp_path)
    files = sorted(str(p) for p in tmp_path.iterdir())
    result = scan([tmp_path], SelectionRules(min_slices=1))
    try:
        volume, error = read_volume(files), None
    except DicomError as caught:
        volume, error = None, caught
    if words is None:
        assert error is None and not result.rejected
        (series,) = result.series
        assert series.num_slices == volume.pixels.shape[2] and series.slice_spacing == pytest.approx(volume.spacing[2])
        in_order = read_volume(list(series.files))
        np.testing.assert_allclose(in_order.affine, volume.affine, atol=1e-9)
        ras = np.asarray(series.positions) * [-1.0, -1.0, 1.0]
        ijk = np.c_[np.zeros((len(ras), 2)), np.arange(len(ras)), np.ones(len(ras))]
        np.testing.assert_allclose((ijk @ volume.affine.T)[:, :3], ras, atol=0.05)  # sorted positions on the grid
    else:
        assert error is not None and error.reason_code == reasons.INCONSISTENT_SERIES and words in error.message
        assert not result.series
        (row,) = result.rejected
        assert row.reason_code == error.reason_code
        assert row.message == f"{error.message} (series of {len(files)} file{'s' if len(files) > 1 else ''})"
        assert set(result.file_outcomes.values()) == {reasons.INCONSISTENT_SERIES}


def test_localizers_rejected_first(tmp_path):
    write_mr_series(tmp_path / "by_type", n=9, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    write_mr_series(tmp_path / "by_name", n=3, description="Survey_32ch")
    uid = new_uid()
    write(make_image("MR", series=uid, ipp=(0, 0, 0), description="scout"), tmp_path / "mixed" / "a")
    write(make_image("MR", series=uid, ipp=(0, 0, 0), rows=8, description="scout"), tmp_path / "mixed" / "b")
    result = scan([tmp_path])
    assert [r.reason_code for r in result.rejected] == [reasons.LOCALIZER] * 3
    assert not result.series


def test_min_slices(tmp_path):
    write_mr_series(tmp_path, n=5)
    assert [r.reason_code for r in scan([tmp_path]).rejected] == [reasons.TOO_FEW_SLICES]
    assert "5 slices" in scan([tmp_path]).rejected[0].message
    (series,) = scan([tmp_path], SelectionRules(min_slices=5)).series
    assert series.num_slices == 5


def test_selection_rules(tmp_path):
    t1 = write_mr_series(tmp_path / "t1", n=8, description="T1 AX post")
    t2 = write_mr_series(tmp_path / "t2", n=8, description="t2_tse_SAG")
    cr = write(make_image("CR", series=new_uid(), description="Chest PA"), tmp_path / "cr")

    def kept(rules: SelectionRules) -> set[str]:
        result = scan([tmp_path], rules)
        assert all(r.reason_code == reasons.NOT_SELECTED for r in result.rejected)
        return {s.files[0] for s in result.series}

    first = {str(t1[0]), str(t2[0]), str(cr)}
    assert kept(SelectionRules()) == first
    assert kept(SelectionRules(series_description_include=("^T1",))) == {str(t1[0])}
    assert kept(SelectionRules(series_description_include=("t1", "chest"))) == {str(t1[0]), str(cr)}
    assert kept(SelectionRules(series_description_exclude=("sag", "post"))) == {str(cr)}
    assert kept(SelectionRules(series_description_include=("t",), series_description_exclude=("SAG",))) == \
        {str(t1[0]), str(cr)}
    result = scan([tmp_path], SelectionRules(modalities=("MR",)))
    assert [r.reason_code for r in result.rejected] == [reasons.UNSUPPORTED_MODALITY]


def test_colour_xray_allowed_only_when_configured(tmp_path):
    path = write(make_image("DX", series=new_uid(), photometric="RGB"), tmp_path / "rgb")
    write(make_image("MR", series=new_uid(), photometric="PALETTE COLOR"), tmp_path / "palette")
    assert {r.reason_code for r in scan([tmp_path]).rejected} == {reasons.UNSUPPORTED_PHOTOMETRIC}
    allowed = scan([tmp_path], SelectionRules(color="gray"))
    assert [s.files for s in allowed.series] == [(str(path),)] and allowed.series[0].photometric == "RGB"
    assert [r.reason_code for r in allowed.rejected] == [reasons.UNSUPPORTED_PHOTOMETRIC]  # palette MR


def test_key_object_and_presentation_state_are_not_images(tmp_path):
    write(make_image("KO", sop_class=KO_STORAGE, series=new_uid(), pixels=False), tmp_path / "ko")
    write(make_image("PR", sop_class="1.2.840.10008.5.1.4.1.1.11.1", series=new_uid(), pixels=False), tmp_path / "pr")
    rows = scan([tmp_path]).rejected
    assert [r.reason_code for r in rows] == [reasons.NOT_AN_IMAGE] * 2
    assert "Key Object Selection" in rows[0].message and "Presentation State" in rows[1].message


def test_transfer_syntax_decoder_check(tmp_path):
    assert decoder_problem(ExplicitVRLittleEndian) is None
    assert decoder_problem(JPEG2000) is None  # pylibjpeg-openjpeg is installed here
    private = "1.2.826.0.1.3680043.10.999.77"
    ds = make_image("MR", series=new_uid())
    write(ds, tmp_path / "private", syntax=private)
    (row,) = scan([tmp_path], SelectionRules(min_slices=1)).rejected
    assert row.reason_code == reasons.UNSUPPORTED_TRANSFER_SYNTAX and private in row.message
    only_gdcm = Decoder(JPEG2000)  # a real decoder whose only plugin is not installed
    only_gdcm.add_plugin("gdcm", ("pydicom.pixels.decoders.gdcm", "_decode_frame"))
    if only_gdcm.is_available:
        pytest.skip("gdcm is installed")
    message = decoder_problem(JPEG2000, only_gdcm)
    assert message.startswith("JPEG 2000 Image Compression pixel data needs a decoder plugin: pip install "
                              "'python-gdcm>=")


# --- the fast header path (rawheader) must give exactly what the pydicom path gives -------------------------

def pydicom_path(monkeypatch: pytest.MonkeyPatch, path: Path):
    """``read_header`` of ``path`` with the fast path switched off (always the full pydicom read)."""
    with monkeypatch.context() as patched:
        patched.setattr(headers_module, "read_plain", lambda *args: None)
        return read_header(path)


def took_fast_path(path: Path) -> bool:
    with path.open("rb") as fh:
        return path.stat().st_size > 0 and rawheader.read_plain(fh, path.stat().st_size, fh.read(rawheader.CHUNK)) \
            is not None


LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
UNDEFINED = 0xFFFFFFFF
SYNTAXES = {"explicit": "1.2.840.10008.1.2.1", "implicit": "1.2.840.10008.1.2", "big": "1.2.840.10008.1.2.2",
            "rle": "1.2.840.10008.1.2.5"}
PLAIN_MR = [  # (tag, VR, little-endian value bytes) of a 4x4 MR slice, hand-encoded (pydicom would tidy values)
    (0x00080005, "CS", b"ISO_IR 100"), (0x00080008, "CS", b"ORIGINAL\\PRIMARY "),
    (0x00080016, "UI", b"1.2.840.10008.5.1.4.1.1.4\0"), (0x00080060, "CS", b"MR"), (0x00080070, "LO", b"ACME"),
    (0x0008103E, "LO", b"T1 AX "), (0x00100020, "LO", b"PAT-1 "), (0x00180015, "CS", b"HEAD"),
    (0x00180050, "DS", b"2.5 "), (0x0020000D, "UI", b"1.2.3.4"), (0x0020000E, "UI", b"1.2.3.4.5\0"),
    (0x00200013, "IS", b"7 "), (0x00200032, "DS", b"-10\\12.5\\7 "), (0x00200037, "DS", b"1\\0\\0\\0\\1\\0 "),
    (0x00200052, "UI", b"1.2.3.9\0"), (0x00280002, "US", b"\x01\x00"), (0x00280004, "CS", b"MONOCHROME2 "),
    (0x00280010, "US", b"\x04\x00"), (0x00280011, "US", b"\x04\x00"), (0x00280030, "DS", b"0.5\\0.5 "),
    (0x00280100, "US", b"\x10\x00"), (0x7FE00010, "OW", bytes(32)),
]
ODD_VALUES = {  # name: replaced elements (value None: removed); every one in every syntax of SYNTAXES
    "plain": [], "ds_spaces": [(0x00280030, "DS", b" 0.5 \\ 0.5")], "ds_exponent": [(0x00280030, "DS", b"5e-1\\.5")],
    "ds_text": [(0x00280030, "DS", b"abc\\0.5 ")], "ds_empty_value": [(0x00280030, "DS", b"0.5\\\\0.5 ")],
    "ds_one": [(0x00280030, "DS", b"0.5 ")], "ds_three": [(0x00280030, "DS", b"0.5\\0.5\\1 ")],
    "ds_overflow": [(0x00280030, "DS", b"1e999\\1 ")], "ds_nan": [(0x00280030, "DS", b"nan\\1 ")],
    "ds_zero": [(0x00280030, "DS", b"0\\0 ")], "ds_blank": [(0x00280030, "DS", b"    ")],
    "ds_empty": [(0x00280030, "DS", b"")], "ds_underscore": [(0x00280030, "DS", b"1_0\\1 ")],
    "ipp_two": [(0x00200032, "DS", b"1\\2 ")], "ipp_one": [(0x00200032, "DS", b"1 ")],
    "ipp_empty": [(0x00200032, "DS", b"")], "ipp_missing": [(0x00200032, "DS", None)],
    "iop_not_orthogonal": [(0x00200037, "DS", b"1\\0\\0\\0.5\\0.866\\0 ")], "iop_five": [(0x00200037, "DS", b"1\\0\\0\\0\\1 ")],
    "is_float": [(0x00200013, "IS", b"1.0 ")], "is_fraction": [(0x00200013, "IS", b"1.5 ")],
    "is_signed": [(0x00200013, "IS", b"+3")], "is_spaces": [(0x00200013, "IS", b" 12 ")],
    "is_empty": [(0x00200013, "IS", b"")], "is_text": [(0x00200013, "IS", b"ab")], "is_two": [(0x00200013, "IS", b"1\\2 ")],
    "is_huge": [(0x00200013, "IS", b"99999999999999999999")], "frames_0": [(0x00280008, "IS", b"0 ")],
    "frames_2": [(0x00280008, "IS", b"2 "), (0x7FE00010, "OW", bytes(64))], "frames_blank": [(0x00280008, "IS", b"  ")],
    "rows_two": [(0x00280010, "US", b"\x04\x00\x04\x00")], "rows_odd": [(0x00280010, "US", b"\x04\x00\x00")],
    "rows_empty": [(0x00280010, "US", b"")], "rows_missing": [(0x00280010, "US", None)],
    "rows_ss": [(0x00280010, "SS", b"\x04\x00")], "cs_lower": [(0x00080060, "CS", b"mr")],
    "cs_spaces": [(0x00080060, "CS", b" MR ")], "cs_nul": [(0x00080060, "CS", b"MR\0\0")],
    "cs_as_lo": [(0x00080060, "LO", b"MR")], "type_spaces": [(0x00080008, "CS", b"ORIGINAL \\ PRIMARY\\LOCALIZER\\ ")],
    "type_empty": [(0x00080008, "CS", b"")], "lo_values": [(0x0008103E, "LO", b"T1 \\ AX\0\\ ")],
    "lo_latin1": [(0x00080070, "LO", "Müller ".encode("latin-1"))],
    "lo_latin1_no_charset": [(0x00080005, "CS", None), (0x00080070, "LO", "Müller ".encode("latin-1"))],
    "lo_utf8": [(0x00080005, "CS", b"ISO_IR 192"), (0x00080070, "LO", "Müller ".encode())],
    "lo_bad_utf8": [(0x00080005, "CS", b"ISO_IR 192"), (0x00080070, "LO", b"M\xfcller ")],
    "lo_iso2022": [(0x00080005, "CS", b"\\ISO 2022 IR 87"), (0x00080070, "LO", b"\x1b$B;3ED\x1b(B ")],
    "charset_cyrillic": [(0x00080005, "CS", b"ISO_IR 144"), (0x00080070, "LO", "ИМЯ ".encode("iso8859_5"))],
    "charset_unknown": [(0x00080005, "CS", b"ISO_IR 999")], "charset_empty": [(0x00080005, "CS", b"")],
    "ui_spaces": [(0x0020000E, "UI", b" 1.2.3.4.5 ")], "ui_two": [(0x0020000E, "UI", b"1.2\\1.3 ")],
    "ui_empty": [(0x0020000E, "UI", b"")], "sop_directory": [(0x00080016, "UI", b"1.2.840.10008.1.3.10")],
    "sop_report": [(0x00080016, "UI", b"1.2.840.10008.5.1.4.1.1.88.11")], "for_empty": [(0x00200052, "UI", b"")],
    "thickness_text": [(0x00180050, "DS", b"x ")], "spacing_between": [(0x00180088, "DS", b"3 ")],
    "imager_spacing": [(0x00280030, "DS", None), (0x00181164, "DS", b"0.2\\0.2 ")],
    "nominal_spacing": [(0x00280030, "DS", None), (0x00182010, "DS", b"0.3\\0.3 ")],
    "pixels_short": [(0x7FE00010, "OW", bytes(10))], "pixels_missing": [(0x7FE00010, "OW", None)],
    "float_pixels": [(0x7FE00010, "OW", None), (0x7FE00008, "OF", bytes(64))], "ybr_422": [(0x00280004, "CS", b"YBR_FULL_422")],
    "group_length": [(0x00080000, "UL", b"\x10\x00\x00\x00")], "private": [(0x00090010, "LO", b"ACME "), (0x00091010, "LO", b"X ")],
    "un_vr": [(0x00080070, "UN", b"ACME")], "meta_in_dataset": [(0x00020010, "UI", b"1.2.840.10008.1.2\0")],
    "functional_groups": [(0x52009230, "SQ", b"")], "directory_records": [(0x00041220, "SQ", b"")],
    "command_set": [(0x00000000, "UL", b"\x04\x00\x00\x00")], "trailing_padding": [(0xFFFCFFFC, "OB", bytes(8))],
}


def encode_element(tag: int, vr: str, value: bytes, implicit: bool, little: bool, length: int | None = None) -> bytes:
    order = "<" if little else ">"
    if not little and vr in ("US", "SS", "OW"):
        value = b"".join(value[i:i + 2][::-1] for i in range(0, len(value), 2))
    head = struct.pack(f"{order}HH", tag >> 16, tag & 0xFFFF)
    length = len(value) if length is None else length
    if implicit:
        return head + struct.pack(f"{order}L", length) + value
    if vr in LONG_VRS:
        return head + vr.encode() + b"\0\0" + struct.pack(f"{order}L", length) + value
    return head + vr.encode() + struct.pack(f"{order}H", length) + value


def encode_sequence(tag: int, items: list[list[tuple]], implicit: bool, little: bool, undefined: bool = True,
                    undefined_items: bool = True) -> bytes:
    """An SQ element (undefined length or not) whose items hold ``(tag, VR, value)`` elements."""
    order = "<" if little else ">"
    body = b""
    for item in items:
        content = b"".join(encode_element(*element, implicit, little) for element in item)
        body += struct.pack(f"{order}HHL", 0xFFFE, 0xE000, UNDEFINED if undefined_items else len(content)) + content
        body += struct.pack(f"{order}HHL", 0xFFFE, 0xE00D, 0) if undefined_items else b""
    body += struct.pack(f"{order}HHL", 0xFFFE, 0xE0DD, 0) if undefined else b""
    return encode_element(tag, "SQ", body, implicit, little, UNDEFINED if undefined else None)


def encode_file(elements: list, syntax: str) -> bytes:
    """Preamble, file meta and ``elements``: ``(tag, VR, value)``, or ``(tag, "raw", encoded element)``."""
    implicit, little = syntax == SYNTAXES["implicit"], syntax != SYNTAXES["big"]
    uid = lambda text: text.encode() + b"\0" * (len(text) % 2)  # noqa: E731
    meta = b"".join(encode_element(tag, vr, value, False, True) for tag, vr, value in [
        (0x00020001, "OB", b"\0\1"), (0x00020002, "UI", uid(MR_STORAGE)), (0x00020003, "UI", uid("1.2.3.4.5.6")),
        (0x00020010, "UI", uid(syntax))])
    body = b"".join(e[2] if e[1] == "raw" else encode_element(*e, implicit, little) for e in elements)
    return bytes(128) + b"DICM" + encode_element(0x00020000, "UL", struct.pack("<L", len(meta)), False, True) + meta + body


def with_elements(changes: list[tuple], elements: list = PLAIN_MR) -> list:
    """``elements`` with the ``(tag, VR, value)`` changes applied (value None: removed), in tag order."""
    changed = {change[0] for change in changes}
    kept = [e for e in elements if e[0] not in changed] + [c for c in changes if c[2] is not None]
    return sorted(kept, key=lambda e: e[0])


def sequence_cases(implicit: bool, little: bool) -> dict[str, list]:
    """Files with sequences before the needed elements: the walk must end exactly where pydicom's does."""
    ref = [(0x00081150, "UI", b"1.2\0"), (0x00081155, "UI", b"1.2.3\0")]
    order = "<" if little else ">"
    inner = encode_sequence(0x00081140, [ref], implicit, little)
    nested = (struct.pack(f"{order}HHL", 0xFFFE, 0xE000, UNDEFINED) + inner + struct.pack(f"{order}HHL", 0xFFFE, 0xE00D, 0)
              + struct.pack(f"{order}HHL", 0xFFFE, 0xE0DD, 0))
    return {
        "sequence_undefined": [(0x00082112, "raw", encode_sequence(0x00082112, [ref, []], implicit, little))],
        "sequence_defined": [(0x00082112, "raw", encode_sequence(0x00082112, [ref], implicit, little, False, False))],
        "sequence_defined_items": [(0x00082112, "raw", encode_sequence(0x00082112, [ref, []], implicit, little, True,
                                                                        False))],
        "sequence_empty": [(0x00082112, "raw", encode_sequence(0x00082112, [], implicit, little))],
        "sequence_nested": [(0x00082112, "raw", encode_element(0x00082112, "SQ", nested, implicit, little, UNDEFINED))],
        "sequence_private": [(0x00090010, "LO", b"ACME "),
                             (0x00091001, "raw", encode_sequence(0x00091001, [ref], implicit, little))],
    }


def test_fast_path_equals_pydicom_path_on_pydicom_test_files(monkeypatch):
    fast, declined = set(), set()
    for path in sorted(p for p in TEST_FILES.rglob("*") if p.is_file()):
        name = str(path.relative_to(TEST_FILES))
        assert read_header(path) == pydicom_path(monkeypatch, path), name
        (fast if took_fast_path(path) else declined).add(name)
    assert len(fast) > 60  # most image files: every MR_small encoding, JPEG, RLE, big endian, implicit VR, ...
    assert {"MR_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "MR_small_RLE.dcm", "CT_small.dcm",
            "JPEG2000-embedded-sequence-delimiter.dcm", "MR_truncated.dcm", "rtdose.dcm"} <= fast
    assert {"no_meta.dcm", "rtstruct.dcm", "image_dfl.dcm", "liver_1frame.dcm", "rtplan_truncated.dcm", "test-SR.dcm",
            "dicomdirtests/DICOMDIR", "UN_sequence.dcm", "meta_missing_tsyntax.dcm"} <= declined


@pytest.mark.parametrize("syntax", SYNTAXES)
def test_fast_path_equals_pydicom_path_on_odd_values(tmp_path, monkeypatch, syntax):
    implicit, little = syntax == "implicit", syntax != "big"
    cases = {name: with_elements(changes) for name, changes in ODD_VALUES.items()}
    cases.update({name: with_elements(changes) for name, changes in sequence_cases(implicit, little).items()})
    fast = set()
    for name, elements in cases.items():
        path = tmp_path / name
        path.write_bytes(encode_file(elements, SYNTAXES[syntax]))
        assert read_header(path) == pydicom_path(monkeypatch, path), name
        if took_fast_path(path):
            fast.add(name)
    must_decline = {"ds_text", "ds_empty_value", "ds_overflow", "ds_nan", "ds_blank", "ds_underscore", "ipp_two",
                    "ipp_one", "iop_five", "is_float", "is_fraction", "is_text", "is_two", "frames_blank", "rows_two",
                    "rows_odd", "rows_missing", "lo_bad_utf8", "lo_iso2022", "charset_cyrillic", "charset_unknown",
                    "ui_two", "sop_directory", "thickness_text", "meta_in_dataset", "functional_groups",
                    "directory_records", "command_set"}
    if not implicit:  # implicit VR files carry no VR to disagree with the dictionary
        must_decline |= {"rows_ss", "cs_as_lo", "un_vr"}
    assert not fast & must_decline
    assert set(cases) - must_decline - {"rows_ss", "cs_as_lo", "un_vr"} <= fast  # all others take the fast path
    header = read_header(tmp_path / "plain")
    assert header.transfer_syntax == SYNTAXES[syntax] and header.positions == ((-10.0, 12.5, 7.0),)
    assert (header.rows, header.columns, header.pixel_spacing, header.image_type) == (4, 4, (0.5, 0.5), ("ORIGINAL", "PRIMARY"))


@pytest.mark.parametrize("name", ["MR_small_implicit.dcm", "MR_small_bigendian.dcm", "693_J2KI.dcm",
                                  "dicomdirtests/98892001/CT2N/6293"])
def test_fast_path_equals_pydicom_path_on_cut_copies(tmp_path, monkeypatch, name):
    """Copies cut every 5 bytes up to the pixel data header (every byte around it), then every 41 bytes: truncated,
    not DICOM or complete exactly as the pydicom path says (implicit VR, big endian, undefined-length sequences)."""
    data = (TEST_FILES / name).read_bytes()
    pixels = max(data.rfind(b"\xe0\x7f\x10\x00"), data.rfind(b"\x7f\xe0\x00\x10"))
    offsets = {*range(0, pixels, 5), *range(pixels - 4, pixels + 16), *range(pixels + 16, len(data), 41), len(data)}
    target = tmp_path / "cut"
    for offset in sorted(offsets):
        target.write_bytes(data[:offset])
        assert read_header(target) == pydicom_path(monkeypatch, target), offset


def test_fast_path_declines_under_other_pydicom_settings(monkeypatch):
    path = TEST_FILES / "MR_small.dcm"
    assert took_fast_path(path)
    monkeypatch.setattr(pydicom_config.settings, "reading_validation_mode", pydicom_config.RAISE)
    assert not took_fast_path(path)
    monkeypatch.undo()
    monkeypatch.setattr(pydicom_config, "use_DS_numpy", True)
    assert not took_fast_path(path)
    monkeypatch.undo()
    monkeypatch.setattr(pydicom_hooks.hooks, "raw_element_value", lambda raw, data, **kwargs: None)
    assert not took_fast_path(path)


def test_outcomes_travel_as_json_unchanged(tmp_path):
    write_enhanced_mr(tmp_path / "enh.dcm", n=3)
    paths = [tmp_path / "enh.dcm", TEST_FILES / "MR_small.dcm", TEST_FILES / "CT_small.dcm", TEST_FILES / "no_meta.dcm",
             TEST_FILES / "dicomdirtests" / "DICOMDIR", write(make_image("CR", series=new_uid()), tmp_path / "cr")]
    for path in paths:
        result = read_header(path)
        data = json.loads(json.dumps(encode_outcome(result)))
        assert data == json.loads(json.dumps({"type": type(result).__name__, **asdict(result)}))
        assert decode_outcome(data) == result


def test_files_reached_twice_through_links_are_scanned_once(tmp_path):
    real = write(make_image("CR", series=new_uid()), tmp_path / "data" / "a" / "cr")
    (tmp_path / "links").mkdir()
    (tmp_path / "links" / "to_file").symlink_to(real)
    (tmp_path / "links" / "to_folder").symlink_to(tmp_path / "data", target_is_directory=True)
    found = list(iter_dicom_files([tmp_path / "links" / "to_file", tmp_path / "data", tmp_path / "links" / "to_folder" / "a"]))
    assert found == [tmp_path / "links" / "to_file"]
    assert list(iter_dicom_files([tmp_path / "data" / "a" / ".." / "a", real])) == [tmp_path / "data" / "a" / ".." / "a" / "cr"]
