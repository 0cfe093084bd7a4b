"""Fast path of ``headers.read_header``: the header fields of a plain DICOM file, read from its raw bytes.

pydicom stays the reference reader. ``read_plain`` walks the element structure itself and decodes only the
~25 values that scan needs, and it does so only where the result is certain to equal what pydicom's
``dcmread(stop_before_pixels=True)`` and ``Dataset.get`` give. Every file it is not sure about makes it return
None, and the caller reads that file with pydicom as before: no preamble, no (or a deflated or registered
private) transfer syntax, a command set, a VR that pydicom would have to guess or switch, an undefined-length
value that is not a sequence, enhanced multi-frame functional groups, a DICOMDIR, a needed element stored
with another VR than the dictionary's or whose value is not in its plain form (e.g. a DS that is not a
number, a multi-valued UID), text that needs a character set other than the default, Latin-1 or UTF-8,
non-default pydicom settings or hooks, and any element, sequence item or header that does not lie wholly
inside the file. Truncation thus needs no watching here: a file cut inside an element is never plain and is
judged by the full path (one cut between two elements reads as a file without pixel data on both paths); the
pixel data itself is checked by the caller, as for any file.

Plain values, as pydicom converts them (see ``pydicom.values``): US -> int, IS -> int, DS -> float or a list
of floats, UI -> stripped str, CS -> str without trailing spaces/NULs, LO/SH -> str with each value's trailing
spaces/NULs removed (multiple values joined by backslashes, as ``headers._text`` joins them); empty values
-> None (US, IS, DS) or "" (text). ``PlainHeader`` offers them through ``get`` and attributes, so the
functions that read pydicom data sets (``geometry.frame_geometries``, ``headers._header_from_dataset``) read
it unchanged.
"""

from __future__ import annotations

import math
import re
from struct import Struct
from typing import BinaryIO

import pydicom.uid
import pydicom.valuerep
from pydicom import config, hooks
from pydicom.charset import default_encoding
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.filereader import ENCODED_VR
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32

CHUNK = 16384  # first read: the header of a typical file fits (pydicom reads through an 8 KiB buffer)
DEFER_SIZE = 1 << 20  # values above 1 MiB are skipped (seeked over), not loaded, by pydicom (headers) and here
PREAMBLE_END = 132  # 128-byte preamble + b"DICM"
ITEM, ITEM_DELIMITER, SEQUENCE_DELIMITER = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
UNDEFINED_LENGTH = 0xFFFFFFFF
PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})  # where dcmread(stop_before_pixels=True) stops
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
IMPLICIT_LITTLE, EXPLICIT_BIG, DEFLATED = "1.2.840.10008.1.2", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"
KEYWORDS = (
    "SpecificCharacterSet", "ImageType", "SOPClassUID", "Modality", "Manufacturer", "SeriesDescription", "PatientID",
    "BodyPartExamined", "SliceThickness", "SpacingBetweenSlices", "ImagerPixelSpacing", "NominalScannedPixelSpacing",
    "StudyInstanceUID", "SeriesInstanceUID", "InstanceNumber", "ImagePositionPatient", "ImageOrientationPatient",
    "FrameOfReferenceUID", "SamplesPerPixel", "PhotometricInterpretation", "NumberOfFrames", "Rows", "Columns",
    "PixelSpacing", "BitsAllocated", "SOPInstanceUID",
)
META_KEYWORDS = ("FileMetaInformationGroupLength", "MediaStorageSOPClassUID", "TransferSyntaxUID")
# Present in a file -> read with pydicom (functional groups, a DICOMDIR's records).
DECLINED = frozenset(tag_for_keyword(k) for k in (
    "PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence", "DirectoryRecordSequence"))
_FIELDS = {tag_for_keyword(k): (k, dictionary_VR(k).encode()) for k in KEYWORDS}
_META_FIELDS = {tag_for_keyword(k): (k, dictionary_VR(k).encode()) for k in META_KEYWORDS}
_KNOWN_VRS = frozenset(ENCODED_VR)
_LONG_VRS = frozenset(vr.encode() for vr in EXPLICIT_VR_LENGTH_32)
_EXPLICIT = {True: Struct("<HH2sH"), False: Struct(">HH2sH")}
_IMPLICIT = {True: Struct("<HHL"), False: Struct(">HHL")}
_LENGTH = {True: Struct("<L"), False: Struct(">L")}
_US = {True: Struct("<H"), False: Struct(">H")}
_TAG = {True: Struct("<HH"), False: Struct(">HH")}
_ENCODINGS = {"": default_encoding, "ISO_IR 6": default_encoding, "ISO_IR 100": "latin_1", "ISO_IR 192": "UTF8"}
_IS = re.compile(r" *[+-]?[0-9]+")  # after pydicom's removal of trailing spaces/NULs
_DS = re.compile(r" *[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)? *")
_UID = re.compile(r"[0-9]+(?:\.[0-9]+)+")


