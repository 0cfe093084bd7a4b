"""Files and folders the pipeline writes: atomic replacement, and output folders checked up front."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from pipelines.config import ConfigError


def writable_folder(path: Path, what: str) -> None:
    """Create the output folder ``path`` (named ``what`` in messages); ConfigError (one line) when it is a
    file, cannot be created or cannot be written."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{what} '{path}' is a file, not a folder: pass a folder (it is created if missing)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{what} '{path}' cannot be created ({exc.strerror or exc}): pass a folder you can "
                          "write to") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} '{path}' is not writable: pass a folder you can write to")


def atomic_write(path: Path, write: Any, durable: bool = True) -> None:
    """Call ``write(tmp_path)`` and rename the result to ``path``: readers see the old file or the new one.

    ``durable`` also fsyncs the file and the folder, so the new file survives a power cut (checkpoints,
    manifests); a recomputable cache entry can skip that cost.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        if durable:
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
        if durable:
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
