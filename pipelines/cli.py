"""The `medvit` command: one subcommand per pipeline stage.

Exit codes: 0 all done; 2 usage or config error (one line naming the key, path or value); 3 finished, but
some items failed (listed in errors.csv).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any

import click

import medvit
from pipelines.config import ConfigError, PipelineConfig, load_config
from pipelines.dicom.reasons import Rejected, is_failure
from pipelines.reporting.console import reject_counts, summary_table

EXIT_OK, EXIT_USAGE, EXIT_PARTIAL = 0, 2, 3


def clean_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn configuration problems into one line on stderr and exit code 2, never a traceback."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ConfigError as exc:
            click.echo(f"medvit: {exc}", err=True)
            sys.exit(EXIT_USAGE)

    return wrapper


def config_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                        help="override any config key, e.g. --set train.epochs=5 (repeatable)")(func)
    return click.option("--config", "config_path", required=True, type=click.Path(path_type=Path),
                        help="YAML config (see configs/)")(func)


def _load(config_path: Path, overrides: tuple[str, ...]) -> PipelineConfig:
    return load_config(config_path, list(overrides))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(medvit.__version__, prog_name="medvit")
def cli() -> None:
    """medvit: DICOM X-ray and MRI normal/abnormal classification with from-scratch Vision Transformers."""


@cli.command("models")
def models_command() -> None:
    """List the model presets (2D and 3D) with their size."""
    for name in medvit.list_models():
        cfg = medvit.PRESETS[name]
        model = medvit.create_model(name, num_classes=2)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        size = "x".join(str(s) for s in model.img_size)
        click.echo(f"{name:14s} {cfg['spatial_dims']}D  img {size:10s} patch {cfg['patch_size']:>2}  "
                   f"dim {cfg['embed_dim']:>3}  depth {cfg['depth']}  heads {cfg['num_heads']:>2}  {params:6.1f}M params")


@cli.command("synth")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--kind", type=click.Choice(["xray", "mri"]), required=True)
@click.option("--studies", type=click.IntRange(min=1), required=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--difficulty", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="0 = obvious lesions, 1 = subtle")
@click.option("--base", type=click.Choice(["phantom", "real"]), default="phantom", show_default=True,
              help="phantom = drawn anatomy; real = real radiographs / MR volumes from installed packages")
def synth_command(out: Path, kind: str, studies: int, seed: int, difficulty: float, base: str) -> None:
    """Write a synthetic cohort as real DICOM: OUT/dicom/** and OUT/labels.csv."""
    from pipelines.dicom.realbase import MissingBase
    from pipelines.dicom.synth import write_cohort

    try:
        summary = write_cohort(out, kind, studies, seed, difficulty=difficulty, base=base)
    except MissingBase as error:
        click.echo(f"medvit synth: {error}", err=True)
        sys.exit(EXIT_USAGE)
    click.echo(summary_table(f"synth {kind}: {out}", [
        ("patients", summary.patients), ("studies", summary.studies), ("series", summary.series),
        ("files", summary.files), ("abnormal studies", summary.abnormal), ("labels", out / "labels.csv"),
    ]))


@cli.command("ingest")
@config_options
@clean_errors
def ingest_command(config_path: Path, overrides: tuple[str, ...]) -> None:
    """Scan DICOM, join labels, split by patient; write manifest, errors.csv and a data card."""
    from pipelines.stages.ingest import run_ingest

    config = _load(config_path, overrides)
    result = run_ingest(config, progress=True)
    rejected = [Rejected(**row) for row in result.errors.to_dict("records")]
    _echo_errors(result.errors)
    splits = result.manifest["split"].value_counts().to_dict()
    click.echo(summary_table(f"ingest {config.name}", [
        ("files scanned", result.n_files),
        ("series", len(result.manifest)),
        ("studies", result.manifest["study_uid"].nunique()),
        ("patients", result.manifest["patient_key"].nunique()),
        *[(f"split: {k}", v) for k, v in sorted(splits.items())],
        *reject_counts(rejected),
        ("manifest", result.manifest_path),
        ("errors", result.errors_path),
        ("data card", result.data_card_path),
    ]))
    sys.exit(EXIT_PARTIAL if any(is_failure(r.reason_code) for r in rejected) else EXIT_OK)


@cli.command("plan")
@config_options
@clean_errors
def plan_command(config_path: Path, overrides: tuple[str, ...]) -> None:
    """Fingerprint the ingested dataset and plan the training recipe: OUTPUT/plan.json (train.plan: auto)."""
    from pipelines.stages.plan import run_plan
    from pipelines.training.planning import plan_rows

    config = _load(config_path, overrides)
    result = run_plan(config)
    record = result.record
    rows = [(key, value + (" *" if source == "config" else ""), why) for key, value, source, why in plan_rows(record)]
    click.echo(summary_table(f"plan {config.name} ({record['fingerprint']['n_train']} labelled train series)", rows))
    click.echo("* the config's value stands (the key, or a related one, is set)")
    for note in record["notes"]:
        click.echo(f"note: {note}")
    if config.train.plan == "off":
        click.echo("train.plan is off: medvit train will not apply this plan")
    click.echo(f"plan: {result.path}   MLflow run: {result.run_id}")


@cli.command("train")
@config_options
@click.option("--resume", is_flag=True, help="continue from OUTPUT/train/last.safetensors")
@clean_errors
def train_command(config_path: Path, overrides: tuple[str, ...], resume: bool) -> None:
    """Train the ViT on the manifest's train split (AMP on GPU, DDP under torchrun)."""
    from pipelines.stages.train import run_train

    config = _load(config_path, overrides)
    result = run_train(config, resume=resume, progress=True)
    if int(os.environ.get("RANK", "0")) == 0:
        last = result.history[-1] if result.history else {}
        click.echo(summary_table(f"train {config.name}", [
            ("epochs run", result.epochs_run), ("optimizer steps", result.steps_run),
            ("stopped early", result.stopped_early),
            ("best epoch", result.best_epoch), ("best val AUROC", f"{result.best_val_auroc:.4f}"),
            ("last train loss", f"{last.get('train_loss', float('nan')):.4f}"),
            ("images/s (last epoch)", f"{last.get('images_per_sec', float('nan')):.1f}"),
            ("best model", result.best_path), ("MLflow run", result.run_id),
        ]))


@cli.command("pretrain")
@config_options
@click.option("--resume", is_flag=True, help="continue from OUTPUT/pretrain/last.safetensors")
@clean_errors
def pretrain_command(config_path: Path, overrides: tuple[str, ...], resume: bool) -> None:
    """Masked-autoencoder pretraining on every eligible series (no labels); last line: `encoder: URI`."""
    from pipelines.stages.pretrain import run_pretrain

    config = _load(config_path, overrides)
    result = run_pretrain(config, resume=resume, progress=True)
    if int(os.environ.get("RANK", "0")) == 0:
        click.echo(summary_table(f"pretrain {config.name}", [
            ("series used", result.n_series), ("epochs run", result.epochs_run),
            ("final MAE loss", f"{result.final_loss:.4f}"), ("encoder file", result.encoder_path),
            ("MLflow run", result.run_id),
        ]))
        click.echo(f"encoder: {result.encoder_uri}")


@cli.command("evaluate")
@config_options
@clean_errors
def evaluate_command(config_path: Path, overrides: tuple[str, ...]) -> None:
    """Test-split metrics at the validation-chosen threshold, with CIs, per-group tables and plots."""
    from pipelines.stages.evaluate import run_evaluate

    config = _load(config_path, overrides)
    result = run_evaluate(config)
    m = result.metrics
    click.echo(summary_table(f"evaluate {config.name} (test split, {m['n']} studies, {m['n_pos']} abnormal)", [
        ("AUROC (95% CI)", f"{m['auroc']:.3f} ({m['auroc_ci_low']:.3f}-{m['auroc_ci_high']:.3f})"),
        ("AUPRC", f"{m['auprc']:.3f}"),
        ("threshold", f"{result.threshold:.4f} ({result.threshold_method})"),
        ("sensitivity / specificity", f"{m['sensitivity']:.3f} / {m['specificity']:.3f}"),
        ("PPV / NPV", f"{m['ppv']:.3f} / {m['npv']:.3f}"),
        ("ECE", f"{m['ece']:.3f}"),
        ("report", result.out_dir / "metrics.json"), ("MLflow run", result.run_id),
    ]))


@cli.command("register")
@config_options
@click.option("--alias", default=None, help="registry alias (default: registry.alias, 'candidate')")
@clean_errors
def register_command(config_path: Path, overrides: tuple[str, ...], alias: str | None) -> None:
    """Log the best model as an MLflow pyfunc, register it and set an alias; attach a model card."""
    from pipelines.stages.register import run_register

    config = _load(config_path, overrides)
    result = run_register(config, alias=alias)
    click.echo(summary_table(f"register {config.name}", [
        ("registered model", f"{result.registered_name} version {result.version}"),
        ("alias", result.alias), ("model URI", result.model_uri), ("local model folder", result.local_model),
        ("MLflow run", result.run_id),
    ]))


@cli.command("preview")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="PNG to write")
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="use this config's preprocessing")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE")
@clean_errors
def preview_command(path: Path, out: Path, config_path: Path | None, overrides: tuple[str, ...]) -> None:
    """Render what the model will see after preprocessing (a slice montage for MRI)."""
    from pipelines.scoring.preview import render_preview

    if not path.exists():
        raise ConfigError(f"'{path}' does not exist: pass a DICOM file or folder")
    config = _load(config_path, overrides) if config_path else None
    drawn, scanned = render_preview(path, out, config)
    for row in scanned.rejected:
        click.echo(f"medvit: {row.path}: {row.reason_code}: {row.message}", err=True)
    if not drawn:
        click.echo(f"medvit: no usable series under '{path}' (see the reasons above)", err=True)
        sys.exit(EXIT_PARTIAL)
    click.echo(f"preview: {drawn} series -> {out}")
    sys.exit(EXIT_PARTIAL if any(is_failure(r.reason_code) for r in scanned.rejected) else EXIT_OK)


@cli.command("score")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--model", "model_uri", required=True,
              help="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/model or a local model folder")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="output folder")
@click.option("--heatmaps", is_flag=True, help="a PNG per study: attention rollout over the model input (ViT "
              "models; CNN baselines have no attention and write none)")
@click.option("--shard", default=None, metavar="I/N", help="score shard I of N (0-based); default: the torchrun "
              "rank, else everything")
@click.option("--overwrite", is_flag=True, help="rescore everything (default: skip studies this model scored)")
@click.option("--log-mlflow", is_flag=True, help="record counts and timings in an MLflow run (medvit.stage=score)")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="worker processes: they read DICOM headers during the scan (of a large input) and decode series "
              "while the model scores; 0 does both in this process (default: CPU cores - 1, at most 8; 0 on one core)")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--aggregate", type=click.Choice(["max", "mean"]), default=None,
              help="series -> study score (default: the model's)")
@click.option("--parquet", is_flag=True, help="also write scores.parquet and series_scores.parquet")
@click.option("--engine", type=click.Choice(["local", "spark"]), default="local", show_default=True,
              help="spark: scan and score on Apache Spark executors (pip install 'medvit[spark]'); the same outputs")
@click.option("--spark-master", default="local[2]", show_default=True, help="engine spark: local[N] or a cluster URL")
@clean_errors
def score_command(inputs: tuple[Path, ...], model_uri: str, out: Path, heatmaps: bool, shard: str | None,
                  overwrite: bool, log_mlflow: bool, batch_size: int, workers: int | None, device: str,
                  aggregate: str | None, parquet: bool, engine: str, spark_master: str) -> None:
    """Score every study under INPUT... with a registered model; resumable, shardable, atomic outputs."""
    from pipelines.stages.score import ScoreOptions, parse_shard, run_score

    options = ScoreOptions(inputs=list(inputs), model=model_uri, out=out, heatmaps=heatmaps,
                           shard=parse_shard(shard) if shard else None, overwrite=overwrite, log_mlflow=log_mlflow,
                           batch_size=batch_size, workers=workers, device=device, aggregate=aggregate,
                           parquet=parquet, progress=True, engine=engine, spark_master=spark_master)
    result = run_score(options)
    _echo_errors(result.frames["errors"])
    counts = result.summary["counts"]
    if heatmaps and counts["studies_scored"] and not counts["heatmaps"]:
        click.echo("medvit: --heatmaps: this model has no attention (a CNN baseline): no heatmaps written", err=True)
    click.echo(summary_table(f"score with {result.summary['model']['label']}", [
        ("files scanned", counts["files"]),
        ("studies scored now / already scored", f"{counts['studies_scored']} / "
                                                f"{counts['studies_skipped_already_scored']}"),
        ("series scored / failed", f"{counts['series_scored']} / {counts['series_failed']}"),
        ("rejected items", counts["rejected_items"]),
        ("studies/s", result.summary["studies_per_sec"]),
        ("shard", result.summary["shard"] or "all"),
        ("outputs", result.folder),
        *([("merged shards into", out)] if result.merged else []),
    ]))
    sys.exit(EXIT_PARTIAL if result.partial else EXIT_OK)


@cli.command("merge-scores")
@click.argument("out", type=click.Path(path_type=Path, exists=True, file_okay=False))
@clean_errors
def merge_scores_command(out: Path) -> None:
    """Merge OUT/shards/I-of-N outputs (e.g. copied from several machines) into OUT."""
    from pipelines.scoring.outputs import merge_shards

    summary = merge_shards(out)
    if summary is None:
        raise ConfigError(f"'{out}/shards' does not hold every shard's finished outputs (summary.json): finish or "
                          "copy the missing shards first")
    click.echo(f"merged {summary['shards']} shards: {summary['counts']['studies_in_scores']} studies -> {out}")


def _echo_errors(errors: Any, limit: int = 20) -> None:
    """One line per failed item (item, reason, fix), at most ``limit``; the rest are in errors.csv."""
    failures = errors[[is_failure(code) for code in errors["reason_code"]]]
    for row in failures.head(limit).itertuples(index=False):
        click.echo(f"medvit: {row.path}: {row.reason_code}: {row.message}", err=True)
    if len(failures) > limit:
        click.echo(f"medvit: ... and {len(failures) - limit} more failed items in errors.csv", err=True)


@cli.command("run")
@config_options
@click.option("--alias", default=None, help="registry alias for the registered model")
@clean_errors
def run_command(config_path: Path, overrides: tuple[str, ...], alias: str | None) -> None:
    """ingest, train, evaluate and register in one MLflow parent run (each stage a child run)."""
    from pipelines.pipeline import run_pipeline

    config = _load(config_path, overrides)
    result = run_pipeline(config, alias=alias, progress=True)
    click.echo(result.summary())
    sys.exit(EXIT_PARTIAL if result.partial else EXIT_OK)


@cli.command("demo")
@click.option("--kind", type=click.Choice(["xray", "mri"]), default="xray", show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=Path("demo_out"), show_default=True)
@click.option("--studies", type=click.IntRange(min=20), default=None, help="cohort size (default from the config)")
@clean_errors
def demo_command(kind: str, out: Path, studies: int | None) -> None:
    """Synthesize a cohort, run every stage, register the model and score a fresh folder."""
    from pipelines.pipeline import run_demo

    click.echo(run_demo(kind, out, studies))


@cli.command("compare")
@click.argument("refs", nargs=-1, required=True, metavar="RUN_OR_MODEL...")
@click.option("--tracking-uri", default=None, metavar="URI",
              help="the store (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)")
@click.option("--png", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="also write the comparison as a bar chart PNG")
@clean_errors
def compare_command(refs: tuple[str, ...], tracking_uri: str | None, png: Path | None) -> None:
    """Headline test metrics, threshold, data and model of runs (run ids: a `medvit run` parent or an evaluate
    run) or registered versions (models:/NAME/VERSION, models:/NAME@ALIAS), side by side."""
    from mlflow import MlflowClient

    from pipelines.reporting.compare import UnknownReference, compare_figure, compare_text, resolve
    from pipelines.reporting.plots import save_figure
    from pipelines.tracking import quiet_mlflow
    from pipelines.tracking import tracking_uri as store_uri

    quiet_mlflow()
    client = MlflowClient(tracking_uri=tracking_uri or store_uri())
    items, failed = [], 0
    for ref in refs:
        try:
            items.append(resolve(ref, client))
        except UnknownReference as exc:
            click.echo(f"medvit compare: {exc}", err=True)
            failed += 1
    if items:
        click.echo(compare_text(items))
        if png is not None:
            click.echo(f"chart: {save_figure(compare_figure(items), png)}")
    sys.exit(EXIT_PARTIAL if failed else EXIT_OK)


@cli.command("ui")
@click.option("--port", type=int, default=5000, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="use this config's tracking.uri")
def ui_command(port: int, host: str, config_path: Path | None) -> None:
    """Open the MLflow UI on the configured store (default sqlite:///mlflow.db here)."""
    from pipelines.tracking import tracking_uri

    uri = tracking_uri(load_config(config_path) if config_path else None)
    click.echo(f"MLflow UI for {uri} on http://{host}:{port} (Ctrl-C to stop)")
    os.execvp(sys.executable, [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
                               "--host", host, "--port", str(port)])


@cli.command("server")
@click.option("--backend-store-uri", metavar="URI",
              help="the store: a SQLAlchemy URI, e.g. postgresql+psycopg2://USER@HOST:PORT/DB (pip install "
              "'medvit[server]' for psycopg2)")
@click.option("--postgres-data", type=click.Path(path_type=Path, file_okay=False), metavar="DIR",
              help="instead: a local PostgreSQL in DIR (initdb if new; on a free 127.0.0.1 port; stopped on exit)")
@click.option("--postgres-user", metavar="USER",
              help="as root: run that PostgreSQL as USER, e.g. nobody (PostgreSQL refuses root)")
@click.option("--artifacts-destination", "artifacts", type=click.Path(path_type=Path, file_okay=False),
              default=Path("mlartifacts"), show_default=True, metavar="DIR",
              help="where the server stores the artifacts it serves")
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option("--port", type=click.IntRange(1, 65535), default=5000, show_default=True)
@click.argument("mlflow_args", nargs=-1, type=click.UNPROCESSED, metavar="[-- MLFLOW_ARGS...]")
@clean_errors
def server_command(backend_store_uri: str | None, postgres_data: Path | None, postgres_user: str | None,
                   artifacts: Path, host: str, port: int, mlflow_args: tuple[str, ...]) -> None:
    """Run `mlflow server` on PostgreSQL (the production store) with served artifacts; Ctrl-C stops it.

    Clients use http://HOST:PORT as tracking.uri (or MLFLOW_TRACKING_URI). Arguments after `--` go to
    `mlflow server` unchanged, e.g. `-- --workers 2 --allowed-hosts mlflow.example.org`.
    """
    from pipelines.server import ServerOptions, run_server

    options = ServerOptions(backend_store_uri, postgres_data, postgres_user, artifacts, host, port, mlflow_args)
    try:
        run_server(options, click.echo)
    except KeyboardInterrupt:
        click.echo("medvit server: stopped")


def main() -> None:
    """Console-script entry point."""
    cli()


if __name__ == "__main__":
    main()
