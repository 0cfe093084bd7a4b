"""Synthetic cohorts: real DICOM files read back with pydicom, no mocks."""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import config
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    MRImageStorage,
)

from pipelines.dicom import phantoms, synth
from pipelines.dicom.synth import write_cohort

XRAY_ARGS = {"kind": "xray", "studies": 12, "seed": 3, "image_size": 64, "monochrome1_fraction": 0.5,
             "compressed_fraction": 0.5}
MRI_ARGS = {"kind": "mri", "studies": 8, "seed": 5, "image_size": 32, "slices": 10, "localizer_fraction": 0.5,
            "compressed_fraction": 0.5}


def plan_for(args: dict) -> synth.CohortPlan:
    """The plan ``write_cohort`` used for ``args``."""
    rest = {k: v for k, v in args.items() if k not in ("kind", "studies", "seed")}
    return synth.plan_cohort(args["kind"], args["studies"], args["seed"], **rest)


def read_all(out: Path) -> dict[Path, pydicom.Dataset]:
    """Every written file, read strictly (invalid values raise), keyed by path."""
    before = config.settings.reading_validation_mode
    config.settings.reading_validation_mode = config.RAISE
    try:
        return {p: pydicom.dcmread(p) for p in sorted((out / "dicom").rglob("*.dcm"))}
    finally:
        config.settings.reading_validation_mode = before


def series_of(files: dict[Path, pydicom.Dataset]) -> dict[str, list[pydicom.Dataset]]:
    """Datasets grouped by SeriesInstanceUID."""
    groups: dict[str, list[pydicom.Dataset]] = defaultdict(list)
    for ds in files.values():
        groups[ds.SeriesInstanceUID].append(ds)
    return groups


def normal_of(ds: pydicom.Dataset) -> np.ndarray:
    """Slice normal from ImageOrientationPatient."""
    iop = np.array([float(v) for v in ds.ImageOrientationPatient])
    return np.cross(iop[:3], iop[3:])


def position(ds: pydicom.Dataset) -> np.ndarray:
    return np.array([float(v) for v in ds.ImagePositionPatient])


@pytest.fixture(scope="module")
def xray(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, synth.CohortSummary, dict]:
    out = tmp_path_factory.mktemp("xray")
    summary = write_cohort(out, **XRAY_ARGS)
    return out, summary, read_all(out)


@pytest.fixture(scope="module")
def mri(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, synth.CohortSummary, dict]:
    out = tmp_path_factory.mktemp("mri")
    summary = write_cohort(out, **MRI_ARGS)
    return out, summary, read_all(out)


# ------------------------------------------------------------------------------------------ determinism


@pytest.mark.parametrize("args", [XRAY_ARGS, MRI_ARGS], ids=["xray", "mri"])
def test_same_arguments_give_byte_identical_files(tmp_path: Path, args: dict) -> None:
    write_cohort(tmp_path / "a", **args)
    write_cohort(tmp_path / "b", **args)
    first = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    second = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert first == second and len(first) > 3
    for rel in first:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


def test_cohort_records_the_fingerprint_of_the_generator_code(tmp_path: Path) -> None:
    """Benchmarks reuse a written cohort only while the code that drew it is unchanged."""
    write_cohort(tmp_path / "c", **XRAY_ARGS)
    recorded = json.loads((tmp_path / "c" / synth.MARKER).read_text())["fingerprint"]
    assert recorded == synth.generator_fingerprint() and len(recorded) == 12
    edited = tmp_path / "src"
    edited.mkdir()
    for name in synth.GENERATOR_SOURCES:
        (edited / name).write_bytes((Path(synth.__file__).parent / name).read_bytes())
    (edited / "lesions.py").write_text((edited / "lesions.py").read_text() + "\n# tuned\n")
    assert synth.generator_fingerprint(edited) != recorded


def test_another_seed_gives_other_uids_and_pixels(tmp_path: Path, xray: tuple) -> None:
    out, _, files = xray
    write_cohort(tmp_path, **{**XRAY_ARGS, "seed": XRAY_ARGS["seed"] + 1})
    assert (tmp_path / "labels.csv").read_text() != (out / "labels.csv").read_text()
    a = next(iter(files.values()))
    b = pydicom.dcmread(next(iter(sorted((tmp_path / "dicom").rglob("*.dcm")))))
    assert a.StudyInstanceUID != b.StudyInstanceUID


