"""Anatomy-like phantoms for synthetic cohorts: a chest radiograph and a brain MR volume, with lesions.

Intensities are floats in about [0, 1] (bright = dense on the radiograph; T2-FLAIR contrast on the MR, so
CSF is dark and white-matter lesions are bright). The brain is defined in patient coordinates (mm, DICOM LPS)
and sampled on :class:`Plane` s, so axial, oblique, sagittal and localizer slices all show the same head.
Every function draws its randomness from the ``numpy.random.Generator`` it is given, so a seed fixes the
picture. Anatomy and lesions take separate generators: the same anatomy seed with and without lesions gives
the same patient, which is how the tests isolate what a lesion changes.

``difficulty`` is in [0, 1]: 0 gives large, high-contrast lesions; 1 gives small, faint ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Array = np.ndarray


def lerp(easy: float, hard: float, difficulty: float) -> float:
    """Interpolate a lesion property between its easy (0) and subtle (1) value."""
    d = float(np.clip(difficulty, 0.0, 1.0))
    return easy + (hard - easy) * d


def soft_inside(signed_distance: Array, edge: float) -> Array:
    """Smooth 0..1 membership from a signed distance (positive inside); ``edge`` sets the blur width."""
    return 0.5 + 0.5 * np.tanh(signed_distance / (2.0 * edge))


def smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma_px: float) -> Array:
    """White noise low-pass filtered with a Gaussian of ``sigma_px`` (via FFT), scaled to unit std."""
    spectrum = np.fft.rfftn(rng.standard_normal(shape, dtype=np.float32))
    for axis, n in enumerate(shape):
        freqs = np.fft.rfftfreq(n) if axis == len(shape) - 1 else np.fft.fftfreq(n)
        gain = np.exp(-2.0 * (np.pi * sigma_px * freqs) ** 2).astype(np.float32)
        spectrum *= gain.reshape([-1 if a == axis else 1 for a in range(len(shape))])
    smooth = np.fft.irfftn(spectrum, s=shape, axes=tuple(range(len(shape))))
    return (smooth - smooth.mean()) / (smooth.std() + 1e-12)


# ----------------------------------------------------------------------------------------------- chest

# Lesion (easy, subtle) extremes, in grid units (half the larger image side) and display intensity.
NODULE_RADIUS, NODULE_CONTRAST = (0.14, 0.05), (0.5, 0.08)
OPACITY_RADIUS, OPACITY_CONTRAST = (0.3, 0.16), (0.45, 0.08)


@dataclass(frozen=True)
class ChestImage:
    """A rendered chest radiograph: ``image`` in [0, 1] and the soft ``lung`` mask (both rows x cols)."""

    image: Array
    lung: Array


def chest_grid(rows: int, cols: int) -> tuple[Array, Array]:
    """Coordinates (u across, v down) in units of half the larger side, centred on the image."""
    half = max(rows, cols) / 2.0
    v = ((np.arange(rows) + 0.5 - rows / 2.0) / half).astype(np.float32)
    u = ((np.arange(cols) + 0.5 - cols / 2.0) / half).astype(np.float32)
    return u[None, :], v[:, None]


def ellipse_distance(u: Array, v: Array, cu: float, cv: float, au: float, av: float) -> Array:
    """Approximate signed distance to an axis-aligned ellipse (positive inside, in grid units)."""
    r = np.sqrt(((u - cu) / au) ** 2 + ((v - cv) / av) ** 2)
    return (1.0 - r) * min(au, av)


def rib_bands(u: Array, v: Array, rng: np.random.Generator, scale: float) -> Array:
    """Posterior ribs: ten arcs per side rising from the spine and falling laterally, evenly spaced."""
    top, gap = (-0.72 + rng.uniform(-0.03, 0.03)) * scale, rng.uniform(0.118, 0.13) * scale
    au = np.abs(u) / scale
    warped = v - rng.uniform(0.75, 1.05) * scale * (au - 0.5) ** 2 - top  # 0 on the first rib
    index = np.clip(np.rint(warped / gap), 0, 9)
    bands = np.exp(-(((warped - index * gap) / (0.022 * scale)) ** 2))
    lateral = soft_inside(0.86 - au, 0.03) * soft_inside(au - 0.09, 0.02)
    return bands * lateral


def clavicles(u: Array, v: Array, scale: float) -> Array:
    """Two slanted bright bars near the top of the thorax."""
    au = np.abs(u) / scale
    centre = (-0.74 - 0.1 * au) * scale
    bar = np.exp(-(((v - centre) / (0.03 * scale)) ** 2))
    return bar * soft_inside(0.6 - au, 0.03) * soft_inside(au - 0.06, 0.02)


def spine(u: Array, v: Array, scale: float) -> Array:
    """Vertebral column: a central band with periodic vertebral bodies."""
    column = soft_inside(0.075 * scale - np.abs(u), 0.01)
    bodies = 0.75 + 0.25 * np.cos(2.0 * np.pi * v / (0.1 * scale)) ** 2
    return column * bodies


def chest_radiograph(rng: np.random.Generator, exposure_rng: np.random.Generator, rows: int, cols: int
                     ) -> ChestImage:
    """Render a PA/AP chest: soft tissue, dark lungs, heart, spine, ribs, clavicles and smooth noise.

    ``rng`` draws the patient's anatomy; ``exposure_rng`` the positioning, exposure and noise of this image.
    Image columns run toward the patient's left (PatientOrientation ``L\\F``): the heart sits right of centre.
    """
    u, v = chest_grid(rows, cols)
    scale = rng.uniform(0.9, 1.05)
    u = u - exposure_rng.uniform(-0.04, 0.04)
    v = v - exposure_rng.uniform(-0.04, 0.04)
    body = soft_inside(ellipse_distance(u, v, 0.0, 0.12 * scale, 0.92 * scale, 1.15 * scale), 0.02)
    lung_w, lung_h = rng.uniform(0.24, 0.3) * scale, rng.uniform(0.5, 0.6) * scale
    lungs = [
        soft_inside(ellipse_distance(u, v, side * 0.37 * scale, -0.08 * scale, lung_w, lung_h), 0.02)
        for side in (-1.0, 1.0)
    ]
    lung = np.maximum(*lungs)
    heart = soft_inside(
        ellipse_distance(u, v, 0.13 * scale, 0.27 * scale, rng.uniform(0.22, 0.28) * scale, 0.2 * scale), 0.03
    )
    image = 0.04 + 0.42 * body
    image = image - 0.28 * lung * (1.0 - 0.7 * heart)
    image = image + 0.22 * heart + 0.2 * spine(u, v, scale) * body
    image = image + 0.1 * rib_bands(u, v, rng, scale) * body + 0.16 * clavicles(u, v, scale) * body
    image = image + 0.12 * body * soft_inside(v - 0.55 * scale, 0.05)  # abdomen below the diaphragm
    image = image * exposure_rng.uniform(0.9, 1.1)
    image = image + 0.02 * smooth_noise(exposure_rng, (rows, cols), max(rows, cols) / 24)
    image = image + 0.006 * smooth_noise(exposure_rng, (rows, cols), 1.0)
    return ChestImage(image=np.clip(image, 0.0, 1.0).astype(np.float32), lung=lung.astype(np.float32))


def chest_lesions(rng: np.random.Generator, lung: Array, difficulty: float) -> tuple[Array, Array]:
    """Nodules and/or a diffuse opacity inside the lungs; returns (intensity to add, boolean lesion mask)."""
    rows, cols = lung.shape
    u, v = chest_grid(rows, cols)
    candidates = np.argwhere(lung > 0.95)
    added = np.zeros((rows, cols), dtype=np.float64)
    kind = rng.choice(["nodules", "opacity", "both"], p=[0.5, 0.25, 0.25])
    half = max(rows, cols) / 2.0
    if kind in ("nodules", "both"):
        for _ in range(int(rng.integers(1, 4))):
            r, c = candidates[rng.integers(len(candidates))]
            radius = lerp(*NODULE_RADIUS, difficulty) * rng.uniform(0.8, 1.2)
            dist = radius - np.hypot(u - (c + 0.5 - cols / 2) / half, v - (r + 0.5 - rows / 2) / half)
            added += lerp(*NODULE_CONTRAST, difficulty) * soft_inside(dist, 0.012)
    if kind in ("opacity", "both"):
        r, c = candidates[rng.integers(len(candidates))]
        radius = lerp(*OPACITY_RADIUS, difficulty) * rng.uniform(0.85, 1.15)
        dist = radius - np.hypot(u - (c + 0.5 - cols / 2) / half, v - (r + 0.5 - rows / 2) / half)
        texture = 0.75 + 0.25 * smooth_noise(rng, (rows, cols), half / 20)
        added += lerp(*OPACITY_CONTRAST, difficulty) * soft_inside(dist, 0.05) * np.clip(texture, 0.0, None)
    added *= np.clip(lung * 1.2, 0.0, 1.0)
    mask = added > 0.5 * added.max()
    return added.astype(np.float32), mask


def chest_study(rngs: tuple[np.random.Generator, np.random.Generator, np.random.Generator], rows: int,
                cols: int, abnormal: bool, difficulty: float) -> tuple[Array, Array]:
    """A patient's chest picture in [0, 1], with lesions when ``abnormal``, and the boolean lesion mask.

    ``rngs`` are the anatomy, lesion and exposure generators: the same anatomy generator, the same patient.
    """
    anatomy_rng, lesion_rng, exposure_rng = rngs
    chest = chest_radiograph(anatomy_rng, exposure_rng, rows, cols)
    if not abnormal:
        return chest.image, np.zeros((rows, cols), dtype=bool)
    added, mask = chest_lesions(lesion_rng, chest.lung, difficulty)
    return np.clip(chest.image + added, 0.0, 1.0), mask


# ----------------------------------------------------------------------------------------------- brain

# Brain lesion (easy, subtle) extremes: radius in mm and added FLAIR intensity (white matter is ~0.36).
BLOB_RADIUS_MM, BLOB_CONTRAST = (18.0, 6.0), (0.6, 0.1)
AXIAL, SAGITTAL, CORONAL = ((1, 0, 0), (0, 1, 0)), ((0, 1, 0), (0, 0, -1)), ((1, 0, 0), (0, 0, -1))


@dataclass(frozen=True)
class Plane:
    """Slice geometry: direction cosines along a row and down a column, square pixel spacing (mm), size,
    and the patient position of the first pixel (DICOM ImagePositionPatient)."""

    row_dir: Array
    col_dir: Array
    spacing: float
    size: int
    corner: Array

    @property
    def normal(self) -> Array:
        """Slice normal: row direction x column direction."""
        return np.cross(self.row_dir, self.col_dir)

    def points(self) -> Array:
        """Patient coordinates (mm) of every pixel centre, shape (size, size, 3)."""
        steps = np.arange(self.size) * self.spacing
        return self.corner + steps[None, :, None] * self.row_dir + steps[:, None, None] * self.col_dir


def centred_plane(axes: tuple, spacing: float, size: int, centre: Array) -> Plane:
    """A plane with orientation ``axes`` (row, column direction) whose middle lies at ``centre``;
    the corner is rounded to 0.1 micron so that the written position is exactly the one drawn."""
    row_dir, col_dir = (np.asarray(a, dtype=float) for a in axes)
    corner = np.round(centre - (size - 1) / 2 * spacing * (row_dir + col_dir), 4)
    return Plane(row_dir, col_dir, spacing, size, corner)


def oblique_axes(rng: np.random.Generator) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Axial plane tilted 10-20 degrees about left-right and up to 8 degrees about the head axis."""
    a, b = np.radians(rng.uniform(10, 20)), np.radians(rng.uniform(-8, 8))
    tilt = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    turn = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    rot = turn @ tilt
    return tuple(np.round(rot[:, 0], 6)), tuple(np.round(rot[:, 1], 6))


