"""XGBoost model server: serves a saved Booster (.ubj, .json or legacy .bst).

One output, ``predict``: what ``Booster.predict`` returns (P(class 1) for ``binary:logistic``,
one column per class for ``multi:softprob``, the value for a regression).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xgboost as xgb

from .base import DEFAULT_INPUT_TENSOR, SlipwayModel, Tensor, run_server


class XGBoostModel(SlipwayModel):
    model_files = ("model.ubj", "model.json", "model.bst")

    def load_file(self, path: Path) -> Any:
        booster = xgb.Booster()
        booster.load_model(str(path))
        if self.nthread > 0:
            booster.set_param({"nthread": self.nthread})
        return booster

    def _columns(self) -> int:
        learner = json.loads(self.impl.save_config())["learner"]
        num_class = int(learner["learner_model_param"].get("num_class", "0") or 0)
        return num_class if learner["objective"]["name"] == "multi:softprob" else 1

    def outputs(self) -> list[Tensor]:
        k = self._columns()
        return [Tensor("predict", "FP32", (-1,) if k <= 1 else (-1, k))]

    def inputs(self) -> list[Tensor]:
        return [Tensor(DEFAULT_INPUT_TENSOR, "FP32", (-1, self.impl.num_features()))]

    def compute(self, inputs: Any, outputs: Sequence[str]) -> list[np.ndarray]:
        # XGBoost fills missing trailing columns with NaN instead of failing, so check the
        # feature count ourselves; a ValueError becomes a 400 in the base class.
        data = inputs if hasattr(inputs, "columns") else np.asarray(inputs, dtype=np.float32)
        expected = self.impl.num_features()
        if data.ndim != 2 or data.shape[1] != expected:
            raise ValueError(
                f"expected a 2-D input with {expected} features, got shape {data.shape}"
            )
        # Same values as predict(DMatrix(data)), without building a DMatrix per request.
        result = self.impl.inplace_predict(data)
        return [result for _ in outputs]


def main() -> None:
    sys.exit(run_server(XGBoostModel))


if __name__ == "__main__":
    main()
