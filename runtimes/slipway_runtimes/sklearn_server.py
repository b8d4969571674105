"""scikit-learn model server: serves a joblib/pickle file from the model directory."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import joblib

from .base import SlipwayModel, run_server


class SKLearnModel(SlipwayModel):
    model_files = ("model.joblib", "model.pkl")

    def load_file(self, path: Path) -> None:
        model = joblib.load(path)
        if not callable(getattr(model, "predict", None)):
            raise TypeError(f"{type(model).__name__} has no predict() method")
        self._model = model

    def predict_array(self, inputs: Any) -> Any:
        return self._model.predict(inputs)


def main() -> None:
    sys.exit(run_server(SKLearnModel))


if __name__ == "__main__":
    main()