class Decline(Exception):
    """The file is not plain: read it with pydicom."""


class PlainHeader:
    """The values of a plain file's needed elements, read like a pydicom ``Dataset`` (``get``, attributes).

    ``stop`` is where pydicom's header read stops (the pixel data element, or the end of the file);
    ``original_encoding`` is ``(implicit VR, little endian)`` as on a pydicom data set; ``longest`` is the
    largest defined length of any element walked (for ``limits.Limits.max_element_bytes``).
    """

    __slots__ = ("values", "stop", "original_encoding", "transfer_syntax", "longest")

    def __init__(self, values: dict, stop: int, implicit: bool, little: bool, transfer_syntax: str, longest: int = 0):
        self.values, self.stop = values, stop
        self.original_encoding, self.transfer_syntax = (implicit, little), transfer_syntax
        self.longest = longest

    def get(self, keyword: str, default: object = None) -> object:
        return self.values.get(keyword, default)

    def __contains__(self, keyword: str) -> bool:
        return keyword in self.values

    def __getattr__(self, keyword: str) -> object:
        try:
            return object.__getattribute__(self, "values")[keyword]
        except KeyError:
            raise AttributeError(keyword) from None


def pydicom_defaults() -> bool:
    """Whether pydicom's settings and hooks are those this module reproduces (else every file is declined)."""
    settings = config.settings
    return (not (config.use_DS_numpy or config.use_IS_numpy or config.use_none_as_empty_text_VR_value)
            and pydicom.valuerep.DSclass is pydicom.valuerep.DSfloat and config.assume_implicit_vr_switch
            and settings.reading_validation_mode != config.RAISE and settings.infer_sq_for_un_vr
            and hooks.hooks.raw_element_vr is hooks.raw_element_vr
            and hooks.hooks.raw_element_value is hooks.raw_element_value and not pydicom.uid.PrivateTransferSyntaxes)


def read_plain(fh: BinaryIO, size: int, head: bytes) -> PlainHeader | None:
    """The header of a plain file whose first bytes ``head`` (from offset 0) were read from ``fh``; None when
    the file is not plain (see the module docstring). ``fh`` is left at an unspecified position."""
    if len(head) < PREAMBLE_END or head[128:132] != b"DICM" or not pydicom_defaults():
        return None
    try:
        return _Parser(fh, size, head).header()
    except Exception:  # Decline; or anything unforeseen (an OSError too): the pydicom path decides
        return None


def _uppercase_vr(buf: bytes, at: int) -> bool:
    """pydicom's test for an explicit VR at ``buf[at:at + 2]`` (``filereader._is_implicit_vr``)."""
    return 0x40 < buf[at] < 0x5B and 0x40 < buf[at + 1] < 0x5B


