"""Shared pieces of the Slipway model servers: model file discovery, the kserve.Model base
class (named outputs, V2 metadata, prediction metrics) and the command line."""

from __future__ import annotations

import argparse
import inspect
import os
import shutil
import sys
import tempfile
import time
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kserve
import kserve.metrics as kserve_metrics
import kserve.model_server
import numpy as np
from kserve.errors import InferenceError, InvalidInput
from kserve.logging import trace_logger
from kserve.model import InferenceVerb
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse
from kserve.utils.numpy_codec import from_np_dtype
from kserve.utils.utils import generate_uuid, get_predict_input, strtobool

from .metrics import (
    DEFAULT_PREDICTION_BUCKETS,
    UNKNOWN_MODEL,
    SlipwayMetrics,
    enable_multiprocess,
    multiprocess_dir,
    prediction_series,
)

DEFAULT_MODEL_DIR = "/mnt/models"
# Name of the single output tensor of a V2 response that names no outputs (kserve's default).
DEFAULT_OUTPUT_TENSOR = "output-0"
DEFAULT_INPUT_TENSOR = "input-0"


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


@dataclass(frozen=True)
class Tensor:
    """A V2 model metadata tensor: ``-1`` marks a variable dimension (the batch)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


def datatype_of(dtype: Any) -> str:
    """V2 datatype of a numpy dtype (BYTES for strings and objects)."""
    return str(from_np_dtype(np.dtype(dtype)) or "BYTES")


class SlipwayModel(kserve.Model):  # type: ignore[misc]
    """A kserve model that loads one file from ``model_dir`` and computes named outputs.

    Subclasses set ``model_files`` and implement ``load_file``, ``outputs`` and
    ``compute``. The same ``predict`` serves V1 (dict payload), V2 REST and V2 gRPC
    (``InferRequest``) requests:

    - a request that names no outputs gets ``default_outputs()``; in V2 as one tensor named
      ``output-0`` per output for models that keep kserve's naming (``named_outputs`` False);
    - a V2 request may name outputs (``"outputs": [{"name": "predict_proba"}]``): it gets those
      tensors, by those names;
    - every numeric output goes into the ``slipway_model_prediction`` histogram, one series per
      output column (see :func:`slipway_runtimes.metrics.prediction_series`).
    """

    model_files: Sequence[str] = ()
    # The output whose one-value-per-row series is labelled output="" in the histogram.
    primary_output = "predict"
    # True: V2 tensors are always named after the output (ONNX graph outputs). False: a request
    # that names no outputs gets kserve's "output-0".
    named_outputs = False

    def __init__(
        self,
        name: str,
        model_dir: str,
        model_version: str,
        metrics: SlipwayMetrics | None,
        nthread: int = 1,
    ) -> None:
        super().__init__(name)
        self.model_dir = model_dir
        self.model_version = model_version
        self.metrics = metrics
        # Threads per prediction, for the libraries that run their own pool (XGBoost's OpenMP,
        # onnxruntime's intra-op pool). 1 by default, as KServe's xgbserver: a request's batch is
        # small, and N workers x M threads on N cores spin against each other.
        self.nthread = nthread
        self.model_path: Path | None = None
        self.impl: Any = None
        self._hooks: tuple[Any, ...] | None = None

    # --- loading --------------------------------------------------------------------------

    def load(self) -> bool:
        path = find_model_file(self.model_dir, self.model_files)
        try:
            self.impl = self.load_file(path)
        except Exception as e:  # any unpickling/parsing failure means a bad file
            raise ModelLoadError(f"cannot load model file {path}: {type(e).__name__}: {e}") from e
        self.model_path = path
        self.ready = True
        return True

    @abstractmethod
    def load_file(self, path: Path) -> Any:
        """Load ``path`` and return the loaded model (kept as ``self.impl``)."""

    def __getstate__(self) -> dict[str, Any]:
        # Worker processes (--workers N) receive the model pickled: send the settings, not the
        # loaded model (an ONNX session cannot be pickled) nor the metrics (each worker binds its
        # own); the worker loads the same file again.
        state = dict(self.__dict__)
        state["impl"] = None
        state["metrics"] = None
        state["_hooks"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if state.get("ready"):
            self.load()

    # --- outputs --------------------------------------------------------------------------

    @abstractmethod
    def outputs(self) -> list[Tensor]:
        """Every output a request may name, with its datatype and shape."""

    def default_outputs(self) -> list[str]:
        """The outputs of a request that names none."""
        return [self.primary_output]

    def inputs(self) -> list[Tensor]:
        """The inputs the model expects (V2 metadata)."""
        return [Tensor(DEFAULT_INPUT_TENSOR, "FP64", (-1, -1))]

    def columns(self, output: str) -> Sequence[Any] | None:
        """Labels of the columns of a 2-D output (class labels of predict_proba), if any."""
        return None

    @abstractmethod
    def compute(self, inputs: Any, outputs: Sequence[str]) -> list[np.ndarray]:
        """The named outputs for ``inputs``; a ValueError means bad input (HTTP 400)."""

    def predict_array(self, inputs: Any) -> Any:
        """The default outputs' first array for ``inputs`` (a convenience for callers)."""
        return self.compute(inputs, self.default_outputs())[0]

    # --- V2 metadata ----------------------------------------------------------------------

    def get_input_types(self) -> list[dict[str, Any]]:
        return [t.as_dict() for t in self.inputs()]

    def get_output_types(self) -> list[dict[str, Any]]:
        """What ``GET /v2/models/{name}`` lists: the tensors of a request that names no outputs
        first (``output-0`` unless ``named_outputs``), then every output a request may name."""
        by_name = {t.name: t for t in self.outputs()}
        listed: list[Tensor] = []
        if not self.named_outputs:
            for name in self.default_outputs():
                t = by_name[name]
                listed.append(Tensor(DEFAULT_OUTPUT_TENSOR, t.datatype, t.shape))
        names = {t.name for t in listed}
        listed += [t for t in by_name.values() if t.name not in names]
        return [t.as_dict() for t in listed]

    # --- predict --------------------------------------------------------------------------

    async def __call__(
        self,
        body: Any,
        headers: dict[str, str] | None = None,
        verb: InferenceVerb = InferenceVerb.PREDICT,
    ) -> tuple[Any, dict[str, str]]:
        """kserve's ``Model.__call__`` for predictions, with its histogram children bound once:
        preprocess, validate, predict and postprocess, timed into request_preprocess_seconds,
        request_predict_seconds and request_postprocess_seconds as kserve does."""
        if verb != InferenceVerb.PREDICT:
            return await super().__call__(body, headers, verb)  # type: ignore[no-any-return]
        hooks = self._hooks
        if hooks is None or hooks[0] != self.name:
            hooks = self._hooks = self._bind_hooks()
        _, pre_hist, predict_hist, post_hist, pre_async, post_async = hooks
        response_headers: dict[str, str] = {}
        # Each stage is observed even when it raises, as kserve's Histogram.time() does.
        t0 = time.perf_counter()
        try:
            if pre_async:
                payload = await self.preprocess(body, headers)
            else:
                payload = self.preprocess(body, headers)
        finally:
            t1 = time.perf_counter()
            pre_hist.observe(t1 - t0)
        payload = self.validate(payload)
        t2 = time.perf_counter()
        try:
            if self.required_response_headers:
                response = self.predict(payload, headers, response_headers)
            else:
                response = self.predict(payload, headers)
        finally:
            t3 = time.perf_counter()
            predict_hist.observe(t3 - t2)
        post_args = (response_headers,) if self.required_response_headers else ()
        try:
            if post_async:
                response = await self.postprocess(response, headers, *post_args)
            else:
                response = self.postprocess(response, headers, *post_args)
        finally:
            t4 = time.perf_counter()
            post_hist.observe(t4 - t3)
        if self.enable_latency_logging is True:
            request_id = headers.get("x-request-id", "N.A.") if headers else "N.A."
            trace_logger.info(
                f"requestId: {request_id}, preprocess_ms: {round((t1 - t0) * 1000, 9)}, "
                f"explain_ms: 0, predict_ms: {round((t3 - t2) * 1000, 9)}, "
                f"postprocess_ms: {round((t4 - t3) * 1000, 9)}"
            )
        return response, response_headers

    def _bind_hooks(self) -> tuple[Any, ...]:
        labels = kserve_metrics.get_labels(self.name)
        return (
            self.name,
            kserve_metrics.PRE_HIST_TIME.labels(**labels),
            kserve_metrics.PREDICT_HIST_TIME.labels(**labels),
            kserve_metrics.POST_HIST_TIME.labels(**labels),
            inspect.iscoroutinefunction(self.preprocess),
            inspect.iscoroutinefunction(self.postprocess),
        )

    def decode_inputs(self, payload: dict[str, Any] | InferRequest) -> Any:
        return get_predict_input(payload)

    def predict(
        self,
        payload: dict[str, Any] | InferRequest,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> dict[str, Any] | InferResponse:
        requested = None
        if isinstance(payload, InferRequest) and payload.request_outputs:
            requested = [o.name for o in payload.request_outputs]
            known = {t.name for t in self.outputs()}
            unknown = [n for n in requested if n not in known]
            if unknown:
                raise InvalidInput(
                    f"model {self.name} has no output {', '.join(map(repr, unknown))}; "
                    f"it has {', '.join(sorted(known))}"
                )
        names = requested or self.default_outputs()
        try:
            inputs = self.decode_inputs(payload)
        except (KeyError, IndexError, TypeError, ValueError) as e:
            raise InvalidInput(f"cannot read model inputs: {type(e).__name__}: {e}") from e
        try:
            results = self.compute(inputs, names)
        except ValueError as e:  # wrong shape / feature count / dtype (XGBoostError included)
            raise InvalidInput(f"invalid input for model {self.name}: {e}") from e
        except Exception as e:
            raise InferenceError(f"prediction failed: {type(e).__name__}: {e}") from e
        if self.metrics is not None:
            series = [
                s
                for name, arr in zip(names, results, strict=True)
                for s in prediction_series(
                    name, arr, name == self.primary_output, self.columns(name)
                )
            ]
            self.metrics.observe_series(self.name, self.model_version, series)
        if not isinstance(payload, InferRequest):
            first = results[0]
            return {"predictions": first.tolist() if isinstance(first, np.ndarray) else first}
        return self._response(payload, names, results, requested is not None)

    def _response(
        self, payload: InferRequest, names: Sequence[str], results: Sequence[Any], requested: bool
    ) -> InferResponse:
        binary = payload.use_binary_outputs
        tensors = []
        for i, (name, result) in enumerate(zip(names, results, strict=True)):
            arr = np.asarray(result)
            if arr.dtype.kind == "U":  # kserve encodes str objects, not numpy unicode arrays
                arr = arr.astype(object)
            if requested or self.named_outputs:
                tensor_name = name
            else:
                tensor_name = DEFAULT_OUTPUT_TENSOR if i == 0 else f"output-{i}"
            datatype = datatype_of(arr.dtype)
            if binary or datatype == "BYTES":
                out = InferOutput(name=tensor_name, shape=list(arr.shape), datatype=datatype)
                out.set_data_from_numpy(arr, binary_data=binary)
            else:  # what set_data_from_numpy(binary_data=False) gives, without a loop per value
                out = InferOutput(
                    name=tensor_name,
                    shape=list(arr.shape),
                    datatype=datatype,
                    data=arr.reshape(-1).tolist(),
                )
            tensors.append(out)
        return InferResponse(
            model_name=self.name,
            infer_outputs=tensors,
            response_id=payload.id if payload.id else generate_uuid(),
            use_binary_outputs=binary,
            requested_outputs=payload.request_outputs,
        )


# --- command line ---------------------------------------------------------------------------


def _bool(value: str) -> bool:
    return bool(strtobool(value))


def metric_labels(model: Any, name: str) -> tuple[str, str]:
    """(model_name, model_version) labels for a request to *name*, whose model is *model*.
    Only served model names become label values: unknown names must not blow up
    cardinality."""
    if isinstance(model, SlipwayModel):
        return name, model.model_version
    return UNKNOWN_MODEL, UNKNOWN_MODEL


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
    parser.add_argument(
        "--enable_access_log",
        type=_bool,
        default=False,
        help="Log one line per request (uvicorn's access log). Off by default: it costs a "
        "noticeable share of a small model's request time.",
    )
    parser.add_argument(
        "--nthread",
        type=int,
        default=1,
        help="Threads per prediction for XGBoost and onnxruntime (0: the library's default, "
        "one per core). scikit-learn ignores it.",
    )
    # Per-request logging is off unless asked for (kserve's default is on).
    parser.set_defaults(enable_latency_logging=False)
    return parser


def _prepare_multiprocess_metrics() -> str | None:
    """Turn on prometheus_client's multiprocess mode for --workers > 1: the directory named by
    PROMETHEUS_MULTIPROC_DIR (emptied of old files), or a fresh one removed at exit. Returns
    the directory to remove at exit, if we made it."""
    given = multiprocess_dir()
    if given:
        os.makedirs(given, exist_ok=True)
        for stale in Path(given).glob("*.db"):  # values of an earlier run must not add up
            stale.unlink()
        enable_multiprocess(given)
        return None
    made = tempfile.mkdtemp(prefix="slipway-metrics-")
    enable_multiprocess(made)
    return made


def run_server(model_cls: type[SlipwayModel], argv: Sequence[str] | None = None) -> int:
    """Parse the command line, load the model and serve it until stopped."""
    from .server import SlipwayModelServer  # imports uvicorn & co: only when serving

    args = build_parser(f"Slipway {model_cls.__name__} server").parse_args(argv)
    if args.workers < 1:
        print("error: --workers must be at least 1", file=sys.stderr)
        return 2
    made_dir = _prepare_multiprocess_metrics() if args.workers > 1 else None
    try:
        metrics = SlipwayMetrics.create(prediction_buckets=args.prediction_buckets)
        model = model_cls(args.model_name, args.model_dir, args.model_version, metrics)
        model.nthread = args.nthread
        try:
            model.load()
        except ModelLoadError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        SlipwayModelServer(
            metrics=metrics,
            http_port=args.http_port,
            grpc_port=args.grpc_port,
            workers=args.workers,
            max_threads=args.max_threads,
            max_asyncio_workers=args.max_asyncio_workers,
            enable_grpc=args.enable_grpc,
            enable_docs_url=args.enable_docs_url,
            enable_latency_logging=args.enable_latency_logging,
            access_log_format=args.access_log_format,
            event_loop=args.event_loop,
            timeout_keep_alive=args.timeout_keep_alive,
            access_log=args.enable_access_log,
            prediction_buckets=args.prediction_buckets,
            grpc_max_send_message_length=args.grpc_max_send_message_length,
            grpc_max_receive_message_length=args.grpc_max_receive_message_length,
            log_config_file=args.log_config_file,
        ).start([model])
        return 0
    finally:
        if made_dir:
            shutil.rmtree(made_dir, ignore_errors=True)
