"""Pixels and volumes from DICOM files, and a MONAI ``ImageReader`` that serves them to MONAI transforms.

Conventions (what other code may rely on):

- Values: stored values -> modality LUT (RescaleSlope/Intercept, per-frame PixelValueTransformationSequence, or
  ModalityLUTSequence) as float32. Brighter always means more signal/denser: MONOCHROME1 is inverted *after* the
  modality LUT with ``out = low + high - value``, where ``[low, high]`` is the modality-LUT output range of every
  storable value (BitsStored/PixelRepresentation through the rescale or LUT). A MONOCHROME1 image and the
  MONOCHROME2 image that displays the same therefore give the same array.
- Pixel padding: pixels whose *stored* value equals PixelPaddingValue (or lies between it and
  PixelPaddingRangeLimit) are set, after the LUT and any inversion, to the minimum of the frame's non-padding
  pixels, so padding reads as "least signal" and does not stretch the intensity range.
- ``voi_window=True`` (X-ray): WindowCenter/Width or VOILUTSequence (``apply_voi_lut``), scaled to [0, 1]
  (window bottom -> 0, top -> 1; inverted for MONOCHROME1); without a VOI the modality range is scaled instead.
- Colour (RGB, YBR_* decoded to RGB by pydicom, PALETTE COLOR): ``color="gray"`` gives BT.601 luminance
  ``0.299 R + 0.587 G + 0.114 B``; ``"reject"`` raises UNSUPPORTED_PHOTOMETRIC. Which photometric
  interpretations and transfer syntaxes are read is ``rules.image_problem``, the check scan makes on headers.
- Axes: an X-ray keeps display orientation, ``(rows, cols)``, spacing ``(row spacing, col spacing)``, and its
  MONAI affine is ``diag(row spacing, col spacing, 1)``. A volume follows the ITK/NIfTI convention:
  ``(i, j, k)`` = (column, row, slice) with a RAS affine (see ``geometry.py``).

Bad input never escapes as a pydicom/numpy exception: it raises ``DicomError`` with a reason code. That
includes what native decoders raise outside ``Exception`` (pylibjpeg-rle panics with a ``BaseException``),
whose stderr noise is kept off the terminal (``isolation``). Reading is bounded by ``limits.Limits``: a deflated
data set is measured before it is inflated, and pixels are never decoded beyond ``max_pixel_bytes``
(``too_large``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from monai.data.image_reader import ImageReader
from monai.utils import MetaKeys, SpaceKeys
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi, apply_windowing
from pydicom.pixels.utils import get_expected_length
from pydicom.uid import UID

from pipelines.dicom import reasons
from pipelines.dicom.geometry import (
    frame_geometries,
    functional_item,
    is_volume_dataset,
    malformed_as_dicom_error,
    number_of_frames,
    pixel_spacing_of,
    single_slice_spacing,
    stack_geometry,
)
from pipelines.dicom.headers import deflate_problem, read_raw_dataset
from pipelines.dicom.isolation import is_fatal, native_stderr_to_null
from pipelines.dicom.limits import DEFAULT_LIMITS, Limits, pixel_bytes, pixel_bytes_problem, raise_if
from pipelines.dicom.reasons import DicomError
from pipelines.dicom.rules import (
    MONOCHROME,
    ColorMode,
    Kind,
    decoder_problem,
    image_problem,
    transfer_syntax_of,
)

PathLike = str | Path
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114])
OTHER_FORMAT_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha", ".mhd", ".png", ".jpg", ".jpeg", ".npy", ".npz", ".tif")


@dataclass
class XrayImage:
    """A projection image: ``pixels`` float32 ``(rows, cols)``; ``spacing`` = (row spacing, col spacing) mm."""

    pixels: np.ndarray
    spacing: tuple[float, float]
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Volume:
    """A 3D image: ``pixels`` float32 ``(cols, rows, slices)``; ``affine`` maps ``(i, j, k, 1)`` to RAS mm."""

    pixels: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    meta: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- reading and decoding


def _dcmread(path: PathLike) -> pydicom.Dataset:
    """``pydicom.dcmread``, also accepting a data set without preamble and file meta exactly where scan does."""
    try:
        return pydicom.dcmread(path)
    except InvalidDicomError:
        raw = read_raw_dataset(path)
        if raw is None:
            raise
        return raw


def read_dataset(path: PathLike, limits: Limits = DEFAULT_LIMITS) -> pydicom.Dataset:
    """Read one DICOM file (header and pixel data) or raise ``DicomError`` (``too_large`` over ``limits``)."""
    try:
        raise_if(deflate_problem(path, limits))
        ds = _dcmread(path)
    except DicomError:
        raise
    except InvalidDicomError as error:
        raise DicomError(reasons.NOT_DICOM, f"{Path(path).name} is not DICOM ({error}): remove it from the input") from error
    except (EOFError, BufferError) as error:
        raise DicomError(reasons.TRUNCATED, f"{Path(path).name} ends early: re-copy or re-export the file") from error
    except OSError as error:
        raise DicomError(reasons.UNREADABLE, f"cannot open {Path(path).name} ({error.strerror}): check the path") from error
    except BaseException as error:  # pydicom raises many types for a corrupt header
        if is_fatal(error):
            raise
        reason = " ".join(str(error).split())[:200] or type(error).__name__
        raise DicomError(reasons.DECODE_ERROR, f"cannot parse the header of {Path(path).name} ({reason}): re-export it") from error
    raise_if(pixel_bytes_problem(_declared_pixel_bytes(ds), limits))
    return ds


def _declared_pixel_bytes(ds: pydicom.Dataset) -> int:
    """Rows x Columns x frames x samples x BitsAllocated / 8 as the header says (0 when it cannot say)."""
    try:
        values = [int(ds.get(k) or default) for k, default in
                  (("Rows", 0), ("Columns", 0), ("NumberOfFrames", 1), ("SamplesPerPixel", 1), ("BitsAllocated", 1))]
    except (TypeError, ValueError, OverflowError):
        return 0
    return pixel_bytes(*values) if "PixelData" in ds else 0


def _transfer_syntax(ds: pydicom.Dataset) -> UID:
    """``rules.transfer_syntax_of`` the dataset, written into its file meta when missing there (pydicom decodes
    pixel data by the file meta's syntax)."""
    uid = transfer_syntax_of(ds)
    meta = getattr(ds, "file_meta", None)
    if meta is None or not meta.get("TransferSyntaxUID"):
        ds.ensure_file_meta()
        ds.file_meta.TransferSyntaxUID = uid
    return uid


def require_decoder(uid: str) -> None:
    """Raise UNSUPPORTED_TRANSFER_SYNTAX unless an installed pydicom plugin decodes ``uid`` (``rules``)."""
    problem = decoder_problem(uid)
    if problem is not None:
        raise DicomError(reasons.UNSUPPORTED_TRANSFER_SYNTAX, problem)


def _raise_if_unread(ds: pydicom.Dataset, kind: Kind, color: ColorMode) -> None:
    """Raise ``rules.image_problem``'s error (transfer syntax, then photometric) for a ``kind`` image."""
    problem = image_problem(_transfer_syntax(ds), _photometric(ds), kind, color)
    if problem is not None:
        raise problem


def _check_native_length(ds: pydicom.Dataset) -> None:
    """Uncompressed pixel data shorter than Rows x Columns x frames x bytes is a truncated file."""
    try:
        expected = get_expected_length(ds, "bytes")
    except (AttributeError, TypeError, ValueError) as error:
        raise DicomError(reasons.DECODE_ERROR, f"image pixel attributes are missing or invalid ({error}): fix the header") from error
    if len(ds.PixelData) < expected:
        message = f"pixel data has {len(ds.PixelData)} of {expected} bytes: the file was cut short (or Rows/Columns/"
        raise DicomError(reasons.TRUNCATED, message + "BitsAllocated are wrong); re-copy or re-export it")


def require_pixel_data(ds: pydicom.Dataset) -> None:
    """Raise NO_PIXEL_DATA for datasets without (float) pixel data, e.g. reports and key objects."""
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise DicomError(reasons.NO_PIXEL_DATA, "the file holds no pixel data (a report or key object?): remove it")


def decode_stored_values(ds: pydicom.Dataset) -> np.ndarray:
    """Stored values as pydicom decodes them: ``(rows, cols[, 3])`` or ``(frames, rows, cols[, 3])``; YBR -> RGB."""
    require_pixel_data(ds)
    uid = _transfer_syntax(ds)
    require_decoder(uid)
    if "PixelData" in ds and not uid.is_encapsulated:
        _check_native_length(ds)
    try:
        with native_stderr_to_null():
            return ds.pixel_array
    except BaseException as error:  # native decoders may panic with a BaseException
        if is_fatal(error):
            raise
        reason = " ".join(str(error).split())[:300] or type(error).__name__
        raise DicomError(
            reasons.DECODE_ERROR,
            f"cannot decode the {uid.name} pixel data ({reason}): re-export the image, e.g. uncompressed, "
            "or try another decoder (pip install python-gdcm)",
        ) from error


# ---------------------------------------------------------------- modality LUT, inversion, padding, VOI, colour


def _as_frames(stored: np.ndarray) -> np.ndarray:
    """Monochrome stored values as ``(frames, rows, cols)``."""
    return stored[np.newaxis] if stored.ndim == 2 else stored


def _linear_rescale(ds: pydicom.Dataset, frame: int) -> tuple[float, float]:
    """(slope, intercept) of ``frame``: PixelValueTransformationSequence, else top level, else (1, 0)."""
    item = functional_item(ds, frame, "PixelValueTransformationSequence")
    source = item if item is not None and "RescaleSlope" in item else ds
    return float(source.get("RescaleSlope", 1.0) or 1.0), float(source.get("RescaleIntercept", 0.0) or 0.0)


def _modality_lut(ds: pydicom.Dataset, frames: np.ndarray) -> np.ndarray:
    """Modality LUT or rescale of ``(frames, rows, cols)`` stored values, float64 (per frame for enhanced files)."""
    if ds.get("ModalityLUTSequence"):
        return np.asarray(apply_modality_lut(frames, ds), dtype=np.float64)
    rescales = np.array([_linear_rescale(ds, f) for f in range(len(frames))])
    return frames.astype(np.float64) * rescales[:, 0, None, None] + rescales[:, 1, None, None]


@malformed_as_dicom_error
def frame_pixels(ds: pydicom.Dataset) -> np.ndarray:
    """Decoded pixels with the modality LUT applied, float32: ``(rows, cols)`` or ``(frames, rows, cols)``.

    No inversion, padding or VOI here (see ``read_xray``/``read_volume``); colour data is returned decoded, as RGB.
    """
    stored = decode_stored_values(ds)
    if _photometric(ds) not in MONOCHROME:
        return stored.astype(np.float32)
    return _modality_lut(ds, _as_frames(stored)).reshape(stored.shape).astype(np.float32)


def _modality_range(ds: pydicom.Dataset, frame: int) -> tuple[float, float]:
    """Output range of the modality LUT over all storable values (BitsStored, PixelRepresentation): the LUT's
    smallest and largest entries, or the rescaled ends of the stored range."""
    if ds.get("ModalityLUTSequence"):
        entries, first_mapped = (int(v) for v in ds.ModalityLUTSequence[0].LUTDescriptor[:2])
        lut = apply_modality_lut(np.arange(first_mapped, first_mapped + (entries or 2**16)), ds)
        return float(np.min(lut)), float(np.max(lut))
    bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 16)
    signed = int(ds.get("PixelRepresentation") or 0) == 1
    stored_range = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    slope, intercept = _linear_rescale(ds, frame)
    low, high = sorted(value * slope + intercept for value in stored_range)
    return low, high


