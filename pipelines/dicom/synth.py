"""Synthetic cohorts written as real DICOM files, for the demo and the tests (no data can be downloaded).

``write_cohort`` writes ``out/dicom/study_NNNN/series_NN/img_NNNN.dcm`` (neutral numbering, no identifiers in
paths), ``out/labels.csv`` (``StudyInstanceUID,label``), ``out/identities.csv`` (every made-up PatientName,
PatientID, PatientBirthDate and AccessionNumber, so tests can check that none leaks) and ``out/cohort.json``
(parameters and counts; it also marks the folder as ours, so a rerun may replace ``out/dicom``).

The files carry what real scanners write and readers trip over: CR and DX radiographs (MONOCHROME1 for a
share, rescale slopes other than 1, rectangular detectors, DX without rescale tags), T2-FLAIR MR series with
axial, oblique and sagittal geometry whose InstanceNumber does not always follow position, 12- and 16-bit
vendors, localizer series, and lossless compressed transfer syntaxes. Same arguments, same bytes: UIDs are
hashed from the arguments, dates are fixed. Anatomy and lesions come from :mod:`pipelines.dicom.phantoms`
(``base="phantom"``) or from real images warped by :mod:`pipelines.dicom.realbase` (``base="real"``).
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    MRImageStorage,
)

from pipelines.dicom import phantoms, realbase
from pipelines.dicom.cohort_plan import (  # noqa: F401 - re-exported for callers of synth
    KIND_CODES,
    VENDORS,
    CohortPlan,
    Patient,
    StudyPlan,
    available_encodings,
    plan_cohort,
)

__all__ = ["CohortSummary", "write_cohort"]

SOP_CLASSES = {"CR": ComputedRadiographyImageStorage, "DX": DigitalXRayImageStorageForPresentation,
               "MR": MRImageStorage}
MARKER = "cohort.json"
# The modules whose code decides a cohort's bytes (with the arguments): see ``generator_fingerprint``.
GENERATOR_SOURCES = ("synth.py", "cohort_plan.py", "phantoms.py", "realbase.py", "lesions.py")


@dataclass(frozen=True)
class CohortSummary:
    """What ``write_cohort`` wrote: counts, and where the label and identity lists are."""

    kind: str
    patients: int
    studies: int
    series: int
    files: int
    abnormal: int
    dicom_root: Path
    labels_csv: Path
    identities_csv: Path


def ds_str(value: float, decimals: int = 4) -> str:
    """A DICOM DS string (at most 16 characters) for ``value``."""
    text = f"{value:.{decimals}f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def base_dataset(study: StudyPlan, modality: str, vendor: tuple, attrs: dict | None = None) -> Dataset:
    """Patient, study, equipment and image-pixel attributes shared by every instance of a series."""
    ds = Dataset()
    ds.SpecificCharacterSet, ds.SOPClassUID = "ISO_IR 100", SOP_CLASSES[modality]
    patient = study.patient
    ds.PatientName, ds.PatientID = patient.name, patient.patient_id
    ds.PatientBirthDate, ds.PatientSex = patient.birth_date, patient.sex
    ds.PatientAge = f"{(int(study.date) - int(patient.birth_date)) // 10000:03d}Y"
    ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime = study.uid, study.date, study.time
    ds.AccessionNumber, ds.StudyID, ds.ReferringPhysicianName = study.accession, str(study.index + 1), ""
    ds.StudyDescription = "XR CHEST" if modality != "MR" else "MR BRAIN WO CONTRAST"
    ds.Modality, ds.Manufacturer, ds.ManufacturerModelName = modality, vendor[0], vendor[1]
    ds.SoftwareVersions = "4.2.1"
    for prefix in ("Series", "Content", "Acquisition"):
        setattr(ds, f"{prefix}Date", study.date)
        setattr(ds, f"{prefix}Time", study.time)
    ds.SamplesPerPixel, ds.BitsAllocated, ds.PixelRepresentation = 1, 16, 0
    for name, value in (attrs or {}).items():
        setattr(ds, name, value)
    return ds


def instance(template: Dataset, stored: np.ndarray, bits_stored: int, photometric: str) -> Dataset:
    """A new instance sharing the template's elements, with its own pixels and an uncompressed file meta.

    Shared elements must not be modified afterwards: set only attributes the template lacks.
    """
    ds = Dataset()
    ds.update(template)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = stored.shape
    ds.BitsStored, ds.HighBit = bits_stored, bits_stored - 1
    ds.PixelData = np.ascontiguousarray(stored, dtype="<u2").tobytes()
    return ds


def set_window(ds: Dataset, stored: np.ndarray, slope: float, intercept: float, inverted: bool = False
               ) -> None:
    """WindowCenter/Width over the 1st-99th percentile, in rescaled units (mirrored for MONOCHROME1)."""
    low, high = np.percentile(stored, [1.0, 99.0])
    centre = (low + high) / 2.0
    if inverted:
        centre = (2 ** int(ds.BitsStored) - 1) - centre
    ds.WindowCenter = ds_str(slope * centre + intercept, 1)
    ds.WindowWidth = ds_str(max(abs(slope) * (high - low), 1.0), 1)


def xray_dataset(plan: CohortPlan, study: StudyPlan) -> Dataset:
    """One CR or DX chest radiograph; MONOCHROME1 stores ``4095 - value``, so it displays the same."""
    rng = plan.rng(study, 0)
    modality, vendor = ("CR", "DX")[int(rng.integers(2))], VENDORS[int(rng.integers(len(VENDORS)))]
    size, narrow = plan.image_size, plan.image_size - plan.image_size // 8
    rows, cols = [(size, size), (size, narrow), (narrow, size)][int(rng.choice(3, p=[0.7, 0.2, 0.1]))]
    slope, intercept = [(1.0, 0.0), (0.5, 0.0), (2.0, -1024.0)][int(rng.choice(3, p=[0.6, 0.2, 0.2]))]
    if plan.base == "phantom":
        bits, low, high = 12, rng.uniform(40, 300), rng.uniform(3300, 4050)
    else:  # detectors of 10 to 16 bits, using part of their range
        bits = int(rng.choice([10, 12, 14, 15, 16]))
        low, high = rng.uniform(0.01, 0.07) * (2**bits - 1), rng.uniform(0.8, 0.99) * (2**bits - 1)
    top = 4095 if plan.base == "phantom" else 2**bits - 1
    body_part, view = "CHEST", None
    if plan.base == "real":
        real = realbase.real_xray(study_rngs(plan, study), rows, cols, study.abnormal, plan.difficulty)
        image, base = real.image, realbase.xray_base(real.base)
        body_part, view = base.body_part, None if base.view == "PA" else base.view
    else:
        image, _ = phantoms.chest_study(study_rngs(plan, study), rows, cols, study.abnormal, plan.difficulty)
    stored = np.rint(low + image * (high - low)).astype(np.uint16)
    photometric = "MONOCHROME1" if study.monochrome1 else "MONOCHROME2"
    ds = instance(base_dataset(study, modality, vendor), top - stored if study.monochrome1 else stored, bits,
                  photometric)
    if modality == "CR" or slope != 1.0 or rng.random() < 0.5:  # many DX files carry no rescale at all
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = ds_str(slope), ds_str(intercept), "US"
    set_window(ds, stored, slope, intercept, inverted=study.monochrome1)
    spacing = [ds_str((350.0 if body_part == "CHEST" else 300.0) / max(rows, cols) * rng.uniform(0.95, 1.05))] * 2
    if modality == "DX":
        ds.ImagerPixelSpacing, ds.PresentationIntentType = spacing, "FOR PRESENTATION"
        ds.PixelIntensityRelationship = "LOG"
    if modality == "CR" and rng.random() < 0.5:
        ds.ImagerPixelSpacing = spacing
    elif modality == "CR" or rng.random() < 0.5:
        ds.PixelSpacing = spacing
    ds.ImageType, ds.BodyPartExamined = ["ORIGINAL", "PRIMARY"], body_part
    ds.ViewPosition = view or ("PA", "AP")[int(rng.random() < 0.3)]
    ds.PatientOrientation, ds.SeriesDescription = ["L", "F"], f"{body_part} {ds.ViewPosition}"
    ds.KVP = ds_str(rng.uniform(100, 125), 0)
    ds.SeriesInstanceUID = plan.uid("series", study.index, 1)
    ds.SOPInstanceUID = plan.uid("sop", study.index, 1, 1)
    ds.SeriesNumber, ds.InstanceNumber, ds.AcquisitionNumber = 1, 1, 1
    return ds


def study_rngs(plan: CohortPlan, study: StudyPlan) -> tuple[np.random.Generator, ...]:
    """Anatomy, lesion and noise generators of a study: fixed by seed, patient and study, not by the label."""
    return tuple(plan.rng(study, purpose) for purpose in (1, 2, 3))


def mr_stored(plan: CohortPlan, study: StudyPlan, planes: list, scale: float, top: int, centre: np.ndarray,
              thickness: float) -> np.ndarray:
    """The study's head on ``planes`` as stored values: intensity x ``scale``, clipped to 0..``top``.

    ``centre`` is the slab centre the head sits at; ``thickness`` (mm) is averaged across for a real base.
    """
    if plan.base == "real":
        points = np.stack([p.points() for p in planes])
        values = realbase.real_volume(study_rngs(plan, study), points, planes[0].normal, thickness,
                                      study.abnormal, plan.difficulty, centre).values
    else:
        values, _ = phantoms.brain_study(study_rngs(plan, study), planes, study.abnormal, plan.difficulty)
    return np.clip(np.rint(values * scale), 0, top).astype(np.uint16)


def mr_slices(plan: CohortPlan, study: StudyPlan, template: Dataset, planes: list[phantoms.Plane],
              stored: np.ndarray, numbers: np.ndarray, bits_stored: int) -> list[Dataset]:
    """Single-frame MR instances: template attributes plus each slice's geometry, window and pixels."""
    slope, intercept = float(template.RescaleSlope), float(template.RescaleIntercept)
    datasets = []
    for plane, pixels, number in zip(planes, stored, numbers, strict=True):
        ds = instance(template, pixels, bits_stored, "MONOCHROME2")
        ds.ImageOrientationPatient = [ds_str(v, 6) for v in (*plane.row_dir, *plane.col_dir)]
        ds.ImagePositionPatient = [ds_str(v) for v in plane.corner]
        ds.SliceLocation = ds_str(float(np.dot(plane.corner, plane.normal)))
        ds.PixelSpacing = [ds_str(plane.spacing)] * 2
        set_window(ds, pixels, slope, intercept)
        ds.InstanceNumber = int(number)
        ds.SOPInstanceUID = plan.uid("sop", study.index, int(template.SeriesNumber), ds.InstanceNumber)
        datasets.append(ds)
    return datasets


