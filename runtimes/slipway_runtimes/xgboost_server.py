"""XGBoost model server: serves a saved Booster (.ubj, .json or legacy .bst)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import xgboost as xgb

from .base import SlipwayModel, run_server


class XGBoostModel(SlipwayModel):
    model_files = ("model.ubj", "model.json", "model.bst")

    def load_file(self, path: Path) -> None:
        booster = xgb.Booster()
        booster.load_model(str(path))
        self._booster = booster

    def predict_array(self, inputs: Any) -> Any:
        # XGBoost fills missing trailing columns with NaN instead of failing, so check the
        # feature count ourselves; a ValueError becomes a 400 in the base class.
        data = inputs if hasattr(inputs, "columns") else np.asarray(inputs, dtype=np.float32)
        expected = self._booster.num_features()
        if data.ndim != 2 or data.shape[1] != expected:
            raise ValueError(
                f"expected a 2-D input with {expected} features, got shape {data.shape}"
            )
        return self._booster.predict(xgb.DMatrix(data))


def main() -> None:
    sys.exit(run_server(XGBoostModel))


if __name__ == "__main__":
    main()
