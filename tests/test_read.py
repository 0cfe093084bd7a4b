"""Tests for pipelines.dicom.read: decoding, LUTs, MONOCHROME1, padding, colour, volumes, geometry, MONAI.

Real files only: pydicom's bundled test files plus DICOM files written here with pydicom. Series are written
with a known intensity field ``f(RAS position)`` so that ordering, axis layout and affine are checked together:
a voxel's value must equal ``f(affine @ index)``.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import apply_modality_lut
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    MPEG2MPML,
    UID,
    EnhancedMRImageStorage,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    JPEG2000Lossless,
    JPEGLSLossless,
    MRImageStorage,
    RLELossless,
    generate_uid,
)

from pipelines.dicom import reasons
from pipelines.dicom.read import (
    DicomSeriesReader,
    frame_pixels,
    read_volume,
    read_xray,
    require_decoder,
)
from pipelines.dicom.reasons import DicomError

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
MR_SMALL_VARIANTS = [
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_expb.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_padded.dcm",
]
PHI = {"PatientName": "Doe^Jane", "PatientID": "PID-4711", "PatientBirthDate": "19700101", "AccessionNumber": "ACC-0815"}
ROWS, COLS, SLICES = 12, 10, 7
ROW_SPACING, COL_SPACING, SLICE_SPACING = 1.5, 0.8, 2.5
VALUE_SCALE = 0.1  # RescaleSlope of written MR series: stored = round(f / 0.1)

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.filterwarnings("ignore::FutureWarning")]


def bundled(name: str) -> Path:
    return TEST_FILES / name


# ---------------------------------------------------------------- writing DICOM files


def base_dataset(modality: str, sop_class: str, rows: int, cols: int, *, series_uid: str | None = None) -> Dataset:
    """A minimal image dataset with file meta, PHI-looking values and no pixel data yet."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Modality = modality
    ds.Manufacturer = "medvit-test"
    ds.StudyInstanceUID = "1.2.3.4"
    ds.SeriesInstanceUID = series_uid or "1.2.3.4.5"
    for keyword, value in PHI.items():
        setattr(ds, keyword, value)
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    return ds


def set_pixels(ds: Dataset, stored: np.ndarray, *, bits_stored: int, signed: bool, photometric: str = "MONOCHROME2"):
    """Store ``stored`` (rows, cols) or (frames, rows, cols) as 16-bit native pixel data."""
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
    ds.PixelRepresentation = int(signed)
    ds.PixelData = stored.astype(np.int16 if signed else np.uint16).tobytes()


def write(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def rotation(alpha: float, beta: float, gamma: float) -> np.ndarray:
    """Rotation matrix from three angles (radians) about z, y and x."""
    ca, sa, cb, sb, cg, sg = np.cos(alpha), np.sin(alpha), np.cos(beta), np.sin(beta), np.cos(gamma), np.sin(gamma)
    rz = np.array([[ca, -sa, 0], [sa, ca, 0], [0, 0, 1]])
    ry = np.array([[cb, 0, sb], [0, 1, 0], [-sb, 0, cb]])
    rx = np.array([[1, 0, 0], [0, cg, -sg], [0, sg, cg]])
    return rz @ ry @ rx


ORIENTATIONS = {  # LPS row cosine, column cosine
    "axial": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    "sagittal": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),
    "oblique": (tuple(rotation(0.4, -0.3, 0.7)[:, 0]), tuple(rotation(0.4, -0.3, 0.7)[:, 1])),
}


def intensity(ras: np.ndarray) -> np.ndarray:
    """The known field the test series sample: linear in RAS position (mm), so interpolation is exact."""
    return 1000.0 + 3.0 * ras[..., 0] + 5.0 * ras[..., 1] + 7.0 * ras[..., 2]


def lps_to_ras(points: np.ndarray) -> np.ndarray:
    return points * np.array([-1.0, -1.0, 1.0])


