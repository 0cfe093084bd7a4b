"""Do MRI findings survive the preprocessing grid? Paired twins, written as DICOM and preprocessed by the pipeline.

    python benchmarks/bench_lesion_visibility.py                      # 24 real-base pairs, difficulty 0.5
    python benchmarks/bench_lesion_visibility.py --grid 48,48,48@4,4,3 --grid 96,96,72@2,2,2

Each abnormal study of a ``medvit synth --base real`` MRI cohort is written twice: as planned, and as its twin
with the findings switched off (same patient, warp, acquisition and noise: the generator draws findings from a
random stream of their own). Both go through the pipeline's own preprocessing (``deterministic_transforms``:
orientation, spacing, crop or pad, z-score over non-zero voxels) at each ``--grid`` (size@spacing in mm), and
the difference of the two volumes is what is left of the findings, in z units of the normal twin:

* peak: the largest absolute difference (a finding a model could see is several z units);
* voxels > 1 z: how many voxels the finding changes by more than one standard deviation of the brain.

No model is trained: this says what the input still holds, before any recipe is blamed.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipelines.config import load_config  # noqa: E402
from pipelines.data.dataset import deterministic_transforms  # noqa: E402
from pipelines.data.scan_settings import scan_limits, selection_rules  # noqa: E402
from pipelines.dicom.cohort_plan import plan_cohort  # noqa: E402
from pipelines.dicom.scan import scan  # noqa: E402
from pipelines.dicom.synth import mri_series, save_dataset  # noqa: E402
from pipelines.scoring.predictor import series_item  # noqa: E402


def parse_grid(text: str) -> tuple[list[int], list[float]]:
    size, spacing = text.split("@")
    return [int(v) for v in size.split(",")], [float(v) for v in spacing.split(",")]


def write_study(plan, study, folder: Path) -> None:
    for number, series in enumerate(mri_series(plan, study)):
        for i, ds in enumerate(series):
            save_dataset(ds, folder / f"s{number}" / f"{i:03d}.dcm")


def volume(folder: Path, config) -> np.ndarray:
    scanned = scan([str(folder)], selection_rules(config), limits=scan_limits(config))
    (series,) = scanned.series  # the localizer is excluded by the rules
    return deterministic_transforms(config)(series_item(series))["image"].numpy()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=24, help="abnormal studies (each with its normal twin)")
    parser.add_argument("--seed", type=int, default=900, help="cohort seed (not one the quality runs use)")
    parser.add_argument("--difficulty", type=float, default=0.5)
    parser.add_argument("--grid", action="append", default=None, metavar="X,Y,Z@SX,SY,SZ",
                        help="preprocessing grid (repeatable); default: the CPU plan's and two finer ones")
    args = parser.parse_args()
    grids = [parse_grid(g) for g in (args.grid or ["48,48,48@4,4,3", "64,64,64@3,3,2.5", "96,96,80@2,2,2"])]
    plan = plan_cohort("mri", 2 * args.pairs, args.seed, difficulty=args.difficulty, base="real")
    abnormal = [s for s in plan.studies if s.abnormal][: args.pairs]
    base = load_config(ROOT / "configs" / "demo_mri.yaml", [])
    configs = [load_config(ROOT / "configs" / "demo_mri.yaml", [f"preprocess.mri.img_size={list(size)}",
                                                                  f"preprocess.mri.spacing={list(spacing)}"])
               for size, spacing in grids]
    rows: dict[int, list[tuple[float, int]]] = {g: [] for g in range(len(grids))}
    with tempfile.TemporaryDirectory(prefix="lesion-vis-") as tmp:
        for n, study in enumerate(abnormal):
            pair = Path(tmp) / str(n)
            write_study(plan, study, pair / "abnormal")
            write_study(plan, dataclasses.replace(study, abnormal=False), pair / "normal")
            for g, config in enumerate(configs):
                diff = volume(pair / "abnormal", config) - volume(pair / "normal", config)
                rows[g].append((float(np.abs(diff).max()), int((np.abs(diff) > 1.0).sum())))
    print(f"# lesion visibility: {len(abnormal)} real-base MRI pairs, seed {args.seed}, difficulty "
          f"{args.difficulty}, {plan.slices} slices per series, file size {plan.image_size}; "
          f"{base.preprocess.mri.orientation} orientation")
    print("| grid (voxels @ mm) | peak difference, z (median [p10, p90]) | voxels > 1 z (median [p10, p90]) | "
          "pairs with peak < 1 z |")
    print("| --- | --- | --- | --- |")
    for g, (size, spacing) in enumerate(grids):
        peaks = np.array([r[0] for r in rows[g]])
        counts = np.array([r[1] for r in rows[g]])
        print(f"| {'x'.join(map(str, size))} @ {'x'.join(f'{s:g}' for s in spacing)} | "
              f"{np.median(peaks):.2f} [{np.percentile(peaks, 10):.2f}, {np.percentile(peaks, 90):.2f}] | "
              f"{np.median(counts):.0f} [{np.percentile(counts, 10):.0f}, {np.percentile(counts, 90):.0f}] | "
              f"{int((peaks < 1).sum())} of {len(peaks)} |")


if __name__ == "__main__":
    main()