def _stored_int(ds: pydicom.Dataset, value: object) -> int:
    """A US-or-SS header value in stored-value terms (undo an unsigned read of a signed value)."""
    number = int(value)  # type: ignore[call-overload]
    bits = int(ds.get("BitsAllocated") or 16)
    if int(ds.get("PixelRepresentation") or 0) == 1 and number >= 2 ** (bits - 1):
        number -= 2**bits
    return number


def _padding_mask(ds: pydicom.Dataset, frames: np.ndarray) -> np.ndarray | None:
    """True where stored values are padding (PixelPaddingValue, up to PixelPaddingRangeLimit); None if none set."""
    if ds.get("PixelPaddingValue") is None:
        return None
    value = _stored_int(ds, ds.PixelPaddingValue)
    if ds.get("PixelPaddingRangeLimit") is None:
        return frames == value
    low, high = sorted((value, _stored_int(ds, ds.PixelPaddingRangeLimit)))
    return (frames >= low) & (frames <= high)


def _fill_padding(values: np.ndarray, padding: np.ndarray) -> np.ndarray:
    """Set padding pixels of each frame to the minimum of that frame's other pixels."""
    for frame, mask in zip(values, padding, strict=True):
        if mask.any() and not mask.all():
            frame[mask] = frame[~mask].min()
    return values


