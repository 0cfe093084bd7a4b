"""What each data-efficiency remedy buys, on project-written synthetic cohorts, through the pipeline's own stages.

    python benchmarks/bench_data_efficiency.py                       # X-ray: 1,000 studies, 100 labelled
    python benchmarks/bench_data_efficiency.py --kind mri --studies 200 --labelled 60 --test-studies 100

A pool cohort of ``--studies`` studies is written; ``--labelled`` of them (stratified) get labels, the rest stay
unlabelled. Ingest splits the labelled studies into train/val (patient-grouped); a separate labelled test
cohort (other seed) measures every row. Rows, all with the same ``--epochs`` of supervised training:

- cnn: the MONAI CNN baseline (``--cnn``, default resnet18) from scratch;
- scratch: the ViT (the demo config's model) from scratch;
- mae: the ViT after ``--pretrain-epochs`` of MAE pretraining on every pool study (``medvit pretrain``);
- distill: the ViT with a distillation token, taught by the cnn row's model (DeiT; ``--distill-kind``, hard);
- progressive: the ViT from scratch at half size for the first half of the epochs, then full size;
- mae_distill: both remedies together (MAE encoder as init, distilled from the cnn row);
- distill_pool, mae_distill_pool: distill and mae_distill with ``train.distill.unlabelled``: the teacher also
  labels the pool's unlabelled studies for the distillation head, so an epoch sees every pool study (about 10x
  the images of the other rows: compare their train time too, or give them ``--pool-epochs``).

MAE rows fine-tune with layer-wise lr decay when ``--layer-decay`` is given, and through the class token unless
``--set model.global_pool=avg`` (MAE's own fine-tuning recipe, and the one that pays here; distilled rows then
pool the patch tokens for the class head and keep the distillation token for the teacher's head). MAE pretraining runs once per
invocation that has the mae row; every seed's mae and mae_distill rows start from that encoder.

``--seeds 0,1,2`` repeats every row with these training seeds (``train.seed``: initialisation, shuffling,
augmentation, dropout; the cohorts, the labelled subset and the split stay the same); distilled rows learn from the
cnn row of their own seed. The table gives each row's mean and spread over seeds; gains are paired per seed.
Rows and seeds of an earlier invocation with the same settings are kept in ``results.json``, so ``--rows mae`` or
``--seeds 3,4`` adds to the table instead of replacing it.

Test AUROC is per study with a 95% bootstrap CI. For progressive vs scratch, "time to AUROC" is the
cumulative training time (images / images-per-second of each epoch, validation excluded) until the
validation AUROC (always of the full-size model) first reaches the fixed-size run's best value; a progressive
run that never reaches it has no speedup (NaN), rather than a flattering one to a lower bar. With several seeds
the speedup is also computed on the seed-averaged curves (mean val AUROC and mean cumulative time per epoch): with
a small validation split one study moves a single run's AUROC a lot, and the mean curve is far steadier.
Results: printed table and ``OUT/results.json``.
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
from pipelines.data.scan_settings import selection_rules
from pipelines.dicom.scan import scan
from pipelines.dicom.synth import generator_fingerprint, write_cohort
from pipelines.layout import train_dir
from pipelines.reporting.metrics import bootstrap_ci
from pipelines.scoring.predictor import Predictor, series_item
from pipelines.stages.ingest import run_ingest
from pipelines.stages.pretrain import run_pretrain
from pipelines.stages.register import packaged_config
from pipelines.stages.train import run_train
from pipelines.training.modeling import input_size, load_model
from pipelines.training.trainer import epoch_path

ROOT = Path(__file__).resolve().parent.parent
RESULTS_FORMAT = 2  # rows[name][seed] = record
ROWS = ("cnn", "scratch", "mae", "distill", "progressive", "mae_distill", "distill_pool", "mae_distill_pool")
DISTILLED = ("distill", "mae_distill", "distill_pool", "mae_distill_pool")  # need the cnn row's teacher
FROM_MAE = ("mae", "mae_distill", "mae_distill_pool")


def cohort(folder: Path, kind: str, studies: int, seed: int, size: int | None, difficulty: float,
           base: str = "phantom") -> Path:
    """Write (or reuse) a synthetic cohort with exactly these parameters (``size`` None: the generator's)."""
    spec = {"kind": kind, "studies": studies, "seed": seed, "size": size, "difficulty": difficulty,
            "generator": generator_fingerprint()}
    spec |= {"base": base} if base != "phantom" else {}
    stamp = folder / "bench_spec.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == spec:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    extra = {} if size is None else {"image_size": size} if kind == "xray" else {"image_size": size,
                                                                                 "slices": max(16, size // 2)}
    write_cohort(folder, kind, studies, seed=seed, difficulty=difficulty, base=base, **extra)
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


def test_auroc(config: PipelineConfig, weights: Path, test_cohort: Path, ci: bool = True) -> dict[str, float]:
    """Per-study AUROC of a saved model on the test cohort (preprocessed once into the bench's cache)."""
    model, _, _ = load_model(weights)
    scanned = scan([test_cohort / "dicom"], selection_rules(config))
    series = scanned.series
    predictor = Predictor(model, config, aggregate=config.evaluate.aggregate, batch_size=32, cache_dir=config.cache_dir)
    studies = predictor.studies(predictor.score([series_item(s) for s in series]).series)
    labels = pd.read_csv(test_cohort / "labels.csv").set_index("StudyInstanceUID")["label"]
    y = (studies["study_uid"].map(labels) == "abnormal").astype(int).to_numpy()
    result = {"test_auroc": float(roc_auc_score(y, studies["score"])), "n_test": len(y)}
    if ci:
        result["ci_low"], result["ci_high"] = bootstrap_ci(y, studies["score"].to_numpy(), n_boot=1000)
    return result


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


def time_to(aurocs: list[float], seconds: list[float], target: float) -> float:
    """Cumulative training seconds at the first epoch whose AUROC reaches ``target`` (NaN: never)."""
    for auroc, t in zip(aurocs, seconds, strict=True):
        if auroc >= target - 1e-12:
            return float(t)
    return math.nan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", choices=["xray", "mri"], default="xray")
    parser.add_argument("--config", type=Path, default=None, help="default configs/xray_tiny_hybrid.yaml (X-ray), configs/demo_mri.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--studies", type=int, default=1000)
    parser.add_argument("--labelled", type=int, default=100)
    parser.add_argument("--test-studies", type=int, default=400)
    parser.add_argument("--size", type=int, default=None, help="synthetic image size (default: 2x the model input)")
    parser.add_argument("--difficulty", type=float, default=0.5)
    parser.add_argument("--base", choices=["phantom", "real"], default="phantom",
                        help="real: cohorts on real anatomy (medvit synth --base real), at the generator's image size")
    parser.add_argument("--seed-offset", type=int, default=0, help="cohort seeds: pool = offset, test = offset + 1")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--pretrain-epochs", type=int, default=40)
    parser.add_argument("--cnn", default="resnet18", choices=["resnet18", "resnet50", "densenet121"])
    parser.add_argument("--distill-kind", choices=["hard", "soft"], default="hard", help="for the distilled rows")
    parser.add_argument("--layer-decay", type=float, default=None, help="for the rows starting from the MAE encoder")
    parser.add_argument("--pool-epochs", type=int, default=None,
                        help="epochs of the *_pool rows (default --epochs); warmup scaled to the same share. "
                             "A pool epoch sees every pool study: fewer epochs compare at equal compute")
    parser.add_argument("--progressive-epochs", type=int, default=None,
                        help="epochs at the small size in the progressive row (default: half of --epochs)")
    parser.add_argument("--progressive-scale", type=float, default=0.5, help="small size / full size")
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--seeds", default="0", help="training seeds (train.seed), comma-separated; the data, the "
                        "labelled subset and the split stay the same")
    parser.add_argument("--curves", default="scratch,progressive", help="rows whose every epoch is also scored on "
                        "the test cohort (learning curves for the progressive speedup); empty: none")
    parser.add_argument("--encoder", type=Path, default=None, help="start the mae rows from this encoder instead "
                        "of pretraining (e.g. an earlier OUT/<kind>/mae_pretrain/pretrain/encoder.safetensors)")
    parser.add_argument("--out", type=Path, default=ROOT / ".bench_cache" / "data_efficiency")
    args = parser.parse_args()
    base = args.config or ROOT / "configs" / ("xray_tiny_hybrid.yaml" if args.kind == "xray" else "demo_mri.yaml")
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    curve_rows = {r.strip() for r in args.curves.split(",") if r.strip()}
    out = args.out / (args.kind if args.base == "phantom" else f"{args.kind}-real")
    out.mkdir(parents=True, exist_ok=True)

    probe = load_config(base, [f"data.dicom_root={out}", *args.set])
    size = args.size or (2 * max(input_size(probe)) if args.base == "phantom" else None)
    t0 = time.perf_counter()
    pool = cohort(out / "pool", args.kind, args.studies, args.seed_offset, size, args.difficulty, args.base)
    test = cohort(out / "test", args.kind, args.test_studies, args.seed_offset + 1, size, args.difficulty, args.base)
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
        "distill": [f"train.distill.kind={args.distill_kind}"],  # + teacher, below
        "progressive": [f"train.progressive=[{{epochs: {args.progressive_epochs or args.epochs // 2}, "
                        f"img_size: {json.dumps(half_size)}}}]"],
        "mae_distill": [f"train.distill.kind={args.distill_kind}"],
        # *_pool: the teacher also labels the pool's unlabelled studies for the distillation head
        "distill_pool": [f"train.distill.kind={args.distill_kind}", "train.distill.unlabelled=true"],
        "mae_distill_pool": [f"train.distill.kind={args.distill_kind}", "train.distill.unlabelled=true"],
    }
    settings = {k: str(v) for k, v in vars(args).items() if k not in ("rows", "seeds", "curves")}
    previous = json.loads((out / "results.json").read_text()) if (out / "results.json").is_file() else {}
    same = previous.get("args") == settings and previous.get("format") == RESULTS_FORMAT
    results: dict[str, dict[str, dict]] = {k: dict(v) for k, v in previous.get("rows", {}).items()} if same else {}
    pretrain: dict = previous.get("pretrain", {}) if same else {}
    encoder = args.encoder or out / "mae_pretrain" / "pretrain" / "encoder.safetensors"
    if args.encoder:
        pretrain = {"encoder": "given (--encoder)"}
    elif "mae" in rows or (set(rows) & set(FROM_MAE) and not (encoder.is_file() and pretrain)):
        pretrain = pretrain_encoder(row_config(base, args, out / "mae_pretrain", pool, [f"train.seed={seeds[0]}"]),
                                    ingest_dir)
    # pool rows with --pool-epochs keep the warmup's share of their (shorter) schedule
    pool_warmup = load_config(base, args.set).train.warmup_epochs * (args.pool_epochs or args.epochs) / args.epochs
    for seed in seeds:
        for name in rows:
            row_dir = out / f"{name}_s{seed}"
            fresh_row_dir(row_dir, ingest_dir)
            extra = [*variants[name], f"train.seed={seed}"]
            if name in curve_rows:
                extra.append("train.save_every=1")
            if name.endswith("_pool") and args.pool_epochs:
                extra += [f"train.epochs={args.pool_epochs}", f"train.warmup_epochs={pool_warmup}"]
            if name in FROM_MAE:
                extra.append(f"train.init={encoder}")
                if args.layer_decay:
                    extra.append(f"train.layer_decay={args.layer_decay}")
            teacher = out / f"cnn_package_s{seed}"
            if name in DISTILLED:
                if str(seed) not in results.get("cnn", {}) or not teacher.is_dir():
                    raise SystemExit(f"the {name} row needs the cnn row of seed {seed} first (its model is the "
                                     "teacher): add cnn to --rows")
                extra.append(f"train.distill.teacher={teacher}")
            config = row_config(base, args, row_dir, pool, extra)
            start = time.perf_counter()
            trained = run_train(config, track=False)
            record = {"train_s": time.perf_counter() - start, "best_val_auroc": trained.best_val_auroc,
                      "best_epoch": trained.best_epoch, "history": trained.history,
                      **test_auroc(config, Path(trained.best_path), test)}
            if name in curve_rows:  # every epoch's model on the test cohort: a steadier learning curve than val
                epochs = range(1, trained.epochs_run + 1)
                record["test_curve"] = [test_auroc(config, epoch_path(train_dir(config), e), test, ci=False)[
                    "test_auroc"] for e in epochs]
                shutil.rmtree(train_dir(config) / "epochs")
            if name == "cnn":
                package(Path(trained.best_path), config, teacher)
            results.setdefault(name, {})[str(seed)] = record
            print(f"{name:12s} seed {seed}  test AUROC {record['test_auroc']:.3f} ({record['ci_low']:.3f}-"
                  f"{record['ci_high']:.3f})  best val {record['best_val_auroc']:.3f} @ epoch {record['best_epoch']}  "
                  f"train {record['train_s']:.0f} s")
            save(out, settings, n_train, results, pretrain)
    print_table(save(out, settings, n_train, results, pretrain), args)


