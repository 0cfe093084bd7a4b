"""Discover DICOM files, read their headers, and group them into usable X-ray images and MRI volumes.

Every file found ends up exactly once: in a ``Series``, in a ``Rejected`` row (a series-level rejection is one
row naming the series' first file and the file count), or in ``ScanResult.skipped`` (DICOMDIR index files,
which are never followed). ``ScanResult.file_outcomes`` maps every scanned path to where it went.

Decisions: each CR/DX file is its own ``Series`` (kind ``xray``); a multi-frame CR/DX (NumberOfFrames > 1) is
rejected as ``inconsistent_series`` rather than silently using one frame. MR single-frame slices are grouped
by (StudyInstanceUID, SeriesInstanceUID) and ordered by position along the slice normal; an MR file with
NumberOfFrames > 1 is its own multi-frame ``Series``. File-level checks run in this order: not an image,
modality (one of ``SelectionRules.modalities`` whose kind is in ``SelectionRules.kinds``: an instance of a
kind the run does not use is an ``unsupported_modality`` exclusion before any kind-specific check), pixel
data, then ``rules.image_problem`` (transfer syntax decoder, photometric interpretation in the colour mode
``SelectionRules.color``, the reader's own rules); series-level: localizer, selection rules, geometry, slice
count.

Geometry is checked by ``geometry.stack_geometry``, the function the pixel reader stacks volumes with, on the
frame geometry each header carries: an MR series is rejected (``inconsistent_series``, with the reader's
message) exactly when ``read.read_volume`` would reject its files for geometry reasons (mixed sizes,
orientation, pixel spacing or frame of reference, missing positions, duplicate positions, uneven spacing), so
ingest never accepts a series that training cannot load.

``workers > 0`` reads headers in that many worker processes (header parsing is CPU-bound Python, so threads
do not help), fed chunks of paths by one thread each; see ``header_worker.HeaderWorker`` for why these are fresh
interpreters rather than a multiprocessing pool (no fork of a caller holding torch threads, and no re-import of
the caller's ``__main__``). Fewer than ``parallel_min_files`` files are read here, since starting workers then
costs more than it saves; chunks that a worker fails to return are read here too. Results are identical to a
sequential scan, in the same order.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import queue
import re
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.dicom.geometry import StackGeometry, stack_geometry
from pipelines.dicom.header_worker import HeaderWorker
from pipelines.dicom.headers import InstanceHeader, Outcome, Skipped, read_header
from pipelines.dicom.isolation import captured_warnings
from pipelines.dicom.limits import DEFAULT_LIMITS, Limits
from pipelines.dicom.reasons import (
    INCONSISTENT_SERIES,
    LOCALIZER,
    NO_PIXEL_DATA,
    NOT_AN_IMAGE,
    NOT_SELECTED,
    TOO_FEW_SLICES,
    UNREADABLE,
    UNSUPPORTED_MODALITY,
    DicomError,
    Rejected,
)
from pipelines.dicom.rules import ColorMode, Kind, image_problem, uid_name

XRAY_MODALITIES = frozenset({"CR", "DX"})
MRI_MODALITIES = frozenset({"MR"})
PARALLEL_MIN_FILES = 8000  # break-even of 2 workers on 2 cores: each starts in ~0.35 s and saves ~45 us per file
MAX_CHUNK = 64  # files per task sent to a worker: large enough to amortise IPC, small enough to balance load
SKIPPED = "skipped"
IN_SERIES = "series"

# SOP class UID prefixes (and modalities) of objects that carry no image to classify.
_NON_IMAGE_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.88.": "a structured report or key object selection",
    "1.2.840.10008.5.1.4.1.1.66": "a segmentation, registration or raw data object",
    "1.2.840.10008.5.1.4.1.1.11.": "a presentation state",
    "1.2.840.10008.5.1.4.1.1.9.": "a waveform",
    "1.2.840.10008.5.1.4.1.1.481.2": "an RT dose",
    "1.2.840.10008.5.1.4.1.1.481.3": "an RT structure set",
    "1.2.840.10008.5.1.4.1.1.481.": "an RT plan or treatment record",
    "1.2.840.10008.5.1.4.1.1.104.": "an encapsulated document",
    "1.2.840.10008.5.1.4.1.1.4.2": "an MR spectroscopy object",
    "1.2.840.10008.5.1.4.1.1.30": "a parametric map",
}
_NON_IMAGE_MODALITIES = {
    "SR": "a structured report", "KO": "a key object selection", "PR": "a presentation state",
    "SEG": "a segmentation", "REG": "a registration", "FID": "a fiducials object", "RTSTRUCT": "an RT structure set",
    "RTPLAN": "an RT plan", "RTDOSE": "an RT dose", "RTRECORD": "an RT treatment record", "ECG": "a waveform",
    "HD": "a waveform", "AU": "an audio waveform", "DOC": "an encapsulated document",
}


@dataclass(frozen=True)
class SelectionRules:
    """Which series to use; regexes are case-insensitive and searched anywhere in the text."""

    modalities: tuple[str, ...] = ("CR", "DX", "MR")
    kinds: tuple[Kind, ...] = ("xray", "mri")  # kinds the run uses; other kinds -> unsupported_modality
    series_description_include: tuple[str, ...] = ()  # empty = all
    series_description_exclude: tuple[str, ...] = ()
    image_type_exclude: tuple[str, ...] = ("LOCALIZER",)  # an ImageType value fully matching -> localizer
    min_slices: int = 8  # MRI volumes with fewer slices -> too_few_slices
    color: ColorMode = "reject"  # colour X-rays, as preprocess.xray.color: reject -> unsupported_photometric
    localizer_description: str = r"locali[sz]er|scout|survey"  # MR SeriesDescription -> localizer


@dataclass(frozen=True)
class Series:
    """One usable image: an X-ray (one file) or an MRI volume (slices sorted along the normal, or one file)."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str  # of the first file (an X-ray's own image)
    patient_id: str  # raw patient id: in memory only, callers pseudonymize
    modality: str
    kind: Kind
    files: tuple[str, ...]  # MRI: sorted by position along the slice normal; X-ray and multi-frame: 1 file
    multiframe: bool  # an enhanced MR multi-frame object (one file, NumberOfFrames > 1)
    rows: int
    columns: int
    num_slices: int
    pixel_spacing: tuple[float, float]  # (row, column) spacing in mm; (1.0, 1.0) when the header has none
    pixel_spacing_source: str  # PixelMeasuresSequence | PixelSpacing | ImagerPixelSpacing | ... | "" (assumed 1 mm)
    slice_spacing: float | None  # MR: the reader's slice spacing, |step| between sorted slice origins (mm)
    orientation: tuple[float, ...] | None  # ImageOrientationPatient (6 unit cosines) for MR
    positions: tuple[tuple[float, float, float], ...]  # MR: one per slice/frame, in sorted order
    frame_order: tuple[int, ...] | None  # multi-frame: frame indices (0-based) sorted by position
    manufacturer: str
    series_description: str
    body_part: str
    transfer_syntax: str  # of the first file
    photometric: str
    sop_class_uid: str
    image_type: tuple[str, ...]