class _Parser:
    """Walks the elements of one file through a window of its bytes (read in chunks, large values skipped)."""

    def __init__(self, fh: BinaryIO, size: int, head: bytes):
        self.fh, self.size, self.buf, self.base = fh, size, head, 0
        self.longest = 0  # largest defined element length seen

    def view(self, pos: int, n: int) -> int:
        """Index in ``self.buf`` of the bytes ``[pos, pos + n)`` of the file, reading them when needed."""
        if pos + n > self.size:
            raise Decline  # pydicom would read past the end of the file: the full path decides what it is
        start = pos - self.base
        if start < 0 or start + n > len(self.buf):
            self.fh.seek(pos)
            self.buf, self.base, start = self.fh.read(max(n, CHUNK)), pos, 0
            if len(self.buf) < n:
                raise Decline  # the file shrank while being read
        return start

    def header(self) -> PlainHeader:
        meta: dict[int, tuple[bytes, bytes]] = {}
        start = self.meta(PREAMBLE_END, meta)
        syntax = _uid(meta, 0x00020010)
        if syntax is None or not _UID.fullmatch(syntax) or syntax == DEFLATED:
            raise Decline
        if _uid(meta, 0x00020002) == MEDIA_STORAGE_DIRECTORY:
            raise Decline
        implicit, little = syntax == IMPLICIT_LITTLE, syntax != EXPLICIT_BIG
        at = self.view(start, 8)
        if self.buf[at] == 0 and self.buf[at + 1] == 0 or _uppercase_vr(self.buf, at + 4) == implicit:
            raise Decline  # a command set (group 0000), or pydicom would switch between implicit and explicit VR
        found: dict[int, tuple[bytes, bytes]] = {}
        stop = self.walk(start, None, implicit, little, found)
        values = _values(found, little)
        if "Rows" not in values or "Columns" not in values or values.get("SOPClassUID") == MEDIA_STORAGE_DIRECTORY:
            raise Decline  # the geometry functions would fail on a missing attribute with pydicom's words
        for keyword, count in (("ImagePositionPatient", 3), ("ImageOrientationPatient", 6)):
            value = values.get(keyword)
            if value is not None and not (isinstance(value, list) and len(value) == count):
                raise Decline  # the geometry error would quote pydicom's repr of the value
        return PlainHeader(values, stop, implicit, little, syntax, self.longest)

    def meta(self, pos: int, found: dict) -> int:
        """Walk the file meta group (explicit VR little endian); return where the data set starts."""
        at = self.view(pos, 8)
        first = self.buf[at] | self.buf[at + 1] << 8, self.buf[at + 2] | self.buf[at + 3] << 8
        if first not in ((2, 0), (2, 1)) or self.buf[at + 4:at + 6] != (b"UL" if first == (2, 0) else b"OB"):
            raise Decline  # pydicom converts the first meta element at once; these two convert without surprises
        header, long_length = _EXPLICIT[True], _LENGTH[True]
        while True:
            if self.size - pos < 8:
                raise Decline
            at = self.view(pos, min(12, self.size - pos))
            group, element, vr, length = header.unpack_from(self.buf, at)
            if vr in _LONG_VRS:
                if self.size - pos < 12:
                    raise Decline
                length, start = long_length.unpack_from(self.buf, at + 8)[0], pos + 12
            else:
                start = pos + 8
            if group != 2:
                return pos
            if vr not in _KNOWN_VRS or length == UNDEFINED_LENGTH:
                raise Decline
            if element == 0 and (vr != b"UL" or length != 4):
                raise Decline  # pydicom reads the group length as UL and would fail
            pos = self.value(group << 16 | element, vr, start, length, found, _META_FIELDS)

    def value(self, tag: int, vr: bytes | None, start: int, length: int, found: dict | None,
              fields: dict[int, tuple[str, bytes]]) -> int:
        """Keep a needed value (top level or meta: ``found`` given); return the offset just past it."""
        end = start + length
        if end > self.size:
            raise Decline
        self.longest = max(self.longest, length)
        if found is not None:
            field = fields.get(tag)
            if field is not None:
                if vr is not None and vr != field[1] or length > DEFER_SIZE:
                    raise Decline  # another VR than the dictionary's: pydicom converts by the file's VR
                at = self.view(start, length)
                found[tag] = field[1], self.buf[at:at + length]
            elif tag in DECLINED or tag >> 16 == 2 and fields is _FIELDS:
                raise Decline  # also file meta elements inside the data set
        return end

    def walk(self, pos: int, end: int | None, implicit: bool, little: bool, found: dict | None) -> int:
        """Walk a data set as pydicom's ``read_dataset`` does; return the offset where it stops.

        At the top level (``found`` given) it stops at the pixel data or the end of the file; a sequence item
        ends at ``end`` (defined length) or after its item delimiter (``end`` None).
        """
        header = _IMPLICIT[little] if implicit else _EXPLICIT[little]
        long_length = _LENGTH[little]
        size = self.size
        while end is None or pos < end:
            if size - pos < 8:
                if found is not None and pos == size:
                    return pos  # the data set ends with the file, without pixel data
                raise Decline
            at = pos - self.base
            if at < 0 or at + 12 > len(self.buf):
                at = self.view(pos, min(12, size - pos))
            if implicit:
                group, element, length = header.unpack_from(self.buf, at)
                vr, start = None, pos + 8
            else:
                group, element, vr, length = header.unpack_from(self.buf, at)
                if vr in _LONG_VRS:
                    if size - pos < 12:
                        raise Decline
                    length, start = long_length.unpack_from(self.buf, at + 8)[0], pos + 12
                elif vr in _KNOWN_VRS:
                    start = pos + 8
                elif not (group == 0xFFFE and element == 0xE00D and vr == b"\0\0"):
                    raise Decline  # pydicom would guess: implicit VR, or a 2-byte length
            tag = group << 16 | element
            if group == 0xFFFE:  # pydicom reads an item delimiter in implicit VR, whatever the encoding
                if tag == ITEM_DELIMITER and end is None and found is None and (implicit or vr == b"\0\0"):
                    return pos + 8
                raise Decline
            if found is not None and tag in PIXEL_TAGS:
                return pos
            if length == UNDEFINED_LENGTH:
                if tag in DECLINED or not self.is_sequence(tag, vr, start, little):
                    raise Decline  # pydicom scans such a value for a delimiter; rare, left to it
                pos = self.sequence(start, implicit, little)
            else:
                pos = self.value(tag, vr, start, length, found, _FIELDS)
        if pos != end:
            raise Decline  # the last element of a defined-length item runs past the item
        return pos

    def is_sequence(self, tag: int, vr: bytes | None, start: int, little: bool) -> bool:
        """Whether pydicom reads an undefined-length element as a sequence (explicit UN is not walked here)."""
        if vr is not None:
            return vr == b"SQ"
        try:
            return dictionary_VR(tag) == "SQ"
        except KeyError:  # pydicom looks ahead for an item tag
            group, element = _TAG[little].unpack_from(self.buf, self.view(start, 4))
            return group << 16 | element == ITEM

    def sequence(self, pos: int, implicit: bool, little: bool) -> int:
        """Walk the items of an undefined-length sequence; return the offset past its delimiter."""
        header = _IMPLICIT[little]
        while True:
            at = self.view(pos, 8)
            group, element, length = header.unpack_from(self.buf, at)
            tag = group << 16 | element
            if tag == SEQUENCE_DELIMITER:
                return pos + 8
            if tag != ITEM:
                raise Decline
            start = pos + 8
            end = None if length == UNDEFINED_LENGTH else start + length
            if end is not None and end > self.size:
                raise Decline
            if not implicit and end != start:  # pydicom switches an item to implicit VR when it looks so
                at = self.view(start, 6)
                if not _uppercase_vr(self.buf, at + 4):
                    if end is None and header.unpack_from(self.buf, self.view(start, 8))[:2] == (0xFFFE, 0xE00D):
                        pos = start + 8  # an empty item: implicit or explicit, it ends at its delimiter
                        continue
                    raise Decline
            pos = self.walk(start, end, implicit, little, None)