@dataclass(frozen=True)
class Blob:
    """A spherical lesion in patient coordinates (mm): centre, radius and added intensity."""

    centre: tuple[float, float, float]
    radius: float
    contrast: float


@dataclass(frozen=True)
class Head:
    """Per-patient head shape: semi-axes (mm, LPS x/y/z), centre offset and a gyral pattern phase."""

    semi_axes: tuple[float, float, float]
    centre: tuple[float, float, float]
    gyral_phase: tuple[float, float, float]


def random_head(rng: np.random.Generator) -> Head:
    """Draw a plausible adult head: about 145 x 185 x 160 mm, slightly off-centre."""
    size = rng.uniform(0.93, 1.07)
    axes = (72.0 * size * rng.uniform(0.96, 1.04), 92.0 * size, 80.0 * size)
    return Head(
        semi_axes=axes,
        centre=tuple(float(x) for x in rng.uniform(-4.0, 4.0, 3)),
        gyral_phase=tuple(float(x) for x in rng.uniform(0.0, 2 * np.pi, 3)),
    )


def head_radius(head: Head, points: Array) -> Array:
    """Normalised ellipsoidal radius of ``points`` (..., 3) in mm: 1 on the scalp surface."""
    rel = (points - np.asarray(head.centre)) / np.asarray(head.semi_axes)
    return np.sqrt((rel**2).sum(axis=-1))


