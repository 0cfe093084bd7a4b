"""Plan of a synthetic cohort: made-up patients, studies, labels, dates, UIDs and per-series encodings.

Everything is decided here from the arguments and the seed before any pixel is drawn (``synth`` writes the
files), so the same arguments give the same plan, and every UID is hashed from the arguments.
"""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import dataclass, field, replace

import numpy as np
from pydicom.pixels import get_encoder
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless, RLELossless, generate_uid

ENCODER_PLUGINS = {  # lossless transfer syntax -> encoding plugins, in order of preference
    RLELossless: ("pylibjpeg", "pydicom"),
    JPEGLSLossless: ("pyjpegls",),
    JPEG2000Lossless: ("pylibjpeg",),
}
KIND_CODES = {"xray": 1, "mri": 2}
LAST_NAMES = ("DOE", "ROE", "SMITH", "MILLER", "NOVAK", "GARCIA", "KOWALSKI", "BERG", "OKAFOR", "TANAKA",
              "ROSSI", "DUBOIS", "SILVA", "NIELSEN", "MOREAU", "FISCHER", "PETROV", "WALSH", "HAAS",
              "LINDQVIST")
FIRST_NAMES = {"F": ("JANE", "ANNA", "MARIA", "ELENA", "SOFIA", "GRETA", "HELGA", "NORA", "IDA", "EVA"),
               "M": ("JOHN", "PETER", "LUCAS", "OMAR", "HUGO", "KARL", "MARCO", "IVAN", "LEO", "TOMAS")}
VENDORS = (("NORTHWIND MEDICAL", "NW-Rad 500", 12, "1.5"), ("HELIX IMAGING", "Helix Vista", 16, "3"),
           ("ORBIS HEALTH", "Orbis Prime", 12, "3"))  # name, model, MR BitsStored, MR field strength (T)
FIRST_STUDY_DAY = dt.date(2021, 3, 1)


@dataclass(frozen=True)
class Patient:
    """A made-up patient; only ever written inside DICOM headers and identities.csv."""

    name: str
    patient_id: str
    birth_date: str
    sex: str


@dataclass(frozen=True)
class StudyPlan:
    """Everything decided about one study before its pixels are drawn."""

    index: int
    patient: Patient
    uid: str
    accession: str
    date: str
    time: str
    abnormal: bool
    monochrome1: bool = False
    localizer: bool = False
    instance_order: str = "ascending"  # ascending | reversed | permuted (InstanceNumber against position)
    encodings: tuple[str, ...] = ()  # transfer syntax per series, in writing order


@dataclass(frozen=True)
class CohortPlan:
    """Cohort-wide settings, the studies, and the deterministic UID source."""

    kind: str
    seed: int
    difficulty: float
    base: str
    image_size: int
    slices: int
    studies: tuple[StudyPlan, ...]
    forbidden_in_uids: frozenset[str] = field(default_factory=frozenset)
    key: str = ""

    def uid(self, *parts: object) -> str:
        """A UID fixed by the cohort and ``parts``; never contains a birth date (leak checks stay exact)."""
        for salt in range(1000):
            uid = generate_uid(entropy_srcs=[self.key, *map(str, parts), str(salt)])
            if not any(s in uid for s in self.forbidden_in_uids):
                return uid
        raise RuntimeError("could not draw a UID free of identity strings")

    def rng(self, study: StudyPlan, purpose: int) -> np.random.Generator:
        """Generator for one study and purpose (0 header, 1 anatomy, 2 lesions, 3 noise and exposure).

        Anatomy follows the patient, so a patient's studies show the same body (as with real follow-ups).
        """
        subject = int(study.patient.patient_id[3:]) if purpose == 1 else study.index
        return np.random.default_rng([self.seed, KIND_CODES[self.kind], purpose, subject])