# ------------------------------------------------------------------------------------- files and labels


def test_files_are_real_dicom_with_file_meta(xray: tuple, mri: tuple) -> None:
    for out, summary, files in (xray, mri):
        assert len(files) == summary.files
        for path, ds in files.items():
            raw = path.read_bytes()
            assert raw[128:132] == b"DICM"
            assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
            assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
            assert path.relative_to(out / "dicom").parts[0].startswith("study_")


def test_labels_match_written_studies_and_abnormal_share(xray: tuple, mri: tuple) -> None:
    for out, summary, files in (xray, mri):
        with (out / "labels.csv").open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert list(rows[0]) == ["StudyInstanceUID", "label"]
        labels = {r["StudyInstanceUID"]: r["label"] for r in rows}
        assert set(labels) == {ds.StudyInstanceUID for ds in files.values()}
        assert set(labels.values()) == {"normal", "abnormal"}
        abnormal = sum(v == "abnormal" for v in labels.values())
        assert abnormal == summary.abnormal == round(summary.studies * 0.5)
        assert summary.series == len(series_of(files))


def test_xray_files_are_cr_or_dx_and_decode_to_their_shape(xray: tuple) -> None:
    _, _, files = xray
    sop_class = {"CR": ComputedRadiographyImageStorage, "DX": DigitalXRayImageStorageForPresentation}
    assert {ds.Modality for ds in files.values()} == {"CR", "DX"}
    shapes = set()
    for ds in files.values():
        assert ds.SOPClassUID == sop_class[ds.Modality]
        assert (ds.BitsAllocated, ds.BitsStored, ds.BodyPartExamined) == (16, 12, "CHEST")
        assert ds.ViewPosition in ("PA", "AP") and ds.Manufacturer and ds.SeriesDescription
        assert "PixelSpacing" in ds or "ImagerPixelSpacing" in ds
        pixels = ds.pixel_array
        assert pixels.shape == (ds.Rows, ds.Columns) and pixels.dtype == np.uint16 and pixels.max() < 4096
        shapes.add(pixels.shape)
    assert (64, 64) in shapes and shapes <= {(64, 64), (64, 56), (56, 64)}
    assert any(float(ds.get("RescaleSlope", 1)) != 1 for ds in files.values())


def test_monochrome1_share_is_written(xray: tuple) -> None:
    _, summary, files = xray
    mono1 = [ds for ds in files.values() if ds.PhotometricInterpretation == "MONOCHROME1"]
    assert len(mono1) == round(summary.studies * XRAY_ARGS["monochrome1_fraction"])


def test_monochrome1_inverted_equals_monochrome2_rendering(tmp_path: Path) -> None:
    plan = plan_for(XRAY_ARGS)
    study = replace(plan.studies[0], monochrome1=False)
    synth.save_dataset(synth.xray_dataset(plan, study), tmp_path / "m2.dcm")
    synth.save_dataset(synth.xray_dataset(plan, replace(study, monochrome1=True)), tmp_path / "m1.dcm")
    m1, m2 = pydicom.dcmread(tmp_path / "m1.dcm"), pydicom.dcmread(tmp_path / "m2.dcm")
    assert (m1.PhotometricInterpretation, m2.PhotometricInterpretation) == ("MONOCHROME1", "MONOCHROME2")
    inverted = (2**m1.BitsStored - 1) - m1.pixel_array.astype(np.int32)
    np.testing.assert_array_equal(inverted, m2.pixel_array)
    assert not np.array_equal(m1.pixel_array, m2.pixel_array)
    slope, intercept = float(m2.get("RescaleSlope", 1)), float(m2.get("RescaleIntercept", 0))
    mirrored = slope * (2**m1.BitsStored - 1) + 2 * intercept - float(m2.WindowCenter)
    assert float(m1.WindowCenter) == pytest.approx(mirrored, abs=0.2)
    assert float(m1.WindowWidth) == float(m2.WindowWidth)


