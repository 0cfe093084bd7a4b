"""Pseudonymization: keyed hashes (HMAC-SHA256) instead of patient identifiers.

The key comes from an environment variable, else from a key file created once beside the outputs (mode 600).
The same key gives the same pseudonym across runs, so splits stay patient-grouped between ingests; without
the key a pseudonym cannot be tied back to a patient.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path


def load_or_create_key(key_env: str, key_file: Path) -> bytes:
    """Key from ``$key_env``, else from ``key_file`` (created with a random key when missing)."""
    from_env = os.environ.get(key_env)
    if from_env:
        return from_env.encode()
    if key_file.is_file():
        return key_file.read_bytes().strip()
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32).encode()
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key)
    return key


class Pseudonymizer:
    """Keyed hash of identifiers: ``pseudonym("PID123") -> "p_3f9a..."`` (16 hex digits)."""

    def __init__(self, key: bytes, prefix: str = "p_", digits: int = 16):
        if not key:
            raise ValueError("pseudonymization key is empty")
        self._key = key
        self.prefix = prefix
        self.digits = digits

    def __call__(self, identifier: str) -> str:
        digest = hmac.new(self._key, identifier.encode("utf-8"), hashlib.sha256).hexdigest()
        return self.prefix + digest[: self.digits]