def _voi_to_unit(ds: pydicom.Dataset, values: np.ndarray) -> np.ndarray:
    """VOI LUT (preferred) or window of modality values, scaled to [0, 1] by the VOI's bottom and top outputs."""
    try:
        if ds.get("VOILUTSequence"):
            entries, first_mapped = (int(v) for v in ds.VOILUTSequence[0].LUTDescriptor[:2])
            last_mapped = first_mapped + (entries or 2**16) - 1
            inputs = np.clip(np.rint(values), first_mapped, last_mapped).astype(np.int64)
            out, ends = apply_voi(inputs, ds), apply_voi(np.array([first_mapped, last_mapped]), ds)
        elif ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
            with np.errstate(over="ignore"):
                out, ends = apply_windowing(values, ds), apply_windowing(np.array([-1e300, 1e300]), ds)
        else:
            out, ends = values, np.array(_modality_range(ds, 0))
    except (ValueError, NotImplementedError, AttributeError, IndexError, TypeError) as error:
        raise DicomError(reasons.DECODE_ERROR, f"invalid VOI LUT/window ({error}): read with voi_window=False") from error
    bottom, top = float(ends[0]), float(ends[-1])
    if top == bottom:
        return np.zeros_like(values)
    return np.clip((np.asarray(out, dtype=np.float64) - bottom) / (top - bottom), 0.0, 1.0)


