"""What each data-efficiency remedy buys, on project-written synthetic cohorts, through the pipeline's own stages.

    python benchmarks/bench_data_efficiency.py                       # X-ray: 1,000 studies, 100 labelled
    python benchmarks/bench_data_efficiency.py --kind mri --studies 200 --labelled 60 --test-studies 100

A pool cohort of ``--studies`` studies is written; ``--labelled`` of them (stratified) get labels, the rest stay
unlabelled. Ingest splits the labelled studies into train/val (patient-grouped); a separate labelled test
cohort (other seed) measures every row. Rows, all with the same ``--epochs`` of supervised training:

- cnn: the MONAI CNN baseline (``--cnn``, default resnet18) from scratch;
- scratch: the ViT (the demo config's model) from scratch;
- mae: the ViT after ``--pretrain-epochs`` of MAE pretraining on every pool study (``medvit pretrain``);
- distill: the ViT with a distillation token, taught by the cnn row's model (DeiT, hard labels);
- progressive: the ViT from scratch at half size for the first half of the epochs, then full size;
- mae_distill: both remedies together (MAE encoder as init, distilled from the cnn row).

MAE rows fine-tune with layer-wise lr decay when ``--layer-decay`` is given. Rows of an earlier invocation with the same
settings are kept in ``results.json``, so ``--rows mae`` reruns one row and the table still shows all.

Test AUROC is per study with a 95% bootstrap CI. For progressive vs scratch, "time to AUROC" is the
cumulative training time (images / images-per-second of each epoch, validation excluded) until the
validation AUROC (always of the full-size model) first reaches the fixed-size run's best value; a progressive
run that never reaches it has no speedup (NaN), rather than a flattering one to a lower bar. Results: printed table and
``OUT/results.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

from pipelines.config import PipelineConfig, load_config
from pipelines.dicom.scan import scan
from pipelines.dicom.synth import write_cohort
from pipelines.inference import aggregate_studies, score_items, series_items
from pipelines.metrics import bootstrap_ci
from pipelines.modeling import input_size, load_model
from pipelines.stages.ingest import run_ingest, selection_rules
from pipelines.stages.pretrain import run_pretrain
from pipelines.stages.register import packaged_config
from pipelines.stages.train import run_train

ROOT = Path(__file__).resolve().parent.parent
ROWS = ("cnn", "scratch", "mae", "distill", "progressive", "mae_distill")


def cohort(folder: Path, kind: str, studies: int, seed: int, size: int, difficulty: float) -> Path:
    """Write (or reuse) a synthetic cohort with exactly these parameters."""
    spec = {"kind": kind, "studies": studies, "seed": seed, "size": size, "difficulty": difficulty}
    stamp = folder / "bench_spec.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == spec:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    extra = {"image_size": size} if kind == "xray" else {"image_size": size, "slices": max(16, size // 2)}
    write_cohort(folder, kind, studies, seed=seed, difficulty=difficulty, **extra)
    stamp.write_text(json.dumps(spec))
    return folder


def labelled_subset(labels: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """``n`` studies, half abnormal (as far as the pool allows), chosen at random."""
    rng = np.random.default_rng(seed)
    picks = []
    for value, group in labels.groupby("label"):
        want = n // 2 if value == "abnormal" else n - n // 2
        picks.append(group.iloc[rng.permutation(len(group))[:want]])
    return pd.concat(picks).sample(frac=1.0, random_state=seed)


def row_config(base: Path, args: argparse.Namespace, out: Path, pool: Path, extra: list[str]) -> PipelineConfig:
    overrides = [f"data.dicom_root={pool / 'dicom'}", f"data.labels={out.parent / 'labels_subset.csv'}",
                 f"output.dir={out}", f"preprocess.cache_dir={out.parent / 'cache'}", "split.val=0.25",
                 "split.test=0.0", f"train.epochs={args.epochs}", "train.early_stopping_patience=null",
                 f"pretrain.epochs={args.pretrain_epochs}", f"tracking.uri=sqlite:///{out.parent / 'mlflow.db'}",
                 "tracking.experiment=bench-data-efficiency", "tracking.system_metrics=false", *args.set, *extra]
    return load_config(base, overrides)


def test_auroc(config: PipelineConfig, best: Path, test_cohort: Path) -> dict[str, float]:
    model, _, _ = load_model(best)
    scanned = scan([test_cohort / "dicom"], selection_rules(config))
    series = [s for s in scanned.series if s.kind == config.data.kind]
    scores = score_items(model, series_items(series), config, device=torch.device("cpu"), batch_size=32,
                         cache=False)
    studies = aggregate_studies(scores, config.evaluate.aggregate)
    labels = pd.read_csv(test_cohort / "labels.csv").set_index("StudyInstanceUID")["label"]
    y = (studies["study_uid"].map(labels) == "abnormal").astype(int).to_numpy()
    low, high = bootstrap_ci(y, studies["score"].to_numpy(), n_boot=1000)
    return {"test_auroc": float(roc_auc_score(y, studies["score"])), "ci_low": low, "ci_high": high, "n_test": len(y)}


def package(best: Path, config: PipelineConfig, folder: Path) -> Path:
    """A model folder (the register format) of a trained model, to serve as a distillation teacher."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(best, folder / "best.safetensors")
    (folder / "config.yaml").write_text(packaged_config(config))
    (folder / "meta.json").write_text(json.dumps({"threshold": 0.5, "aggregate": "max", "kind": config.data.kind,
                                                  "name": "bench-teacher"}))
    return folder