@dataclass
class ScanResult:
    """Usable series, rejected items, and the accounting of every file scanned."""

    series: list[Series]
    rejected: list[Rejected]
    n_files: int
    skipped: list[str] = field(default_factory=list)  # DICOMDIR index files (not errors, not followed)
    file_outcomes: dict[str, str] = field(default_factory=dict)  # path -> "series" | "skipped" | reason code


def iter_dicom_files(roots: Sequence[Path | str], on_error: Callable[[OSError], None] | None = None) -> Iterator[Path]:
    """Yield candidate files under ``roots`` (files or folders), sorted, without hidden files or folders.

    Content decides later whether a file is DICOM; extensions are ignored. ``on_error`` receives the
    ``OSError`` of a folder that cannot be listed.
    """
    seen: set[str] = set()
    folders: dict[str, str] = {}  # folder -> its realpath: one lstat per file instead of one per path component
    for root in map(Path, roots):
        if not root.exists():
            if on_error is not None:
                on_error(FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(root)))
            continue
        candidates = [root] if root.is_file() else _walk_sorted(root, on_error)
        for path in candidates:
            folder, name = os.path.split(path)
            if name in ("", ".", "..") or os.path.islink(path):
                key = os.path.realpath(path)
            else:  # realpath of a file that is no link: its folder's realpath joined with its name
                if folder not in folders:
                    folders[folder] = os.path.realpath(folder)
                key = os.path.join(folders[folder], name)
            if key not in seen:
                seen.add(key)
                yield path