class Series:
    """A written MR series: slice ``k`` (position order) lies at ``positions[k]`` and was written as file
    ``files[k]`` with InstanceNumber ``instance_numbers[k]`` (a shuffle, so InstanceNumber order != position)."""

    def __init__(self, folder: Path, orientation: str, *, seed: int = 0, origin=(-7.0, 11.0, -20.0), reverse=False):
        self.row_cosine, self.column_cosine = (np.array(v) for v in ORIENTATIONS[orientation])
        self.normal = np.cross(self.row_cosine, self.column_cosine)
        self.positions = np.array(origin) + np.arange(SLICES)[:, None] * SLICE_SPACING * self.normal
        rng = np.random.default_rng(seed)
        self.instance_numbers = rng.permutation(SLICES) + 1
        while np.array_equal(self.instance_numbers, np.arange(SLICES) + 1):
            self.instance_numbers = rng.permutation(SLICES) + 1
        if reverse:  # InstanceNumber 1 at the top (highest position), as many scanners number axial stacks
            self.instance_numbers = SLICES - np.arange(SLICES)
        folder.mkdir(parents=True, exist_ok=True)
        self.files = [write(self.slice(k), folder / f"img{self.instance_numbers[k]:03d}") for k in range(SLICES)]

    def lps(self, k: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """LPS centre of pixel (row, col) of slice k."""
        return (
            self.positions[k]
            + cols[..., None] * COL_SPACING * self.row_cosine
            + rows[..., None] * ROW_SPACING * self.column_cosine
        )

    def stored(self, k: int) -> np.ndarray:
        rows, cols = np.meshgrid(np.arange(ROWS), np.arange(COLS), indexing="ij")
        return np.rint(intensity(lps_to_ras(self.lps(k, rows, cols))) / VALUE_SCALE).astype(np.int16)

    def slice(self, k: int) -> Dataset:
        ds = base_dataset("MR", MRImageStorage, ROWS, COLS)
        ds.FrameOfReferenceUID = "1.2.3.4.9"
        ds.InstanceNumber = int(self.instance_numbers[k])
        ds.ImagePositionPatient = [float(v) for v in self.positions[k]]
        ds.ImageOrientationPatient = [float(v) for v in (*self.row_cosine, *self.column_cosine)]
        ds.PixelSpacing = [ROW_SPACING, COL_SPACING]
        ds.SliceThickness = 99.0  # deliberately wrong: spacing must come from positions
        ds.RescaleSlope, ds.RescaleIntercept = VALUE_SCALE, 0.0
        set_pixels(ds, self.stored(k), bits_stored=16, signed=True)
        return ds

    def shuffled_files(self) -> list[Path]:
        """Files in InstanceNumber order, i.e. not in position order."""
        return [self.files[k] for k in np.argsort(self.instance_numbers)]


def assert_matches_field(pixels: np.ndarray, affine: np.ndarray, *, margin: int = 0, atol: float = 0.06) -> None:
    """Every voxel (away from ``margin`` voxels of the border) holds intensity(affine @ index)."""
    index = np.stack(np.meshgrid(*[np.arange(n) for n in pixels.shape], indexing="ij"), axis=-1).astype(float)
    world = index @ affine[:3, :3].T + affine[:3, 3]
    inner = tuple(slice(margin, n - margin) for n in pixels.shape)
    np.testing.assert_allclose(pixels[inner], intensity(world)[inner], atol=atol)


# ---------------------------------------------------------------- decoding


@pytest.mark.parametrize("name", MR_SMALL_VARIANTS)
def test_mr_small_encodings_decode_identically(name: str) -> None:
    reference = read_xray(bundled("MR_small.dcm")).pixels
    assert reference.dtype == np.float32 and reference.shape == (64, 64)
    np.testing.assert_array_equal(read_xray(bundled(name)).pixels, reference)


@pytest.mark.parametrize(
    "name",
    ["image_dfl.dcm", "JPGExtended.dcm", "JPEG2000.dcm", "693_J2KI.dcm", "J2K_pixelrep_mismatch.dcm",
     "JPEGLSNearLossless_16.dcm", "JPEGLSNearLossless_08.dcm"],
)
def test_deflate_and_lossy_syntaxes_decode(name: str) -> None:
    ds = pydicom.dcmread(bundled(name))
    image = read_xray(bundled(name))
    assert image.pixels.dtype == np.float32 and image.pixels.shape == (ds.Rows, ds.Columns)
    stored = ds.pixel_array.reshape(ds.Rows, ds.Columns)
    expected = apply_modality_lut(stored, ds).astype(np.float32)
    if "PixelPaddingValue" in ds:  # 693_J2KI (CT): padding -2000 becomes the lowest real value
        padding = stored == ds.PixelPaddingValue
        assert padding.any()
        expected[padding] = expected[~padding].min()
    np.testing.assert_array_equal(image.pixels, expected)
    assert image.meta["transfer_syntax"] == ds.file_meta.TransferSyntaxUID


def test_jpeg_lossless_colour_equals_rle() -> None:
    jpeg_lossless = read_xray(bundled("SC_rgb_jpeg_gdcm.dcm"), color="gray")  # JPEG Lossless SV1
    assert jpeg_lossless.meta["transfer_syntax"] == "1.2.840.10008.1.2.4.70"
    np.testing.assert_array_equal(jpeg_lossless.pixels, read_xray(bundled("SC_rgb_rle.dcm"), color="gray").pixels)


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless])
@pytest.mark.parametrize("signed", [False, True])
def test_lossless_reencoding_of_written_image_is_identical(tmp_path: Path, syntax: UID, signed: bool) -> None:
    stored = np.random.default_rng(3).integers(-2048 if signed else 0, 2047 if signed else 4095, (40, 48))
    ds = base_dataset("CR", "1.2.840.10008.5.1.4.1.1.1", 40, 48)
    set_pixels(ds, stored, bits_stored=12, signed=signed)
    ds.RescaleSlope, ds.RescaleIntercept = 2.0, -5.0
    plain = read_xray(write(ds, tmp_path / "plain.dcm")).pixels
    ds.compress(syntax)
    compressed = read_xray(write(ds, tmp_path / "compressed.dcm"))
    assert compressed.meta["transfer_syntax"] == syntax
    np.testing.assert_array_equal(compressed.pixels, plain)
    np.testing.assert_array_equal(plain, stored * 2.0 - 5.0)


