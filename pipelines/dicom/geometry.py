"""Where DICOM frames lie in the patient: per-frame geometry, slice ordering, stack checks and affines.

This module is the one place that decides slice geometry: the header scan (``scan.py``, from header-only
reads) and the pixel reader (``read.py``) both build ``FrameGeometry`` rows with ``frame_geometries`` and
check and order them with ``stack_geometry``, so ingest accepts exactly the series the reader can stack.

Conventions (the same as MONAI's ITKReader and NIfTI):

- DICOM patient coordinates are LPS (x to the patient's Left, y to Posterior, z to Superior), in mm.
- ``ImageOrientationPatient`` holds the *row* direction cosine (the direction in which the column index
  grows along a row) followed by the *column* direction cosine (the direction in which the row index grows).
- ``PixelSpacing`` is ``(distance between rows, distance between columns)``.
- A volume is indexed ``(i, j, k)`` = (column index, row index, slice index), and its affine maps
  ``(i, j, k, 1)`` to the RAS position (mm) of that voxel's centre: the first two world axes of the LPS
  affine are negated.

Slices are ordered by their position projected onto the slice normal (row cosine x column cosine),
never by InstanceNumber, which scanners and exporters number in either direction or not at all.

A stack is usable (else ``inconsistent_series``) when all frames share image size, orientation, pixel spacing
and frame of reference, no two frames lie at the same position along the normal (closer than
``SAME_POSITION_MM``), and the slices are evenly spaced. The spacing rule: the slice step is the vector
``(last - first) / (n - 1)`` between the sorted slice origins, and every origin must lie within
``UNEVEN_SLICE_FRACTION`` (10 %) of that step's length from the regular grid ``first + k * step``. One affine
describes such a stack exactly. Scanner rounding of positions (micrometres) passes; gantry tilt (origins
sheared by the same in-plane offset per slice) passes, because the step vector absorbs the shear. A missing
slice moves some origin a quarter of a step (short series) to half a step (long series) off the grid, so it
fails, as does any other uneven spacing (mixed stacks, slabs with gaps) and a slice shifted within its plane.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import pydicom

from pipelines.dicom.reasons import DECODE_ERROR, INCONSISTENT_SERIES, DicomError

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
PROJECTION_MODALITIES = frozenset({"CR", "DX", "MG", "RF", "XA", "IO", "PX"})  # 2D, even with geometry
ORIENTATION_TOLERANCE = 1e-3  # direction cosines that differ by less are the same orientation
SPACING_TOLERANCE_MM = 1e-3  # pixel spacings that differ by less are the same
SAME_POSITION_MM = 1e-3  # slices closer than this along the normal are at the same position
UNEVEN_SLICE_FRACTION = 0.1  # a slice origin further than this fraction of a step from the regular grid: uneven
MALFORMED_VALUE_ERRORS = (ValueError, TypeError, AttributeError, KeyError, IndexError, OverflowError)
Result = TypeVar("Result")


@dataclass(frozen=True)
class FrameGeometry:
    """Geometry of one 2D frame in LPS patient coordinates (mm); plain tuples, so it serialises small and compares."""

    position: tuple[float, float, float]  # ImagePositionPatient: centre of the first transmitted pixel
    orientation: tuple[float, ...]  # unit row cosine, then unit column cosine (6 values)
    pixel_spacing: tuple[float, float]  # (between rows, between columns), as in PixelSpacing
    shape: tuple[int, int]  # (rows, columns)
    frame_of_reference: str = ""

    @property
    def row_cosine(self) -> np.ndarray:
        """Unit vector along a row (increasing column index)."""
        return np.asarray(self.orientation[:3], dtype=float)

    @property
    def column_cosine(self) -> np.ndarray:
        """Unit vector down a column (increasing row index)."""
        return np.asarray(self.orientation[3:], dtype=float)

    @property
    def normal(self) -> np.ndarray:
        """Unit slice normal: row cosine x column cosine."""
        return slice_normal(self.orientation)


@dataclass(frozen=True)
class StackGeometry:
    """Frames placed in a volume: ``order[k]`` is the input frame that becomes slice ``k``."""

    order: np.ndarray
    affine: np.ndarray  # 4x4, (i, j, k, 1) -> RAS mm
    spacing: tuple[float, float, float]  # column spacing, row spacing, slice spacing (mm)


def _inconsistent(message: str) -> DicomError:
    return DicomError(INCONSISTENT_SERIES, message)


def malformed_as_dicom_error(function: Callable[..., Result]) -> Callable[..., Result]:
    """Turn exceptions from malformed header values (e.g. Rows or RescaleSlope 'abc') into DECODE_ERROR."""

    @functools.wraps(function)
    def guarded(*args: Any, **kwargs: Any) -> Result:
        try:
            return function(*args, **kwargs)
        except DicomError:
            raise
        except MALFORMED_VALUE_ERRORS as error:
            message = f"malformed image attributes ({type(error).__name__}: {error}): fix the header or re-export"
            raise DicomError(DECODE_ERROR, message) from error

    return guarded


def _finite_floats(value: object, count: int, name: str) -> tuple[float, ...]:
    """``value`` as ``count`` finite floats, or an INCONSISTENT_SERIES error naming the attribute."""
    try:
        numbers = tuple(float(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        numbers = ()
    if len(numbers) != count or not np.all(np.isfinite(numbers)):
        raise _inconsistent(f"{name} must hold {count} finite numbers, got {value!r}: fix or drop the header")
    return numbers


def make_frame_geometry(
    position: object, orientation: object, pixel_spacing: object, shape: tuple[int, int], frame_of_reference: str = ""
) -> FrameGeometry:
    """Validate raw DICOM values and build a ``FrameGeometry`` (cosines normalised to unit length)."""
    cosines = np.asarray(_finite_floats(orientation, 6, "ImageOrientationPatient"))
    row, column = cosines[:3], cosines[3:]
    row_norm, column_norm = np.linalg.norm(row), np.linalg.norm(column)
    if row_norm < 0.5 or column_norm < 0.5:
        raise _inconsistent(f"ImageOrientationPatient {cosines.tolist()} is not two unit vectors: fix the header")
    row, column = row / row_norm, column / column_norm
    if abs(float(row @ column)) > ORIENTATION_TOLERANCE:
        raise _inconsistent(f"ImageOrientationPatient {cosines.tolist()} is not orthogonal: fix the header")
    spacing = _finite_floats(pixel_spacing, 2, "PixelSpacing")
    if min(spacing) <= 0:
        raise _inconsistent(f"PixelSpacing {list(spacing)} must be positive: fix the header")
    return FrameGeometry(
        position=_finite_floats(position, 3, "ImagePositionPatient"),  # type: ignore[arg-type]
        orientation=tuple(float(v) for v in (*row, *column)),
        pixel_spacing=(spacing[0], spacing[1]),
        shape=(int(shape[0]), int(shape[1])),
        frame_of_reference=str(frame_of_reference or ""),
    )


def functional_item(ds: pydicom.Dataset, frame: int, sequence: str) -> pydicom.Dataset | None:
    """First item of a functional-group ``sequence`` for ``frame``: per-frame group first, then shared."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and frame < len(per_frame) and per_frame[frame].get(sequence):
        return per_frame[frame][sequence][0]
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared and shared[0].get(sequence):
        return shared[0][sequence][0]
    return None