def mri_series(plan: CohortPlan, study: StudyPlan) -> list[list[Dataset]]:
    """A localizer (if planned) and the diagnostic series (T2-FLAIR on phantoms, T1 on a real base: the
    bases are T1 volumes), each a list of single-frame slices. A real base also varies the coverage."""
    rng = plan.rng(study, 0)
    vendor = VENDORS[int(rng.integers(len(VENDORS)))]
    real = plan.base == "real"
    coverage = plan.rng(study, 4).uniform(100.0, 170.0) if real else 150.0  # partial coverage on a real base
    view, planes, centre = phantoms.slice_stack(rng, plan.image_size, plan.slices, coverage)
    slope = [1.0, 2.0, 0.8][int(rng.choice(3, p=[0.6, 0.2, 0.2]))]
    count, top = plan.slices, 2 ** vendor[2] - 1
    step = float(np.linalg.norm(planes[-1].corner - planes[0].corner)) / max(count - 1, 1)
    numbers = {"ascending": np.arange(count), "reversed": np.arange(count)[::-1],
               "permuted": rng.permutation(count)}[study.instance_order] + 1
    common = {"MagneticFieldStrength": vendor[3], "ImagedNucleus": "1H", "MRAcquisitionType": "2D",
              "ImagingFrequency": ds_str(42.577 * float(vendor[3]), 3), "RescaleSlope": ds_str(slope),
              "RescaleIntercept": "0", "BodyPartExamined": "HEAD", "PatientPosition": "HFS",
              "PositionReferenceIndicator": "", "FrameOfReferenceUID": plan.uid("frame", study.index),
              "AcquisitionNumber": 1}
    series = []
    if study.localizer:
        scout = [phantoms.centred_plane(a, 280.0 / plan.image_size, plan.image_size, centre)
                 for a in (phantoms.AXIAL, phantoms.SAGITTAL, phantoms.CORONAL)]
        scout_pixels = mr_stored(plan, study, scout, 1500.0 / slope, top, centre, 8.0)
        attrs = {"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"], "SeriesDescription": "localizer",
                 "ScanningSequence": "GR", "SequenceVariant": "SP", "SliceThickness": "8",
                 "RepetitionTime": "8.6", "EchoTime": "4", "ProtocolName": "localizer"}
        series.append((scout, scout_pixels, np.arange(1, 4), attrs))
    attrs = {"ImageType": ["ORIGINAL", "PRIMARY", "M", "ND"], "SeriesDescription": f"T2 FLAIR {view}",
             "ProtocolName": f"T2_FLAIR_{view.replace(' ', '_')}", "ScanningSequence": ["SE", "IR"],
             "SequenceVariant": ["SK", "SP", "MP"], "RepetitionTime": "9000", "InversionTime": "2500",
             "EchoTime": ds_str(rng.uniform(90, 110), 1), "SliceThickness": ds_str(step - (step > 3)),
             "SpacingBetweenSlices": ds_str(step)}
    if real:
        attrs |= {"SeriesDescription": f"T1 SE {view}", "ProtocolName": f"T1_SE_{view.replace(' ', '_')}",
                  "ScanningSequence": "SE", "SequenceVariant": ["SK", "SP"], "RepetitionTime": "550",
                  "EchoTime": ds_str(8 + 10 * rng.random(), 1)}
        del attrs["InversionTime"]
    thickness = step - (step > 3)
    series.append((planes, mr_stored(plan, study, planes, 2000.0 / slope, top, centre, thickness), numbers, attrs))
    datasets = []
    for number, (slice_planes, pixels, instance_numbers, attrs) in enumerate(series, start=1):
        attrs = {**common, **attrs, "SeriesNumber": number,
                 "SeriesInstanceUID": plan.uid("series", study.index, number)}
        template = base_dataset(study, "MR", vendor, attrs)
        datasets.append(mr_slices(plan, study, template, slice_planes, pixels, instance_numbers, vendor[2]))
    return datasets