def _walk_sorted(root: Path, on_error: Callable[[OSError], None] | None) -> Iterator[Path]:
    """Recursive, deterministic walk of one folder, pruning hidden entries."""
    for folder, dirnames, filenames in os.walk(root, onerror=on_error):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for filename in sorted(filenames):
            if not filename.startswith("."):
                yield Path(folder) / filename


def list_files(roots: Sequence[Path | str]) -> tuple[list[Path], list[Rejected]]:
    """The candidate files under ``roots`` (``iter_dicom_files``) and an ``unreadable`` row per folder that
    cannot be listed."""
    errors: list[OSError] = []
    paths = list(iter_dicom_files(roots, on_error=errors.append))
    return paths, [Rejected(str(e.filename), UNREADABLE, f"cannot be listed ({e.strerror}): check the input path "
                            "and its permissions") for e in errors]


def scan(roots: Sequence[Path | str], rules: SelectionRules = SelectionRules(), workers: int = 0,
         progress: bool = False, parallel_min_files: int = PARALLEL_MIN_FILES,
         limits: Limits = DEFAULT_LIMITS) -> ScanResult:
    """Find, read (headers only) and classify every file under ``roots``; never raises for a bad file.

    ``workers > 0`` reads headers in that many processes when there are at least ``parallel_min_files`` files;
    ``limits`` bound what one file may cost (``too_large``).
    """
    paths, rejected = list_files(roots)
    outcomes = _read_headers([str(p) for p in paths], workers if len(paths) >= parallel_min_files else 0, progress,
                             limits)
    with captured_warnings():  # a damaged UID warns with its value when classified: recorded, never printed
        return _classify(outcomes, rules, rejected, len(paths))


def _classify(outcomes: list[Outcome], rules: SelectionRules, rejected: list[Rejected], n_files: int) -> ScanResult:
    """File-level then series-level classification of the header outcomes."""
    result = ScanResult(series=[], rejected=rejected, n_files=n_files)
    usable: list[InstanceHeader] = []
    for outcome in outcomes:
        if isinstance(outcome, Skipped):
            result.skipped.append(outcome.path)
            result.file_outcomes[outcome.path] = SKIPPED
        elif isinstance(outcome, Rejected):
            _reject(result, outcome, [outcome.path])
        elif (problem := instance_problem(outcome, rules)) is not None:
            _reject(result, problem, [outcome.path])
        else:
            usable.append(outcome)
    for headers in _group(usable):
        built = _build_series(headers, rules)
        if isinstance(built, Series):
            result.series.append(built)
            result.file_outcomes.update(dict.fromkeys(built.files, IN_SERIES))
        else:
            _reject(result, built, [h.path for h in headers])
    result.series.sort(key=lambda s: (s.study_uid, s.series_uid, s.files[0]))
    result.rejected.sort(key=lambda r: (r.path, r.reason_code))
    return result


def _reject(result: ScanResult, row: Rejected, paths: Iterable[str]) -> None:
    """Record one rejection row covering ``paths``."""
    result.rejected.append(row)
    result.file_outcomes.update(dict.fromkeys(paths, row.reason_code))


def _read_headers(paths: list[str], workers: int, progress: bool, limits: Limits = DEFAULT_LIMITS) -> list[Outcome]:
    """Read headers here (``workers <= 0``) or in worker processes; the result order follows ``paths``."""
    from tqdm import tqdm

    chunk_size = max(1, min(MAX_CHUNK, math.ceil(len(paths) / (4 * max(workers, 1)))))
    chunks = [paths[i:i + chunk_size] for i in range(0, len(paths), chunk_size)]
    parallel = workers > 0 and len(chunks) > 1
    with tqdm(total=len(paths), desc="scan", unit="file", disable=not progress) as bar:
        results = _read_in_workers(chunks, workers, bar.update, limits) if parallel else [None] * len(chunks)
        if parallel and None in results:
            warnings.warn("header-reading worker processes failed; reading their files in this process",
                          RuntimeWarning, stacklevel=3)
        outcomes: list[Outcome] = []
        for chunk, result in zip(chunks, results, strict=True):
            if result is None:  # sequential, or a chunk that no worker returned
                result = [read_header(path, limits) for path in chunk]
                bar.update(len(chunk))
            outcomes.extend(result)
        return outcomes


