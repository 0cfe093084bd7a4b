"""The pixel data element of one DICOM file, checked without reading the pixels.

After the header read stops before the pixel data, the element's declared length (or, for encapsulated data,
its fragment items up to the sequence delimiter) is checked against the file size and ``limits.Limits``, and
any elements after it must end exactly at the end of the file: a truncated copy is found here, not when a
training epoch decodes it.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

from pydicom import dcmread

from pipelines.dicom.limits import DEFAULT_LIMITS, Limits, element_problem
from pipelines.dicom.reasons import DECODE_ERROR, TOO_LARGE, TRUNCATED

PIXEL_DATA = 0x7FE00010
ITEM, SEQUENCE_DELIMITER = 0xFFFEE000, 0xFFFEE0DD
UNDEFINED_LENGTH = 0xFFFFFFFF
LONG_LENGTH_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}


def deflated_has_pixel_data(fh: BinaryIO) -> bool:
    """Deflated files are inflated in memory, so pixel data presence is found with a deferred full read."""
    fh.seek(0)
    return "PixelData" in dcmread(fh, defer_size=256)


def check_pixel_data(fh: BinaryIO, offset: int, size: int, encoding: tuple[bool, bool], expected_bytes: int,
                     limits: Limits = DEFAULT_LIMITS) -> tuple[tuple[str, str] | None, bool]:
    """Check the pixel data element that the header read stopped at; return (problem, has_pixel_data).

    ``encoding``: the data set's (implicit VR, little endian); ``expected_bytes``: what native (uncompressed)
    pixel data needs according to the header (0 when unknown)."""
    implicit, little = encoding
    endian = "<" if little else ">"
    fh.seek(offset)
    raw = fh.read(12)
    if len(raw) < 8:
        return None, False
    group, element = struct.unpack(f"{endian}HH", raw[:4])
    tag = group << 16 | element
    if tag != PIXEL_DATA:  # no pixel data, or only float/double float pixel data
        return None, False
    explicit_vr = not implicit and b"AA" <= raw[4:6] <= b"ZZ"  # some writers switch to implicit VR here
    header_length = 12 if explicit_vr else 8
    if len(raw) < header_length:
        return (TRUNCATED, "file ends inside the pixel data header (truncated copy?): copy it again"), True
    (length,) = struct.unpack(f"{endian}L", raw[8:12] if explicit_vr else raw[4:8])
    value_start = offset + header_length
    if length == UNDEFINED_LENGTH:
        problem, end = _check_fragments(fh, value_start, size, endian)
        too_large = element_problem(end - value_start, limits, "the compressed pixel data")
        if problem is None and too_large is not None:
            return (TOO_LARGE, too_large), True
        return problem or _check_trailing(fh, end, size, implicit, endian), True
    if value_start + length > size:
        message = f"pixel data declares {length} bytes but the file ends {value_start + length - size} bytes early"
        return (TRUNCATED, f"{message} (truncated copy?): copy it again"), True
    too_large = element_problem(length, limits, "the pixel data")
    if too_large is not None:
        return (TOO_LARGE, too_large), True
    if expected_bytes and length < expected_bytes:
        message = f"pixel data has {length} bytes but the header (rows, columns, frames, bits) needs {expected_bytes}"
        return (DECODE_ERROR, f"{message}: the file is corrupt; export it again"), True
    return _check_trailing(fh, value_start + length, size, implicit, endian), True


def _check_fragments(fh: BinaryIO, position: int, size: int, endian: str) -> tuple[tuple[str, str] | None, int]:
    """Walk the items of encapsulated pixel data up to the sequence delimiter without reading fragments;
    return (problem, offset just past the delimiter)."""
    while True:
        fh.seek(position)
        raw = fh.read(8)
        if len(raw) < 8:
            return (TRUNCATED, "file ends inside the compressed pixel data (truncated copy?): copy it again"), size
        group, element, length = struct.unpack(f"{endian}HHL", raw)
        tag = group << 16 | element
        if tag == SEQUENCE_DELIMITER:
            return None, position + 8
        if tag != ITEM or length == UNDEFINED_LENGTH:
            return (DECODE_ERROR, "compressed pixel data is malformed (bad fragment item): the file is corrupt"), size
        position += 8 + length
        if position > size:
            message = "compressed pixel data runs past the end of the file (truncated copy?): copy it again"
            return (TRUNCATED, message), size


def _check_trailing(fh: BinaryIO, position: int, size: int, implicit: bool, endian: str) -> tuple[str, str] | None:
    """Check that elements after the pixel data (e.g. trailing padding) end exactly at the end of the file."""
    while position < size:
        fh.seek(position)
        raw = fh.read(12)
        long_form = not implicit and raw[4:6] in LONG_LENGTH_VRS
        header_length = 12 if long_form else 8
        if len(raw) < header_length:
            break
        if implicit or long_form:
            (length,) = struct.unpack(f"{endian}L", raw[header_length - 4:header_length])
        else:
            (length,) = struct.unpack(f"{endian}H", raw[6:8])
        if length == UNDEFINED_LENGTH:
            return None  # a sequence after the pixel data: rare, not walked
        position += header_length + length
    if position != size:
        return TRUNCATED, "file ends inside an element after the pixel data (truncated copy?): copy it again"
    return None
