"""Data-layer throughput on a synthetic cohort, with baselines measured in the same process.

    python benchmarks/bench_data.py                  # 600 X-ray studies (256x256), 30 MRI studies (64x64x24)
    python benchmarks/bench_data.py --xray 2000 --mri 60

1. Header scan, files/s: ``pipelines.dicom.scan`` (sequential and with workers) vs a bare
   ``pydicom.dcmread(stop_before_pixels=True)`` loop over the same files.
2. Decode + preprocess, images/s: the deterministic MONAI transforms per modality.
3. Epoch time without cache, filling the cache, and from the cache (target: cached >= 10x uncached).
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import pydicom
import torch

from pipelines.config import validate_config
from pipelines.data import build_dataset
from pipelines.dicom.scan import iter_dicom_files, scan
from pipelines.dicom.synth import write_cohort
from pipelines.stages.ingest import run_ingest


def rate(count: int, seconds: float) -> str:
    return f"{count / seconds:9.1f}/s"


def timed(func):
    start = time.perf_counter()
    result = func()
    return result, time.perf_counter() - start


def bench_scan(roots: list[Path], workers: int) -> None:
    files = list(iter_dicom_files(roots))
    # Best of 3 per method: the first pass over a folder is slower for whichever method goes first
    # (pydicom's lazy tables, allocator warm-up), which would flatter the others.
    bare = min(timed(lambda: [pydicom.dcmread(f, stop_before_pixels=True) for f in files])[1] for _ in range(3))
    seq = min(timed(lambda: scan(roots, workers=0))[1] for _ in range(3))
    par = min(timed(lambda: scan(roots, workers=workers))[1] for _ in range(3))
    print(f"\n## header scan: {len(files)} files")
    print(f"bare dcmread loop        {rate(len(files), bare)}   1.00x")
    print(f"scan, sequential         {rate(len(files), seq)}   {bare / seq:.2f}x")
    print(f"scan, workers={workers}           {rate(len(files), par)}   {bare / par:.2f}x")


def bench_epochs(cohort: Path, kind: str, work: Path, limit: int) -> None:
    config = validate_config({
        "name": f"bench_{kind}",
        "data": {"dicom_root": str(cohort / "dicom"), "labels": str(cohort / "labels.csv"), "kind": kind},
        "preprocess": {"xray": {"img_size": 224}, "mri": {"img_size": [64, 64, 48], "spacing": [3.0, 3.0, 3.0]}},
        "output": {"dir": str(work / kind)},
    })
    manifest = run_ingest(config).manifest.head(limit)
    n = len(manifest)

    def epoch(dataset) -> None:
        for i in range(len(dataset)):
            dataset[i]

    uncached = build_dataset(manifest, config, train=False, cache=False)
    _, t_uncached = timed(lambda: epoch(uncached))
    fill = build_dataset(manifest, config, train=False, cache=True)
    _, t_fill = timed(lambda: epoch(fill))
    cached = build_dataset(manifest, config, train=False, cache=True)  # fresh object: no in-memory state
    _, t_cached = timed(lambda: epoch(cached))
    shape = tuple(uncached[0]["image"].shape)
    print(f"\n## {kind}: {n} series -> {shape}")
    print(f"decode + preprocess      {rate(n, t_uncached)}   1.00x")
    print(f"first epoch, fills cache {rate(n, t_fill)}   {t_uncached / t_fill:.2f}x")
    print(f"cached epoch             {rate(n, t_cached)}   {t_uncached / t_cached:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--xray", type=int, default=600, help="X-ray studies to write")
    parser.add_argument("--mri", type=int, default=30, help="MRI studies to write")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epoch-limit", type=int, default=300, help="series per timed epoch")
    args = parser.parse_args()
    print(f"# bench_data: torch {torch.__version__}, pydicom {pydicom.__version__}, "
          f"{platform.machine()}, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        (xray, t_x) = timed(lambda: write_cohort(tmp_path / "xray", "xray", args.xray, seed=0))
        (mri, t_m) = timed(lambda: write_cohort(tmp_path / "mri", "mri", args.mri, seed=0))
        print(f"synth: {xray.files} X-ray files in {t_x:.1f}s, {mri.files} MRI files in {t_m:.1f}s")
        bench_scan([tmp_path / "xray" / "dicom", tmp_path / "mri" / "dicom"], args.workers)
        bench_epochs(tmp_path / "xray", "xray", tmp_path / "work", args.epoch_limit)
        bench_epochs(tmp_path / "mri", "mri", tmp_path / "work", args.epoch_limit)


if __name__ == "__main__":
    main()