# ------------------------------------------------------------------------------------------ compression


def test_every_available_encoder_is_lossless(tmp_path: Path) -> None:
    encodings = synth.available_encodings()
    assert encodings, "no lossless encoder available"
    plan = plan_for(XRAY_ARGS)
    synth.save_dataset(synth.xray_dataset(plan, plan.studies[1]), tmp_path / "plain.dcm")
    original = pydicom.dcmread(tmp_path / "plain.dcm").pixel_array
    for number, syntax in enumerate(encodings):
        path = tmp_path / f"packed_{number}.dcm"
        synth.save_dataset(synth.xray_dataset(plan, plan.studies[1]), path, syntax)
        packed = pydicom.dcmread(path)
        assert packed.file_meta.TransferSyntaxUID == syntax
        assert packed.file_meta.TransferSyntaxUID.is_compressed
        np.testing.assert_array_equal(packed.pixel_array, original)


def test_compressed_cohort_files_decode_to_the_original_pixels(xray: tuple, mri: tuple) -> None:
    packed_syntaxes = set()
    for args, (out, _, files) in ((XRAY_ARGS, xray), (MRI_ARGS, mri)):
        plan = plan_for(args)
        for study in plan.studies:
            xray_study = args["kind"] == "xray"
            series = [[synth.xray_dataset(plan, study)]] if xray_study else synth.mri_series(plan, study)
            for number, (datasets, syntax) in enumerate(zip(series, study.encodings, strict=True), start=1):
                for ds in datasets:
                    path = out / "dicom" / f"study_{study.index:04d}" / f"series_{number:02d}" / \
                        f"img_{ds.InstanceNumber:04d}.dcm"
                    written = files[path]
                    assert written.file_meta.TransferSyntaxUID == syntax
                    if syntax != ExplicitVRLittleEndian:
                        packed_syntaxes.add(syntax)
                        np.testing.assert_array_equal(written.pixel_array, ds.pixel_array)
    assert packed_syntaxes == set(synth.available_encodings())


def test_compressed_share_of_series(xray: tuple) -> None:
    _, summary, files = xray
    packed = [ds for ds in files.values() if ds.file_meta.TransferSyntaxUID.is_compressed]
    assert len(packed) == round(summary.series * XRAY_ARGS["compressed_fraction"])
    plain = [ds for ds in files.values() if not ds.file_meta.TransferSyntaxUID.is_compressed]
    assert {ds.file_meta.TransferSyntaxUID for ds in plain} == {ExplicitVRLittleEndian}


# ------------------------------------------------------------------------------------------------- MRI


def main_series(files: dict) -> list[list[pydicom.Dataset]]:
    return [s for s in series_of(files).values() if "LOCALIZER" not in s[0].ImageType]


def test_mri_series_geometry_steps_along_the_normal(mri: tuple) -> None:
    _, _, files = mri
    views = set()
    for series in main_series(files):
        assert len(series) == MRI_ARGS["slices"]
        assert all(ds.SOPClassUID == MRImageStorage and ds.Modality == "MR" for ds in series)
        assert list(series[0].ImageType) == ["ORIGINAL", "PRIMARY", "M", "ND"]
        assert len({tuple(ds.ImageOrientationPatient) for ds in series}) == 1
        assert len({ds.FrameOfReferenceUID for ds in series}) == 1
        iop = np.array([float(v) for v in series[0].ImageOrientationPatient])
        assert np.linalg.norm(iop[:3]) == pytest.approx(1, abs=1e-5) and abs(iop[:3] @ iop[3:]) < 1e-5
        normal = normal_of(series[0])
        ordered = sorted(series, key=lambda ds: position(ds) @ normal)
        steps = np.diff([position(ds) for ds in ordered], axis=0)
        spacing = float(series[0].SpacingBetweenSlices)
        np.testing.assert_allclose(steps @ normal, spacing, atol=1e-3)
        np.testing.assert_allclose(np.cross(steps, normal), 0, atol=1e-3)
        assert float(series[0].SliceThickness) <= spacing
        views.add(series[0].SeriesDescription)
        for ds in series:
            assert ds.pixel_array.shape == (MRI_ARGS["image_size"],) * 2
    assert "T2 FLAIR AX" in views and len(views) > 1