def train_seconds(history: list[dict], n_train: int) -> list[float]:
    """Cumulative training seconds after each epoch (from images/s; validation excluded)."""
    return list(np.cumsum([n_train / h["images_per_sec"] for h in history]))


def time_to(history: list[dict], seconds: list[float], target: float) -> float:
    for h, t in zip(history, seconds, strict=True):
        if h["val_auroc"] >= target - 1e-12:
            return t
    return math.nan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", choices=["xray", "mri"], default="xray")
    parser.add_argument("--config", type=Path, default=None, help="default configs/demo_<kind>.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--studies", type=int, default=1000)
    parser.add_argument("--labelled", type=int, default=100)
    parser.add_argument("--test-studies", type=int, default=400)
    parser.add_argument("--size", type=int, default=None, help="synthetic image size (default: 2x the model input)")
    parser.add_argument("--difficulty", type=float, default=0.5)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--pretrain-epochs", type=int, default=40)
    parser.add_argument("--cnn", default="resnet18", choices=["resnet18", "resnet50", "densenet121"])
    parser.add_argument("--layer-decay", type=float, default=None, help="for the rows starting from the MAE encoder")
    parser.add_argument("--progressive-epochs", type=int, default=None,
                        help="epochs at the small size in the progressive row (default: half of --epochs)")
    parser.add_argument("--progressive-scale", type=float, default=0.5, help="small size / full size")
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--out", type=Path, default=ROOT / ".bench_cache" / "data_efficiency")
    args = parser.parse_args()
    base = args.config or ROOT / "configs" / f"demo_{args.kind}.yaml"
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    out = args.out / args.kind
    out.mkdir(parents=True, exist_ok=True)

    probe = load_config(base, [f"data.dicom_root={out}", *args.set])
    size = args.size or 2 * max(input_size(probe))
    t0 = time.perf_counter()
    pool = cohort(out / "pool", args.kind, args.studies, 0, size, args.difficulty)
    test = cohort(out / "test", args.kind, args.test_studies, 1, size, args.difficulty)
    subset = labelled_subset(pd.read_csv(pool / "labels.csv"), args.labelled, seed=0)
    subset.to_csv(out / "labels_subset.csv", index=False)
    print(f"cohorts ready in {time.perf_counter() - t0:.0f} s: pool {args.studies} ({len(subset)} labelled), "
          f"test {args.test_studies}, image size {size}")

    ingest_dir = out / "ingest"
    shutil.rmtree(ingest_dir, ignore_errors=True)
    ingest = run_ingest(row_config(base, args, ingest_dir, pool, []), track=False)
    n_train = int(((ingest.manifest["split"] == "train") & ingest.manifest["label"].notna()).sum())
    full = input_size(probe)
    half = [max(8, int(round(s * args.progressive_scale / 8)) * 8) for s in full]  # whole patches
    half_size = half[0] if args.kind == "xray" else half
    variants = {
        "cnn": [f"model.arch={args.cnn}"],
        "scratch": [],
        "mae": [],  # + train.init, below
        "distill": ["train.distill.kind=hard"],  # + teacher, below
        "progressive": [f"train.progressive=[{{epochs: {args.progressive_epochs or args.epochs // 2}, "
                        f"img_size: {json.dumps(half_size)}}}]"],
        "mae_distill": ["train.distill.kind=hard"],
    }
    settings = {k: str(v) for k, v in vars(args).items() if k != "rows"}
    previous = json.loads((out / "results.json").read_text()) if (out / "results.json").is_file() else {}
    results: dict[str, dict] = dict(previous.get("rows", {})) if previous.get("args") == settings else {}
    for name in rows:
        row_dir = out / name
        shutil.rmtree(row_dir, ignore_errors=True)
        row_dir.mkdir()
        for f in ("manifest.parquet", ".pseudonym_key"):
            shutil.copyfile(ingest_dir / f, row_dir / f)
        extra = list(variants[name])
        record: dict = {}
        if name == "mae":
            start = time.perf_counter()
            pre = run_pretrain(row_config(base, args, row_dir, pool, extra), track=False)
            record["pretrain_s"] = time.perf_counter() - start
            record["pretrain_series"] = pre.n_series
        if name in ("mae", "mae_distill"):
            if not (out / "mae" / "pretrain" / "encoder.safetensors").is_file():
                raise SystemExit("the mae_distill row needs the mae row's encoder first")
            extra.append(f"train.init={out / 'mae' / 'pretrain' / 'encoder.safetensors'}")
            if args.layer_decay:
                extra.append(f"train.layer_decay={args.layer_decay}")
        if name in ("distill", "mae_distill"):
            if "cnn" not in results:
                raise SystemExit("the distill row needs the cnn row first (its model is the teacher)")
            extra.append(f"train.distill.teacher={out / 'cnn_package'}")
        config = row_config(base, args, row_dir, pool, extra)
        start = time.perf_counter()
        trained = run_train(config, track=False)
        record["train_s"] = time.perf_counter() - start
        record.update(best_val_auroc=trained.best_val_auroc, best_epoch=trained.best_epoch,
                      history=trained.history, **test_auroc(config, Path(trained.best_path), test))
        if name == "cnn":
            package(Path(trained.best_path), config, out / "cnn_package")
        results[name] = record
        print(f"{name:12s} test AUROC {record['test_auroc']:.3f} ({record['ci_low']:.3f}-{record['ci_high']:.3f})  "
              f"best val {record['best_val_auroc']:.3f} @ epoch {record['best_epoch']}  train {record['train_s']:.0f} s")

    report = summarize(results, n_train)
    results = {k: results[k] for k in ROWS if k in results}
    payload = {"machine": machine(), "args": settings, "n_train": n_train,
               "rows": results, "summary": report}
    (out / "results.json").write_text(json.dumps(payload, indent=2, default=float))
    print_table(results, report, args)