def test_ct_rescale_is_applied() -> None:
    ds = pydicom.dcmread(bundled("CT_small.dcm"))
    image = read_xray(bundled("CT_small.dcm"))
    assert float(ds.RescaleIntercept) == -1024.0
    np.testing.assert_array_equal(image.pixels, ds.pixel_array.astype(np.float32) - 1024.0)
    np.testing.assert_array_equal(frame_pixels(ds), image.pixels)
    assert image.spacing == (0.661468, 0.661468) and image.meta["modality"] == "CT"


def test_truncated_file_is_a_dicom_error() -> None:
    with pytest.raises(DicomError) as caught:
        read_xray(bundled("MR_truncated.dcm"))
    assert caught.value.reason_code in (reasons.TRUNCATED, reasons.DECODE_ERROR)
    assert "re-copy" in caught.value.message


def test_undecodable_jpeg_is_decode_error() -> None:
    # JPEG-lossy.dcm has a marker that libjpeg rejects and Pillow cannot do 12-bit: no installed plugin decodes it
    with pytest.raises(DicomError) as caught:
        read_xray(bundled("JPEG-lossy.dcm"))
    assert caught.value.reason_code == reasons.DECODE_ERROR
    assert "JPEG Extended" in caught.value.message


@pytest.mark.parametrize("uid", ["1.2.826.0.1.3680043.99.1", str(MPEG2MPML)])
def test_unknown_transfer_syntax_is_unsupported(tmp_path: Path, uid: str) -> None:
    ds = pydicom.dcmread(bundled("MR_small.dcm"))
    ds.file_meta.TransferSyntaxUID = uid
    if uid == MPEG2MPML:  # a real compressed syntax: pydicom writes it only encapsulated
        ds.PixelData = encapsulate([ds.PixelData])
    path = tmp_path / "odd.dcm"
    pydicom.dcmwrite(path, ds, implicit_vr=False, little_endian=True)
    with pytest.raises(DicomError) as caught:
        read_xray(path)
    assert caught.value.reason_code == reasons.UNSUPPORTED_TRANSFER_SYNTAX
    assert "re-export" in caught.value.message


def test_dataset_without_transfer_syntax() -> None:
    ds = base_dataset("CR", "1.2.840.10008.5.1.4.1.1.1", 3, 4)
    del ds.file_meta  # built in memory: the syntax is inferred (native little endian)
    set_pixels(ds, np.arange(12).reshape(3, 4), bits_stored=12, signed=False)
    np.testing.assert_array_equal(frame_pixels(ds), np.arange(12).reshape(3, 4))
    incomplete = pydicom.dcmread(bundled("meta_missing_tsyntax.dcm"))  # no (0002,0010) and no Rows either
    with pytest.raises(DicomError) as caught:
        frame_pixels(incomplete)
    assert caught.value.reason_code == reasons.DECODE_ERROR and "Rows" in caught.value.message


def test_installed_plugins_cover_htj2k() -> None:
    require_decoder(HTJ2KLossless)  # no bundled HTJ2K file and no encoder: check the decoder is there at least


def test_missing_plugin_message_names_pip_packages() -> None:
    from pipelines.dicom.rules import install_hint

    hint = install_hint(["gdcm - requires gdcm>=3.0.10", "pylibjpeg - requires pylibjpeg>=2.0 and pylibjpeg-openjpeg>=2.0"])
    assert hint == "pip install 'pylibjpeg>=2.0' 'pylibjpeg-openjpeg>=2.0' (or: pip install 'python-gdcm>=3.0.10')"