def _frame_attribute(ds: pydicom.Dataset, frame: int, sequence: str, keyword: str) -> object:
    """``keyword`` from the frame's functional group ``sequence``, else from the top level, else None."""
    item = functional_item(ds, frame, sequence)
    if item is not None and keyword in item:
        return item[keyword].value
    return ds.get(keyword)


def has_spatial_geometry(ds: pydicom.Dataset) -> bool:
    """Whether every frame of ``ds`` has a patient position and orientation (single- or multi-frame)."""
    return all(
        _frame_attribute(ds, f, "PlanePositionSequence", "ImagePositionPatient") is not None
        and _frame_attribute(ds, f, "PlaneOrientationSequence", "ImageOrientationPatient") is not None
        for f in range(number_of_frames(ds))
    )


def is_volume_dataset(ds: pydicom.Dataset) -> bool:
    """One dataset is a (possibly one-slice) volume when it has patient geometry and is no projection radiograph."""
    projection = str(ds.get("Modality", "")) in PROJECTION_MODALITIES
    return has_spatial_geometry(ds) and (number_of_frames(ds) > 1 or not projection)


def number_of_frames(ds: pydicom.Dataset) -> int:
    """NumberOfFrames, 1 when absent or empty."""
    value = ds.get("NumberOfFrames")
    return int(value) if value not in (None, "") and int(value) > 0 else 1


