"""The MLflow pyfunc of a medvit model, logged as code (MLflow "models from code"): nothing is pickled.

``predict`` takes a DataFrame with a ``path`` column (DICOM files or folders), scans and groups them into
series exactly as ingest does, preprocesses with the model's own config, scores each series and returns one
row per study: ``StudyInstanceUID, score, prediction, n_series``. Unusable inputs are skipped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel

OUTPUT_COLUMNS = ["StudyInstanceUID", "score", "prediction", "n_series"]


class MedvitModel(PythonModel):
    """Scores DICOM studies with the packaged weights, preprocessing config and threshold."""

    def load_context(self, context: Any) -> None:
        import torch

        from pipelines.scoring.model_package import read_package_config
        from pipelines.training.modeling import load_model

        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model, self.model_kwargs, _ = load_model(Path(context.artifacts["weights"]), self.device)
        self.meta = json.loads(Path(context.artifacts["meta"]).read_text())
        self.config = read_package_config(Path(context.artifacts["config"]))

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        from pipelines.data.scan_settings import selection_rules
        from pipelines.dicom.scan import scan
        from pipelines.scoring.predictor import Predictor, series_item

        paths = [str(p) for p in model_input["path"]]
        scanned = scan(paths, selection_rules(self.config))
        series = scanned.series  # of the model's kind only: the scan's rules
        if not series:
            return pd.DataFrame({c: pd.Series(dtype=t) for c, t in zip(OUTPUT_COLUMNS, ("str", "float64", "str", "int64"),
                                                                      strict=True)})
        predictor = Predictor(self.model, self.config, threshold=float(self.meta["threshold"]),
                              aggregate=self.meta["aggregate"], device=self.device)
        studies = predictor.studies(predictor.score([series_item(s) for s in series]).series)
        return pd.DataFrame({
            "StudyInstanceUID": studies["study_uid"].astype(str),
            "score": studies["score"].astype("float64"),
            "prediction": studies["prediction"].astype(str),
            "n_series": studies["n_series"].astype("int64"),
        })

set_model(MedvitModel())