def available_encodings() -> dict[str, str]:
    """Lossless transfer syntaxes that the installed packages can encode, with the plugin to use."""
    found = {}
    for syntax, plugins in ENCODER_PLUGINS.items():
        encoder = get_encoder(syntax)
        usable = [p for p in plugins if p in encoder.available_plugins]
        if usable:
            found[syntax] = usable[0]
    return found


def exact_share(rng: np.random.Generator, n: int, fraction: float) -> np.ndarray:
    """Boolean flags with exactly round(n * fraction) set, at random positions."""
    flags = np.zeros(n, dtype=bool)
    flags[rng.permutation(n)[: int(round(n * float(np.clip(fraction, 0.0, 1.0))))]] = True
    return flags


def share_within_groups(rng: np.random.Generator, groups: list[str], fraction: float) -> np.ndarray:
    """Like ``exact_share`` over all items (exactly round(n * fraction) set), with every group's share as
    close to ``fraction`` as whole items allow (largest remainders get the leftover flags)."""
    names = sorted(set(groups))
    members = {g: [i for i, name in enumerate(groups) if name == g] for g in names}
    ideal = {g: len(members[g]) * float(np.clip(fraction, 0.0, 1.0)) for g in names}
    counts = {g: int(np.floor(ideal[g])) for g in names}
    leftover = int(round(len(groups) * float(np.clip(fraction, 0.0, 1.0)))) - sum(counts.values())
    ranked = sorted(names, key=lambda g: (ideal[g] - counts[g], rng.random()), reverse=True)
    for g in ranked[:leftover]:
        counts[g] += 1
    flags = np.zeros(len(groups), dtype=bool)
    for g in names:
        chosen = rng.permutation(members[g])[: counts[g]]
        flags[chosen] = True
    return flags


def real_bases(seed: int, kind: str, patients: list[Patient], owners: list[int]) -> list[str]:
    """The real base each study will be drawn on: the first draw of its patient's anatomy generator, as
    ``realbase.real_xray`` and ``realbase.real_volume`` make it (anatomy follows the patient)."""
    from pipelines.dicom import realbase

    weights = realbase.XRAY_WEIGHTS if kind == "xray" else realbase.available_mri_bases()
    return [realbase.pick_base(np.random.default_rng([seed, KIND_CODES[kind], 1, int(patients[o].patient_id[3:])]),
                               weights) for o in owners]


def patients_for_studies(rng: np.random.Generator, studies: int, multi_fraction: float) -> list[int]:
    """Patient index of each study; about ``multi_fraction`` of studies go to patients with 2-3 studies."""
    remaining = int(round(studies * np.clip(multi_fraction, 0.0, 1.0)))
    remaining = 2 if remaining == 1 and studies >= 2 else remaining
    sizes = []
    while remaining >= 2:
        size = 3 if remaining == 3 or (remaining >= 5 and rng.random() < 0.35) else 2
        sizes.append(size)
        remaining -= size
    sizes += [1] * (studies - sum(sizes))
    owners = np.repeat(np.arange(len(sizes)), sizes)
    return owners[rng.permutation(studies)].tolist()