def _read_in_workers(chunks: list[list[str]], workers: int, done: Callable[[int], None],
                     limits: Limits = DEFAULT_LIMITS) -> list[list[Outcome] | None]:
    """Feed chunks to up to ``workers`` ``HeaderWorker`` processes, one thread each; None where none returned."""
    results: list[list[Outcome] | None] = [None] * len(chunks)
    pending: queue.SimpleQueue[int] = queue.SimpleQueue()
    for index in range(len(chunks)):
        pending.put(index)
    lock = threading.Lock()

    def feed(worker: HeaderWorker) -> None:
        with contextlib.suppress(queue.Empty, OSError, ValueError, EOFError):  # or: died
            while True:
                index = pending.get_nowait()
                results[index] = worker.read(chunks[index])
                with lock:
                    done(len(chunks[index]))

    started: list[HeaderWorker] = []
    try:
        with contextlib.suppress(OSError):  # a worker that cannot start leaves its share to the others (or caller)
            for _ in range(min(workers, len(chunks))):
                started.append(HeaderWorker(limits))
        threads = [threading.Thread(target=feed, args=(worker,), daemon=True) for worker in started]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        for worker in started:
            worker.close()
    return results


def kind_of(modality: str) -> Kind | None:
    """The pipeline kind for a modality, or None when no reader exists for it."""
    if modality in XRAY_MODALITIES:
        return "xray"
    return "mri" if modality in MRI_MODALITIES else None


def instance_problem(header: InstanceHeader, rules: SelectionRules) -> Rejected | None:
    """File-level classification: why this instance cannot be used, or None."""
    path, modality = header.path, header.modality
    non_image = non_image_object(header.sop_class_uid, modality)
    if non_image:
        return Rejected(path, NOT_AN_IMAGE, f"{non_image}, not an image: nothing to classify (skip it)")
    unused = modality_problem(modality, rules)
    if unused:
        return Rejected(path, UNSUPPORTED_MODALITY, unused)
    if not header.has_pixel_data:
        return Rejected(path, NO_PIXEL_DATA, "image object without pixel data (header-only export, or the file "
                        "was cut short): export it again with pixels")
    kind = kind_of(modality)
    problem = image_problem(header.transfer_syntax, header.photometric, kind, rules.color)
    if problem is not None:
        return Rejected(path, problem.reason_code, problem.message)
    if kind == "xray" and header.number_of_frames > 1:
        return Rejected(path, INCONSISTENT_SERIES, f"X-ray with {header.number_of_frames} frames; expected a single "
                        "image (multi-frame X-rays are not supported): export the wanted view on its own")
    if not header.study_uid or not header.series_uid:
        return Rejected(path, INCONSISTENT_SERIES, "missing StudyInstanceUID or SeriesInstanceUID: cannot group it")
    return None


def modality_problem(modality: str, rules: SelectionRules) -> str | None:
    """Why instances of ``modality`` are not used by a run with ``rules`` (a one-line message), or None."""
    kind = kind_of(modality)
    if modality in {m.upper() for m in rules.modalities} and kind in rules.kinds:
        return None
    accepted = ", ".join(m for m in rules.modalities if kind_of(m.upper()) in rules.kinds) or "none"
    if kind is not None and kind not in rules.kinds:
        return (f"modality {modality} is {kind}, but this run uses data.kind={'/'.join(rules.kinds)} (accepted: "
                f"{accepted}): use a config or model of kind {kind} for it")
    return (f"modality {modality or '(none)'} is not used (accepted: {accepted}): only X-ray (CR/DX) and MR, as "
            "listed in data.selection.modalities")


def non_image_object(sop_class_uid: str, modality: str) -> str | None:
    """Describe a non-image object (SR, SEG, PR, KO, RT, waveform, ...) from its SOP class or modality."""
    for prefix, description in _NON_IMAGE_CLASSES.items():
        if sop_class_uid.startswith(prefix) and sop_class_uid != "1.2.840.10008.5.1.4.1.1.481.1":  # RT Image
            return f"{description} ({uid_name(sop_class_uid)})"
    if modality in _NON_IMAGE_MODALITIES:
        return f"{_NON_IMAGE_MODALITIES[modality]} (modality {modality})"
    return None


def _group(headers: list[InstanceHeader]) -> list[list[InstanceHeader]]:
    """X-rays and multi-frame files alone; MR single-frame slices by (study, series); each group path-sorted."""
    groups: dict[tuple[str, ...], list[InstanceHeader]] = {}
    for header in headers:
        alone = kind_of(header.modality) == "xray" or header.number_of_frames > 1
        key = (header.study_uid, header.series_uid, header.path if alone else "")
        groups.setdefault(key, []).append(header)
    return [sorted(groups[key], key=lambda h: h.path) for key in sorted(groups)]