def monochrome_frames(ds: pydicom.Dataset, stored: np.ndarray, *, voi_window: bool = False) -> np.ndarray:
    """``(frames, rows, cols)`` float32: modality LUT, optional VOI to [0, 1], MONOCHROME1 inversion, padding fill."""
    frames = _as_frames(stored)
    padding = _padding_mask(ds, frames)
    values = _modality_lut(ds, frames)
    if voi_window:
        values = _voi_to_unit(ds, values)
    if _photometric(ds) == "MONOCHROME1":
        if voi_window:
            values = 1.0 - values
        else:
            for index, frame in enumerate(values):
                low, high = _modality_range(ds, index)
                frame[...] = low + high - frame
    if padding is not None:
        values = _fill_padding(values, padding)
    return values.astype(np.float32)


def _luminance(ds: pydicom.Dataset, stored: np.ndarray, *, voi_window: bool) -> np.ndarray:
    """BT.601 luminance of colour pixels (palette expanded first); [0, 1] when ``voi_window``."""
    rgb = apply_color_lut(stored, ds) if _photometric(ds) == "PALETTE COLOR" else stored
    gray = rgb[..., :3].astype(np.float64) @ LUMA_WEIGHTS
    if voi_window and np.issubdtype(rgb.dtype, np.integer):
        gray /= float(np.iinfo(rgb.dtype).max)
    return gray.astype(np.float32)


def _photometric(ds: pydicom.Dataset) -> str:
    return str(ds.get("PhotometricInterpretation", "")).strip().upper()


# ---------------------------------------------------------------- images and volumes


