"""Header-only reading of one DICOM file: recognise it by content, detect truncation, extract what scan needs.

``read_header(path)`` never raises: it returns an ``InstanceHeader``, a ``Rejected`` row (``not_dicom``,
``truncated``, ``decode_error``, ``unreadable``, ``not_a_file``, ``too_large``) or ``Skipped`` for DICOMDIR
index files (recognised by content, whatever their name; never followed).

Hostile input: only regular files are opened (``stat`` first, then opened non-blocking and checked again
with ``fstat``), so a FIFO, socket or device is a ``not_a_file`` row and never blocks the scan; a dangling
symbolic link or a link loop is ``unreadable``. A deflated data set is inflated chunk by chunk and counted
before pydicom inflates it in memory, and pixel bytes and element lengths are checked against
``limits.Limits`` (``too_large``). Warnings raised while a file is read are recorded, not printed
(``isolation``), and a rejection notes them by VR and tag only.

Plain files (most images) take a fast path, ``rawheader.read_plain``, with the same outcome; any file it is not
sure about (truncated ones included) is read with pydicom below, which stays the reference.

Truncation (pydicom path): pydicom's top-level reader silently stops at a short read, and only warns (unless the global
``reading_validation_mode`` is RAISE) when a sequence or encapsulated value runs off the end. Changing that
setting or catching warnings is process-global and not thread-safe, so instead the file object handed to
pydicom records every read that comes back short and every seek past the end of the file. After the header
read stops before the pixel data, ``pixel_data.check_pixel_data`` checks the pixel data element's declared length
(or, for encapsulated data, its fragment items) against the file size without reading the pixels.

``header_worker.HeaderWorker`` runs ``read_header`` in a separate worker process (for ``scan``'s parallel mode).

Geometry: every frame's position, orientation, pixel spacing and size come from ``geometry.frame_geometries``,
the function the pixel reader uses, so that a header that the reader cannot place in a volume carries the
reader's own error (``InstanceHeader.geometry_error``). All results are small frozen dataclasses of plain
values, so they travel cheaply as JSON from a ``HeaderWorker`` process.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import DeflatedExplicitVRLittleEndian

from pipelines.dicom.geometry import FrameGeometry, frame_geometries, pixel_spacing_of, single_slice_spacing
from pipelines.dicom.isolation import captured_warnings, is_fatal, warning_note
from pipelines.dicom.limits import (
    DEFAULT_LIMITS,
    Limits,
    element_problem,
    inflated_size_problem,
    pixel_bytes,
    pixel_bytes_problem,
)
from pipelines.dicom.pixel_data import (
    LONG_LENGTH_VRS,
    UNDEFINED_LENGTH,
    check_pixel_data,
    deflated_has_pixel_data,
)
from pipelines.dicom.rawheader import CHUNK, DEFER_SIZE, MEDIA_STORAGE_DIRECTORY, PlainHeader, read_plain
from pipelines.dicom.reasons import (
    NOT_A_FILE,
    NOT_DICOM,
    TOO_LARGE,
    TRUNCATED,
    UNREADABLE,
    DicomError,
    Rejected,
)
from pipelines.dicom.rules import transfer_syntax_of

_UID_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)+$")


@dataclass(frozen=True)
class Skipped:
    """A file that is deliberately not scanned (a DICOMDIR index); not an error."""

    path: str
    why: str


@dataclass(frozen=True)
class InstanceHeader:
    """The header fields of one DICOM instance that grouping, classification and the reader need."""

    path: str
    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    patient_id: str  # raw: in memory only
    modality: str
    image_type: tuple[str, ...]
    series_description: str
    body_part: str
    manufacturer: str
    rows: int
    columns: int
    number_of_frames: int
    samples_per_pixel: int
    bits_allocated: int
    photometric: str
    transfer_syntax: str
    has_pixel_data: bool
    pixel_spacing: tuple[float, float] | None  # as the reader finds it; None when it would assume 1 mm
    pixel_spacing_source: str  # PixelMeasuresSequence | PixelSpacing | ImagerPixelSpacing | ... | "" when absent
    single_slice_spacing: float  # depth of a one-slice volume: SpacingBetweenSlices, SliceThickness or 1 mm
    frames: tuple[FrameGeometry, ...]  # one per frame (geometry.frame_geometries); empty with geometry_error
    geometry_error: Rejected | None  # why the frames cannot be placed in a volume: the reader's own error
    instance_number: int | None
    is_enhanced: bool  # has PerFrameFunctionalGroupsSequence

    @property
    def orientation(self) -> tuple[float, ...] | None:
        """ImageOrientationPatient of the first frame (unit cosines), None without usable geometry."""
        return self.frames[0].orientation if self.frames else None

    @property
    def positions(self) -> tuple[tuple[float, float, float], ...]:
        """ImagePositionPatient of every frame; empty without usable geometry."""
        return tuple(frame.position for frame in self.frames)


Outcome = InstanceHeader | Rejected | Skipped


class _EofWatch:
    """A read-only file wrapper that records reads hitting end-of-file and seeks beyond it."""

    def __init__(self, fh: BinaryIO, size: int, ignored_reads: frozenset[tuple[int, int]] = frozenset()):
        self._fh = fh
        self.size = size
        self.name = fh.name
        self._ignored = ignored_reads  # (offset, length) reads that may legitimately come back short
        self.partial_reads = 0
        self.empty_reads = 0
        self.overran = False
        self._position = fh.tell()  # tracked here: a tell() per read would double the cost of parsing

    def read(self, n: int = -1) -> bytes:
        data = self._fh.read(n)
        start = self._position
        self._position += len(data)
        if n is not None and n > 0 and len(data) < n and (start, n) not in self._ignored:
            if data:
                self.partial_reads += 1
            else:
                self.empty_reads += 1
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        position = self._position = self._fh.seek(offset, whence)
        self.overran = self.overran or position > self.size
        return position

    def tell(self) -> int:
        return self._position

    @property
    def hit_eof(self) -> bool:
        """True when data ran out mid-element; one empty read is the normal end of a data set."""
        return bool(self.partial_reads) or self.overran or self.empty_reads > 1


def read_header(path: Path | str, limits: Limits = DEFAULT_LIMITS) -> Outcome:
    """Read one file's header (never its pixels) and return what it is; never raises (but for Ctrl-C)."""
    name = str(path)
    with captured_warnings() as records:
        outcome = _read_checked(name, limits)
    if records and isinstance(outcome, Rejected):
        note = warning_note(records)
        outcome = Rejected(outcome.path, outcome.reason_code, f"{outcome.message} ({note})" if note else outcome.message)
    return outcome


