"""DICOM objects written for tests: minimal images of any modality, MR series and enhanced MR, pydicom's files."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"
CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"
SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
KO_STORAGE = "1.2.840.10008.5.1.4.1.1.88.59"
JPEG_XL = "1.2.840.10008.1.2.4.110"  # not known to pydicom 3.0: no decoder registered
PLACEHOLDER_TS = "9.9.999.99999.9.9.9.999"  # private UID of the same length, patched to JPEG_XL on disk
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
_c1, _s1, _c2, _s2 = np.cos(0.4), np.sin(0.4), np.cos(0.7), np.sin(0.7)
OBLIQUE = (_c1, _s1, 0.0, -_s1 * _c2, _c1 * _c2, _s2)  # orthonormal, not aligned with any axis
_uid_counter = iter(range(1, 10**9))


def new_uid(prefix: str = "1.2.826.0.1.3680043.10.999") -> str:
    return f"{prefix}.{next(_uid_counter)}"


def make_image(modality: str = "MR", *, sop_class: str | None = None, study: str = "1.2.3.1", series: str = "1.2.3.1.1",
               rows: int = 4, columns: int = 4, iop=AXIAL, ipp=(0.0, 0.0, 0.0), instance: int = 1,
               description: str = "T1 AX", image_type=("ORIGINAL", "PRIMARY"), photometric: str = "MONOCHROME2",
               frames: int | None = None, pixels: bool = True) -> Dataset:
    """A tiny valid MR slice or CR/DX image (uncompressed: 16-bit grey, 8-bit RGB/YBR or an 8-bit palette)."""
    default_class = {"MR": MR_STORAGE, "CR": CR_STORAGE, "DX": DX_STORAGE}.get(modality, "1.2.840.10008.5.1.4.1.1.7")
    ds = Dataset()
    ds.SOPClassUID = sop_class or default_class
    ds.SOPInstanceUID = new_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientID, ds.Modality, ds.SeriesDescription = "PAT-1", modality, description
    ds.ImageType, ds.InstanceNumber, ds.Manufacturer = list(image_type), instance, "ACME"
    colour = photometric not in ("MONOCHROME1", "MONOCHROME2")
    palette = photometric == "PALETTE COLOR"
    ds.Rows, ds.Columns, ds.PhotometricInterpretation = rows, columns, photometric
    ds.SamplesPerPixel = 3 if colour and not palette else 1
    ds.BitsAllocated = ds.BitsStored = 8 if colour else 16
    ds.HighBit, ds.PixelRepresentation = ds.BitsStored - 1, 0
    if colour and not palette:
        ds.PlanarConfiguration = 0
    if palette:
        add_palette(ds)
    if modality == "MR":
        ds.ImageOrientationPatient, ds.ImagePositionPatient = list(iop), list(ipp)
        ds.PixelSpacing = [0.5, 0.5]
    else:
        ds.ImagerPixelSpacing = [0.2, 0.2]
    if frames is not None:
        ds.NumberOfFrames = frames
    if pixels:
        ds.PixelData = bytes(rows * columns * ds.SamplesPerPixel * ds.BitsAllocated // 8 * (frames or 1))
    return ds


def palette_rgb(index: np.ndarray) -> np.ndarray:
    """The 16-bit (R, G, B) that ``add_palette``'s lookup tables give each 8-bit index: ``(..., 3)`` floats."""
    index = np.asarray(index, dtype=np.float64)
    return np.stack([index * 257, (255 - index) * 257, np.full_like(index, 40000.0)], axis=-1)


def add_palette(ds: Dataset) -> None:
    """Red/green/blue palette lookup tables of 256 16-bit entries (the colours of ``palette_rgb``)."""
    tables = palette_rgb(np.arange(256)).astype(np.uint16)
    for channel, colour in enumerate(("Red", "Green", "Blue")):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
        setattr(ds, f"{colour}PaletteColorLookupTableData", tables[:, channel].tobytes())