def test_instance_numbers_disagree_with_position_when_shuffled(mri: tuple, tmp_path: Path) -> None:
    def orders(files: dict) -> list[str]:
        """Per main series: how InstanceNumber runs when slices are sorted by position along the normal."""
        found = []
        for series in main_series(files):
            normal = normal_of(series[0])
            by_position = [ds.InstanceNumber for ds in sorted(series, key=lambda ds: position(ds) @ normal)]
            assert sorted(by_position) == list(range(1, len(series) + 1))
            found.append("ascending" if by_position == sorted(by_position) else
                         "reversed" if by_position == sorted(by_position, reverse=True) else "permuted")
        return found

    def disagreeing(files: dict) -> int:
        return sum(order != "ascending" for order in orders(files))

    _, _, files = mri
    assert {"ascending", "reversed", "permuted"} <= set(orders(files))
    write_cohort(tmp_path, **{**MRI_ARGS, "shuffle_instance_numbers": False, "compressed_fraction": 0.0})
    assert disagreeing(read_all(tmp_path)) == 0


def test_localizer_series_have_three_orthogonal_slices(mri: tuple) -> None:
    _, summary, files = mri
    localizers = [s for s in series_of(files).values() if "LOCALIZER" in s[0].ImageType]
    assert len(localizers) == round(summary.studies * MRI_ARGS["localizer_fraction"])
    main = {s[0].StudyInstanceUID: s for s in main_series(files)}
    for series in localizers:
        assert len(series) == 3 and {ds.SeriesDescription for ds in series} == {"localizer"}
        normals = np.array([normal_of(ds) for ds in series])
        np.testing.assert_allclose(np.abs(normals @ normals.T), np.eye(3), atol=1e-6)
        assert series[0].FrameOfReferenceUID == main[series[0].StudyInstanceUID][0].FrameOfReferenceUID


# ------------------------------------------------------------------------------------ patients, privacy


def test_some_patients_have_several_studies(xray: tuple) -> None:
    _, summary, files = xray
    studies_of: dict[str, set[str]] = defaultdict(set)
    names = defaultdict(set)
    for ds in files.values():
        studies_of[ds.PatientID].add(ds.StudyInstanceUID)
        names[ds.PatientID].add((str(ds.PatientName), ds.PatientBirthDate, ds.PatientSex))
    assert summary.patients == len(studies_of) < summary.studies
    assert max(len(s) for s in studies_of.values()) >= 2
    assert all(len(n) == 1 for n in names.values())


def test_a_patients_studies_share_anatomy_but_not_noise() -> None:
    plan = plan_for(MRI_ARGS)
    by_patient = defaultdict(list)
    for study in plan.studies:
        by_patient[study.patient.patient_id].append(study)
    first, second = next(s for s in by_patient.values() if len(s) > 1)[:2]
    other = next(s for s in plan.studies if s.patient != first.patient)
    head = phantoms.random_head
    assert head(plan.rng(first, 1)) == head(plan.rng(second, 1)) != head(plan.rng(other, 1))
    assert plan.rng(first, 3).random() != plan.rng(second, 3).random()


def test_identities_list_every_identifier_and_none_is_in_a_path(xray: tuple, mri: tuple) -> None:
    for out, _, files in (xray, mri):
        with (out / "identities.csv").open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        listed = {value for row in rows for value in row.values()}
        for ds in files.values():
            for keyword in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber"):
                assert str(ds.get(keyword)) in listed
        assert all(len(row["PatientBirthDate"]) == 8 and row["PatientID"].startswith("PID") for row in rows)
        for path in [*out.rglob("*")]:
            rel = str(path.relative_to(out))
            assert not any(value in rel for value in listed), rel
        uids = {ds.StudyInstanceUID for ds in files.values()} | {ds.SOPInstanceUID for ds in files.values()}
        assert not any(row["PatientBirthDate"] in uid for row in rows for uid in uids)


# --------------------------------------------------------------------------------------------- lesions


