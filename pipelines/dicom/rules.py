"""The DICOM rule book: what scan (headers only) and the reader (pixels) both decide, written once.

- Photometric interpretation: MONOCHROME1/2 is read for every kind. Colour (RGB, YBR_*, PALETTE COLOR) is
  read only for X-rays and only in the ``gray`` colour mode (config key ``preprocess.xray.color``), which
  reads its BT.601 luminance; anything else is ``unsupported_photometric``.
- Transfer syntax: read when an installed pydicom plugin decodes it, else ``unsupported_transfer_syntax``
  with what to install (parsed from pydicom's ``missing_dependencies``) or how to convert the file.
- A file meta without a TransferSyntaxUID means the native syntax pydicom read the data set in.

``image_problem`` applies both rules in the order scan and reader check them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Literal

from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder
from pydicom.pixels.common import CoderBase
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from pipelines.dicom.reasons import UNSUPPORTED_PHOTOMETRIC, UNSUPPORTED_TRANSFER_SYNTAX, DicomError

Kind = Literal["xray", "mri"]
ColorMode = Literal["reject", "gray"]
COLOR_KEY = "preprocess.xray.color"  # the one config key that decides colour X-rays
MONOCHROME = frozenset({"MONOCHROME1", "MONOCHROME2"})
COLOUR = frozenset({"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420", "PALETTE COLOR"})
PLUGIN_PREFERENCE = ("pylibjpeg", "pyjpegls", "pillow", "gdcm")  # the install hint names the first missing one
PIP_NAMES = {"gdcm": "python-gdcm"}  # pydicom's requirement name -> the package pip installs
_IMAGES = {"xray": "X-ray images", "mri": "MRI volumes"}


def uid_name(uid: str) -> str:
    """The registered name of a UID (transfer syntax, SOP class), the UID itself when pydicom does not know it."""
    return UID(uid).name if uid else "(none)"


def transfer_syntax_of(ds: Dataset) -> UID:
    """The file meta's TransferSyntaxUID, else the native syntax pydicom read the data set in."""
    meta = getattr(ds, "file_meta", None)
    uid = str(meta.get("TransferSyntaxUID") or "").strip() if meta is not None else ""
    if uid:
        return UID(uid)
    implicit, little = getattr(ds, "original_encoding", (False, True))
    if implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRBigEndian if little is False else ExplicitVRLittleEndian


def photometric_problem(photometric: str, kind: Kind, color: ColorMode) -> str | None:
    """None when ``kind`` images of this photometric interpretation are read in colour mode ``color``, else
    a one-line message naming the fix."""
    if photometric in MONOCHROME:
        return None
    if photometric in COLOUR and kind == "xray":
        return None if color == "gray" else (f"colour X-ray ({photometric}): set {COLOR_KEY} to gray to read "
                                             "its luminance")
    return (f"photometric interpretation {photometric or '(none)'} is not supported for {_IMAGES[kind]}: only "
            "MONOCHROME1/MONOCHROME2" + (f" (colour with {COLOR_KEY}: gray)" if kind == "xray" else "")
            + "; export it as MONOCHROME2")


@lru_cache(maxsize=64)
def decoder_problem(uid: str, decoder: CoderBase | None = None) -> str | None:
    """None when an installed plugin decodes transfer syntax ``uid``, else a one-line message saying what to
    install or how to convert the file; ``decoder`` defaults to pydicom's registered decoder for the UID."""
    name = uid_name(uid)
    if decoder is None:
        try:
            decoder = get_decoder(uid)
        except NotImplementedError:
            named = name if name == uid else f"{name} ({uid})"
            return (f"transfer syntax {named} has no pixel decoder in pydicom: re-export the images as Explicit "
                    "VR Little Endian, JPEG, JPEG-LS, JPEG 2000 or RLE (e.g. `dcmconv +te` or `gdcmconv --raw`)")
    if decoder.is_available:
        return None
    return f"{name} pixel data needs a decoder plugin: {install_hint(decoder.missing_dependencies)}"


def install_hint(missing_dependencies: Sequence[str]) -> str:
    """``pip install`` commands from pydicom's ``missing_dependencies`` ('label - requires a>=1 and b'), the
    preferred plugin first and the others as alternatives."""
    ranked = sorted(missing_dependencies, key=_preference)
    commands = ["pip install " + " ".join(f"'{r}'" for r in reqs) for reqs in map(_requirements, ranked) if reqs]
    if not commands:
        return "install a pydicom pixel-data plugin (pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg)"
    return commands[0] + (f" (or: {'; '.join(commands[1:])})" if commands[1:] else "")


def _preference(missing_line: str) -> int:
    """Rank of a ``missing_dependencies`` line's plugin in ``PLUGIN_PREFERENCE`` (unknown plugins last)."""
    return next((i for i, plugin in enumerate(PLUGIN_PREFERENCE) if missing_line.startswith(plugin)), 99)


def _requirements(missing_line: str) -> list[str]:
    """'label - requires a>=1, b and c' -> ['a>=1', 'b', 'c'], with pip's package names."""
    _, _, requires = missing_line.partition(" - requires ")
    specs = [spec.strip() for spec in re.split(r",| and ", requires) if spec.strip()]
    return [_pip_name(spec) for spec in specs]


def _pip_name(spec: str) -> str:
    """A requirement with pydicom's package name replaced by the one pip installs ('gdcm>=3' -> 'python-gdcm>=3')."""
    name = re.split(r"[<>=!~ ;\[]", spec, maxsplit=1)[0]
    return PIP_NAMES.get(name, name) + spec[len(name):]


def image_problem(transfer_syntax: str, photometric: str, kind: Kind, color: ColorMode) -> DicomError | None:
    """The first rule a ``kind`` image breaks: a decoder for its transfer syntax, then its photometric
    interpretation in colour mode ``color``; None when it is read."""
    problem = decoder_problem(transfer_syntax)
    if problem is not None:
        return DicomError(UNSUPPORTED_TRANSFER_SYNTAX, problem)
    problem = photometric_problem(photometric, kind, color)
    return DicomError(UNSUPPORTED_PHOTOMETRIC, problem) if problem is not None else None