def test_malformed_header_value_is_decode_error(tmp_path: Path) -> None:
    ds = pydicom.dcmread(bundled("CT_small.dcm"))
    ds.RescaleSlope = "1.5"
    path = write(ds, tmp_path / "ct.dcm")
    path.write_bytes(path.read_bytes().replace(b"1.5 ", b"abc ", 1))
    with pytest.raises(DicomError) as caught:
        read_xray(path)
    assert caught.value.reason_code == reasons.DECODE_ERROR and "abc" in caught.value.message


def test_not_dicom_and_no_pixel_data(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with pytest.raises(DicomError) as caught:
        read_xray(text)
    assert caught.value.reason_code == reasons.NOT_DICOM
    with pytest.raises(DicomError) as caught:
        read_xray(bundled("test-SR.dcm"))
    assert caught.value.reason_code == reasons.NO_PIXEL_DATA


def test_file_without_preamble_is_read_where_scan_accepts_it(tmp_path: Path) -> None:
    from pipelines.dicom.headers import InstanceHeader, read_header

    ds = pydicom.dcmread(bundled("MR_small.dcm"))
    ds.preamble = None
    del ds.file_meta
    raw = tmp_path / "raw"
    ds.save_as(raw, implicit_vr=True, little_endian=True)
    assert raw.read_bytes()[128:132] != b"DICM" and isinstance(read_header(raw), InstanceHeader)
    np.testing.assert_array_equal(read_xray(raw).pixels, read_xray(bundled("MR_small.dcm")).pixels)
    assert read_volume([raw]).pixels.shape == (64, 64, 1)
    junk = tmp_path / "group8"  # starts like a raw data set but holds no DICOM header: not DICOM for both
    junk.write_bytes(b"\x08\x00\x10\x00" + np.random.default_rng(3).bytes(5000))
    assert read_header(junk).reason_code == reasons.NOT_DICOM
    with pytest.raises(DicomError) as caught:
        read_xray(junk)
    assert caught.value.reason_code == reasons.NOT_DICOM


# ---------------------------------------------------------------- LUTs, MONOCHROME1, padding, VOI


@pytest.mark.parametrize(
    ("bits_stored", "signed", "slope", "intercept"),
    [(16, True, 2.5, -100.0), (12, True, -0.5, 30.0), (12, False, 1.0, 0.0), (10, False, 0.25, 7.0)],
)
def test_monochrome1_and_monochrome2_of_same_picture_are_equal(tmp_path, bits_stored, signed, slope, intercept):
    low, high = (-(2 ** (bits_stored - 1)), 2 ** (bits_stored - 1) - 1) if signed else (0, 2**bits_stored - 1)
    shown = np.random.default_rng(bits_stored).integers(low, high + 1, (16, 20))  # MONOCHROME2 stored values
    images = {}
    for photometric, stored in [("MONOCHROME2", shown), ("MONOCHROME1", low + high - shown)]:
        ds = base_dataset("DX", "1.2.840.10008.5.1.4.1.1.1.1", 16, 20)
        set_pixels(ds, stored, bits_stored=bits_stored, signed=signed, photometric=photometric)
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        images[photometric] = read_xray(write(ds, tmp_path / f"{photometric}.dcm"))
    expected = (shown * slope + intercept).astype(np.float32)
    np.testing.assert_allclose(images["MONOCHROME2"].pixels, expected, rtol=1e-6)
    np.testing.assert_allclose(images["MONOCHROME1"].pixels, expected, rtol=1e-6)
    assert images["MONOCHROME1"].meta["inverted"] and not images["MONOCHROME2"].meta["inverted"]


def test_modality_lut_sequence(tmp_path: Path) -> None:
    ds = base_dataset("CR", "1.2.840.10008.5.1.4.1.1.1", 4, 4)
    set_pixels(ds, np.arange(16).reshape(4, 4) * 10, bits_stored=8, signed=False)
    item = Dataset()
    item.LUTDescriptor = [256, 0, 16]
    item.add_new("LUTData", "US", [3 * v + 7 for v in range(256)])
    item.ModalityLUTType = "US"
    ds.ModalityLUTSequence = DicomSequence([item])
    image = read_xray(write(ds, tmp_path / "lut.dcm"))
    np.testing.assert_array_equal(image.pixels, np.arange(16).reshape(4, 4) * 30 + 7)
    ds.PhotometricInterpretation = "MONOCHROME1"  # inverted within the LUT's output range [7, 772]
    np.testing.assert_array_equal(read_xray(write(ds, tmp_path / "lut1.dcm")).pixels, 779 - image.pixels)


@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
def test_pixel_padding_becomes_minimum_of_real_pixels(tmp_path: Path, photometric: str) -> None:
    stored = np.random.default_rng(5).integers(100, 4000, (10, 12))
    stored[:2] = 0  # padding value
    stored[-2:] = 4093  # inside the padding range [4090, 4095] when a range limit is set
    ds = base_dataset("CR", "1.2.840.10008.5.1.4.1.1.1", 10, 12)
    set_pixels(ds, stored, bits_stored=12, signed=False, photometric=photometric)
    ds.PixelPaddingValue = 0
    image = read_xray(write(ds, tmp_path / "pad.dcm")).pixels
    real = stored.astype(np.float32) if photometric == "MONOCHROME2" else 4095.0 - stored
    assert np.all(image[:2] == real[2:].min())
    np.testing.assert_array_equal(image[2:], real[2:])
    ds.PixelPaddingValue, ds.PixelPaddingRangeLimit = 4095, 4090
    ranged = read_xray(write(ds, tmp_path / "range.dcm")).pixels
    assert np.all(ranged[-2:] == real[:-2].min())
    np.testing.assert_array_equal(ranged[:-2], real[:-2])


def test_signed_padding_value_read_as_unsigned(tmp_path: Path) -> None:
    stored = np.full((4, 4), 40, dtype=np.int16)
    stored[0, 0] = -2000
    ds = base_dataset("CT", "1.2.840.10008.5.1.4.1.1.2", 4, 4)
    set_pixels(ds, stored, bits_stored=16, signed=True)
    ds.RescaleSlope, ds.RescaleIntercept = 1.0, -1024.0
    ds.add_new("PixelPaddingValue", "US", 65536 - 2000)  # how implicit-VR files often arrive
    image = read_xray(write(ds, tmp_path / "ct.dcm")).pixels
    assert np.all(image == 40 - 1024.0)


def test_voi_window_maps_to_unit_range(tmp_path: Path) -> None:
    stored = np.arange(0, 4096, 16).reshape(16, 16)
    ds = base_dataset("DX", "1.2.840.10008.5.1.4.1.1.1.1", 16, 16)
    set_pixels(ds, stored, bits_stored=12, signed=False)
    ds.WindowCenter, ds.WindowWidth = 2048, 1025
    image = read_xray(write(ds, tmp_path / "win.dcm"), voi_window=True)
    expected = np.clip((stored - 2047.5) / 1024 + 0.5, 0, 1)  # DICOM LINEAR window
    np.testing.assert_allclose(image.pixels, expected, atol=1e-6)
    assert image.meta["voi_applied"] and image.meta["window_center"] == 2048
    ds.PhotometricInterpretation = "MONOCHROME1"
    inverted = read_xray(write(ds, tmp_path / "win1.dcm"), voi_window=True).pixels
    np.testing.assert_allclose(inverted, 1 - expected, atol=1e-6)


def test_voi_lut_sequence_maps_to_unit_range(tmp_path: Path) -> None:
    ds = base_dataset("CR", "1.2.840.10008.5.1.4.1.1.1", 4, 4)
    set_pixels(ds, np.arange(16).reshape(4, 4), bits_stored=8, signed=False)
    item = Dataset()
    item.LUTDescriptor = [8, 4, 8]  # inputs 4..11 -> 0..252; below 4 -> 0, above 11 -> 252
    item.add_new("LUTData", "US", [36 * v for v in range(8)])
    ds.VOILUTSequence = DicomSequence([item])
    image = read_xray(write(ds, tmp_path / "voilut.dcm"), voi_window=True).pixels
    np.testing.assert_allclose(image, np.clip((np.arange(16).reshape(4, 4) - 4) / 7, 0, 1), atol=1e-6)


def test_mr_small_window() -> None:
    raw = pydicom.dcmread(bundled("MR_small.dcm")).pixel_array.astype(float)
    windowed = read_xray(bundled("MR_small.dcm"), voi_window=True).pixels
    np.testing.assert_allclose(windowed, np.clip((raw - 599.5) / 1599 + 0.5, 0, 1), atol=1e-6)


# ---------------------------------------------------------------- colour


@pytest.mark.parametrize("name", ["SC_rgb_rle.dcm", "SC_rgb_jpeg_dcmtk.dcm", "SC_ybr_full_422_uncompressed.dcm"])
def test_colour_rejected_or_converted_to_luminance(name: str) -> None:
    with pytest.raises(DicomError) as caught:
        read_xray(bundled(name))
    assert caught.value.reason_code == reasons.UNSUPPORTED_PHOTOMETRIC and "preprocess.xray.color" in caught.value.message
    rgb = pydicom.dcmread(bundled(name)).pixel_array.astype(float)  # pydicom converts YBR to RGB
    gray = read_xray(bundled(name), color="gray").pixels
    np.testing.assert_allclose(gray, 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2], rtol=1e-5)
    unit = read_xray(bundled(name), color="gray", voi_window=True).pixels
    assert unit.min() >= 0.0 and unit.max() <= 1.0


