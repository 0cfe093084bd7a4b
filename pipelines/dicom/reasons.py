"""Reason codes for DICOM items that cannot be used, and the record that carries one.

Every rejected file or series becomes one ``Rejected`` row in ``errors.csv``: the item, a stable reason code,
and a one-line message that says what is wrong and how to fix it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

NOT_DICOM = "not_dicom"
TRUNCATED = "truncated"
NO_PIXEL_DATA = "no_pixel_data"
NOT_AN_IMAGE = "not_an_image"  # SR, SEG, PR, KO, RT objects
UNSUPPORTED_TRANSFER_SYNTAX = "unsupported_transfer_syntax"
UNSUPPORTED_PHOTOMETRIC = "unsupported_photometric"
UNSUPPORTED_MODALITY = "unsupported_modality"
INCONSISTENT_SERIES = "inconsistent_series"
TOO_FEW_SLICES = "too_few_slices"
LOCALIZER = "localizer"
NOT_SELECTED = "not_selected"  # excluded by the configured series selection rules
DECODE_ERROR = "decode_error"
UNREADABLE = "unreadable"  # permission denied, vanished file, dangling symlink, symlink loop, ...
NOT_A_FILE = "not_a_file"  # a FIFO, socket, device or folder where a file was expected: never opened
TOO_LARGE = "too_large"  # over a data.limits bound (inflated size, pixel bytes, element length): not decoded
BAD_FILE_NAME = "bad_file_name"  # ingest: a usable file whose name is not valid UTF-8 (the manifest cannot hold it)
BAD_LABEL = "bad_label"  # labels CSV: a label that is not 0/1/normal/abnormal
CONFLICTING_LABEL = "conflicting_label"  # labels CSV: one study with two different labels

ALL_REASONS = (
    NOT_DICOM, TRUNCATED, NO_PIXEL_DATA, NOT_AN_IMAGE, UNSUPPORTED_TRANSFER_SYNTAX, UNSUPPORTED_PHOTOMETRIC,
    UNSUPPORTED_MODALITY, INCONSISTENT_SERIES, TOO_FEW_SLICES, LOCALIZER, NOT_SELECTED, DECODE_ERROR, UNREADABLE,
    NOT_A_FILE, TOO_LARGE, BAD_FILE_NAME, BAD_LABEL, CONFLICTING_LABEL,
)


@dataclass(frozen=True)
class Rejected:
    """One item that could not be used: ``path`` (file or series folder), ``reason_code``, ``message``."""

    path: str
    reason_code: str
    message: str

    def as_row(self) -> dict[str, str]:
        return asdict(self)


class DicomError(Exception):
    """A DICOM item that cannot be used; carries a reason code for ``errors.csv``."""

    def __init__(self, reason_code: str, message: str):
        super().__init__(message)
        self.reason_code = reason_code
        self.message = message

# Deliberate exclusions (the item is fine, it is just not used); every other code is a failure, and a stage
# that records any failure exits with code 3.
EXCLUSIONS = frozenset({LOCALIZER, NOT_SELECTED, UNSUPPORTED_MODALITY, NOT_AN_IMAGE, TOO_FEW_SLICES})


def is_failure(reason_code: str) -> bool:
    return reason_code not in EXCLUSIONS
