"""Shared pieces of the Slipway model servers: model file discovery, the kserve.Model base
class, the command line and server start-up with metrics wiring."""

from __future__ import annotations

import argparse
import os
import sys
from abc import abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import kserve
import kserve.model_server
from kserve.errors import InferenceError, InvalidInput
from kserve.utils.utils import get_predict_input, get_predict_response

from .metrics import DEFAULT_PREDICTION_BUCKETS, RequestMetricsMiddleware, SlipwayMetrics

DEFAULT_MODEL_DIR = "/mnt/models"


class ModelLoadError(Exception):
    """The model file is missing, ambiguous or unreadable; the message names the path."""


def find_model_file(model_dir: str | Path, names: Sequence[str]) -> Path:
    """Pick the model file in ``model_dir``: the first of ``names`` that exists, otherwise the
    single file with one of their extensions."""
    root = Path(model_dir)
    if not root.is_dir():
        raise ModelLoadError(f"model directory {root} does not exist or is not a directory")
    for name in names:
        if (root / name).is_file():
            return root / name
    suffixes = {Path(n).suffix for n in names}
    found = sorted(p for p in root.iterdir() if p.is_file() and p.suffix in suffixes)
    if len(found) == 1:
        return found[0]
    if not found:
        raise ModelLoadError(f"no model file ({', '.join(names)}) found in {root}")
    listed = ", ".join(str(p) for p in found)
    raise ModelLoadError(f"several model files in {root}, name one {list(names)}: {listed}")


class SlipwayModel(kserve.Model):  # type: ignore[misc]
    """A kserve model that loads one file from ``model_dir`` and predicts on a 2-D array.

    Subclasses set ``model_files`` and implement ``load_file`` and ``predict_array``.
    The same ``predict`` serves V1 (dict payload) and V2 (InferRequest) requests.
    """

    model_files: Sequence[str] = ()

    def __init__(
        self, name: str, model_dir: str, model_version: str, metrics: SlipwayMetrics
    ) -> None:
        super().__init__(name)
        self.model_dir = model_dir
        self.model_version = model_version
        self.metrics = metrics
        self.model_path: Path | None = None

    def load(self) -> bool:
        path = find_model_file(self.model_dir, self.model_files)
        try:
            self.load_file(path)
        except Exception as e:  # any unpickling/parsing failure means a bad file
            raise ModelLoadError(f"cannot load model file {path}: {type(e).__name__}: {e}") from e
        self.model_path = path
        self.ready = True
        return True

    @abstractmethod
    def load_file(self, path: Path) -> None: ...

    @abstractmethod
    def predict_array(self, inputs: Any) -> Any: ...

    def predict(
        self,
        payload: dict[str, Any] | kserve.InferRequest,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> dict[str, Any] | kserve.InferResponse:
        try:
            inputs = get_predict_input(payload)
        except (KeyError, IndexError, TypeError, ValueError) as e:
            raise InvalidInput(f"cannot read model inputs: {type(e).__name__}: {e}") from e
        try:
            result = self.predict_array(inputs)
        except ValueError as e:  # wrong shape / feature count / dtype (XGBoostError included)
            raise InvalidInput(f"invalid input for model {self.name}: {e}") from e
        except Exception as e:
            raise InferenceError(f"prediction failed: {type(e).__name__}: {e}") from e
        self.metrics.observe_predictions(self.name, self.model_version, result)
        return get_predict_response(payload, result, self.name)


def build_parser(description: str) -> argparse.ArgumentParser:
    """Slipway options on top of kserve's own (--http_port, --grpc_port, --workers, ...)."""
    parser = argparse.ArgumentParser(
        description=description, parents=[kserve.model_server.parser], allow_abbrev=False
    )
    parser.add_argument(
        "--model_dir",
        default=DEFAULT_MODEL_DIR,
        help="Directory holding the model file (KServe mounts it at /mnt/models).",
    )
    parser.add_argument(
        "--model_version",
        default=os.environ.get("MODEL_VERSION", "unknown"),
        help="Version label on metrics (default: $MODEL_VERSION).",
    )
    parser.add_argument(
        "--prediction_buckets",
        type=lambda s: [float(x) for x in s.split(",") if x.strip()],
        default=list(DEFAULT_PREDICTION_BUCKETS),
        help="Comma-separated bucket bounds of the slipway_model_prediction histogram.",
    )
    return parser


def run_server(model_cls: type[SlipwayModel], argv: Sequence[str] | None = None) -> int:
    """Parse the command line, load the model and serve it until stopped."""
    args = build_parser(f"Slipway {model_cls.__name__} server").parse_args(argv)
    if args.workers != 1:
        # Extra uvicorn workers are separate processes: our middleware and the in-process
        # Prometheus registry would not see their requests. Scale with replicas instead.
        print("error: only --workers=1 is supported; scale with replicas", file=sys.stderr)
        return 2
    metrics = SlipwayMetrics.create(prediction_buckets=args.prediction_buckets)
    model = model_cls(args.model_name, args.model_dir, args.model_version, metrics)
    try:
        model.load()
    except ModelLoadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

    # kserve's REST server mounts its routes on this module-level FastAPI app at start-up;
    # middleware added now wraps every request it will serve.
    kserve.model_server.app.add_middleware(
        RequestMetricsMiddleware,
        metrics=metrics,
        model_versions={model.name: model.model_version},
    )
    kserve.ModelServer(
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        workers=1,
        enable_grpc=args.enable_grpc,
    ).start([model])
    return 0