def _read_checked(name: str, limits: Limits) -> Outcome:
    """Open ``name`` only when it is a regular file, then read its header."""
    try:
        problem = not_a_regular_file(name)
        if problem is not None:
            return problem
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
        with os.fdopen(fd, "rb") as fh:
            info = os.fstat(fh.fileno())
            if not stat.S_ISREG(info.st_mode):  # replaced between stat and open
                return Rejected(name, NOT_A_FILE, f"is {_file_kind(info.st_mode)}, not a regular file: remove it")
            return _read_open_file(name, fh, info.st_size, limits)
    except OSError as exc:
        return Rejected(name, UNREADABLE, f"cannot be read ({exc.strerror or exc}): check that it exists and is readable")
    except BaseException as exc:  # a defect in an odd file must not stop the scan
        if is_fatal(exc):
            raise
        return Rejected(name, UNREADABLE, f"header could not be interpreted ({type(exc).__name__}: "
                        f"{' '.join(str(exc).split())[:200]})")


def not_a_regular_file(name: str) -> Rejected | None:
    """A row for a path that must not be opened (FIFO, socket, device, folder, broken link), else None."""
    try:
        info = os.stat(name)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return Rejected(name, UNREADABLE, "symbolic link loop (the link points back at itself): fix or "
                            "remove the link")
        if exc.errno == errno.ENOENT and os.path.islink(name):
            return Rejected(name, UNREADABLE, "dangling symbolic link (its target does not exist): fix or "
                            "remove the link")
        raise
    if stat.S_ISREG(info.st_mode):
        return None
    return Rejected(name, NOT_A_FILE, f"is {_file_kind(info.st_mode)}, not a regular file: nothing was read; "
                    "remove it from the input")