def test_chest_lesion_raises_intensity_inside_its_mask() -> None:
    contrasts = []
    for difficulty in (0.0, 1.0):
        def render(abnormal: bool, difficulty: float = difficulty) -> tuple[np.ndarray, np.ndarray]:
            rngs = (np.random.default_rng(11), np.random.default_rng(12), np.random.default_rng(13))
            return phantoms.chest_study(rngs, 128, 128, abnormal, difficulty)
        normal, empty = render(False)
        abnormal, mask = render(True)
        assert not empty.any() and mask.any()
        change = abnormal - normal
        assert np.abs(change[~mask]).mean() < 0.02
        contrasts.append(change[mask].mean())
    assert contrasts[0] > 0.2 and contrasts[0] > 2 * contrasts[1] > 0


def ring_around(mask: np.ndarray, width: int) -> np.ndarray:
    """Pixels within ``width`` of ``mask`` (square dilation) but outside it."""
    grown = mask.copy()
    for dr in range(-width, width + 1):
        for dc in range(-width, width + 1):
            grown |= np.roll(mask, (dr, dc), axis=(0, 1))
    return grown & ~mask


@pytest.mark.parametrize("seed", range(6))
def test_easy_chest_lesion_is_brighter_than_its_surroundings(seed: int) -> None:
    rngs = (np.random.default_rng(seed), np.random.default_rng(100 + seed), np.random.default_rng(200 + seed))
    image, mask = phantoms.chest_study(rngs, 128, 128, True, 0.0)
    assert image[mask].mean() > image[ring_around(mask, 4)].mean() + 0.1


def test_written_abnormal_xray_is_brighter_in_the_lesion(tmp_path: Path) -> None:
    plan = plan_for({**XRAY_ARGS, "difficulty": 0.0})
    study = next(s for s in plan.studies if s.abnormal and not s.monochrome1)
    stored = {}
    for abnormal in (True, False):
        path = tmp_path / f"{abnormal}.dcm"
        synth.save_dataset(synth.xray_dataset(plan, replace(study, abnormal=abnormal)), path)
        stored[abnormal] = pydicom.dcmread(path).pixel_array.astype(float)
    rows, cols = stored[True].shape
    _, mask = phantoms.chest_study(synth.study_rngs(plan, study), rows, cols, True, 0.0)
    change = stored[True] - stored[False]
    assert change[mask].mean() > 500 and np.abs(change[~mask]).mean() < 50


def test_brain_lesion_is_bright_and_spans_several_slices() -> None:
    _, planes, _ = phantoms.slice_stack(np.random.default_rng(0), 48, 16)
    rngs = [np.random.default_rng(n) for n in (1, 2, 3)]
    normal, empty = phantoms.brain_study(tuple(rngs), planes, False, 0.0)
    rngs = [np.random.default_rng(n) for n in (1, 2, 3)]
    abnormal, mask = phantoms.brain_study(tuple(rngs), planes, True, 0.0)
    assert not empty.any() and mask.any(axis=(1, 2)).sum() >= 3
    assert (abnormal - normal)[mask].mean() > 0.3
    assert np.abs(abnormal - normal)[~mask].mean() < 0.02
    assert abnormal[mask].mean() > np.percentile(normal[normal > 0.2], 95)


# ------------------------------------------------------------------------------------------- the folder


def test_rerun_replaces_an_earlier_cohort_but_refuses_foreign_files(tmp_path: Path) -> None:
    write_cohort(tmp_path / "a", **{**XRAY_ARGS, "studies": 6})
    write_cohort(tmp_path / "a", **{**XRAY_ARGS, "studies": 3})
    assert len(list((tmp_path / "a" / "dicom").iterdir())) == 3
    foreign = tmp_path / "b" / "dicom" / "scan.dcm"
    foreign.parent.mkdir(parents=True)
    foreign.write_bytes(b"not ours")
    with pytest.raises(FileExistsError):
        write_cohort(tmp_path / "b", **XRAY_ARGS)
    assert foreign.read_bytes() == b"not ours"


def test_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_cohort(tmp_path, "ct", 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        write_cohort(tmp_path, "xray", 0)
