"""One DICOM rule book (pipelines.dicom.rules): scan's verdict on a header is the reader's outcome on the file.

The sweep runs over every file of pydicom's test files and of the ``pydicom-data`` package, in both colour
modes: once as the files are, and once as if every image were an X-ray (CR) and as if it were an MR, so that
every photometric interpretation and transfer syntax in them meets the rules of both kinds.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
import yaml
from helpers.dicom import ENHANCED_MR_STORAGE, make_image, new_uid, palette_rgb, write, write_jpeg_xl

from pipelines.config import ConfigError, dump_config, validate_config, without_replaced_keys
from pipelines.data.scan_settings import selection_rules
from pipelines.dicom import reasons
from pipelines.dicom import scan as scan_module
from pipelines.dicom.headers import InstanceHeader, read_header
from pipelines.dicom.limits import DEFAULT_LIMITS
from pipelines.dicom.read import DicomSeriesReader, read_volume, read_xray
from pipelines.dicom.reasons import DicomError, is_failure
from pipelines.dicom.rules import COLOR_KEY, COLOUR, ColorMode, Kind, image_problem, photometric_problem
from pipelines.dicom.scan import IN_SERIES, SelectionRules, kind_of, scan

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
RULE_REASONS = {reasons.UNSUPPORTED_PHOTOMETRIC, reasons.UNSUPPORTED_TRANSFER_SYNTAX}
AS_MODALITY = {"xray": "CR", "mri": "MR"}
# Files whose header passes every rule but whose pixel data no installed decoder accepts: a header-only scan
# cannot see this, the reader reports it as the failure it is (in the sweep as if they were X-rays: they are NM).
PIXEL_DEFECTS = {"JPEG-lossy.dcm": reasons.DECODE_ERROR, "JPEG2000-embedded-sequence-delimiter.dcm": reasons.DECODE_ERROR}

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.filterwarnings("ignore::FutureWarning")]


def pydicom_data_folder() -> Path | None:
    """The data folder of the installed ``pydicom-data`` package (module ``data_store``), None without it."""
    spec = importlib.util.find_spec("data_store")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def sweep_files(source: str) -> list[Path]:
    """Every file of one source, by exact path (never ``get_testdata_files``, which may reach the network)."""
    root = PYDICOM_FILES if source == "pydicom" else pydicom_data_folder()
    if root is None:
        pytest.skip("pydicom-data is not installed (pip install pydicom-data): its files cannot be swept")
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc"))


def header_as(kind: Kind) -> Callable[..., object]:
    """``read_header`` that reports every image's modality as the one of ``kind``."""
    def read(path: str, limits: object) -> object:
        header = read_header(path, limits)
        return dataclasses.replace(header, modality=AS_MODALITY[kind]) if isinstance(header, InstanceHeader) else header
    return read


def scan_verdict(path: Path, rules: SelectionRules) -> tuple[str, Kind | None, str]:
    """(IN_SERIES or the reason code, the kind of the series or of the header scan read, the message)."""
    result = scan([path], rules)
    if result.series:
        return IN_SERIES, result.series[0].kind, ""
    header = scan_module.read_header(str(path), DEFAULT_LIMITS)  # as scan saw it (as_kind included)
    kind = kind_of(header.modality) if isinstance(header, InstanceHeader) else None
    message = next((r.message for r in result.rejected if r.path == str(path)), "")
    return result.file_outcomes[str(path)], kind, message


def training_read(path: Path, kind: Kind, color: ColorMode) -> np.ndarray:
    """The pixels the training loader gets for a series of one file (``DicomSeriesReader``, as in dataset.py)."""
    reader = DicomSeriesReader(color=color)
    array, _ = reader.get_data(reader.read(str(path) if kind == "xray" else [str(path)]))
    return array


def reader_error(path: Path, kind: Kind, color: ColorMode) -> DicomError | None:
    """The ``DicomError`` the kind's reader raises for the file, None when it returns pixels."""
    try:
        read_xray(path, color=color) if kind == "xray" else read_volume([path])
    except DicomError as error:
        return error
    return None