def pixel_spacing_of(ds: pydicom.Dataset, frame: int = 0) -> tuple[tuple[float, float], str]:
    """In-plane spacing ``(between rows, between columns)`` in mm and the attribute it came from.

    PixelMeasuresSequence (enhanced), then PixelSpacing, ImagerPixelSpacing (projection radiographs measured at
    the detector), NominalScannedPixelSpacing; ``(1.0, 1.0)`` with source ``"assumed"`` when none is usable.
    """
    item = functional_item(ds, frame, "PixelMeasuresSequence")
    candidates = [("PixelMeasuresSequence", item.get("PixelSpacing") if item is not None else None)]
    candidates += [(name, ds.get(name)) for name in ("PixelSpacing", "ImagerPixelSpacing", "NominalScannedPixelSpacing")]
    for source, value in candidates:
        try:
            rows_mm, columns_mm = (float(v) for v in value)  # type: ignore[union-attr]
        except (TypeError, ValueError):
            continue
        if np.isfinite(rows_mm) and np.isfinite(columns_mm) and rows_mm > 0 and columns_mm > 0:
            return (rows_mm, columns_mm), source
    return (1.0, 1.0), "assumed"


@malformed_as_dicom_error
def frame_geometries(ds: pydicom.Dataset) -> list[FrameGeometry]:
    """Geometry of every frame of ``ds`` (enhanced multi-frame functional groups or classic single-frame).

    Works on header-only reads. Raises INCONSISTENT_SERIES for a frame without (valid) position/orientation,
    DECODE_ERROR for malformed values such as a non-numeric Rows or NumberOfFrames.
    """
    shape = (int(ds.Rows), int(ds.Columns))
    frames = []
    for frame in range(number_of_frames(ds)):
        position = _frame_attribute(ds, frame, "PlanePositionSequence", "ImagePositionPatient")
        orientation = _frame_attribute(ds, frame, "PlaneOrientationSequence", "ImageOrientationPatient")
        if position is None or orientation is None:
            raise _inconsistent(
                f"frame {frame + 1} has no ImagePositionPatient/ImageOrientationPatient, so it cannot be placed "
                "in a volume: only cross-sectional series with patient geometry can be read as volumes"
            )
        spacing, _ = pixel_spacing_of(ds, frame)
        frames.append(make_frame_geometry(position, orientation, spacing, shape, ds.get("FrameOfReferenceUID", "")))
    return frames


def single_slice_spacing(ds: pydicom.Dataset) -> float:
    """Thickness to give a one-slice volume: SpacingBetweenSlices, else SliceThickness, else 1 mm."""
    item = functional_item(ds, 0, "PixelMeasuresSequence")
    for source in (item, ds):
        if source is None:
            continue
        for keyword in ("SpacingBetweenSlices", "SliceThickness"):
            try:
                value = float(source.get(keyword))
            except (TypeError, ValueError):
                continue
            if np.isfinite(value) and value > 0:
                return value
    return 1.0


def slice_normal(orientation: Sequence[float]) -> np.ndarray:
    """Unit normal of the slice plane: cross product of the row and column direction cosines."""
    normal = np.cross(np.asarray(orientation[:3], dtype=float), np.asarray(orientation[3:6], dtype=float))
    length = np.linalg.norm(normal)
    return normal / length if length > 0 else normal


def sort_along_normal(orientation: Sequence[float], positions: Sequence[Sequence[float]]) -> tuple[list[int], np.ndarray]:
    """Indices of ``positions`` sorted by projection on the slice normal (stable), and the sorted projections."""
    projections = np.asarray(positions, dtype=float).reshape(-1, 3) @ slice_normal(orientation)
    order = np.argsort(projections, kind="stable")
    return [int(i) for i in order], projections[order]


def _check_same_plane(frames: Sequence[FrameGeometry]) -> None:
    """All frames share size, orientation, pixel spacing and frame of reference, else INCONSISTENT_SERIES."""
    first = frames[0]
    for index, frame in enumerate(frames[1:], start=2):
        if frame.shape != first.shape:
            raise _inconsistent(
                f"slice {index} is {frame.shape[0]}x{frame.shape[1]} but slice 1 is {first.shape[0]}x{first.shape[1]}: "
                "a series must have one image size; split it or drop the odd slices"
            )
        if not np.allclose(frame.orientation, first.orientation, rtol=0.0, atol=ORIENTATION_TOLERANCE):
            raise _inconsistent(
                f"slice {index} has another orientation than slice 1: the series mixes planes "
                "(e.g. a localizer); split it by ImageOrientationPatient"
            )
        if not np.allclose(frame.pixel_spacing, first.pixel_spacing, rtol=0.0, atol=SPACING_TOLERANCE_MM):
            raise _inconsistent(
                f"slice {index} has PixelSpacing {frame.pixel_spacing} but slice 1 has {first.pixel_spacing}: "
                "split the series by PixelSpacing"
            )
        if frame.frame_of_reference and first.frame_of_reference and frame.frame_of_reference != first.frame_of_reference:
            raise _inconsistent(
                f"slice {index} has another FrameOfReferenceUID than slice 1: positions are not comparable; "
                "split the series by FrameOfReferenceUID"
            )