def fresh_row_dir(row_dir: Path, ingest_dir: Path) -> None:
    """An empty output folder holding the shared ingest's manifest and pseudonym key."""
    shutil.rmtree(row_dir, ignore_errors=True)
    row_dir.mkdir()
    for f in ("manifest.parquet", ".pseudonym_key"):
        shutil.copyfile(ingest_dir / f, row_dir / f)


def pretrain_encoder(config: PipelineConfig, ingest_dir: Path) -> dict:
    """MAE-pretrain once on every pool study; every seed of the mae rows starts from this encoder."""
    fresh_row_dir(config.output.dir, ingest_dir)
    start = time.perf_counter()
    pre = run_pretrain(config, track=False)
    return {"pretrain_s": time.perf_counter() - start, "pretrain_series": pre.n_series}


def save(out: Path, settings: dict, n_train: int, results: dict[str, dict[str, dict]], pretrain: dict) -> dict:
    """Write results.json (after every row, so an interrupted run keeps what it measured) and return it."""
    ordered = {k: dict(sorted(results[k].items(), key=lambda kv: int(kv[0]))) for k in ROWS if k in results}
    payload = {"format": RESULTS_FORMAT, "machine": machine(), "args": settings, "n_train": n_train, "pretrain": pretrain,
               "rows": ordered, "summary": summarize(ordered, n_train)}
    (out / "results.json").write_text(json.dumps(payload, indent=2, default=float))
    return payload