def test_palette_colour_to_gray() -> None:
    gray = read_xray(bundled("examples_palette.dcm"), color="gray").pixels
    assert gray.shape == (350, 800) and gray.max() > gray.min()


def test_multiframe_colour_is_not_an_xray() -> None:
    with pytest.raises(DicomError) as caught:
        read_xray(bundled("SC_rgb_rle_2frame.dcm"), color="gray")
    assert caught.value.reason_code == reasons.INCONSISTENT_SERIES


# ---------------------------------------------------------------- volumes


@pytest.mark.parametrize("orientation", ["axial", "sagittal", "oblique"])
def test_shuffled_series_sorted_by_position_with_correct_affine(tmp_path: Path, orientation: str) -> None:
    series = Series(tmp_path / orientation, orientation)
    volume = read_volume(series.shuffled_files())
    assert volume.pixels.shape == (COLS, ROWS, SLICES) and volume.pixels.dtype == np.float32
    np.testing.assert_allclose(volume.spacing, (COL_SPACING, ROW_SPACING, SLICE_SPACING), atol=1e-6)
    for k in range(SLICES):  # affine @ (0, 0, k) is slice k's IPP in RAS; (i, j) walk the row and column
        np.testing.assert_allclose(volume.affine @ [0, 0, k, 1], [*lps_to_ras(series.positions[k]), 1], atol=1e-6)
        np.testing.assert_allclose(volume.affine @ [4, 9, k, 1], [*lps_to_ras(series.lps(k, np.array(9), np.array(4))), 1], atol=1e-6)
        np.testing.assert_array_equal(volume.pixels[:, :, k], (series.stored(k).T * VALUE_SCALE).astype(np.float32))
    assert_matches_field(volume.pixels, volume.affine)
    in_order = read_volume(series.files)
    np.testing.assert_array_equal(in_order.pixels, volume.pixels)
    np.testing.assert_allclose(in_order.affine, volume.affine)