@pytest.mark.parametrize("color", ["reject", "gray"])
@pytest.mark.parametrize("as_kind", [None, "xray", "mri"], ids=["as-is", "as-xray", "as-mri"])
@pytest.mark.parametrize("source", ["pydicom", "pydicom-data"])
def test_scan_and_reader_agree_on_every_test_file(source, as_kind, color, monkeypatch):
    files = sweep_files(source)
    if as_kind is not None:
        monkeypatch.setattr(scan_module, "read_header", header_as(as_kind))
    rules = SelectionRules(min_slices=1, color=color)  # every file alone: one slice is a volume here
    tally: Counter[str] = Counter()
    disagreements = []
    for path in files:
        code, kind, message = scan_verdict(path, rules)
        if code == IN_SERIES:
            try:
                assert training_read(path, kind, color).size > 0
                tally["read"] += 1
            except DicomError as error:
                if PIXEL_DEFECTS.get(path.name) != error.reason_code:
                    disagreements.append(f"{path.name}: scan keeps it ({kind}), reader: {error.reason_code}")
                tally["pixel defect"] += 1
        elif code in RULE_REASONS:
            error = reader_error(path, kind, color)
            if error is None or (error.reason_code, error.message) != (code, message):
                got = "pixels" if error is None else f"{error.reason_code} ({error.message})"
                disagreements.append(f"{path.name}: scan {code} ({message}), {kind} reader: {got}")
            tally[code] += 1
        else:
            tally["other: " + code] += 1
    assert not disagreements, "\n".join(disagreements)
    assert tally["read"] > 0, tally


def test_the_sweep_holds_colour_that_each_mode_treats_its_own_way(monkeypatch):
    """The sweep is not vacuous: as X-rays, pydicom's files hold colour that each mode treats its own way."""
    files = {p.name: p for p in sweep_files("pydicom")}
    monkeypatch.setattr(scan_module, "read_header", header_as("xray"))
    for name in ("examples_palette.dcm", "SC_rgb_jpeg_dcmtk.dcm", "SC_ybr_full_422_uncompressed.dcm"):  # palette, RGB, YBR
        assert scan_verdict(files[name], SelectionRules(color="reject"))[0] == reasons.UNSUPPORTED_PHOTOMETRIC
        assert scan_verdict(files[name], SelectionRules(color="gray"))[0] == IN_SERIES


def test_transfer_syntax_verdicts_agree(tmp_path):
    """Every decoder is installed here, so the sweep meets no such file: a JPEG XL CR and a private syntax MR."""
    jpeg_xl = write_jpeg_xl(tmp_path / "jpeg_xl")
    private = write(make_image("MR", series=new_uid()), tmp_path / "private", syntax="1.2.826.0.1.3680043.10.999.7")
    for path, kind in ((jpeg_xl, "xray"), (private, "mri")):
        code, _, message = scan_verdict(path, SelectionRules(min_slices=1))
        error = reader_error(path, kind, "gray")
        assert code == reasons.UNSUPPORTED_TRANSFER_SYNTAX and (error.reason_code, error.message) == (code, message)


# ---------------------------------------------------------------- colour X-rays: one key, both sides