def brain_flair(head: Head, points: Array) -> Array:
    """T2-FLAIR intensity at ``points`` (..., 3): bright scalp, dark skull and CSF, grey brighter than white.

    CSF is suppressed (dark rim and ventricles), so white-matter lesions are the brightest thing in the brain.
    """
    edge = 0.012
    radius = head_radius(head, points)
    rel = points - np.asarray(head.centre)
    px, py, pz = np.asarray(head.gyral_phase)
    gyri = (np.sin(rel[..., 0] / 5.0 + px) + np.sin(rel[..., 1] / 6.0 + py) + np.sin(rel[..., 2] / 5.5 + pz))
    gyri = gyri / 3.0  # folding of the grey/white boundary
    brain = soft_inside(0.82 - radius, edge)
    value = 0.6 * soft_inside(1.0 - radius, edge)  # scalp and fat
    value -= 0.55 * soft_inside(0.93 - radius, edge)  # skull, then the CSF rim: dark
    value += 0.45 * brain  # cortex (grey matter) ~0.5
    value -= 0.14 * soft_inside(0.68 + 0.06 * gyri - radius, edge)  # white matter ~0.36
    semi = np.array([7.0, 22.0, 10.0]) * np.asarray(head.semi_axes) / np.array([72.0, 92.0, 80.0])
    for side in (-1.0, 1.0):
        centre = np.array([side * 8.0, -4.0, 8.0])
        r = np.sqrt((((rel - centre) / semi) ** 2).sum(axis=-1))
        value -= 0.28 * soft_inside(1.0 - r, 0.08) * brain  # ventricles: dark CSF
    return value