def _build_series(headers: list[InstanceHeader], rules: SelectionRules) -> Series | Rejected:
    """Series-level checks (localizer, selection, geometry, slice count), then the ``Series``."""
    first = headers[0]
    count = f"series of {len(headers)} file{'s' if len(headers) > 1 else ''}"
    if _is_localizer(headers, rules):
        return Rejected(first.path, LOCALIZER, f"localizer/scout images ({count}, '{first.series_description}'): "
                        "not diagnostic, skipped")
    why_not = _selection_miss(first.series_description, rules)
    if why_not:
        return Rejected(first.path, NOT_SELECTED, f"{why_not} ({count}): change the selection rules to include it")
    if kind_of(first.modality) == "xray":
        return _make_series(first, [first], None, None)
    try:
        stack = series_stack(headers)
    except DicomError as error:
        return Rejected(first.path, error.reason_code, f"{error.message} ({count})")
    if len(stack.order) < rules.min_slices:
        slices = f"{len(stack.order)} slice{'s' if len(stack.order) != 1 else ''}"
        return Rejected(first.path, TOO_FEW_SLICES, f"MR volume with {slices}, fewer than min_slices="
                        f"{rules.min_slices} ({count}): lower min_slices to use it")
    order = tuple(int(i) for i in stack.order)
    if first.number_of_frames > 1:
        return _make_series(first, [first], stack, order)
    return _make_series(first, [headers[i] for i in order], stack, None)


def series_stack(headers: Sequence[InstanceHeader]) -> StackGeometry:
    """Check and order the frames of one MR series (path order) as ``read.read_volume`` does with their files.

    Raises the reader's ``DicomError``: the first file whose frames cannot be placed, else ``stack_geometry``'s.
    """
    for header in headers:
        if header.geometry_error is not None:
            raise DicomError(header.geometry_error.reason_code, header.geometry_error.message)
    return stack_geometry([frame for header in headers for frame in header.frames], headers[0].single_slice_spacing)


def _is_localizer(headers: list[InstanceHeader], rules: SelectionRules) -> bool:
    """ImageType matches image_type_exclude, or (MR) SeriesDescription looks like a localizer."""
    patterns = [re.compile(p, re.IGNORECASE) for p in rules.image_type_exclude]
    if any(p.fullmatch(value) for h in headers for value in h.image_type for p in patterns):
        return True
    description = headers[0].series_description
    return kind_of(headers[0].modality) == "mri" and bool(re.search(rules.localizer_description, description, re.I))


def _selection_miss(description: str, rules: SelectionRules) -> str | None:
    """Why the series description fails the include/exclude rules, or None."""
    include, exclude = rules.series_description_include, rules.series_description_exclude
    if include and not any(re.search(p, description, re.IGNORECASE) for p in include):
        return f"series description '{description}' matches no series_description_include pattern"
    hit = next((p for p in exclude if re.search(p, description, re.IGNORECASE)), None)
    return f"series description '{description}' matches series_description_exclude '{hit}'" if hit else None


def _make_series(first: InstanceHeader, members: list[InstanceHeader], stack: StackGeometry | None,
                 frame_order: tuple[int, ...] | None) -> Series:
    """Assemble a ``Series`` from its first (path-sorted) header, its ordered member files and (MR) its stack."""
    frames = [frame for header in members for frame in header.frames]
    if frame_order is not None:
        frames = [frames[i] for i in frame_order]
    return Series(
        study_uid=first.study_uid, series_uid=first.series_uid, sop_instance_uid=first.sop_instance_uid,
        patient_id=first.patient_id,
        modality=first.modality, kind="xray" if stack is None else "mri", files=tuple(h.path for h in members),
        multiframe=frame_order is not None, rows=first.rows, columns=first.columns,
        num_slices=1 if stack is None else len(stack.order),
        pixel_spacing=first.pixel_spacing or (1.0, 1.0), pixel_spacing_source=first.pixel_spacing_source,
        slice_spacing=None if stack is None else stack.spacing[2],
        orientation=None if stack is None else first.orientation,
        positions=() if stack is None else tuple(frame.position for frame in frames), frame_order=frame_order,
        manufacturer=first.manufacturer, series_description=first.series_description, body_part=first.body_part,
        transfer_syntax=first.transfer_syntax, photometric=first.photometric, sop_class_uid=first.sop_class_uid,
        image_type=first.image_type,
    )