def _slice_step(positions: np.ndarray, normal: np.ndarray, single_slice_spacing: float) -> np.ndarray:
    """LPS vector from one sorted slice origin to the next; checks the slices are evenly spaced (module rule).

    With several slices the step is ``(last - first) / (n - 1)``: along the normal (normal x slice spacing) for
    every regular series, and it still places each voxel correctly when slices are sheared (gantry tilt).
    """
    count = len(positions)
    if count == 1:
        return normal * single_slice_spacing
    gaps = np.diff(positions @ normal)
    if np.any(gaps < SAME_POSITION_MM):
        duplicates = int(np.sum(gaps < SAME_POSITION_MM))
        raise _inconsistent(
            f"{duplicates} slice(s) repeat the position of another: the series holds several echoes, phases or "
            "copies; split it (e.g. by EchoTime, TemporalPositionIdentifier) or remove duplicates"
        )
    step = (positions[-1] - positions[0]) / (count - 1)
    tolerance = UNEVEN_SLICE_FRACTION * float(np.linalg.norm(step))
    offsets = np.linalg.norm(positions - _regular_grid(positions), axis=1)
    if offsets.max() > tolerance:
        raise _inconsistent(_uneven_message(positions, normal, gaps, offsets, tolerance))
    return step


def _regular_grid(points: np.ndarray) -> np.ndarray:
    """Evenly spaced points (or values) from the first to the last of ``points``."""
    fractions = np.linspace(0.0, 1.0, len(points)).reshape(-1, *([1] * (points.ndim - 1)))
    return points[0] + fractions * (points[-1] - points[0])


def _uneven_message(positions: np.ndarray, normal: np.ndarray, gaps: np.ndarray, offsets: np.ndarray,
                    tolerance: float) -> str:
    """Explain off-grid slices: uneven gaps along the normal (a missing slice), else a shift within the plane."""
    along = positions @ normal
    if np.abs(along - _regular_grid(along)).max() > tolerance:
        return (f"slices are unevenly spaced (gaps {gaps.min():.3g} to {gaps.max():.3g} mm): a slice is probably "
                "missing; re-export the complete series")
    worst = int(np.argmax(offsets))
    return (f"slices are unevenly spaced: slice {worst + 1} (in position order) lies {offsets[worst]:.3g} mm off the "
            "line through the first and last slice within its plane, so the series mixes stacks; split or re-export it")


def stack_geometry(frames: Sequence[FrameGeometry], single_slice_spacing: float = 1.0) -> StackGeometry:
    """Check the frames form one regular stack, order them along the slice normal and build the RAS affine.

    ``single_slice_spacing`` is used only for a one-slice volume (e.g. SpacingBetweenSlices or SliceThickness).
    Raises INCONSISTENT_SERIES (see the module docstring for the rules).
    """
    if not frames:
        raise _inconsistent("no slices to stack: pass at least one image")
    _check_same_plane(frames)
    first = frames[0]
    order, _ = sort_along_normal(first.orientation, [frame.position for frame in frames])
    positions = np.array([frames[i].position for i in order], dtype=float)
    step = _slice_step(positions, first.normal, single_slice_spacing)
    rows_mm, columns_mm = first.pixel_spacing
    affine_lps = np.eye(4)
    affine_lps[:3, 0] = first.row_cosine * columns_mm
    affine_lps[:3, 1] = first.column_cosine * rows_mm
    affine_lps[:3, 2] = step
    affine_lps[:3, 3] = positions[0]
    spacing = (columns_mm, rows_mm, float(np.linalg.norm(step)))
    return StackGeometry(order=np.asarray(order, dtype=int), affine=LPS_TO_RAS @ affine_lps, spacing=spacing)