def brain_lesions(rng: np.random.Generator, head: Head, difficulty: float) -> list[Blob]:
    """One to three white-matter blobs; radius and contrast shrink as ``difficulty`` grows."""
    blobs: list[Blob] = []
    count = int(rng.integers(1, 4))
    while len(blobs) < count:
        offset = rng.uniform(-0.55, 0.55, 3) * np.asarray(head.semi_axes)
        if np.linalg.norm(offset / np.asarray(head.semi_axes)) > 0.55 or abs(offset[0]) < 16:
            continue  # keep it in the white matter, clear of the midline ventricles
        centre = tuple(float(c) for c in np.asarray(head.centre) + offset)
        radius = lerp(*BLOB_RADIUS_MM, difficulty) * rng.uniform(0.85, 1.15)
        blobs.append(Blob(centre=centre, radius=radius, contrast=lerp(*BLOB_CONTRAST, difficulty)))
    return blobs


def blob_intensity(blobs: list[Blob], points: Array) -> tuple[Array, Array]:
    """Intensity added by ``blobs`` at ``points`` (..., 3), and the boolean mask of their cores."""
    added = np.zeros(points.shape[:-1])
    mask = np.zeros(points.shape[:-1], dtype=bool)
    for blob in blobs:
        dist = np.sqrt(((points - np.asarray(blob.centre)) ** 2).sum(axis=-1))
        added += blob.contrast * soft_inside(blob.radius - dist, 1.5)
        mask |= dist < blob.radius * 0.8
    return added, mask


def mr_noise(rng: np.random.Generator, clean: Array, sigma: float) -> Array:
    """Rician magnitude noise plus a smooth multiplicative bias field."""
    bias = 1.0 + 0.08 * smooth_noise(rng, clean.shape, max(clean.shape) / 3)
    real = clean * bias + sigma * rng.standard_normal(clean.shape)
    imag = sigma * rng.standard_normal(clean.shape)
    return np.sqrt(real**2 + imag**2)


def slice_stack(rng: np.random.Generator, size: int, count: int, coverage: float = 150.0
                ) -> tuple[str, list[Plane], Array]:
    """A diagnostic slab: view name (AX, AX OBL or SAG), planes stepping along the normal from the lowest
    position (``coverage`` mm, about 240 mm field of view), and the slab centre."""
    view = ("AX", "AX OBL", "SAG")[int(rng.choice(3, p=[0.65, 0.2, 0.15]))]
    axes = oblique_axes(rng) if view == "AX OBL" else (SAGITTAL if view == "SAG" else AXIAL)
    step = float(np.clip(round(coverage / count, 1), 1.0, 8.0))
    spacing = round(float(rng.uniform(220, 250)) / size, 4)
    centre = rng.uniform(-5, 5, 3)
    normal = np.cross(*(np.asarray(a, dtype=float) for a in axes))
    offsets = (np.arange(count) - (count - 1) / 2) * step
    return view, [centred_plane(axes, spacing, size, centre + o * normal) for o in offsets], centre


def brain_study(rngs: tuple[np.random.Generator, np.random.Generator, np.random.Generator],
                planes: list[Plane], abnormal: bool, difficulty: float) -> tuple[Array, Array]:
    """Noisy FLAIR intensities (slices, size, size) of one patient's head on ``planes``, and the lesion mask.

    ``rngs`` are the anatomy, lesion and noise generators; the same ones give the same head on any planes.
    """
    anatomy_rng, lesion_rng, noise_rng = rngs
    head = random_head(anatomy_rng)
    points = np.stack([p.points() for p in planes])
    clean = brain_flair(head, points)
    mask = np.zeros(clean.shape, dtype=bool)
    if abnormal:
        added, mask = blob_intensity(brain_lesions(lesion_rng, head, difficulty), points)
        clean = clean + added
    return mr_noise(noise_rng, clean, 0.025), mask