def row_stats(per_seed: dict[str, dict]) -> dict[str, float]:
    aurocs = np.array([r["test_auroc"] for r in per_seed.values()])
    return {"seeds": len(aurocs), "test_auroc_mean": float(aurocs.mean()),
            "test_auroc_sd": float(aurocs.std(ddof=1)) if len(aurocs) > 1 else math.nan,
            "test_auroc_min": float(aurocs.min()), "test_auroc_max": float(aurocs.max()),
            "best_val_auroc_mean": float(np.mean([r["best_val_auroc"] for r in per_seed.values()])),
            "train_s_mean": float(np.mean([r["train_s"] for r in per_seed.values()]))}


def paired_gain(results: dict[str, dict[str, dict]], row: str, base: str) -> dict[str, float]:
    """Mean and per-seed test-AUROC difference row - base over the seeds both have."""
    seeds = sorted(set(results[row]) & set(results[base]), key=int)
    gains = [results[row][s]["test_auroc"] - results[base][s]["test_auroc"] for s in seeds]
    return {"mean": float(np.mean(gains)), "min": float(np.min(gains)), "max": float(np.max(gains)),
            "seeds": len(gains)}


def summarize(results: dict[str, dict[str, dict]], n_train: int) -> dict:
    report: dict = {"rows": {name: row_stats(per_seed) for name, per_seed in results.items()}}
    means = {name: stats["test_auroc_mean"] for name, stats in report["rows"].items()}
    if "scratch" in results and "mae" in results:
        report["mae_gain"] = paired_gain(results, "mae", "scratch")
    vits = {k: v for k, v in means.items() if k != "cnn"}
    if vits:
        best = max(vits, key=vits.get)
        report["best_vit_row"], report["best_vit_auroc"] = best, vits[best]
        if "cnn" in results:
            report["best_vit_minus_cnn"] = paired_gain(results, best, "cnn")
    if "scratch" in results and "progressive" in results:
        report["progressive"] = progressive_speedup(results["scratch"], results["progressive"], n_train)
    return report


