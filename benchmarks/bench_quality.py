"""How well a trained model scores studies it never saw: train on one cohort, `medvit score` a fresh one.

    python benchmarks/bench_quality.py --kind xray --base real                 # ViT, hybrid, CNN; 3 seeds
    python benchmarks/bench_quality.py --kind mri --base real --studies 200 --test-studies 100
    python benchmarks/bench_quality.py --kind xray --base real --rows hybrid --set model.depth=4 --tag d4

Each cohort is written once per spec (``--cohort-seed`` to train on, ``--test-seed`` for the fresh cohort;
choose the recipe on one pair of seeds and report on another). Every row runs the user's path: ``medvit run``
(ingest, train, evaluate, register; the training plan applies unless a key is set) on the training cohort,
then ``medvit score`` of the fresh cohort with the registered model folder. Reported per row and training seed:
fresh-cohort AUROC (95% bootstrap CI), AUROC on the training split (the generalisation gap is train minus
fresh), best validation AUROC, epochs run, training and scoring wall time. Rows:

- ``vit``: the plain ViT (``model.arch=vit``); ``hybrid``: the ViT with the convolutional stem;
- ``cnn``: the pipeline's CNN baseline (``--cnn``, densenet121), same plan budget.

``--set`` applies to every row (ablations), ``--tag`` names the variant in ``results.json``, whose records
from earlier invocations are kept. A quiet machine is assumed: nothing else should run during a timing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from pipelines.dicom.synth import generator_fingerprint
from pipelines.reporting.metrics import bootstrap_ci

ROOT = Path(__file__).resolve().parent.parent
MEDVIT = [sys.executable, "-m", "pipelines.cli"]
BASE_CONFIG = {"xray": ROOT / "configs" / "plan_xray.yaml", "mri": ROOT / "configs" / "plan_mri.yaml"}


def medvit(*args: str, log: Path) -> float:
    """Run one medvit command (output appended to ``log``); its wall time in seconds, or exit on failure."""
    start = time.perf_counter()
    with log.open("a") as handle:
        handle.write(f"\n$ medvit {' '.join(args)}\n")
        handle.flush()
        code = subprocess.call([*MEDVIT, *args], stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT,
                               env={**os.environ, "TQDM_DISABLE": "1"})
    if code not in (0, 3):
        sys.exit(f"bench_quality: `medvit {args[0]}` failed (exit {code}); see {log}")
    return time.perf_counter() - start


def cohort(folder: Path, kind: str, base: str, studies: int, seed: int, difficulty: float, log: Path) -> Path:
    """Write (or reuse) a cohort with exactly these parameters through `medvit synth`."""
    spec = {"kind": kind, "base": base, "studies": studies, "seed": seed, "difficulty": difficulty,
            "generator": generator_fingerprint()}
    stamp = folder / "bench_spec.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == spec:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    medvit("synth", str(folder), "--kind", kind, "--base", base, "--studies", str(studies), "--seed", str(seed),
           "--difficulty", str(difficulty), log=log)
    stamp.write_text(json.dumps(spec))
    return folder


def study_auroc(scores_csv: Path, labels_csv: Path, studies: set[str] | None = None) -> dict[str, float]:
    """Per-study AUROC of ``medvit score`` output against the cohort's labels, with a bootstrap CI."""
    scores = pd.read_csv(scores_csv)
    labels = pd.read_csv(labels_csv)
    merged = scores.merge(labels, on="StudyInstanceUID")
    if studies is not None:
        merged = merged[merged["StudyInstanceUID"].isin(studies)]
    y = (merged["label"] == "abnormal").astype(int).to_numpy()
    s = merged["score"].to_numpy()
    low, high = bootstrap_ci(y, s, roc_auc_score, n_boot=500, seed=0)
    return {"auroc": float(roc_auc_score(y, s)), "ci_low": float(low), "ci_high": float(high),
            "n_studies": int(len(merged)), "n_expected": int(len(labels) if studies is None else len(studies))}


