"""Real anatomy for ``medvit synth --base real``: installed radiographs and MR volumes, and how to warp them.

No labelled real data installs offline, but real anatomy does (licences in ``data_cards/real_base.md``):

- X-ray: ``pydicom-data``'s chest CR ``RG1`` (PA, MONOCHROME1, 1955 x 1841) and extremity CR ``RG3``, and
  ``deid-data``'s lateral thorax DX (``animals/cat.dcm``).
- MRI: Debian ``mricron-data``'s Colin27 T1 brain ``ch2.nii.gz`` (1 mm, with its brain-extracted twin
  ``ch2bet.nii.gz``), and nilearn's MNI152 2009 T1 template when nilearn is installed.

Each base comes with a mask of where findings may go (lung fields, body, white matter). A study draws a
random warp of its base (``XrayWarp`` / ``VolumeWarp``): every output pixel maps to a point of the base, so
a test can undo the augmentation and compare. Bases are loaded once per process (``functools.cache``).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from scipy import ndimage

Array = np.ndarray


class MissingBase(RuntimeError):
    """A real base image is not installed; the message says how to install it."""


# ----------------------------------------------------------------------------------------------- X-ray

@dataclass(frozen=True)
class XrayBase:
    """A real radiograph as display intensity in [0, 1] (bright = dense), with where findings may go."""

    name: str
    image: Array
    region: Array  # float 0..1: lung fields (chest) or the body (other anatomy)
    pixel_mm: float  # base pixel size after downsampling
    body_part: str
    view: str


# Lung fields of RG1 (display orientation, fraction of width, height): hand-traced on the image.
RG1_LUNGS = (
    ((0.18, 0.10), (0.38, 0.08), (0.43, 0.20), (0.44, 0.46), (0.41, 0.60), (0.34, 0.67), (0.15, 0.71),
     (0.12, 0.46), (0.13, 0.25)),
    ((0.59, 0.10), (0.79, 0.09), (0.86, 0.26), (0.88, 0.50), (0.87, 0.74), (0.71, 0.72), (0.60, 0.64),
     (0.55, 0.46), (0.56, 0.20)),
)
# The cat's lateral thorax (deid-data), same convention.
CAT_THORAX = (((0.22, 0.30), (0.40, 0.26), (0.56, 0.30), (0.58, 0.52), (0.42, 0.62), (0.24, 0.58)),)
XRAY_WEIGHTS = {"rg1": 0.7, "rg3": 0.15, "cat": 0.15}
BASE_MAX_SIDE = 1024


def package_file(module: str, relative: str, install: str) -> Path:
    """A data file inside an installed package, or ``MissingBase`` naming the install command."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingBase(f"the real base needs the '{install}' package: pip install {install} (or make install)")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise MissingBase(f"'{install}' is installed without {relative}: pip install --force-reinstall {install}")
    return path


def polygon_mask(shape: tuple[int, int], polygons: tuple) -> Array:
    """Soft 0..1 mask of polygons given in fractions of (width, height)."""
    from matplotlib.path import Path as PolyPath

    rows, cols = shape
    yy, xx = np.mgrid[0:rows, 0:cols]
    points = np.column_stack([(xx.ravel() + 0.5) / cols, (yy.ravel() + 0.5) / rows])
    mask = np.zeros(rows * cols, dtype=bool)
    for poly in polygons:
        mask |= PolyPath(np.asarray(poly)).contains_points(points)
    return ndimage.gaussian_filter(mask.reshape(shape).astype(np.float32), max(shape) / 200)