def progressive_speedup(fixed: dict[str, dict], prog: dict[str, dict], n_train: int) -> dict:
    """Training time to the fixed-size run's best AUROC, fixed / progressive, on the val curve (the trainer's
    per-epoch validation) and, where recorded, the test curve (every epoch's model on the test cohort)."""
    report = {}
    for which in ("val", "test"):
        seeds = sorted((s for s in set(fixed) & set(prog) if curve(fixed[s], which) and curve(prog[s], which)), key=int)
        if seeds:
            report[which] = speedup_on(fixed, prog, seeds, which, n_train)
    return report


def curve(record: dict, which: str) -> list[float]:
    """Per-epoch AUROC of a run: the trainer's validation, or the bench's test-cohort curve (may be absent)."""
    return [h["val_auroc"] for h in record["history"]] if which == "val" else record.get("test_curve", [])


def speedup_on(fixed: dict[str, dict], prog: dict[str, dict], seeds: list[str], which: str, n_train: int) -> dict:
    """Per seed, and on the curves averaged over seeds (mean AUROC and mean cumulative training time per epoch),
    which one lucky or unlucky epoch moves far less than a single run."""
    per_seed = {}
    for s in seeds:
        target = max(curve(fixed[s], which))
        t_fixed = time_to(curve(fixed[s], which), train_seconds(fixed[s]["history"], n_train), target)
        t_prog = time_to(curve(prog[s], which), train_seconds(prog[s]["history"], n_train), target)
        per_seed[s] = {"target": target, "fixed_s": t_fixed, "progressive_s": t_prog, "speedup": t_fixed / t_prog,
                       "progressive_best": max(curve(prog[s], which))}
    means = {}
    for name, runs in (("fixed", fixed), ("progressive", prog)):
        means[name] = {"seconds": list(np.mean([train_seconds(runs[s]["history"], n_train) for s in seeds], axis=0)),
                       "auroc": list(np.mean([curve(runs[s], which) for s in seeds], axis=0))}
    target = max(means["fixed"]["auroc"])
    t_fixed = time_to(means["fixed"]["auroc"], means["fixed"]["seconds"], target)
    t_prog = time_to(means["progressive"]["auroc"], means["progressive"]["seconds"], target)
    speedups = [v["speedup"] for v in per_seed.values()]
    return {"seeds": len(seeds), "per_seed": per_seed, "mean_curve_target": target, "mean_curve_fixed_s": t_fixed,
            "mean_curve_progressive_s": t_prog, "mean_curve_speedup": t_fixed / t_prog,
            "mean_curve_progressive_best": max(means["progressive"]["auroc"]),
            "median_seed_speedup": float(np.median(np.nan_to_num(speedups, nan=0.0))), "mean_curves": means}


