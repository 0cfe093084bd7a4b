"""A seeded, reproducible corpus of hostile input, made from real DICOM files, for `medvit score` / `ingest`.

Seeds: pydicom's test files (by exact name), pydicom-data's real CR and MR files (chest RG1, extremity RG3,
MR2) and a small synthetic X-ray cohort of our own (``write_cohort``). Mutations of each seed: header and
pixel byte flips, truncations, huge length fields, odd Rows/Columns/BitsAllocated/NumberOfFrames, garbage
PhotometricInterpretation, a 10,000-deep sequence, a wrong transfer syntax UID, corrupt RLE (a mutation the
installed decoder panics on), SR and SEG objects, and one deflate bomb (a ~1 MB file whose pixel data
inflates to 1 GiB). Special files: a FIFO, a socket, a symlink loop, a dangling symlink, an unreadable file
(mode 000), a folder named ``x.dcm`` (with an image inside), an empty file, a real DICOMDIR index and images
named ``DICOMDIR``/``dicomdir``. Odd names: spaces, bytes that are not UTF-8, non-ASCII letters.

Mutants of X-ray seeds keep their UIDs (copies that share a SeriesInstanceUID, as damaged exports do); mutants
of other seeds get fresh UIDs, so each is its own series and gets its own errors.csv row. Same ``seed``, same
bytes. ``Corpus`` lists what was written and the identities of the seeds (for the PHI checks).
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
    generate_uid,
)

from pipelines.dicom.isolation import native_stderr_to_null
from pipelines.dicom.synth import write_cohort

PYDICOM_SEEDS = ("CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "JPEG2000.dcm", "image_dfl.dcm")
REAL_SEEDS = ("RG1_UNCI.dcm", "RG3_UNCI.dcm", "MR2_UNCI.dcm")  # pydicom-data (installed, found by exact name)
LARGE_KINDS = ("header_flip", "truncate", "odd_geometry")  # the only mutations of the large real seeds when small
PIXEL_TAG = b"\xe0\x7f\x10\x00"
BOMB_ROWS, BOMB_COLUMNS = 16384, 32768  # x 16 bits = 1 GiB of pixel data
DEEP = 10_000
Mutation = Callable[[bytes, random.Random], bytes]


@dataclass
class Corpus:
    """What ``build`` wrote: every input path (as the scanner will name it), by kind, and the seeds' PHI."""

    root: Path
    files: dict[str, str] = field(default_factory=dict)  # path -> what it is (mutation or special kind)
    identities: set[str] = field(default_factory=set)  # patient names/IDs of every seed (>= 4 characters)
    dicomdir_index: str = ""  # the DICOMDIR index file (skipped: neither scored nor an error)
    unreadable: str = ""  # the mode-000 file

    def add(self, path: Path | str, kind: str) -> None:
        self.files[os.fsdecode(path)] = kind


# ---- seeds ----------------------------------------------------------------------------------------------
def seed_paths(synthetic: Path) -> dict[str, Path]:
    """name -> file of every seed: pydicom's and pydicom-data's by exact name, then our synthetic X-rays."""
    seeds = {name: Path(get_testdata_file(name)) for name in PYDICOM_SEEDS + REAL_SEEDS}
    for i, path in enumerate(sorted(p for p in (synthetic / "dicom").rglob("*.dcm"))):
        seeds[f"synth{i}"] = path
    return seeds


def identities_of(paths: list[Path], synthetic: Path) -> set[str]:
    """Patient names (and their ^-parts), IDs and birth dates of the seeds, >= 4 characters."""
    found: set[str] = set()
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        for value in (str(ds.get("PatientName", "")), str(ds.get("PatientID", ""))):
            found |= {value, *value.split("^")}
    lines = (synthetic / "identities.csv").read_text().splitlines()[1:]
    for line in lines:
        found |= {part for cell in line.split(",")[1:] for part in (cell, *cell.split("^"))}
    return {v.strip() for v in found if len(v.strip()) >= 4 and any(c.isalnum() for c in v)}


def is_xray(data: bytes) -> bool:
    ds = pydicom.dcmread(BytesIO(data), stop_before_pixels=True)
    return str(ds.get("Modality", "")) in ("CR", "DX")