def run_row(row: str, seed: int, args: argparse.Namespace, train_cohort: Path, test_cohort: Path,
            out: Path, log: Path) -> dict:
    """Train one row on the training cohort and score both cohorts with its registered model."""
    folder = out / "runs" / f"{args.tag}-{row}-s{seed}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    arch = {"vit": "vit", "hybrid": "hybrid", "cnn": args.cnn}[row]
    sets = [f"data.dicom_root={train_cohort / 'dicom'}", f"data.labels={train_cohort / 'labels.csv'}",
            f"output.dir={folder / 'run'}", f"tracking.uri=sqlite:///{out / 'mlflow.db'}",
            "tracking.experiment=bench-quality", "tracking.system_metrics=false",
            f"registry.name=bench-quality-{args.kind}-{row}", f"model.arch={arch}", f"train.seed={seed}",
            f"split.seed={args.split_seed}", "evaluate.bootstrap=200", *args.set]
    train_s = medvit("run", "--config", str(args.config or BASE_CONFIG[args.kind]),
                     *[x for s in sets for x in ("--set", s)], log=log)
    model = folder / "run" / "model"
    score_s = medvit("score", str(test_cohort / "dicom"), "--model", str(model), "--out", str(folder / "fresh"),
                     log=log)
    medvit("score", str(train_cohort / "dicom"), "--model", str(model), "--out", str(folder / "own"), log=log)
    manifest = pd.read_parquet(folder / "run" / "manifest.parquet")
    train_studies = set(manifest.loc[manifest["split"] == "train", "study_uid"])
    summary = json.loads((folder / "run" / "train" / "summary.json").read_text())
    plan_path = folder / "run" / "plan.json"
    record = {
        "fresh": study_auroc(folder / "fresh" / "scores.csv", test_cohort / "labels.csv"),
        "train_split": study_auroc(folder / "own" / "scores.csv", train_cohort / "labels.csv", train_studies),
        "best_val_auroc": summary["best_val_auroc"], "epochs_run": summary["epochs_run"],
        "best_epoch": summary["best_epoch"], "run_seconds": train_s, "score_seconds": score_s,
        "plan": json.loads(plan_path.read_text()).get("plan") if plan_path.is_file() else None,
    }
    record["gap"] = record["train_split"]["auroc"] - record["fresh"]["auroc"]
    shutil.rmtree(folder / "run" / "cache", ignore_errors=True)
    return record


def summarize(per_seed: dict[str, dict]) -> dict[str, float]:
    fresh = np.array([r["fresh"]["auroc"] for r in per_seed.values()])
    return {"mean": float(fresh.mean()), "sd": float(fresh.std(ddof=1)) if len(fresh) > 1 else 0.0,
            "min": float(fresh.min()), "gap": float(np.mean([r["gap"] for r in per_seed.values()])),
            "minutes": float(np.mean([r["run_seconds"] for r in per_seed.values()]) / 60)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", choices=["xray", "mri"], default="xray")
    parser.add_argument("--base", choices=["phantom", "real"], default="real")
    parser.add_argument("--studies", type=int, default=600)
    parser.add_argument("--test-studies", type=int, default=400)
    parser.add_argument("--difficulty", type=float, default=0.5)
    parser.add_argument("--cohort-seed", type=int, default=100)
    parser.add_argument("--test-seed", type=int, default=200)
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--rows", default="vit,hybrid,cnn")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--cnn", default="densenet121", choices=["densenet121", "resnet18", "resnet50"])
    parser.add_argument("--config", type=Path, default=None, help="base config (default: configs/plan_<kind>.yaml: the plan decides)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--tag", default="default")
    parser.add_argument("--out", type=Path, default=ROOT / ".bench_cache" / "quality")
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    log = out / "bench.log"
    name = f"{args.kind}-{args.base}-d{args.difficulty}"
    train_cohort = cohort(out / "cohorts" / f"{name}-n{args.studies}-s{args.cohort_seed}", args.kind, args.base,
                          args.studies, args.cohort_seed, args.difficulty, log)
    test_cohort = cohort(out / "cohorts" / f"{name}-n{args.test_studies}-s{args.test_seed}", args.kind, args.base,
                         args.test_studies, args.test_seed, args.difficulty, log)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    key = f"{name}-n{args.studies}-s{args.cohort_seed}->s{args.test_seed}"
    table = results.setdefault(key, {})
    for row in args.rows.split(","):
        for seed in [int(s) for s in args.seeds.split(",")]:
            record = run_row(row, seed, args, train_cohort, test_cohort, out, log)
            record["set"] = args.set
            table.setdefault(f"{args.tag}/{row}", {})[str(seed)] = record
            results_path.write_text(json.dumps(results, indent=2))
            print(f"{key} {args.tag}/{row} seed {seed}: fresh {record['fresh']['auroc']:.3f} "
                  f"[{record['fresh']['ci_low']:.3f}, {record['fresh']['ci_high']:.3f}]  train-split "
                  f"{record['train_split']['auroc']:.3f}  val {record['best_val_auroc']:.3f}  epochs "
                  f"{record['epochs_run']}  {record['run_seconds'] / 60:.1f} min", flush=True)
    print(f"\n{key} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)")
    print(f"{'row':28s} {'fresh AUROC':>18s} {'min':>6s} {'gap':>6s} {'min/run':>8s}  per seed")
    for row, per_seed in table.items():
        stats = summarize(per_seed)
        seeds = " ".join(f"{r['fresh']['auroc']:.3f}" for _, r in sorted(per_seed.items()))
        print(f"{row:28s} {stats['mean']:.3f} +- {stats['sd']:.3f}   {stats['min']:.3f} {stats['gap']:+.3f} "
              f"{stats['minutes']:8.1f}  {seeds}")


if __name__ == "__main__":
    main()