def write(ds: Dataset, path: Path, *, preamble: bool = True, syntax: str = ExplicitVRLittleEndian) -> Path:
    """Write ``ds`` as a DICOM file (with preamble and meta) or as a bare data set (no preamble)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not preamble:
        ds.save_as(path, implicit_vr=True, little_endian=True)
        return path
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = syntax
    implicit = syntax == ImplicitVRLittleEndian
    ds.save_as(path, implicit_vr=implicit, little_endian=True, enforce_file_format=True)
    return path


def write_jpeg_xl(path: Path, modality: str = "CR") -> Path:
    """An image (a CR: scanned by X-ray and mixed runs alike) with encapsulated pixel data in the JPEG XL
    transfer syntax (pydicom cannot write it)."""
    ds = make_image(modality, series=new_uid())
    ds.PixelData = encapsulate([b"\xff\x0a" + bytes(30)])
    ds["PixelData"].VR = "OB"
    write(ds, path, syntax=PLACEHOLDER_TS)
    path.write_bytes(path.read_bytes().replace(PLACEHOLDER_TS.encode(), JPEG_XL.encode()))
    return path


def normal_of(iop) -> np.ndarray:
    return np.cross(np.asarray(iop[:3]), np.asarray(iop[3:]))


def shear_of(iop, seed: int = 0) -> np.ndarray:
    """The in-plane offset per slice that ``write_mr_series`` adds (like gantry tilt) for this seed."""
    rng = random.Random(seed)
    return rng.uniform(-3, 3) * np.asarray(iop[:3]) + rng.uniform(-3, 3) * np.asarray(iop[3:])


def write_mr_series(folder: Path, *, iop=AXIAL, n: int = 10, step: float = 2.5, series: str | None = None,
                    seed: int = 0, **kw) -> list[Path]:
    """An MR series whose file names and InstanceNumbers are shuffled against position; returns the
    files in true position order (ascending along the slice normal).

    Slice origins are sheared in-plane by ``shear_of(iop, seed)`` per slice, as with gantry tilt: a regular
    stack whose raw coordinates (e.g. z alone, or x then y then z) do not give the order along the normal."""
    rng = random.Random(seed)
    series = series or new_uid()
    normal, shear = normal_of(iop), shear_of(iop, seed)
    origin = np.array([-40.0, 12.5, 7.0])
    names, numbers = rng.sample(range(1000), n), rng.sample(range(1, n + 1), n)
    paths = []
    for k in range(n):
        ipp = tuple(float(v) for v in origin + k * (step * normal + shear))
        ds = make_image("MR", series=series, iop=iop, ipp=ipp, instance=numbers[k], **kw)
        paths.append(write(ds, folder / f"im{names[k]:04d}"))
    return paths


def write_enhanced_mr(path: Path, *, n: int = 9, step: float = 3.0, seed: int = 1) -> list[tuple[float, ...]]:
    """An Enhanced MR multi-frame file with frames stored in shuffled position order; returns positions."""
    ds = make_image("MR", sop_class=ENHANCED_MR_STORAGE, series=new_uid(), frames=n)
    for keyword in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing"):
        delattr(ds, keyword)
    orientation = Dataset()
    orientation.ImageOrientationPatient = list(SAGITTAL)
    measures = Dataset()
    measures.PixelSpacing, measures.SliceThickness = [0.7, 0.7], step
    shared = Dataset()
    shared.PlaneOrientationSequence, shared.PixelMeasuresSequence = [orientation], [measures]
    ds.SharedFunctionalGroupsSequence = [shared]
    slots = random.Random(seed).sample(range(n), n)
    positions = [tuple(float(v) for v in (5.0, 1.0, 2.0) + slot * step * normal_of(SAGITTAL)) for slot in slots]
    frames = []
    for position in positions:
        plane = Dataset()
        plane.ImagePositionPatient = list(position)
        frame = Dataset()
        frame.PlanePositionSequence = [plane]
        frames.append(frame)
    ds.PerFrameFunctionalGroupsSequence = frames
    write(ds, path)
    return positions


def copy_test_file(name: str, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(TEST_FILES / name, dest)
    return dest


def study_folders(cohort: Path) -> list[str]:
    """The study folders of a cohort written by ``medvit synth`` (``dicom/study_NNNN``), sorted: one study each."""
    return sorted(str(p) for p in (cohort / "dicom").glob("study_*") if p.is_dir())