def display_pixels(path: Path) -> tuple[Array, float]:
    """Pixels of a radiograph, bright = dense, scaled to [0, 1] over the 0.5-99.5th percentile, downsampled
    to at most ``BASE_MAX_SIDE``; and the pixel size in mm (0.15 mm detector pitch when the file has none)."""
    import pydicom

    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array.astype(np.float32)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        pixels = pixels.max() - pixels
    spacing = ds.get("ImagerPixelSpacing") or ds.get("PixelSpacing") or [0.0]
    pitch = float(spacing[0]) or 0.15
    factor = max(pixels.shape) / BASE_MAX_SIDE
    if factor > 1:
        pixels = ndimage.zoom(ndimage.gaussian_filter(pixels, 0.5 * factor), 1 / factor, order=1)
    low, high = np.percentile(pixels, [0.5, 99.5])
    return np.clip((pixels - low) / (high - low), 0, 1), pitch * max(factor, 1.0)


@cache
def xray_base(name: str) -> XrayBase:
    """Load one X-ray base by name (``rg1``, ``rg3``, ``cat``)."""
    if name == "rg1":
        image, mm = display_pixels(package_file("data_store", "data/RG1_UNCI.dcm", "pydicom-data"))
        return XrayBase(name, image, polygon_mask(image.shape, RG1_LUNGS), mm, "CHEST", "PA")
    if name == "cat":
        image, mm = display_pixels(package_file("deid_data", "data/animals/cat.dcm", "deid-data"))
        return XrayBase(name, image, polygon_mask(image.shape, CAT_THORAX), mm, "CHEST", "LL")
    if name == "rg3":
        image, mm = display_pixels(package_file("data_store", "data/RG3_UNCI.dcm", "pydicom-data"))
        body = ndimage.binary_erosion(ndimage.gaussian_filter(image, 4) > 0.15, iterations=25)
        return XrayBase(name, image, ndimage.gaussian_filter(body.astype(np.float32), 4), mm, "EXTREMITY", "AP")
    raise ValueError(f"unknown X-ray base {name!r}")


def check_xray_bases() -> None:
    """Raise ``MissingBase`` early (before any file is written) when an X-ray base is not installed."""
    for name in XRAY_WEIGHTS:
        xray_base(name)


@dataclass(frozen=True)
class XrayWarp:
    """Output pixel (row, col) -> base pixel: ``base = matrix @ (row, col) + offset + elastic(row, col)``."""

    matrix: Array
    offset: Array
    elastic: Array  # (2, rows, cols) displacement in base pixels

    def coordinates(self) -> Array:
        """Base coordinates of every output pixel, shape (2, rows, cols)."""
        rows, cols = self.elastic.shape[1:]
        grid = np.mgrid[0:rows, 0:cols].astype(np.float32)
        return np.einsum("ij,jrc->irc", self.matrix, grid) + self.offset[:, None, None] + self.elastic

    def apply(self, image: Array, cval: float = 0.0) -> Array:
        """Sample ``image`` (a base-sized array) on the output grid."""
        return ndimage.map_coordinates(image, self.coordinates(), order=1, mode="constant", cval=cval)