def summarize(results: dict[str, dict], n_train: int) -> dict[str, float]:
    report: dict[str, float] = {}
    if "scratch" in results and "mae" in results:
        report["mae_gain"] = results["mae"]["test_auroc"] - results["scratch"]["test_auroc"]
    vits = {k: v["test_auroc"] for k, v in results.items() if k != "cnn"}
    if vits:
        best = max(vits, key=vits.get)
        report["best_vit_row"], report["best_vit_auroc"] = best, vits[best]
        if "cnn" in results:
            report["best_vit_minus_cnn"] = vits[best] - results["cnn"]["test_auroc"]
    if "scratch" in results and "progressive" in results:
        fixed, prog = results["scratch"], results["progressive"]
        target = fixed["best_val_auroc"]
        t_fixed = time_to(fixed["history"], train_seconds(fixed["history"], n_train), target)
        t_prog = time_to(prog["history"], train_seconds(prog["history"], n_train), target)
        report.update(progressive_target_val_auroc=target, time_to_target_fixed_s=t_fixed,
                      time_to_target_progressive_s=t_prog, progressive_speedup=t_fixed / t_prog)
    return report


def machine() -> dict[str, str]:
    return {"cpu": platform.processor() or platform.machine(), "cores": str(torch.get_num_threads()),
            "torch": torch.__version__, "device": "cpu", "python": platform.python_version()}


def print_table(results: dict[str, dict], report: dict, args: argparse.Namespace) -> None:
    print(f"\n{args.kind}: {args.studies} studies, {args.labelled} labelled, {args.epochs} epochs per row, "
          f"MAE {args.pretrain_epochs} epochs; {machine()}")
    print("| row | test AUROC (95% CI) | best val AUROC (epoch) | train time (s) |")
    print("| --- | --- | --- | --- |")
    for name, r in results.items():
        extra = f" + pretrain {r['pretrain_s']:.0f}" if "pretrain_s" in r else ""
        print(f"| {name} | {r['test_auroc']:.3f} ({r['ci_low']:.3f}-{r['ci_high']:.3f}) | "
              f"{r['best_val_auroc']:.3f} ({r['best_epoch']}) | {r['train_s']:.0f}{extra} |")
    targets = []
    if "mae_gain" in report:
        targets.append(f"MAE - scratch = {report['mae_gain']:+.3f} (target >= +0.03)")
    if "best_vit_auroc" in report:
        line = f"best ViT row {report['best_vit_row']} = {report['best_vit_auroc']:.3f} (target >= 0.85"
        if "best_vit_minus_cnn" in report:
            line += f"; vs CNN {report['best_vit_minus_cnn']:+.3f}, target >= -0.02"
        targets.append(line + ")")
    if "progressive_speedup" in report:
        targets.append(f"progressive vs fixed size to val AUROC {report['progressive_target_val_auroc']:.3f}: "
                       f"{report['progressive_speedup']:.2f}x less time (NaN: never reached; target >= 1.3x)")
    print("\n".join(targets))


if __name__ == "__main__":
    main()