def make_patients(rng: np.random.Generator, count: int) -> list[Patient]:
    """Distinct made-up patients: ``LAST^FIRST`` names, ``PID`` + 6 digits, birth dates 1940-2003."""
    ids = rng.choice(900_000, size=count, replace=False) + 100_000
    combos = rng.permutation(len(LAST_NAMES) * len(FIRST_NAMES["F"]) * 2)
    patients = []
    for i in range(count):
        combo = int(combos[i % len(combos)])
        sex = "FM"[combo % 2]
        first = FIRST_NAMES[sex][(combo // 2) % len(FIRST_NAMES[sex])]
        name = f"{LAST_NAMES[combo // (2 * len(FIRST_NAMES[sex]))]}^{first}"
        name += f"^{chr(65 + i // len(combos) - 1)}" if i >= len(combos) else ""
        birth = dt.date(int(rng.integers(1940, 2004)), int(rng.integers(1, 13)), int(rng.integers(1, 29)))
        patients.append(Patient(name, f"PID{ids[i]:06d}", birth.strftime("%Y%m%d"), sex))
    return patients


def plan_cohort(kind: str, studies: int, seed: int, *, abnormal_fraction: float = 0.5,
                difficulty: float = 0.5, image_size: int | None = None, slices: int | None = None,
                monochrome1_fraction: float = 0.25, compressed_fraction: float = 0.3,
                localizer_fraction: float = 0.2, multi_study_fraction: float = 0.3,
                shuffle_instance_numbers: bool = True, base: str = "phantom") -> CohortPlan:
    """Decide patients, labels, dates, UIDs, photometric, localizers, slice order and encodings."""
    arguments = {k: v for k, v in locals().items() if k != "base" or v != "phantom"}  # phantom UIDs as before
    key = f"medvit-synth|{sorted(arguments.items())!r}"  # every argument: other arguments, other UIDs
    if kind not in ("xray", "mri"):
        raise ValueError(f"kind must be 'xray' or 'mri', not {kind!r}")
    if base not in ("phantom", "real"):
        raise ValueError(f"base must be 'phantom' or 'real', not {base!r}")
    if studies < 1:
        raise ValueError("studies must be at least 1")
    rng = np.random.default_rng([seed, KIND_CODES[kind], 7919])
    owners = patients_for_studies(rng, studies, multi_study_fraction)
    patients = make_patients(rng, max(owners) + 1)
    days = rng.integers(0, 1000, studies)
    for owner in set(owners):  # a patient's studies in date order, in folder order
        mine = [i for i in range(studies) if owners[i] == owner]
        days[mine] = np.sort(days[mine])
    accessions = rng.choice(9_000_000, size=studies, replace=False) + 1_000_000
    abnormal = exact_share(rng, studies, abnormal_fraction)
    if base == "real":  # few real subjects: which one is an easy feature, so it must carry no label
        abnormal = share_within_groups(rng, real_bases(seed, kind, patients, owners), abnormal_fraction)
    mono1 = exact_share(rng, studies, monochrome1_fraction if kind == "xray" else 0.0)
    localizer = exact_share(rng, studies, localizer_fraction if kind == "mri" else 0.0)
    shuffled = exact_share(rng, studies, 0.5 if kind == "mri" and shuffle_instance_numbers else 0.0)
    series_counts = [1 + int(flag) for flag in localizer]
    syntaxes = list(available_encodings())
    packed = iter(exact_share(rng, sum(series_counts), compressed_fraction if syntaxes else 0.0))
    encoders = itertools.cycle(syntaxes or [ExplicitVRLittleEndian])
    default_size = {("xray", "phantom"): 256, ("mri", "phantom"): 64, ("xray", "real"): 512, ("mri", "real"): 128}
    plan = CohortPlan(kind=kind, seed=seed, difficulty=float(difficulty), key=key, base=base,
                      image_size=image_size or default_size[kind, base], slices=slices or 24,
                      forbidden_in_uids=frozenset(p.birth_date for p in patients), studies=())
    plans = []
    for i in range(studies):
        date = FIRST_STUDY_DAY + dt.timedelta(days=int(days[i]))
        order = "ascending" if not shuffled[i] else ("reversed", "permuted")[int(shuffled[:i].sum()) % 2]
        encodings = tuple(next(encoders) if next(packed) else ExplicitVRLittleEndian
                          for _ in range(series_counts[i]))
        plans.append(StudyPlan(
            index=i, patient=patients[owners[i]], uid=plan.uid("study", i),
            accession=f"ACC{accessions[i]:07d}",
            date=date.strftime("%Y%m%d"), time=f"{rng.integers(7, 19):02d}{rng.integers(0, 60):02d}00",
            abnormal=bool(abnormal[i]), monochrome1=bool(mono1[i]), localizer=bool(localizer[i]),
            instance_order=order, encodings=encodings))
    return replace(plan, studies=tuple(plans))
