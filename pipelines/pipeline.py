"""`medvit run` (every stage under one MLflow parent run) and `medvit demo` (synthetic data end to end)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from pipelines.config import PipelineConfig, load_config
from pipelines.dicom.reasons import is_failure
from pipelines.reporting.console import summary_table
from pipelines.reporting.review import headline_metrics, pipeline_note
from pipelines.stages.evaluate import EvaluateResult, run_evaluate
from pipelines.stages.ingest import IngestResult, run_ingest
from pipelines.stages.register import RegisterResult, run_register
from pipelines.stages.score import ScoreOptions, run_score
from pipelines.stages.train import run_train
from pipelines.tracking import model_label, pipeline_run, tracking_uri
from pipelines.training.planning import planned_config
from pipelines.training.trainer import TrainResult

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DEMO_STUDIES = {"xray": 400, "mri": 200}
DEMO_NEW_STUDIES = {"xray": 100, "mri": 20}
# Lesion difficulty of the demo cohorts (0 obvious .. 1 subtle): a from-scratch ViT on a few hundred
# studies on a CPU, within minutes. Harder cohorts are what benchmarks/ and the data-efficiency work are for.
DEMO_DIFFICULTY = {"xray": 0.3, "mri": 0.2}


@dataclass
class PipelineResult:
    config: PipelineConfig
    ingest: IngestResult
    train: TrainResult
    evaluate: EvaluateResult
    register: RegisterResult
    run_id: str | None

    @property
    def partial(self) -> bool:
        return any(is_failure(code) for code in self.ingest.errors["reason_code"])

    def summary(self) -> str:
        m = self.evaluate.metrics
        return summary_table(f"run {self.config.name}", [
            ("series (train/val/test)", "/".join(str(int((self.ingest.manifest["split"] == s).sum()))
                                                 for s in ("train", "val", "test"))),
            ("rejected items", len(self.ingest.errors)),
            ("best epoch / val AUROC", f"{self.train.best_epoch} / {self.train.best_val_auroc:.3f}"),
            ("test AUROC (95% CI)", f"{m['auroc']:.3f} ({m['auroc_ci_low']:.3f}-{m['auroc_ci_high']:.3f})"),
            ("sensitivity / specificity", f"{m['sensitivity']:.3f} / {m['specificity']:.3f}"),
            ("registered", f"{self.register.model_uri} (version {self.register.version})"),
            ("outputs", self.config.output.dir),
            ("MLflow parent run", self.run_id),
        ])


def run_pipeline(config: PipelineConfig, *, alias: str | None = None, progress: bool = False) -> PipelineResult:
    """ingest -> train -> evaluate -> register, each a child run of one parent run, which holds the resolved
    config and the headline metrics (test AUROC and its CI, sensitivity, specificity, training) for the runs table."""
    with pipeline_run(config) as parent:
        try:
            ingest = run_ingest(config, progress=progress)
            train = run_train(config, progress=progress)
            evaluate = run_evaluate(config)
            register = run_register(config, alias=alias)
        finally:  # the resolved config on the parent, however far the stages got
            resolved = planned_config(config)
            parent.finish(resolved)
        summary = asdict(train)
        parent.log_metrics(headline_metrics(evaluate.report, summary))
        parent.set_note(pipeline_note(model_label(resolved), config.name, evaluate.report, summary,
                                      f"{register.registered_name} v{register.version} @{register.alias}"))
    return PipelineResult(config, ingest, train, evaluate, register, parent.run_id)


def demo_config(kind: str, out: Path) -> PipelineConfig:
    root = out / kind
    return load_config(CONFIG_DIR / f"demo_{kind}.yaml", [
        f"data.dicom_root={root / 'dicom'}", f"data.labels={root / 'labels.csv'}", f"output.dir={root / 'run'}"])


def run_demo(kind: str, out: Path, studies: int | None = None) -> str:
    """Synthesize, run every stage, register, then score a freshly synthesized folder; return a summary."""
    from sklearn.metrics import roc_auc_score

    from pipelines.dicom.synth import write_cohort

    write_cohort(out / kind, kind, studies or DEMO_STUDIES[kind], seed=0, difficulty=DEMO_DIFFICULTY[kind])
    config = demo_config(kind, out)
    result = run_pipeline(config, progress=True)
    new = out / f"{kind}_new"
    write_cohort(new, kind, DEMO_NEW_STUDIES[kind], seed=1, difficulty=DEMO_DIFFICULTY[kind])
    scored = run_score(ScoreOptions(inputs=[new / "dicom"], model=result.register.model_uri, out=out / f"{kind}_scores",
                                    heatmaps=True, overwrite=True, tracking_uri=tracking_uri(config), progress=True))
    scores = scored.frames["scores"].astype({"score": float})
    labels = pd.read_csv(new / "labels.csv")
    joined = scores.merge(labels, on="StudyInstanceUID")
    new_auroc = roc_auc_score(joined["label"] == "abnormal", joined["score"]) if len(joined) else float("nan")
    return "\n\n".join([
        result.summary(),
        summary_table("scoring a fresh synthetic folder", [
            ("studies scored (medvit score)", len(scores)), ("AUROC on the fresh folder", f"{new_auroc:.3f}"),
            ("studies/s", scored.summary["studies_per_sec"]),
            ("scores, heatmaps", f"{scored.folder / 'scores.csv'}, {scored.folder / 'heatmaps'}"),
        ]),
        f"Open the MLflow UI: medvit ui   (store: {tracking_uri(config)})",
    ])