def smooth_field(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> Array:
    """Zero-mean, unit-std smooth random field (Gaussian-filtered white noise)."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap")
    return (field - field.mean()) / (field.std() + 1e-9)


def random_xray_warp(anatomy: np.random.Generator, exposure: np.random.Generator, base: XrayBase,
                     rows: int, cols: int) -> XrayWarp:
    """Patient size and shape (``anatomy``), positioning and field of view (``exposure``)."""
    b_rows, b_cols = base.image.shape
    width = anatomy.uniform(0.9, 1.1)  # patient habitus: wider or narrower than the base patient
    fov = exposure.uniform(0.9, 1.2)  # > 1: more of the base in view (smaller anatomy)
    scale = fov * max(b_rows / rows, b_cols / cols)
    angle = np.radians(exposure.uniform(-7, 7))
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    matrix = rot @ np.diag([scale, scale * width])
    shift = exposure.uniform(-0.06, 0.06, 2) * np.array([b_rows, b_cols])
    centre_out = np.array([(rows - 1) / 2, (cols - 1) / 2])
    offset = np.array([(b_rows - 1) / 2, (b_cols - 1) / 2]) + shift - matrix @ centre_out
    amplitude = anatomy.uniform(0.005, 0.015) * max(b_rows, b_cols)
    small = (max(rows // 16, 4), max(cols // 16, 4))
    elastic = np.stack([smooth_field(anatomy, small, 1.5) for _ in range(2)]) * amplitude
    elastic = np.stack([ndimage.zoom(e, (rows / small[0], cols / small[1]), order=1) for e in elastic])
    return XrayWarp(matrix.astype(np.float32), offset.astype(np.float32), elastic.astype(np.float32))


def acquisition_curve(image: Array, exposure: np.random.Generator) -> Array:
    """Detector response and vendor processing: gamma, window, edge enhancement, quantum and readout noise.

    ``image`` is display intensity (bright = dense) in about [0, 1]; the result stays in [0, 1].
    """
    gamma = exposure.uniform(0.7, 1.4)
    low, high = exposure.uniform(-0.05, 0.08), exposure.uniform(0.9, 1.1)
    out = np.clip((image - low) / (high - low), 0, 1) ** gamma
    if exposure.random() < 0.5:  # unsharp masking, as many vendors apply
        blur = ndimage.gaussian_filter(out, exposure.uniform(3, 10))
        out = out + exposure.uniform(0.2, 0.8) * (out - blur)
    dose = exposure.uniform(0.004, 0.02)
    out = out + dose * np.sqrt(np.clip(1.0 - out, 0.02, 1)) * exposure.standard_normal(out.shape)
    out = out + 0.003 * exposure.standard_normal(out.shape)
    return np.clip(out, 0, 1).astype(np.float32)


def collimate(image: Array, exposure: np.random.Generator) -> Array:
    """Collimator blades (unexposed, bright borders) and, for a share of images, a black detector mask."""
    rows, cols = image.shape
    out = image.copy()
    if exposure.random() < 0.6:
        top, bottom = (exposure.uniform(0, 0.06, 2) * rows).astype(int)
        left, right = (exposure.uniform(0, 0.06, 2) * cols).astype(int)
        fill = 0.0 if exposure.random() < 0.3 else exposure.uniform(0.85, 1.0)
        out[:top], out[rows - bottom:], out[:, :left], out[:, cols - right:] = fill, fill, fill, fill
    if exposure.random() < 0.3:  # a lead side marker
        size = max(rows // 40, 3)
        r, c = int(exposure.uniform(0.05, 0.15) * rows), int(exposure.uniform(0.05, 0.95) * cols)
        out[r:r + size, c:c + size] = 1.0
    return out


@dataclass(frozen=True)
class RealXray:
    """One rendered real-base radiograph: display intensity in [0, 1], the lesion mask, and how it was made."""

    image: Array
    lesion_mask: Array
    base: str
    warp: XrayWarp
    findings: tuple[str, ...]


def pick_base(rng: np.random.Generator, weights: dict[str, float]) -> str:
    names = list(weights)
    probs = np.asarray([weights[n] for n in names], dtype=float)
    return names[int(rng.choice(len(names), p=probs / probs.sum()))]


def real_xray(rngs: tuple[np.random.Generator, np.random.Generator, np.random.Generator], rows: int,
              cols: int, abnormal: bool, difficulty: float) -> RealXray:
    """A radiograph of a real base under a random warp and acquisition, with findings when ``abnormal``.

    ``rngs``: anatomy (the patient: base, habitus), lesion, and exposure (positioning, contrast, noise).
    Lesions are drawn in the warped image's attenuation space, before the acquisition curve, so they
    change with contrast and noise as the anatomy does.
    """
    from pipelines.dicom import lesions

    anatomy, lesion_rng, exposure = rngs
    base = xray_base(pick_base(anatomy, XRAY_WEIGHTS))
    warp = random_xray_warp(anatomy, exposure, base, rows, cols)
    image = warp.apply(base.image)
    region = warp.apply(base.region)
    mm = float(np.mean(np.abs(np.linalg.eigvals(warp.matrix)))) * base.pixel_mm
    mask = np.zeros((rows, cols), dtype=bool)
    findings: tuple[str, ...] = ()
    if abnormal:
        added, mask, findings = lesions.xray_findings(lesion_rng, region, mm, difficulty,
                                                      chest=base.body_part == "CHEST")
        image = image + added * (1.05 - image)  # denser tissue saturates: less visible over bone
    pixels = collimate(acquisition_curve(image, exposure), exposure)
    return RealXray(pixels, mask, base.name, warp, findings)


# ----------------------------------------------------------------------------------------------- MRI

@dataclass(frozen=True)
class VolumeBase:
    """A real T1 brain: intensities (0..1 at the white-matter peak), masks, and voxel -> LPS mm."""

    name: str
    volume: Array
    brain: Array  # bool
    white_matter: Array  # bool
    affine_lps: Array  # 4x4: voxel index -> patient LPS mm


MRI_WEIGHTS = {"ch2": 0.7, "mni152": 0.3}
MRICRON = Path("/usr/share/mricron/templates")


NILEARN_MNI = "datasets/data/mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"


def nilearn_template() -> tuple[Path, Path, Path]:
    """nilearn's bundled MNI152 2009 T1 with its grey- and white-matter probability maps."""
    return tuple(package_file("nilearn", NILEARN_MNI.format(part), "nilearn") for part in ("t1", "gm", "wm"))


def load_volume(path: Path) -> tuple[Array, Array]:
    import nibabel as nib

    image = nib.load(str(path))
    ras_to_lps = np.diag([-1.0, -1.0, 1.0, 1.0])
    return np.asarray(image.get_fdata(dtype=np.float32)), ras_to_lps @ image.affine


@cache
def volume_base(name: str) -> VolumeBase:
    """Load one MR base by name (``ch2``, ``mni152``) with brain and white-matter masks."""
    if name == "ch2":
        t1, bet = MRICRON / "ch2.nii.gz", MRICRON / "ch2bet.nii.gz"
        if not t1.is_file() or not bet.is_file():
            raise MissingBase("the real MRI base needs Debian's mricron-data (ch2.nii.gz): "
                              "apt-get install mricron-data (or make install)")
        volume, affine = load_volume(t1)
        brain = load_volume(bet)[0] > 0
    elif name == "mni152":
        t1, grey, white = (load_volume(path)[0] for path in nilearn_template())
        volume, affine = t1, load_volume(nilearn_template()[0])[1]
        brain = grey + white > 0.5
    else:
        raise ValueError(f"unknown MRI base {name!r}")
    wm_peak = float(np.percentile(volume[brain], 85))
    volume = volume / wm_peak
    smooth = ndimage.gaussian_filter(volume, 1.0)
    white = ndimage.binary_erosion(brain & (smooth > 0.9), iterations=2)
    return VolumeBase(name, volume.astype(np.float32), brain, white, affine)


def available_mri_bases() -> dict[str, float]:
    """The MR bases installed here with their weights; ``MissingBase`` when none is."""
    found = {}
    for name, weight in MRI_WEIGHTS.items():
        try:
            volume_base(name)
        except MissingBase:
            continue
        found[name] = weight
    if "ch2" not in found:
        volume_base("ch2")  # raises with the install line
    return found


@dataclass(frozen=True)
class VolumeWarp:
    """Patient LPS mm -> base voxel index: a rigid-plus-scale map and a smooth elastic displacement."""

    matrix: Array  # 3x3, applied to (point - centre)
    centre: Array  # head centre of the study in patient mm
    base_centre: Array  # matching point of the base in its own LPS mm
    elastic: Array  # (3, n, n, n) displacement in mm on a coarse grid over +-128 mm
    base: str

    def to_base_mm(self, points: Array) -> Array:
        """Patient LPS points (..., 3) -> base LPS mm (..., 3)."""
        moved = (points - self.centre) @ self.matrix.T + self.base_centre
        n = self.elastic.shape[1]
        grid = (points - self.centre + 128.0) / 256.0 * (n - 1)
        disp = np.stack([ndimage.map_coordinates(e, np.moveaxis(grid, -1, 0), order=1, mode="nearest")
                         for e in self.elastic], axis=-1)
        return moved + disp


def rotation(angles: Array) -> Array:
    a, b, c = angles
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def random_volume_warp(anatomy: np.random.Generator, base: VolumeBase, centre: Array) -> VolumeWarp:
    """Head size, shape and position of a patient: scale, rotation, translation and a smooth warp."""
    scale = anatomy.uniform(0.9, 1.1) * anatomy.uniform(0.96, 1.04, 3)
    angles = np.radians(anatomy.uniform(-8, 8, 3))
    matrix = np.diag(1.0 / scale) @ rotation(angles).T
    brain_vox = np.argwhere(base.brain).mean(axis=0)
    base_centre = base.affine_lps[:3, :3] @ brain_vox + base.affine_lps[:3, 3]
    elastic = np.stack([smooth_field(anatomy, (9, 9, 9), 1.0) for _ in range(3)]) * anatomy.uniform(1.0, 3.0)
    study_centre = np.asarray(centre) + anatomy.uniform(-6, 6, 3)
    return VolumeWarp(matrix, study_centre, base_centre, elastic.astype(np.float32), base.name)


def sample(volume: Array, voxels: Array) -> Array:
    return ndimage.map_coordinates(volume, voxels, order=1, mode="constant", cval=0.0)


@dataclass(frozen=True)
class RealVolume:
    """Slices of a real-base head on the study's planes (T1, about 0..1.2), the lesion mask, provenance."""

    values: Array
    lesion_mask: Array
    base: str
    warp: VolumeWarp
    findings: tuple[str, ...]


def real_volume(rngs: tuple[np.random.Generator, np.random.Generator, np.random.Generator], points: Array,
                normal: Array, thickness: float, abnormal: bool, difficulty: float, centre: Array) -> RealVolume:
    """A real T1 brain sampled at ``points`` (slices, rows, cols, 3; patient LPS mm), averaged over the
    slice ``thickness`` along ``normal``, with a bias field and Rician noise; findings when ``abnormal``."""
    from pipelines.dicom import lesions

    anatomy, lesion_rng, noise = rngs
    base = volume_base(pick_base(anatomy, available_mri_bases()))
    warp = random_volume_warp(anatomy, base, centre)
    centre_mm = warp.to_base_mm(points)
    changes, displace, findings = (lesions.brain_findings(lesion_rng, base.white_matter, base.affine_lps,
                                                          centre_mm, difficulty) if abnormal else ([], None, ()))
    inverse = np.linalg.inv(base.affine_lps)
    slabs = []
    for offset in np.linspace(-0.4, 0.4, 3) * thickness:  # slice thickness: average across the slab
        mm = warp.to_base_mm(points + offset * normal)
        mm = displace(mm) if displace is not None else mm
        slabs.append(sample(base.volume, np.moveaxis(mm @ inverse[:3, :3].T + inverse[:3, 3], -1, 0)))
    values = np.mean(slabs, axis=0)
    mask = np.zeros(values.shape, dtype=bool)
    for _, factor, added in changes:
        values = values * factor + added
        mask |= (np.abs(1 - factor) > 0.05) | (added > 0.05)
    values = np.clip(values, 0, None) ** noise.uniform(0.85, 1.2)  # sequence and vendor contrast
    coarse = tuple(max(s // 8, 2) for s in values.shape)
    bias = 1.0 + noise.uniform(0.05, 0.2) * smooth_field(noise, coarse, 1.0)
    bias = ndimage.zoom(bias, [s / b for s, b in zip(values.shape, coarse, strict=True)], order=1)
    sigma = noise.uniform(0.015, 0.04)
    real = values * bias + sigma * noise.standard_normal(values.shape)
    imag = sigma * noise.standard_normal(values.shape)
    return RealVolume(np.sqrt(real**2 + imag**2).astype(np.float32), mask, base.name, warp, findings)