def test_axial_affine_by_hand(tmp_path: Path) -> None:
    series = Series(tmp_path, "axial", origin=(-7.0, 11.0, -20.0), reverse=True)
    expected = np.array(
        [[-COL_SPACING, 0, 0, 7.0], [0, -ROW_SPACING, 0, -11.0], [0, 0, SLICE_SPACING, -20.0], [0, 0, 0, 1]]
    )
    np.testing.assert_allclose(read_volume(series.shuffled_files()).affine, expected, atol=1e-9)


def test_volume_meta_has_no_patient_data(tmp_path: Path) -> None:
    volume = read_volume(Series(tmp_path, "axial").files)
    text = repr(volume.meta)
    assert not any(value in text for value in PHI.values())
    assert volume.meta["modality"] == "MR" and volume.meta["n_slices"] == SLICES


def test_inconsistent_series_are_rejected(tmp_path: Path) -> None:
    series = Series(tmp_path / "ok", "axial")

    def expect_inconsistent(datasets: list[Dataset], words: str) -> None:
        folder = tmp_path / words.replace(" ", "_")
        folder.mkdir()
        paths = [write(ds, folder / f"{n}.dcm") for n, ds in enumerate(datasets)]
        with pytest.raises(DicomError) as caught:
            read_volume(paths)
        assert caught.value.reason_code == reasons.INCONSISTENT_SERIES
        assert words in caught.value.message

    slices = [series.slice(k) for k in range(SLICES)]
    odd = base_dataset("MR", MRImageStorage, ROWS + 2, COLS)
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "FrameOfReferenceUID"):
        setattr(odd, keyword, slices[3].get(keyword))
    odd.ImagePositionPatient = [float(v) for v in series.positions[-1] + series.normal * SLICE_SPACING]
    set_pixels(odd, np.zeros((ROWS + 2, COLS)), bits_stored=16, signed=True)
    expect_inconsistent([*slices, odd], "image size")
    tilted = series.slice(2)
    tilted.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 0.0, -1.0]
    expect_inconsistent(slices[:2] + [tilted] + slices[3:], "orientation")
    expect_inconsistent([*slices, series.slice(4)], "repeat the position")
    expect_inconsistent(slices[:3] + slices[4:], "unevenly spaced")
    other = series.slice(1)
    other.SeriesInstanceUID = "9.9.9"
    expect_inconsistent([slices[0], other, *slices[2:]], "series")


def test_colour_volume_rejected(tmp_path: Path) -> None:
    with pytest.raises(DicomError) as caught:
        read_volume([bundled("SC_rgb_rle.dcm")])
    assert caught.value.reason_code == reasons.UNSUPPORTED_PHOTOMETRIC


