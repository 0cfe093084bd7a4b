"""Resource bounds for hostile input: how much one DICOM file may make a process inflate, hold or decode.

A file over a bound is rejected with reason ``too_large`` before the expensive step (inflating, reading a
value, decoding pixels), so one crafted file cannot take a process's memory. The bounds come from the config
(``data.limits``); the defaults keep one X-ray decode (stored values, float64 modality LUT, float32 result:
about 8x the stored bytes) well under 2 GB while admitting any real CR/DX or MR file seen in practice.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import BinaryIO

from pipelines.dicom.reasons import TOO_LARGE, DicomError

MIB = 1 << 20
INFLATE_CHUNK = 1 << 20  # compressed bytes read per step while measuring a deflated data set


@dataclass(frozen=True)
class Limits:
    """Per-file bounds in bytes (see ``config.LimitsConfig`` for what each one covers)."""

    max_inflated_bytes: int = 256 * MIB
    max_pixel_bytes: int = 128 * MIB
    max_element_bytes: int = 128 * MIB


DEFAULT_LIMITS = Limits()


def pixel_bytes(rows: int, columns: int, frames: int, samples: int, bits_allocated: int) -> int:
    """Bytes of the decoded stored values: Rows x Columns x frames x samples x BitsAllocated / 8."""
    return (max(rows, 0) * max(columns, 0) * max(frames, 1) * max(samples, 1) * max(bits_allocated, 1) + 7) // 8


def pixel_bytes_problem(size: int, limits: Limits) -> str | None:
    """A one-line message when decoding ``size`` bytes of pixels is over the bound, else None."""
    if size <= limits.max_pixel_bytes:
        return None
    return (f"decoded pixels would need {size / MIB:.0f} MiB (Rows x Columns x frames x bits), over "
            f"data.limits.max_pixel_bytes={limits.max_pixel_bytes}: raise that limit if the image is genuine")


def element_problem(length: int, limits: Limits, what: str = "an element") -> str | None:
    """A one-line message when ``what`` declares more bytes than the element bound, else None."""
    if length <= limits.max_element_bytes:
        return None
    return (f"{what} declares {length / MIB:.0f} MiB, over data.limits.max_element_bytes="
            f"{limits.max_element_bytes}: raise that limit if the file is genuine")


def inflated_size_problem(fh: BinaryIO, start: int, limits: Limits) -> str | None:
    """Inflate the deflated data set that begins at ``start`` in ``fh`` chunk by chunk, keeping nothing;
    a one-line message when it inflates to more than ``max_inflated_bytes``, else None (also for a stream
    that is corrupt: the reader reports that with its own words)."""
    fh.seek(start)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    try:
        while chunk := fh.read(INFLATE_CHUNK):
            data = inflater.decompress(chunk, INFLATE_CHUNK)
            while True:
                total += len(data)
                if total > limits.max_inflated_bytes:
                    return (f"deflated data set inflates to over {limits.max_inflated_bytes / MIB:.0f} MiB "
                            f"(data.limits.max_inflated_bytes={limits.max_inflated_bytes}; a deflate bomb?): "
                            "raise that limit if the file is genuine")
                if not inflater.unconsumed_tail:
                    break
                data = inflater.decompress(inflater.unconsumed_tail, INFLATE_CHUNK)
            if inflater.eof:
                break
    except zlib.error:
        return None
    return None


def raise_if(problem: str | None) -> None:
    """Raise ``too_large`` with ``problem`` when there is one."""
    if problem is not None:
        raise DicomError(TOO_LARGE, problem)