def machine() -> dict[str, str]:
    return {"cpu": platform.processor() or platform.machine(), "cores": str(torch.get_num_threads()),
            "torch": torch.__version__, "device": "cpu", "python": platform.python_version()}


def print_table(payload: dict, args: argparse.Namespace) -> None:
    report, rows = payload["summary"], payload["rows"]
    print(f"\n{args.kind}: {args.studies} studies, {args.labelled} labelled, {args.epochs} epochs per row, "
          f"MAE {args.pretrain_epochs} epochs; {machine()}")
    print("| row | test AUROC, mean ± sd over seeds [min, max] | per seed: test AUROC (95% CI) | "
          "best val AUROC (mean) | train time (s, mean) |")
    print("| --- | --- | --- | --- | --- |")
    for name, stats in report["rows"].items():
        seeds = "; ".join(f"s{s} {r['test_auroc']:.3f} ({r['ci_low']:.3f}-{r['ci_high']:.3f})"
                          for s, r in rows[name].items())
        extra = f" + pretrain {payload['pretrain']['pretrain_s']:.0f}" if name.startswith("mae") and payload[
            "pretrain"].get("pretrain_s") else ""
        print(f"| {name} | {stats['test_auroc_mean']:.3f} ± {stats['test_auroc_sd']:.3f} "
              f"[{stats['test_auroc_min']:.3f}, {stats['test_auroc_max']:.3f}] | {seeds} | "
              f"{stats['best_val_auroc_mean']:.3f} | {stats['train_s_mean']:.0f}{extra} |")
    lines = []
    if "mae_gain" in report:
        g = report["mae_gain"]
        lines.append(f"MAE - scratch = {g['mean']:+.3f} mean over {g['seeds']} seeds (per seed {g['min']:+.3f} to "
                     f"{g['max']:+.3f}; target >= +0.03)")
    if "best_vit_auroc" in report:
        line = f"best ViT row {report['best_vit_row']} = {report['best_vit_auroc']:.3f} mean (target >= 0.85"
        if "best_vit_minus_cnn" in report:
            g = report["best_vit_minus_cnn"]
            line += f"; vs CNN {g['mean']:+.3f} mean, per seed {g['min']:+.3f} to {g['max']:+.3f}, target >= -0.02"
        lines.append(line + ")")
    for which, p in report.get("progressive", {}).items():
        per_seed = ", ".join(f"s{s} {v['speedup']:.2f}x (to {v['target']:.3f}; progressive best "
                             f"{v['progressive_best']:.3f})" for s, v in p["per_seed"].items())
        lines.append(f"progressive vs fixed size, time to the fixed run's best {which} AUROC (target >= 1.3x; NaN: "
                     f"never reached): mean curve over {p['seeds']} seeds {p['mean_curve_speedup']:.2f}x (to "
                     f"{p['mean_curve_target']:.3f}: {p['mean_curve_fixed_s']:.1f} s vs "
                     f"{p['mean_curve_progressive_s']:.1f} s; progressive best {p['mean_curve_progressive_best']:.3f})"
                     f"; median seed {p['median_seed_speedup']:.2f}x; per seed {per_seed}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