def enhanced_from(series: Series, frame_order: list[int], slopes: list[float]) -> Dataset:
    """An Enhanced MR Image Storage dataset holding the series' slices as frames in ``frame_order``."""
    ds = base_dataset("MR", EnhancedMRImageStorage, ROWS, COLS)
    ds.FrameOfReferenceUID = "1.2.3.4.9"
    ds.NumberOfFrames = len(frame_order)
    shared = Dataset()
    orientation, measures = Dataset(), Dataset()
    orientation.ImageOrientationPatient = [float(v) for v in (*series.row_cosine, *series.column_cosine)]
    measures.PixelSpacing = [ROW_SPACING, COL_SPACING]
    measures.SliceThickness = 99.0
    shared.PlaneOrientationSequence = DicomSequence([orientation])
    shared.PixelMeasuresSequence = DicomSequence([measures])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    frames, groups = [], []
    for frame, k in enumerate(frame_order):
        group, position, transform = Dataset(), Dataset(), Dataset()
        position.ImagePositionPatient = [float(v) for v in series.positions[k]]
        transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = slopes[frame], 5.0, "US"
        group.PlanePositionSequence = DicomSequence([position])
        group.PixelValueTransformationSequence = DicomSequence([transform])
        groups.append(group)
        # stored so that stored * slope + 5 is the single-frame slice's value (to within slope / 2)
        frames.append(np.rint((series.stored(k) * VALUE_SCALE - 5.0) / slopes[frame]))
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(groups)
    set_pixels(ds, np.stack(frames), bits_stored=16, signed=True)
    return ds


@pytest.mark.parametrize("orientation", ["axial", "oblique"])
def test_enhanced_multiframe_equals_single_frame_volume(tmp_path: Path, orientation: str) -> None:
    series = Series(tmp_path / "slices", orientation)
    frame_order = [3, 0, 6, 2, 5, 1, 4]
    slopes = [0.05, 0.1, 0.2, 0.05, 0.1, 0.05, 0.2]  # per-frame rescale
    path = write(enhanced_from(series, frame_order, slopes), tmp_path / "enhanced.dcm")
    single = read_volume(series.shuffled_files())
    enhanced = read_volume([path])
    np.testing.assert_allclose(enhanced.affine, single.affine, atol=1e-9)
    np.testing.assert_allclose(enhanced.spacing, single.spacing)
    np.testing.assert_allclose(enhanced.pixels, single.pixels, atol=0.101)  # rounding with the coarser slopes
    assert enhanced.pixels.shape == single.pixels.shape


# ---------------------------------------------------------------- MONAI


def monai_pipeline(*transforms):
    from monai.transforms import Compose, LoadImaged

    return Compose([LoadImaged(keys="image", reader=DicomSeriesReader(), ensure_channel_first=True), *transforms])


def expected_spacing_shape(shape: tuple[int, ...], spacing: tuple[float, ...], pixdim: tuple[float, ...]):
    """MONAI's Spacing output size for an axis-aligned image: round((n - 1) * old / new + 1)."""
    return tuple(int(np.round((n - 1) * s / p + 1)) for n, s, p in zip(shape, spacing, pixdim, strict=True))


def test_monai_load_gives_volume_with_affine_and_clean_meta(tmp_path: Path) -> None:
    series = Series(tmp_path, "oblique")
    image = monai_pipeline()({"image": [str(p) for p in series.shuffled_files()]})["image"]
    assert tuple(image.shape) == (1, COLS, ROWS, SLICES)
    reference = read_volume(series.files)
    np.testing.assert_allclose(image.affine.numpy(), reference.affine, atol=1e-6)
    np.testing.assert_array_equal(image[0].numpy(), reference.pixels)
    assert str(image.meta["space"]) == "RAS" and image.meta["original_channel_dim"] == "no_channel"
    assert not any(value in repr(dict(image.meta)) for value in PHI.values())
    folder_image = monai_pipeline()({"image": str(tmp_path)})["image"]  # a folder is one series too
    np.testing.assert_array_equal(folder_image.numpy(), image.numpy())


def test_monai_spacing_on_mr_series(tmp_path: Path) -> None:
    from monai.transforms import Spacingd

    series = Series(tmp_path, "axial")
    pixdim = (2.0, 2.0, 3.0)
    out = monai_pipeline(Spacingd(keys="image", pixdim=pixdim, mode="bilinear"))({"image": series.files})["image"]
    shape = expected_spacing_shape((COLS, ROWS, SLICES), (COL_SPACING, ROW_SPACING, SLICE_SPACING), pixdim)
    assert tuple(out.shape) == (1, *shape)
    np.testing.assert_allclose(np.abs(np.diag(out.affine.numpy())[:3]), pixdim)
    assert_matches_field(out[0].numpy(), out.affine.numpy(), margin=1, atol=0.1)