def uid(rng: random.Random) -> str:
    """A UID drawn from ``rng`` (reproducible)."""
    return generate_uid(entropy_srcs=[str(rng.getrandbits(64))])


def fresh_uids(data: bytes, rng: random.Random) -> bytes:
    """The same file with new Study/Series/SOP Instance UIDs (so it is a series of its own)."""
    ds = pydicom.dcmread(BytesIO(data))
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = uid(rng), uid(rng), uid(rng)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


# ---- byte-level mutations ----------------------------------------------------------------------------------
def pixel_offset(data: bytes) -> int:
    """Offset of the (last) pixel data element, or the end of the file."""
    found = data.rfind(PIXEL_TAG)
    return found if found > 132 else len(data)


def header_flip(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        out[rng.randrange(132, pixel_offset(data))] ^= 1 << rng.randrange(8)
    return bytes(out)


def pixel_flip(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    start = min(pixel_offset(data) + 12, len(data) - 1)
    for _ in range(rng.randint(1, 64)):
        out[rng.randrange(start, len(data))] = rng.randrange(256)
    return bytes(out)


def truncate(data: bytes, rng: random.Random) -> bytes:
    return data[:rng.randrange(1, len(data))]


def huge_length(data: bytes, rng: random.Random) -> bytes:
    """Set a length field to a huge value: the pixel data's, or a random element's in the header."""
    out = bytearray(data)
    if rng.random() < 0.5 and pixel_offset(data) < len(data):
        at = pixel_offset(data) + 8  # explicit VR OB/OW: tag, VR, 2 reserved, 4-byte length
    else:
        at = rng.randrange(132, max(133, pixel_offset(data) - 4))
    out[at:at + 4] = struct.pack("<L", rng.choice([0x7FFFFFF0, 0xFFFFFFF0, 0x40000000, len(data) * 4]))
    return bytes(out)


# ---- data-set-level mutations ------------------------------------------------------------------------------
def _edited(data: bytes, edit: Callable[[Dataset], None]) -> bytes:
    ds = pydicom.dcmread(BytesIO(data))
    edit(ds)
    out = BytesIO()
    ds.save_as(out)
    return out.getvalue()


def odd_geometry(data: bytes, rng: random.Random) -> bytes:
    keyword, value = rng.choice([("Rows", 0), ("Rows", 65535), ("Columns", 1), ("Columns", 65535),
                                 ("BitsAllocated", 0), ("BitsAllocated", 7), ("BitsAllocated", 64),
                                 ("NumberOfFrames", "0"), ("NumberOfFrames", "-3"), ("NumberOfFrames", "99999"),
                                 ("SamplesPerPixel", 3), ("BitsStored", 40)])
    return _edited(data, lambda ds: setattr(ds, keyword, value))


def garbage_photometric(data: bytes, rng: random.Random) -> bytes:
    value = rng.choice(["GARBAGE", "", "MONOCHROME3", "RGB", "YBR_FULL_422", "PALETTE COLOR", "\\\\\\"])
    return _edited(data, lambda ds: setattr(ds, "PhotometricInterpretation", value))


def wrong_syntax(data: bytes, rng: random.Random) -> bytes:
    """The same data set bytes behind a file meta that names another transfer syntax."""
    uid = rng.choice([ImplicitVRLittleEndian, ExplicitVRBigEndian, JPEGBaseline8Bit, RLELossless,
                      DeflatedExplicitVRLittleEndian, "1.2.3.4.5.6", "not.a.uid"])
    (group_length,) = struct.unpack("<L", data[140:144])
    body = data[144 + group_length:]
    meta = pydicom.dcmread(BytesIO(data), stop_before_pixels=True).file_meta
    meta.TransferSyntaxUID = uid
    out = BytesIO()
    out.write(data[:132])
    write_file_meta_info(out, meta, enforce_standard=True)
    return out.getvalue() + body


def deep_sequence(data: bytes, rng: random.Random) -> bytes:
    """A 10,000-level nested sequence inserted before the pixel data."""
    opening = b"\x40\x00\x75\x02SQ\x00\x00\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    closing = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00" + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    at = pixel_offset(data)
    return data[:at] + opening * DEEP + closing * DEEP + data[at:]


def rle_panic(data: bytes, rng: random.Random) -> bytes:
    """The image as RLE with its segments damaged so that the installed RLE decoder fails (a panic where the
    decoder panics: the mutation seeds are tried in order until one does)."""
    ds = pydicom.dcmread(BytesIO(data))
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.decompress(generate_instance_uid=False)
    ds.compress(RLELossless, generate_instance_uid=False)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    for attempt in range(200):
        r = random.Random(rng.random() + attempt)
        damaged = bytearray(frame)
        for _ in range(20):
            damaged[r.randrange(64, len(damaged))] = r.randrange(256)
        ds.PixelData = encapsulate([bytes(damaged)])
        if _fails_natively(ds):
            break
    out = BytesIO()
    ds.save_as(out)
    return out.getvalue()


def _fails_natively(ds: Dataset) -> bool:
    """Whether decoding raises something that is not an ``Exception`` (e.g. pyo3's PanicException)."""
    try:
        with native_stderr_to_null():
            ds.pixel_array  # noqa: B018 - decoding is the point
    except Exception:
        return False
    except BaseException as exc:  # what we look for
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        return True
    return False


MUTATIONS: dict[str, Mutation] = {
    "header_flip": header_flip, "pixel_flip": pixel_flip, "truncate": truncate, "huge_length": huge_length,
    "odd_geometry": odd_geometry, "garbage_photometric": garbage_photometric, "wrong_syntax": wrong_syntax,
}


def deflate_bomb(path: Path, rng: random.Random) -> Path:
    """A CR whose 1 GiB of pixel data (zeros) is deflated to about 1 MB, written without holding 1 GiB."""
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = ComputedRadiographyImageStorage, uid(rng)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uid(rng), uid(rng)
    ds.Modality, ds.PatientID = "CR", "BOMB0001"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = BOMB_ROWS, BOMB_COLUMNS, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    size = BOMB_ROWS * BOMB_COLUMNS * 2
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as out:
        out.write(b"\0" * 128 + b"DICM")
        write_file_meta_info(out, meta)
        packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        out.write(packer.compress(body.getvalue() + PIXEL_TAG + b"OW\0\0" + struct.pack("<L", size)))
        zeros = bytes(1 << 20)
        for _ in range(size >> 20):
            out.write(packer.compress(zeros))
        out.write(packer.flush())
    return path


def seg_object(path: Path, rng: random.Random) -> Path:
    """A minimal segmentation object (modality SEG) with pixel data: not an image to classify."""
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.66.4", uid(rng)
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = uid(rng), uid(rng), "SEG"
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.BitsAllocated, ds.BitsStored = 1, "MONOCHROME2", 1, 1
    ds.HighBit, ds.PixelRepresentation, ds.PixelData = 0, 0, bytes(8)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return path


# ---- the corpus ----------------------------------------------------------------------------------------------
def build(root: Path, *, per_kind: int, seed: int = 0, bomb: bool = True) -> Corpus:
    """Write the corpus under ``root``: ``per_kind`` mutants per seed and mutation, plus the fixed cases."""
    rng = random.Random(seed)
    synthetic = root.parent / f"{root.name}_seeds"
    if not (synthetic / "cohort.json").is_file():
        write_cohort(synthetic, "xray", studies=2, seed=seed + 7, image_size=48, difficulty=0.2)
    seeds = seed_paths(synthetic)
    corpus = Corpus(root=root, identities=identities_of(list(seeds.values()), synthetic))
    mutants = root / "mutants"
    mutants.mkdir(parents=True, exist_ok=True)
    for name, path in seeds.items():
        original = path.read_bytes()
        xray = is_xray(original)
        stem = name.removesuffix(".dcm").lower()
        large = name in REAL_SEEDS
        target = mutants / f"{stem}_seed.dcm"
        target.write_bytes(original if xray else fresh_uids(original, rng))
        corpus.add(target, "seed")
        for kind, mutate in MUTATIONS.items():
            if large and per_kind == 1 and kind not in LARGE_KINDS:
                continue
            for i in range(max(1, per_kind // 3) if large else per_kind):
                data = mutate(original if xray else fresh_uids(original, rng), rng)
                target = mutants / f"{stem}_{kind}_{i}.dcm"
                target.write_bytes(data)
                corpus.add(target, kind)
    _fixed_cases(corpus, seeds, rng, bomb)
    _special_files(corpus, seeds)
    _odd_names(corpus, seeds)
    return corpus


def _fixed_cases(corpus: Corpus, seeds: dict[str, Path], rng: random.Random, bomb: bool) -> None:
    """One of each case that is not a random mutation."""
    fixed = corpus.root / "fixed"
    fixed.mkdir(parents=True, exist_ok=True)
    synth = seeds["synth0"].read_bytes()
    (fixed / "deep_sequence.dcm").write_bytes(deep_sequence(synth, rng))
    corpus.add(fixed / "deep_sequence.dcm", "deep_sequence")
    (fixed / "corrupt_rle.dcm").write_bytes(rle_panic(fresh_uids(synth, rng), rng))
    corpus.add(fixed / "corrupt_rle.dcm", "corrupt_rle")
    shutil.copyfile(get_testdata_file("test-SR.dcm"), fixed / "report_sr.dcm")
    corpus.add(fixed / "report_sr.dcm", "sr")
    corpus.add(seg_object(fixed / "segmentation.dcm", rng), "seg")
    if bomb:
        corpus.add(deflate_bomb(fixed / "deflate_bomb.dcm", rng), "deflate_bomb")


def _special_files(corpus: Corpus, seeds: dict[str, Path]) -> None:
    """FIFO, socket, link loop, dangling link, unreadable, folder named x.dcm, empty, DICOMDIR index and images."""
    special = corpus.root / "special"
    special.mkdir(parents=True, exist_ok=True)
    os.mkfifo(special / "pipe.dcm")
    corpus.add(special / "pipe.dcm", "fifo")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(str(special / "sock.dcm"))
        corpus.add(special / "sock.dcm", "socket")
    except OSError:  # path too long for AF_UNIX, or no sockets on this file system
        pass
    finally:
        server.close()
    os.symlink("loop_b.dcm", special / "loop_a.dcm")
    os.symlink("loop_a.dcm", special / "loop_b.dcm")
    corpus.add(special / "loop_a.dcm", "symlink_loop")
    corpus.add(special / "loop_b.dcm", "symlink_loop")
    os.symlink("no_such_target.dcm", special / "dangling.dcm")
    corpus.add(special / "dangling.dcm", "dangling_symlink")
    locked = special / "locked.dcm"
    shutil.copyfile(seeds["synth1"], locked)
    locked.chmod(0)
    corpus.add(locked, "unreadable")
    corpus.unreadable = str(locked)
    (special / "x.dcm").mkdir()  # a folder with a DICOM-like name: walked, its image is scanned
    shutil.copyfile(seeds["synth0"], special / "x.dcm" / "inside.dcm")
    corpus.add(special / "x.dcm" / "inside.dcm", "in_folder_named_x.dcm")
    (special / "empty.dcm").write_bytes(b"")
    corpus.add(special / "empty.dcm", "empty")
    index = special / "media" / "DICOMDIR"
    index.parent.mkdir()
    shutil.copyfile(Path(pydicom.__file__).parent / "data" / "test_files" / "dicomdirtests" / "DICOMDIR", index)
    corpus.add(index, "dicomdir_index")
    corpus.dicomdir_index = str(index)
    for name in ("DICOMDIR", "dicomdir"):
        folder = special / f"named_{name.lower()}_{name[0]}"
        folder.mkdir()
        shutil.copyfile(seeds["synth1"], folder / name)
        corpus.add(folder / name, "image_named_dicomdir")


def _odd_names(corpus: Corpus, seeds: dict[str, Path]) -> None:
    """Copies of a good X-ray and of a bad file under names with spaces, non-UTF-8 bytes and unicode."""
    odd = corpus.root / "odd names"
    odd.mkdir(parents=True, exist_ok=True)
    good, bad = seeds["synth0"].read_bytes(), b"not DICOM at all\n" * 10
    names = {b"with space.dcm": good, b"bad \xff\xfe name.dcm": bad, b"good \xfe\xff image.dcm": good,
             "Ünïcødé 画像.dcm".encode(): good, "ünïcødé_bad.txt".encode(): bad}
    for raw, data in names.items():
        path = os.path.join(os.fsencode(odd), raw)
        with open(path, "wb") as handle:
            handle.write(data)
        corpus.add(path, "odd_name")