def _uid(found: dict, tag: int) -> str | None:
    """A single-valued UI value as pydicom gives it (None when absent)."""
    if tag not in found:
        return None
    text = found[tag][1].decode(default_encoding).rstrip("\0 ")
    if "\\" in text:
        raise Decline
    return text.strip()


def _values(found: dict, little: bool) -> dict[str, object]:
    """The needed values by keyword, converted as pydicom converts them (see the module docstring)."""
    charset = found.get(0x00080005)
    name = charset[1].decode(default_encoding).rstrip(" \x00") if charset else ""
    if name not in _ENCODINGS:
        raise Decline
    encoding = _ENCODINGS[name]
    values: dict[str, object] = {}
    for tag, (vr, raw) in found.items():
        keyword = _FIELDS[tag][0]
        if not raw:
            values[keyword] = None if vr in (b"US", b"IS", b"DS") else ""
        elif vr == b"US":
            if len(raw) != 2:
                raise Decline
            values[keyword] = _US[little].unpack(raw)[0]
        elif vr == b"UI":
            values[keyword] = _uid(found, tag)
        elif vr == b"CS":
            values[keyword] = raw.decode(default_encoding).rstrip(" \x00")
        elif vr in (b"LO", b"SH"):
            if b"\x1b" in raw:
                raise Decline  # code extensions (ISO 2022 escape sequences)
            try:
                text = raw.decode(encoding)
            except UnicodeDecodeError:
                raise Decline from None  # pydicom would warn and replace characters
            values[keyword] = "\\".join(v.rstrip("\0 ") for v in text.split("\\"))
        elif vr == b"IS":
            text = raw.decode(default_encoding).rstrip(" \x00")
            if not _IS.fullmatch(text):
                raise Decline
            values[keyword] = int(text)
        elif vr == b"DS":
            values[keyword] = _decimal_string(raw)
        else:
            raise Decline  # no such VR among KEYWORDS
    return values


def _decimal_string(raw: bytes) -> float | list[float]:
    """A DS value whose every number is plain and finite, as pydicom's DSfloat(s) (plain floats here)."""
    items = raw.decode(default_encoding).strip().rstrip(" \x00").split("\\")
    numbers = []
    for item in items:
        if not _DS.fullmatch(item):
            raise Decline
        number = float(item)
        if not math.isfinite(number):
            raise Decline
        numbers.append(number)
    return numbers[0] if len(numbers) == 1 else numbers
