"""The MLflow pyfunc of a medvit model, logged as code (MLflow "models from code"): nothing is pickled.

``predict`` takes one study per row (``path``: its file or folder; or ``dicom``: the bytes of one DICOM file)
and returns one row per input row, in input order: ``StudyInstanceUID, score, prediction, n_series, status,
message`` (``scoring.requests``: the contract, allowed roots under ``mlflow models serve``). Files are scanned
and grouped exactly as ingest does and scored by the one ``Predictor`` with the model's own config, threshold
and study aggregation. A bad row is an error row, never an exception.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel


class MedvitModel(PythonModel):
    """Scores DICOM studies with the packaged weights, preprocessing config and threshold."""

    def load_context(self, context: Any) -> None:
        import torch

        from pipelines.scoring.model_package import read_package_config
        from pipelines.scoring.predictor import Predictor
        from pipelines.training.modeling import load_model

        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model, self.model_kwargs, _ = load_model(Path(context.artifacts["weights"]), self.device)
        self.meta = json.loads(Path(context.artifacts["meta"]).read_text())
        self.config = read_package_config(Path(context.artifacts["config"]))
        self.predictor = Predictor(self.model, self.config, threshold=float(self.meta["threshold"]),
                                   aggregate=self.meta["aggregate"], device=self.device)

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        from pipelines.data.scan_settings import scan_limits, selection_rules
        from pipelines.scoring.requests import score_requests

        return score_requests(self.predictor, selection_rules(self.config), scan_limits(self.config), model_input)


set_model(MedvitModel())