def _file_kind(mode: int) -> str:
    """'a FIFO (named pipe)', 'a socket', ... for a non-regular file mode."""
    kinds = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a folder"))
    return next((label for test, label in kinds if test(mode)), "a special file")


def _read_open_file(name: str, fh: BinaryIO, size: int, limits: Limits = DEFAULT_LIMITS) -> Outcome:
    """Sniff, parse and check one opened file."""
    if size == 0:
        return Rejected(name, NOT_DICOM, "empty file (0 bytes), not DICOM")
    head = fh.read(CHUNK)
    has_preamble = head[128:132] == b"DICM"
    plain = read_plain(fh, size, head) if has_preamble else None
    if plain is not None:  # the fast path: the same result as below, without pydicom (see rawheader)
        problem, has_pixels = check_pixel_data(fh, plain.stop, size, plain.original_encoding,
                                               _native_pixel_bytes(plain), limits)
        if problem is None:
            problem = _element_length_problem(plain.longest, limits)
        if problem is not None:
            return Rejected(name, *problem)
        return _checked_header(name, plain, plain.transfer_syntax, has_pixels, limits)
    if has_preamble:
        problem = _deflate_problem(fh, size, limits)
        if problem is not None:
            return Rejected(name, TOO_LARGE, problem)
    fh.seek(0)
    if not has_preamble and not plausible_raw_dataset(head):
        return Rejected(name, NOT_DICOM, "not a DICOM file: no 'DICM' marker and no DICOM data set at the start")
    probe_reads = frozenset() if has_preamble else frozenset({(0, 128), (128, 4)})
    watch = _EofWatch(fh, size, probe_reads)
    try:
        ds = dcmread(watch, stop_before_pixels=True, force=not has_preamble, defer_size=DEFER_SIZE)
    except Exception as exc:
        return _parse_failure(name, has_preamble, watch, exc)
    if not has_preamble and not looks_like_dataset(ds):
        return Rejected(name, NOT_DICOM, "not a DICOM file: no 'DICM' marker and no recognisable DICOM header")
    if _is_directory(ds):
        return Skipped(name, "DICOM media storage directory (DICOMDIR) (not followed)")
    if watch.hit_eof:
        return Rejected(name, TRUNCATED, "file ends inside its header (truncated copy?): copy or export it again")
    transfer_syntax = str(transfer_syntax_of(ds))
    if transfer_syntax == DeflatedExplicitVRLittleEndian:
        has_pixels = deflated_has_pixel_data(fh)
    else:
        problem, has_pixels = check_pixel_data(fh, watch.tell(), size, ds.original_encoding,
                                               _native_pixel_bytes(ds), limits)
        if problem is None:
            problem = _element_length_problem(_longest_element(ds), limits)
        if problem is not None:
            return Rejected(name, *problem)
    return _checked_header(name, ds, transfer_syntax, has_pixels, limits)


def _checked_header(name: str, ds: Dataset | PlainHeader, transfer_syntax: str, has_pixels: bool,
                    limits: Limits) -> Outcome:
    """The header, or ``too_large`` when decoding its pixels would need more than ``max_pixel_bytes``."""
    header = _header_from_dataset(name, ds, transfer_syntax, has_pixels)
    size = pixel_bytes(header.rows, header.columns, header.number_of_frames, header.samples_per_pixel,
                       header.bits_allocated)
    problem = pixel_bytes_problem(size, limits) if has_pixels else None
    return Rejected(name, TOO_LARGE, problem) if problem else header


def _element_length_problem(longest: int, limits: Limits) -> tuple[str, str] | None:
    """``too_large`` when a header element declares more than ``max_element_bytes``."""
    problem = element_problem(longest, limits, "a header element")
    return (TOO_LARGE, problem) if problem else None


def _longest_element(ds: Dataset) -> int:
    """The largest declared length among the top-level elements pydicom left unread (deferred) or raw."""
    lengths = [e.length for e in ds.elements() if getattr(e, "length", None) not in (None, UNDEFINED_LENGTH)]
    return max(lengths, default=0)