def _float_or_nan(value: object) -> float:
    """First number of a (possibly multi-valued) header value, NaN when absent or not a number."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        value = value[0] if len(value) else None
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return float("nan")


def describe(ds: pydicom.Dataset) -> dict[str, Any]:
    """Non-identifying acquisition details (fixed keys, plain types); no patient, accession or path data."""
    slope, intercept = _linear_rescale(ds, 0)
    return {
        "modality": str(ds.get("Modality", "")),
        "manufacturer": str(ds.get("Manufacturer", "")),
        "photometric": _photometric(ds),
        "bits_stored": int(ds.get("BitsStored") or 0),
        "transfer_syntax": str(_transfer_syntax(ds)),
        "rescale_slope": slope,
        "rescale_intercept": intercept,
        "window_center": _float_or_nan(ds.get("WindowCenter")),
        "window_width": _float_or_nan(ds.get("WindowWidth")),
        "body_part": str(ds.get("BodyPartExamined", "")),
        "view_position": str(ds.get("ViewPosition", "")),
    }


@malformed_as_dicom_error
def xray_from_dataset(ds: pydicom.Dataset, *, voi_window: bool = False, color: ColorMode = "reject") -> XrayImage:
    """A single-frame projection image from a read dataset (see ``read_xray``)."""
    require_pixel_data(ds)
    _raise_if_unread(ds, "xray", color)
    photometric = _photometric(ds)
    if number_of_frames(ds) > 1:
        message = f"{number_of_frames(ds)} frames: an X-ray is one frame; read multi-frame cross-sections as volumes"
        raise DicomError(reasons.INCONSISTENT_SERIES, message)
    stored = decode_stored_values(ds)
    if photometric in MONOCHROME:
        pixels = monochrome_frames(ds, stored, voi_window=voi_window)[0]
    else:
        pixels = _luminance(ds, stored, voi_window=voi_window)
    spacing, source = pixel_spacing_of(ds)
    meta = describe(ds) | {"spacing_source": source, "voi_applied": voi_window, "inverted": photometric == "MONOCHROME1"}
    return XrayImage(pixels=pixels, spacing=spacing, meta=meta)


def read_xray(path: PathLike, *, voi_window: bool = False, color: ColorMode = "reject") -> XrayImage:
    """Read a CR/DX (or any single-frame) image: float32 ``(rows, cols)``, modality LUT, MONOCHROME1 inverted.

    ``voi_window``: apply WindowCenter/Width or VOILUTSequence and scale to [0, 1].
    ``color``: ``"reject"`` colour images (UNSUPPORTED_PHOTOMETRIC) or convert them to luminance (``"gray"``).
    """
    return xray_from_dataset(read_dataset(path), voi_window=voi_window, color=color)


def _check_one_series(datasets: Sequence[pydicom.Dataset]) -> None:
    """All datasets belong to one SeriesInstanceUID (where given) and pass the rules for MRI volumes."""
    series = {str(ds.SeriesInstanceUID) for ds in datasets if ds.get("SeriesInstanceUID")}
    if len(series) > 1:
        message = f"files from {len(series)} series were given as one volume: read each SeriesInstanceUID alone"
        raise DicomError(reasons.INCONSISTENT_SERIES, message)
    for ds in datasets:
        _raise_if_unread(ds, "mri", "reject")


@malformed_as_dicom_error
def volume_from_datasets(datasets: Sequence[pydicom.Dataset]) -> Volume:
    """Stack the frames of read datasets (single-frame slices in any order, or enhanced multi-frame) by position."""
    if not datasets:
        raise DicomError(reasons.TOO_FEW_SLICES, "no slices were given: pass the files of one series")
    _check_one_series(datasets)
    geometries = [geometry for ds in datasets for geometry in frame_geometries(ds)]
    stack = stack_geometry(geometries, single_slice_spacing(datasets[0]))
    frames = np.concatenate([monochrome_frames(ds, decode_stored_values(ds)) for ds in datasets])
    pixels = np.ascontiguousarray(frames[stack.order].transpose(2, 1, 0))  # (slice, row, col) -> (col, row, slice)
    _, source = pixel_spacing_of(datasets[0])
    meta = describe(datasets[0]) | {"spacing_source": source, "n_slices": int(pixels.shape[2])}
    return Volume(pixels=pixels, affine=stack.affine, spacing=stack.spacing, meta=meta)


def read_series_datasets(paths: Sequence[PathLike] | PathLike, limits: Limits = DEFAULT_LIMITS) -> list[pydicom.Dataset]:
    """Read files, or the files of one folder (not recursive; non-DICOM files, and DICOMDIR indexes by their
    lack of pixel data, are skipped there)."""
    items = [paths] if isinstance(paths, str | Path) else list(paths)
    if len(items) == 1 and Path(items[0]).is_dir():
        datasets = []
        for path in sorted(p for p in Path(items[0]).iterdir() if p.is_file()):
            try:
                datasets.append(read_dataset(path, limits))
            except DicomError as error:
                if error.reason_code != reasons.NOT_DICOM:
                    raise
        return [ds for ds in datasets if "PixelData" in ds]
    return [read_dataset(path, limits) for path in items]


def read_volume(paths: Sequence[PathLike] | PathLike) -> Volume:
    """Read single-frame slices (any order) or an enhanced multi-frame file as a volume ordered by position.

    ``pixels`` are float32 ``(cols, rows, slices)``; ``affine @ [i, j, k, 1]`` is the voxel centre in RAS mm;
    ``spacing`` is (column spacing, row spacing, slice spacing from positions).
    """
    return volume_from_datasets(read_series_datasets(paths))


# ---------------------------------------------------------------- MONAI


class DicomSeriesReader(ImageReader):
    """MONAI reader: a list of files (or a folder) is one series -> 3D ``(i, j, k)`` volume in RAS; a single
    projection file -> 2D ``(rows, cols)`` image (display orientation) with affine ``diag(row sp, col sp, 1)``.

    Use ``LoadImaged(keys="image", reader=DicomSeriesReader(), ensure_channel_first=True)``. Errors are
    ``DicomError``. Metadata holds only ``describe()`` fields and MONAI geometry keys (no patient data).
    """

    def __init__(self, *, voi_window: bool = False, color: ColorMode = "reject", limits: Limits = DEFAULT_LIMITS):
        super().__init__()
        self.voi_window = voi_window
        self.color = color
        self.limits = limits

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        """DICOM files need no suffix: accept any path or list of paths except well-known other image formats."""
        names = [filename] if isinstance(filename, str | Path) else list(filename)
        return bool(names) and not any(str(name).lower().endswith(OTHER_FORMAT_SUFFIXES) for name in names)

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs: Any) -> pydicom.Dataset | list[pydicom.Dataset]:
        """One file -> a dataset; several files or a folder -> a list of datasets (one series)."""
        items = [data] if isinstance(data, str | Path) else list(data)
        if len(items) == 1 and not Path(items[0]).is_dir():
            return read_dataset(items[0], self.limits)
        return read_series_datasets(items, self.limits)

    def get_data(self, img: pydicom.Dataset | Sequence[pydicom.Dataset]) -> tuple[np.ndarray, dict]:
        """``(array, meta)`` with affine, original_affine, spatial_shape, space=RAS, original_channel_dim."""
        if isinstance(img, pydicom.Dataset) and not is_volume_dataset(img):
            xray = xray_from_dataset(img, voi_window=self.voi_window, color=self.color)
            array, meta, spacing = xray.pixels, dict(xray.meta), xray.spacing
            affine = np.diag([spacing[0], spacing[1], 1.0])
        else:
            volume = volume_from_datasets([img] if isinstance(img, pydicom.Dataset) else list(img))
            array, meta, spacing, affine = volume.pixels, dict(volume.meta), volume.spacing, volume.affine
        meta[MetaKeys.AFFINE], meta[MetaKeys.ORIGINAL_AFFINE] = affine, affine.copy()
        meta[MetaKeys.SPATIAL_SHAPE], meta["spacing"] = np.asarray(array.shape), np.asarray(spacing, dtype=float)
        meta[MetaKeys.ORIGINAL_CHANNEL_DIM], meta[MetaKeys.SPACE] = "no_channel", SpaceKeys.RAS
        return array, meta
