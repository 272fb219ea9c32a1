"""The registered champion as an MLflow pyfunc model, logged as code ("models from code"):
MLflow runs this file when it loads the model, so nothing is unpickled; the weights are the
run's safetensors checkpoint and its config.yaml, logged beside it as artifacts.

    model = mlflow.pyfunc.load_model("models:/digits-resnet18@champion")
    model.predict(["a.png", "b.png"])          # file paths
    model.predict(uint8_array)                 # (N,H,W,3), (N,3,H,W) or (N,H,W)
    -> DataFrame: label, probability (+ path for file inputs)

Resizing and normalisation happen inside, as in training. Needs transfersweep installed.
"""

from __future__ import annotations

from typing import Any

import mlflow
from mlflow.pyfunc import PythonModel


class ChampionModel(PythonModel):
    # MLflow would wrap predict to validate inputs against its type hints (and warn that it has
    # none): it takes paths, arrays or a DataFrame on purpose and checks them itself.
    _skip_type_hint_validation = True

    def load_context(self, context: Any) -> None:
        from transfersweep.predict import Predictor

        self.predictor = Predictor(context.artifacts["weights"], context.artifacts["config"])

    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201
        import numpy as np
        import pandas as pd

        if isinstance(model_input, pd.DataFrame):  # e.g. a served model's JSON -> one column
            model_input = model_input.iloc[:, 0].tolist()
        if isinstance(model_input, str):
            model_input = [model_input]
        labels, probs = self.predictor.predict(model_input)
        frame = pd.DataFrame({"label": labels, "probability": probs})
        if not isinstance(model_input, np.ndarray) and all(isinstance(x, str) for x in model_input):
            frame.insert(0, "path", list(model_input))
        return frame


mlflow.models.set_model(ChampionModel())