def _meta_end_and_syntax(fh: BinaryIO, size: int) -> tuple[int, str]:
    """Walk the file meta group (explicit VR little endian after the preamble): where the data set starts,
    and the transfer syntax UID ('' when the walk finds none)."""
    position, syntax = 132, ""
    while position + 8 <= size:
        fh.seek(position)
        raw = fh.read(12)
        group, element = struct.unpack("<HH", raw[:4])
        if group != 2:
            break
        if raw[4:6] in LONG_LENGTH_VRS:
            (length,), start = struct.unpack("<L", raw[8:12]), position + 12
        else:
            (length,), start = struct.unpack("<H", raw[6:8]), position + 8
        if length == UNDEFINED_LENGTH:
            break
        if element == 0x0010 and length <= 256:
            fh.seek(start)
            syntax = fh.read(length).decode("ascii", "replace").rstrip("\0 ")
        position = start + length
    return position, syntax


def _deflate_problem(fh: BinaryIO, size: int, limits: Limits) -> str | None:
    """For a deflated data set: a message when it inflates beyond ``max_inflated_bytes``, else None."""
    start, syntax = _meta_end_and_syntax(fh, size)
    if syntax != DeflatedExplicitVRLittleEndian:
        return None
    return inflated_size_problem(fh, start, limits)