def colour_xrays(folder: Path) -> dict[str, tuple[Path, np.ndarray]]:
    """A PALETTE COLOR DX and an RGB CR, each with the luminance the reader must give it."""
    index = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    palette = make_image("DX", series=new_uid(), rows=3, columns=4, photometric="PALETTE COLOR")
    palette.PixelData = index.tobytes()
    rgb_values = np.stack([index, 255 - index, index // 2], axis=-1).astype(np.uint8)
    rgb = make_image("CR", series=new_uid(), rows=3, columns=4, photometric="RGB")
    rgb.PixelData = rgb_values.tobytes()
    weights = np.array([0.299, 0.587, 0.114])
    return {"PALETTE COLOR": (write(palette, folder / "palette_dx"), palette_rgb(index) @ weights),
            "RGB": (write(rgb, folder / "rgb_cr"), rgb_values.astype(np.float64) @ weights)}


def xray_config(root: Path, color: ColorMode, **data):
    return validate_config({"data": {"dicom_root": str(root), "kind": "xray", **data},
                            "preprocess": {"xray": {"color": color}}})


def test_colour_xrays_kept_and_converted_under_gray(tmp_path):
    files = colour_xrays(tmp_path)
    result = scan([tmp_path], selection_rules(xray_config(tmp_path, "gray")))
    assert {s.photometric: s.files for s in result.series} == {p: (str(f),) for p, (f, _) in files.items()}
    assert not result.rejected
    for path, luminance in files.values():
        np.testing.assert_allclose(read_xray(path, color="gray").pixels, luminance, rtol=1e-5)
        np.testing.assert_allclose(training_read(path, "xray", "gray"), luminance, rtol=1e-5)


def test_colour_xrays_rejected_by_both_under_reject(tmp_path):
    files = colour_xrays(tmp_path)
    rows = {r.path: r for r in scan([tmp_path], selection_rules(xray_config(tmp_path, "reject"))).rejected}
    for photometric, (path, _) in files.items():
        row = rows[str(path)]
        assert row.reason_code == reasons.UNSUPPORTED_PHOTOMETRIC and f"set {COLOR_KEY} to gray" in row.message
        assert photometric in row.message and "\n" not in row.message
        for read in (read_xray, lambda p: training_read(p, "xray", "reject")):
            with pytest.raises(DicomError) as caught:
                read(path)
            assert (caught.value.reason_code, caught.value.message) == (row.reason_code, row.message)


@pytest.mark.parametrize("photometric", sorted(COLOUR))
def test_every_colour_interpretation_follows_the_mode_for_xrays_only(photometric):
    assert photometric_problem(photometric, "xray", "gray") is None
    assert COLOR_KEY in photometric_problem(photometric, "xray", "reject")
    assert photometric_problem(photometric, "mri", "gray") is not None
    assert image_problem("1.2.840.10008.1.2.1", photometric, "mri", "gray").reason_code == \
        reasons.UNSUPPORTED_PHOTOMETRIC


def test_the_selection_rules_follow_the_one_colour_key_and_the_kind(tmp_path):
    assert selection_rules(xray_config(tmp_path, "gray")).color == "gray"
    default = selection_rules(validate_config({"data": {"dicom_root": str(tmp_path), "kind": "mri"}}))
    assert (default.color, default.kinds) == ("reject", ("mri",))


def test_the_old_colour_key_fails_naming_its_replacement(tmp_path):
    raw = {"data": {"dicom_root": str(tmp_path), "kind": "xray", "selection": {"allow_color": True}}}
    with pytest.raises(ConfigError) as caught:
        validate_config(raw, "old.yaml")
    message = str(caught.value)
    assert "'data.selection.allow_color'" in message and COLOR_KEY in message and "\n" not in message


def test_a_packaged_config_with_the_old_colour_key_still_loads(tmp_path):
    saved = yaml.safe_load(dump_config(xray_config(tmp_path, "gray")))
    saved["data"]["selection"]["allow_color"] = False  # what every package written before carries
    with pytest.raises(ConfigError):
        validate_config(saved)
    assert validate_config(without_replaced_keys(saved)).preprocess.xray.color == "gray"
    assert saved["data"]["selection"]["allow_color"] is False  # the input is left as it was


# ---------------------------------------------------------------- a kind the run does not use


def mr_without_frame_geometry(folder: Path) -> list[Path]:
    """An MR slice without ImagePositionPatient/Orientation and an enhanced MR without per-frame positions."""
    slice_ = make_image("MR", series=new_uid())
    del slice_.ImagePositionPatient, slice_.ImageOrientationPatient
    enhanced = make_image("MR", sop_class=ENHANCED_MR_STORAGE, series=new_uid(), frames=3)
    del enhanced.ImagePositionPatient, enhanced.ImageOrientationPatient
    return [write(slice_, folder / "mr_slice"), write(enhanced, folder / "mr_enhanced")]


def test_mr_in_an_xray_run_is_an_exclusion_not_a_failure(tmp_path):
    mr_files = mr_without_frame_geometry(tmp_path)
    xray = write(make_image("CR", series=new_uid()), tmp_path / "cr")
    result = scan([tmp_path], selection_rules(xray_config(tmp_path, "reject")))
    assert [s.files for s in result.series] == [(str(xray),)]
    assert {r.path: r.reason_code for r in result.rejected} == dict.fromkeys(map(str, mr_files),
                                                                                reasons.UNSUPPORTED_MODALITY)
    assert not any(is_failure(r.reason_code) for r in result.rejected)
    assert all("data.kind=xray" in r.message for r in result.rejected)
    mixed = scan([tmp_path], SelectionRules(min_slices=1))  # the same files where MR is used: geometry fails
    assert {mixed.file_outcomes[str(p)] for p in mr_files} == {reasons.INCONSISTENT_SERIES}


def test_an_xray_in_an_mri_run_is_an_exclusion_before_its_colour_is_judged(tmp_path):
    path, _ = colour_xrays(tmp_path)["RGB"]
    result = scan([tmp_path], selection_rules(validate_config({"data": {"dicom_root": str(tmp_path), "kind": "mri"}})))
    assert result.file_outcomes[str(path)] == reasons.UNSUPPORTED_MODALITY


def test_a_header_only_file_of_another_kind_is_an_exclusion(tmp_path):
    path = write(make_image("MR", series=new_uid(), pixels=False), tmp_path / "mr_header_only")
    assert scan([tmp_path], SelectionRules(kinds=("xray",))).file_outcomes[str(path)] == reasons.UNSUPPORTED_MODALITY
    assert scan([tmp_path]).file_outcomes[str(path)] == reasons.NO_PIXEL_DATA