@pytest.mark.parametrize("orientation", ["axial", "sagittal", "oblique"])
def test_monai_orientation_and_spacing_on_mr_series(tmp_path: Path, orientation: str) -> None:
    pytest.importorskip("nibabel", reason="MONAI's Orientation needs nibabel")
    from monai.transforms import Orientationd, Spacingd

    series = Series(tmp_path, orientation)
    oriented = monai_pipeline(Orientationd(keys="image", axcodes="RAS"))({"image": series.shuffled_files()})["image"]
    assert_matches_field(oriented[0].numpy(), oriented.affine.numpy())
    if orientation == "axial":  # RAS axes: x from columns (flipped), y from rows (flipped), z from slices
        assert np.all(np.diag(oriented.affine.numpy())[:3] > 0)
        np.testing.assert_array_equal(oriented[0].numpy(), read_volume(series.files).pixels[::-1, ::-1, :])
    pixdim = (1.0, 1.0, 1.0)
    out = monai_pipeline(Orientationd(keys="image", axcodes="RAS"), Spacingd(keys="image", pixdim=pixdim))(
        {"image": series.files}
    )["image"]
    np.testing.assert_allclose(np.linalg.norm(out.affine.numpy()[:3, :3], axis=0), pixdim, atol=1e-6)
    if orientation != "oblique":
        spacing = {"axial": (COL_SPACING, ROW_SPACING, SLICE_SPACING), "sagittal": (SLICE_SPACING, COL_SPACING, ROW_SPACING)}
        shape = {"axial": (COLS, ROWS, SLICES), "sagittal": (SLICES, COLS, ROWS)}
        assert tuple(out.shape[1:]) == expected_spacing_shape(shape[orientation], spacing[orientation], pixdim)
        assert_matches_field(out[0].numpy(), out.affine.numpy(), margin=1, atol=0.1)


def test_monai_pipeline_on_xray(tmp_path: Path) -> None:
    from monai.transforms import Orientationd, Spacingd

    stored = np.random.default_rng(9).integers(0, 4096, (30, 20))
    ds = base_dataset("DX", "1.2.840.10008.5.1.4.1.1.1.1", 30, 20)
    set_pixels(ds, stored, bits_stored=12, signed=False, photometric="MONOCHROME1")
    ds.ImagerPixelSpacing = [0.2, 0.1]
    path = str(write(ds, tmp_path / "dx"))  # no suffix: DICOM needs none
    reader = DicomSeriesReader()
    assert reader.verify_suffix(path) and reader.verify_suffix([path, path]) and not reader.verify_suffix("a.nii.gz")
    transforms = [Spacingd(keys="image", pixdim=(0.4, 0.2))]
    if importlib.util.find_spec("nibabel") is not None:  # MONAI's Orientation needs nibabel
        transforms.insert(0, Orientationd(keys="image", axcodes="RAS"))
    loaded = monai_pipeline()({"image": path})["image"]
    assert tuple(loaded.shape) == (1, 30, 20)  # (rows, cols): display orientation kept
    np.testing.assert_array_equal(loaded[0].numpy(), 4095.0 - stored)
    np.testing.assert_allclose(loaded.affine.numpy()[:2, :2], np.diag([0.2, 0.1]))
    out = monai_pipeline(*transforms)({"image": path})["image"]
    assert tuple(out.shape) == (1, *expected_spacing_shape((30, 20), (0.2, 0.1), (0.4, 0.2)))
    np.testing.assert_allclose(out[0, 0, 0].item(), 4095.0 - stored[0, 0])  # same corner, not flipped


def test_monai_pydicom_reader_orders_by_instance_number_but_ours_by_position(tmp_path: Path) -> None:
    from monai.data import PydicomReader
    from monai.transforms import LoadImage

    series = Series(tmp_path / "series", "axial", seed=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = LoadImage(reader=PydicomReader(), image_only=True)(str(tmp_path / "series")).numpy()
    ours = LoadImage(reader=DicomSeriesReader(), image_only=True)(str(tmp_path / "series")).numpy()
    assert theirs.shape == ours.shape == (COLS, ROWS, SLICES)
    by_instance_number = np.argsort(series.instance_numbers)  # position index of each InstanceNumber-ordered slice
    for k in range(SLICES):
        np.testing.assert_allclose(ours[:, :, k], series.stored(k).T * VALUE_SCALE, atol=1e-4)
        np.testing.assert_allclose(theirs[:, :, k], series.stored(by_instance_number[k]).T * VALUE_SCALE, atol=1e-4)
    assert not np.allclose(theirs, ours)
