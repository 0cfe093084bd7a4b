"""Keep one bad file's side effects to itself: exceptions from native decoders, warnings, native stderr noise.

- ``is_fatal``: the exceptions that must still stop a run (Ctrl-C, ``sys.exit``, generator close). Everything
  else a reader or decoder raises, ``BaseException`` subclasses from native code included (pylibjpeg-rle's
  ``pyo3_runtime.PanicException``), is one item's failure.
- ``captured_warnings``: pydicom and the decoders warn with the offending value in the text (a damaged
  header quotes raw bytes, names and IDs among them). Warnings raised while one item is read are recorded,
  never printed, and ``warning_note`` reduces them to VRs and element tags, never values.
- ``native_stderr_to_null``: a Rust panic prints its message (and, with ``RUST_BACKTRACE``, a backtrace) on
  file descriptor 2 before Python sees the exception; while pixels are decoded fd 2 points at a scratch
  file, so stderr keeps one line per bad item.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Iterator

_TAG = re.compile(r"\(([0-9A-Fa-f]{4}),\s*([0-9A-Fa-f]{4})\)")
_VR = re.compile(r"\bVR (?:of )?'?([A-Z]{2})\b")
_scratch: int | None = None  # one scratch file per process for native stderr


def is_fatal(exc: BaseException) -> bool:
    """True for what must stop the run: KeyboardInterrupt, SystemExit, GeneratorExit."""
    return isinstance(exc, KeyboardInterrupt | SystemExit | GeneratorExit)


@contextlib.contextmanager
def captured_warnings() -> Iterator[list[warnings.WarningMessage]]:
    """Record every warning raised inside (none is printed); yields the list of records."""
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        yield records


def warning_note(records: list[warnings.WarningMessage], limit: int = 3) -> str:
    """The warnings of one item as VRs and element tags only, e.g. 'warnings: VR UI, tag (0020,000D)'
    ('' without warnings; 'warnings: no VR or tag named' when their texts name neither)."""
    if not records:
        return ""
    found: list[str] = []
    for record in records:
        text = str(record.message)
        found += [f"VR {vr}" for vr in _VR.findall(text)]
        found += [f"tag ({g.upper()},{e.upper()})" for g, e in _TAG.findall(text)]
    unique = list(dict.fromkeys(found)) or ["no VR or tag named"]
    more = f" and {len(unique) - limit} more" if len(unique) > limit else ""
    return "warnings: " + ", ".join(unique[:limit]) + more


def _scratch_fd() -> int:
    global _scratch
    if _scratch is None:
        handle, path = tempfile.mkstemp(prefix="medvit-native-stderr-")
        os.unlink(path)
        _scratch = handle
    return _scratch


@contextlib.contextmanager
def native_stderr_to_null() -> Iterator[None]:
    """Point file descriptor 2 at a scratch file (emptied after use) while native code runs inside."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no usable fd 2 (embedded, closed): nothing to silence
        yield
        return
    scratch = _scratch_fd()
    os.dup2(scratch, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        with contextlib.suppress(OSError):
            os.ftruncate(scratch, 0)
            os.lseek(scratch, 0, os.SEEK_SET)
