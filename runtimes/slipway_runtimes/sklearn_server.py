"""scikit-learn model server: serves a joblib/pickle file from the model directory.

Outputs: ``predict`` and, for classifiers, ``predict_proba`` (class probabilities, one column
per entry of ``classes_``). A request that names no outputs gets ``predict``, or
``predict_proba`` when the environment sets ``PREDICT_PROBA=true`` (the switch of KServe's own
sklearn server). A V2 request can name the outputs it wants:
``"outputs": [{"name": "predict_proba"}]``.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import joblib
import numpy as np
from kserve.utils.utils import strtobool

from .base import DEFAULT_INPUT_TENSOR, SlipwayModel, Tensor, datatype_of, run_server
from .metrics import SlipwayMetrics

ENV_PREDICT_PROBA = "PREDICT_PROBA"
METHODS = ("predict", "predict_proba")

log = logging.getLogger("slipway.sklearn")


class SKLearnModel(SlipwayModel):
    model_files = ("model.joblib", "model.pkl")

    def __init__(
        self,
        name: str,
        model_dir: str,
        model_version: str,
        metrics: SlipwayMetrics | None,
        nthread: int = 1,
        predict_proba: bool | None = None,
    ) -> None:
        super().__init__(name, model_dir, model_version, metrics, nthread)
        if predict_proba is None:
            predict_proba = bool(strtobool(os.environ.get(ENV_PREDICT_PROBA, "false")))
        self.proba_by_default = predict_proba

    def load_file(self, path: Path) -> Any:
        model = joblib.load(path)
        if not callable(getattr(model, "predict", None)):
            raise TypeError(f"{type(model).__name__} has no predict() method")
        if self.proba_by_default and not callable(getattr(model, "predict_proba", None)):
            log.warning(
                "%s=true but %s has no predict_proba(): serving predict()",
                ENV_PREDICT_PROBA,
                type(model).__name__,
            )
        return model

    def _classes(self) -> np.ndarray | None:
        classes = getattr(self.impl, "classes_", None)
        if isinstance(classes, np.ndarray) and classes.ndim == 1:
            return classes
        return None  # a regressor, or a multi-output classifier (a list of arrays)

    def _n_outputs(self, classes: np.ndarray | None) -> int:
        """Values per row of predict(): n_outputs_ when the estimator tells, else the rows of
        a regressor's 2-D coef_ (multi-target linear models)."""
        n = getattr(self.impl, "n_outputs_", None)
        if n is not None:
            return int(n)
        coef = getattr(self.impl, "coef_", None)
        if classes is None and isinstance(coef, np.ndarray) and coef.ndim == 2:
            return int(coef.shape[0])
        return 1

    def outputs(self) -> list[Tensor]:
        classes = self._classes()
        n_outputs = self._n_outputs(classes)
        predict_shape = (-1,) if n_outputs == 1 else (-1, n_outputs)
        predict_type = datatype_of(classes.dtype) if classes is not None else "FP64"
        tensors = [Tensor("predict", predict_type, predict_shape)]
        if callable(getattr(self.impl, "predict_proba", None)):
            width = len(classes) if classes is not None else -1
            tensors.append(Tensor("predict_proba", "FP64", (-1, width)))
        return tensors

    def default_outputs(self) -> list[str]:
        if self.proba_by_default and callable(getattr(self.impl, "predict_proba", None)):
            return ["predict_proba"]
        return ["predict"]

    def inputs(self) -> list[Tensor]:
        n = getattr(self.impl, "n_features_in_", None)
        return [Tensor(DEFAULT_INPUT_TENSOR, "FP64", (-1, int(n) if n is not None else -1))]

    def columns(self, output: str) -> Sequence[Any] | None:
        classes = self._classes()
        return classes.tolist() if output == "predict_proba" and classes is not None else None

    def compute(self, inputs: Any, outputs: Sequence[str]) -> list[np.ndarray]:
        done: dict[str, np.ndarray] = {}
        for name in outputs:
            if name not in done:
                if name not in METHODS:
                    raise ValueError(f"unknown output {name!r}")
                done[name] = getattr(self.impl, name)(inputs)
        return [done[name] for name in outputs]


def main() -> None:
    sys.exit(run_server(SKLearnModel))


if __name__ == "__main__":
    main()