def deflate_problem(path: Path | str, limits: Limits) -> str | None:
    """``_deflate_problem`` of the file at ``path`` (None for a file without the DICM preamble)."""
    with Path(path).open("rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        fh.seek(128)
        return _deflate_problem(fh, size, limits) if fh.read(4) == b"DICM" else None


def _parse_failure(name: str, has_preamble: bool, watch: _EofWatch, exc: Exception) -> Rejected:
    """Turn a pydicom parse error into a truncated/not_dicom row."""
    if has_preamble and (watch.hit_eof or watch.empty_reads or isinstance(exc, zlib.error)):
        return Rejected(name, TRUNCATED, "file ends inside its header (truncated copy?): copy or export it again")
    if has_preamble:
        return Rejected(name, NOT_DICOM, f"has a DICOM marker but its header cannot be parsed ({exc}): file is corrupt")
    return Rejected(name, NOT_DICOM, "not a DICOM file: no 'DICM' marker and the content does not parse as DICOM")


def plausible_raw_dataset(head: bytes) -> bool:
    """A data set without preamble starts with a group 0002 or 0008 element (little or big endian).

    This cheap test keeps force-parsing (slow on e.g. a large zero-filled file) to likely candidates.
    """
    if len(head) < 8:
        return False
    little, big = head[0] | head[1] << 8, head[0] << 8 | head[1]
    return little in (0x0002, 0x0008) or big in (0x0002, 0x0008)


def read_raw_dataset(path: Path | str) -> Dataset | None:
    """Read in full a data set stored without preamble and file meta, as scan accepts it; None when the file
    does not start like one or parses to no recognisable DICOM header (pydicom errors propagate)."""
    with Path(path).open("rb") as fh:
        if not plausible_raw_dataset(fh.read(8)):
            return None
    ds = dcmread(path, force=True)
    return ds if looks_like_dataset(ds) else None


def looks_like_dataset(ds: Dataset) -> bool:
    """Accept a force-read data set only with a valid SOP Class UID, or study + series UIDs and a modality."""
    if _UID_PATTERN.match(_text(ds, "SOPClassUID")):
        return True
    uids = (_text(ds, "StudyInstanceUID"), _text(ds, "SeriesInstanceUID"))
    return all(_UID_PATTERN.match(uid) for uid in uids) and bool(_text(ds, "Modality"))


def _is_directory(ds: Dataset) -> bool:
    """True for a DICOMDIR (Media Storage Directory) object, whatever its file name."""
    meta = getattr(ds, "file_meta", None)
    media_class = _text(meta, "MediaStorageSOPClassUID") if meta is not None else ""
    return MEDIA_STORAGE_DIRECTORY in (media_class, _text(ds, "SOPClassUID")) or "DirectoryRecordSequence" in ds


def _native_pixel_bytes(ds: Dataset | PlainHeader) -> int:
    """Bytes an uncompressed pixel data value needs according to the header (0 when unknown)."""
    values = [_int(ds, k) for k in ("Rows", "Columns", "SamplesPerPixel", "BitsAllocated")]
    if any(v is None or v <= 0 for v in values):
        return 0
    rows, columns, samples, bits = values
    if _text(ds, "PhotometricInterpretation").upper() == "YBR_FULL_422":
        samples = 2  # chroma subsampled 4:2:2: two values per pixel on average
    frames = max(_int(ds, "NumberOfFrames") or 1, 1)
    return (rows * columns * samples * frames * bits + 7) // 8


def _geometry(name: str, ds: Dataset | PlainHeader) -> tuple[tuple[FrameGeometry, ...], Rejected | None]:
    """Every frame's geometry, or why the frames cannot be placed in a volume (the reader's own error)."""
    try:
        return tuple(frame_geometries(ds)), None
    except DicomError as error:
        return (), Rejected(name, error.reason_code, error.message)


def _pixel_spacing(ds: Dataset | PlainHeader) -> tuple[tuple[float, float] | None, str]:
    """In-plane spacing and its source as the reader finds it; ``(None, "")`` when the reader assumes 1 mm."""
    spacing, source = pixel_spacing_of(ds)
    return (None, "") if source == "assumed" else (spacing, source)


def _header_from_dataset(name: str, ds: Dataset | PlainHeader, transfer_syntax: str, has_pixels: bool
                         ) -> InstanceHeader:
    """Collect the fields of an ``InstanceHeader`` from a parsed header (pydicom's or the fast path's)."""
    frames, geometry_error = _geometry(name, ds)
    spacing, spacing_source = _pixel_spacing(ds)
    return InstanceHeader(
        path=name, sop_class_uid=_text(ds, "SOPClassUID"), sop_instance_uid=_text(ds, "SOPInstanceUID"),
        study_uid=_text(ds, "StudyInstanceUID"),
        series_uid=_text(ds, "SeriesInstanceUID"), patient_id=_text(ds, "PatientID"),
        modality=_text(ds, "Modality").upper(), image_type=_texts(ds, "ImageType"),
        series_description=_text(ds, "SeriesDescription"), body_part=_text(ds, "BodyPartExamined"),
        manufacturer=_text(ds, "Manufacturer"), rows=_int(ds, "Rows") or 0, columns=_int(ds, "Columns") or 0,
        number_of_frames=max(_int(ds, "NumberOfFrames") or 1, 1), samples_per_pixel=_int(ds, "SamplesPerPixel") or 1,
        bits_allocated=_int(ds, "BitsAllocated") or 0,
        photometric=_text(ds, "PhotometricInterpretation").upper(), transfer_syntax=transfer_syntax,
        has_pixel_data=has_pixels, pixel_spacing=spacing, pixel_spacing_source=spacing_source,
        single_slice_spacing=single_slice_spacing(ds), frames=frames, geometry_error=geometry_error,
        instance_number=_int(ds, "InstanceNumber"),
        is_enhanced=bool(ds.get("PerFrameFunctionalGroupsSequence")),
    )


def _text(ds: Dataset | PlainHeader | None, keyword: str) -> str:
    """A header value as stripped text ('' when absent or unreadable)."""
    try:
        value = ds.get(keyword) if ds is not None else None
    except Exception:
        return ""
    if value is None:
        return ""
    if isinstance(value, list | tuple | MultiValue):
        return "\\".join(str(v) for v in value).strip()
    return str(value).strip()


def _texts(ds: Dataset | PlainHeader, keyword: str) -> tuple[str, ...]:
    """A multi-valued text element as a tuple of stripped upper-case strings."""
    return tuple(v.strip().upper() for v in _text(ds, keyword).split("\\") if v.strip())


def _int(ds: Dataset | PlainHeader, keyword: str) -> int | None:
    """An integer element, or None when absent or invalid."""
    text = _text(ds, keyword).split("\\")[0]
    try:
        return int(float(text)) if text else None
    except ValueError:
        return None
