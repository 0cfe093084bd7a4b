"""Output folders: created up front, or one line saying why they cannot be used."""

from __future__ import annotations

import os
from pathlib import Path

from .config import ConfigError


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