def save_dataset(ds: Dataset, path: Path, transfer_syntax: str = ExplicitVRLittleEndian) -> None:
    """Write ``ds`` as a DICOM file (preamble, DICM, file meta), lossless-compressing it if asked."""
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if transfer_syntax != ExplicitVRLittleEndian:
        plugin = available_encodings()[transfer_syntax]
        ds.compress(transfer_syntax, encoding_plugin=plugin, generate_instance_uid=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def prepare_output(out: Path) -> Path:
    """Create ``out/dicom``; replace it only when ``out`` holds an earlier synthetic cohort."""
    root = out / "dicom"
    if root.exists() and any(root.iterdir()):
        if not (out / MARKER).is_file():
            raise FileExistsError(f"{root} holds files not written by medvit synth; choose an empty folder")
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    return root


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    """Write a small CSV with Unix line endings."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def generator_fingerprint(sources: Path | None = None) -> str:
    """A short hash of the generator's code (in ``sources``, default this package): same arguments and
    fingerprint, same cohort (a cache key)."""
    digest = hashlib.sha256()
    for name in GENERATOR_SOURCES:
        digest.update(((sources or Path(__file__).parent) / name).read_bytes())
    return digest.hexdigest()[:12]


def write_cohort(out: Path, kind: Literal["xray", "mri"], studies: int, seed: int = 0, *,
                 abnormal_fraction: float = 0.5, difficulty: float = 0.5,
                 image_size: int | None = None, slices: int | None = None,
                 monochrome1_fraction: float = 0.25, compressed_fraction: float = 0.3,
                 localizer_fraction: float = 0.2, multi_study_fraction: float = 0.3,
                 shuffle_instance_numbers: bool = True, base: str = "phantom") -> CohortSummary:
    """Write a synthetic X-ray or MRI cohort as DICOM under ``out`` (layout in the module docstring).

    ``base``: ``phantom`` draws the anatomy; ``real`` warps real radiographs or MR volumes from installed
    packages (:mod:`pipelines.dicom.realbase`; ``MissingBase`` before anything is written when one is absent)
    and draws irregular findings into them (:mod:`pipelines.dicom.lesions`).

    ``studies`` studies, exactly ``round(studies * abnormal_fraction)`` abnormal. ``difficulty`` in [0, 1]:
    0 gives large, bright lesions, 1 small, faint ones. ``image_size``: X-ray side (default 256; some studies
    are 7/8 as wide or as tall) or MR in-plane size (default 64); ``slices``: MR slices (default 24).
    The fractions are exact shares (rounded): MONOCHROME1 X-rays, compressed series (RLE, JPEG-LS and
    JPEG 2000 lossless, whichever encoders are installed), MR studies that also get a 3-slice localizer, and
    studies belonging to patients with two or three studies. With ``shuffle_instance_numbers`` half of the MR
    series number their slices against position (reversed or permuted). A folder that already holds a
    synthetic cohort is replaced; one holding anything else under ``dicom/`` raises ``FileExistsError``.
    """
    out = Path(out)
    plan = plan_cohort(kind, studies, seed, abnormal_fraction=abnormal_fraction, difficulty=difficulty,
                       image_size=image_size, slices=slices, monochrome1_fraction=monochrome1_fraction,
                       compressed_fraction=compressed_fraction, localizer_fraction=localizer_fraction,
                       multi_study_fraction=multi_study_fraction,
                       shuffle_instance_numbers=shuffle_instance_numbers, base=base)
    if base == "real" and kind == "xray":  # a missing base stops before anything is written
        realbase.check_xray_bases()
    elif base == "real":
        realbase.available_mri_bases()
    root = prepare_output(out)
    n_series = n_files = 0
    for study in plan.studies:
        series = [[xray_dataset(plan, study)]] if kind == "xray" else mri_series(plan, study)
        for number, (datasets, syntax) in enumerate(zip(series, study.encodings, strict=True), start=1):
            folder = root / f"study_{study.index:04d}" / f"series_{number:02d}"
            for ds in datasets:
                save_dataset(ds, folder / f"img_{ds.InstanceNumber:04d}.dcm", syntax)
            n_series, n_files = n_series + 1, n_files + len(datasets)
    labels, identities = out / "labels.csv", out / "identities.csv"
    write_csv(labels, ["StudyInstanceUID", "label"],
              [[s.uid, "abnormal" if s.abnormal else "normal"] for s in plan.studies])
    write_csv(identities, ["PatientName", "PatientID", "PatientBirthDate", "AccessionNumber"],
              [[s.patient.name, s.patient.patient_id, s.patient.birth_date, s.accession]
               for s in plan.studies])
    counts = {"patients": len({s.patient.patient_id for s in plan.studies}), "studies": studies,
              "series": n_series, "files": n_files, "abnormal": sum(s.abnormal for s in plan.studies)}
    summary = CohortSummary(kind=kind, **counts, dicom_root=root, labels_csv=labels,
                            identities_csv=identities)
    record = {"generator": "medvit synth", "fingerprint": generator_fingerprint(), "kind": kind, "base": base,
              "seed": seed, "difficulty": difficulty, "abnormal_fraction": abnormal_fraction,
              "image_size": plan.image_size, "slices": plan.slices, "counts": counts}
    (out / MARKER).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return summary
