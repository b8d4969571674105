"""Slipway Prometheus metrics for model servers.

kserve already exports per-stage latency histograms (request_predict_seconds, ...) on the
default registry, which its REST server exposes at ``/metrics``. We register ours on the same
registry so one scrape sees both. Every series carries ``model_name`` and ``model_version`` so a
canary can be compared against the stable version.

Recording is cheap on purpose: each label combination is bound once and its child kept, so a
request costs no label lookup, and the predicted values of a batch go into their histogram with
one vectorised bucket count instead of one ``observe()`` per value.

With several worker processes (``--workers N``) prometheus_client's multiprocess mode is used:
``PROMETHEUS_MULTIPROC_DIR`` holds one file per process and :func:`exposition` sums them.
"""

from __future__ import annotations

import os
import re
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, values
from prometheus_client import exposition as prom_exposition
from prometheus_client.multiprocess import MultiProcessCollector

# Suits class labels and probabilities. Non-negative on purpose: prometheus_client omits the
# histogram's _sum (needed for the mean prediction) when any bucket bound is negative.
DEFAULT_PREDICTION_BUCKETS: tuple[float, ...] = (
    0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1, 2, 3, 5, 10, 100,
)  # fmt: skip

# Request latency, finer than prometheus_client's defaults between 0.1 s and 1 s, where a
# canary's p99 is compared with its bound (the defaults jump from 0.1 s to 0.25 s).
DURATION_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2.5, 5, 10,
)  # fmt: skip

UNKNOWN_MODEL = "unknown"

# The `output` label of slipway_model_prediction for the model's main prediction (one value per
# row). Prometheus stores an empty label value as no label at all, so these series are exactly
# the ones a server without the label exported: queries written for them keep working.
PRIMARY_OUTPUT = ""
# A prediction with more columns than this (embeddings, ...) is not put in the histogram: one
# series per column would explode the cardinality.
MAX_COLUMNS = 32

# Inference routes of kserve's REST server: V1 and V2 (Open Inference Protocol).
_ROUTES: tuple[tuple[str, str, re.Pattern[str]], ...] = (
    ("v1", "/v1/models/", re.compile(r"^/v1/models/(?P<name>[^/:]+):predict$")),
    ("v2", "/v2/models/", re.compile(r"^/v2/models/(?P<name>[^/]+)(?:/versions/[^/]+)?/infer$")),
)

# Error reason per HTTP status, as raised by kserve's exception handlers and FastAPI.
_REASONS = {
    400: "invalid_input",
    404: "model_not_found",
    405: "method_not_allowed",
    422: "validation_error",
    503: "model_not_ready",
}


def error_reason(status: int) -> str:
    return _REASONS.get(status, "client_error" if status < 500 else "internal_error")


# --- multiprocess mode ------------------------------------------------------------------------


def multiprocess_dir() -> str | None:
    """The directory of prometheus_client's multiprocess mode, when it is on."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir")


def enable_multiprocess(directory: str) -> None:
    """Switch this process to multiprocess values: every metric child created from now on keeps
    its value in a file of ``directory``, which :func:`exposition` sums over all processes.
    Processes started afterwards inherit the setting through the environment."""
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    # prometheus_client picks the value class when it is imported; labelled metrics (kserve's
    # and ours) create their values per child, so switching now covers all of them.
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]


def exposition(accept: str | None) -> tuple[bytes, str]:
    """The /metrics body summed over the worker processes (multiprocess mode)."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    encoder, content_type = prom_exposition.choose_encoder(accept or "")
    return encoder(registry), content_type


# --- histograms -------------------------------------------------------------------------------


def _batch_observer(child: Histogram) -> Callable[[np.ndarray], None]:
    """A function adding a 1-D array to ``child`` exactly as ``observe()`` per value would, with
    one increment per touched bucket instead of one per value."""
    bounds = [float(b) for b in getattr(child, "_upper_bounds", ())]
    buckets = getattr(child, "_buckets", None)
    total = getattr(child, "_sum", None)
    if buckets is None or total is None or not bounds or len(bounds) != len(buckets):
        # Not the prometheus_client internals this was written for: take the slow, public way.
        def observe_each(arr: np.ndarray) -> None:
            for v in arr.tolist():
                child.observe(v)

        return observe_each

    last = len(bounds)

    def observe_batch(arr: np.ndarray) -> None:
        vals = arr.tolist()
        # observe() adds each value to the sum and to the first bucket whose bound is >= it,
        # i.e. bisect_left; NaN belongs to no bucket (every comparison is false).
        total.inc(sum(vals))
        counts: dict[int, int] = {}
        for v in vals:
            if v == v:  # not NaN
                i = bisect_left(bounds, v)
                if i < last:
                    counts[i] = counts.get(i, 0) + 1
        for i, n in counts.items():
            buckets[i].inc(n)

    return observe_batch


@dataclass(frozen=True)
class Series:
    """Predicted values bound for one ``output`` label of slipway_model_prediction."""

    output: str
    values: np.ndarray  # 1-D


def prediction_series(
    method: str, arr: Any, primary: bool, columns: Sequence[Any] | None = None
) -> list[Series]:
    """How one model output goes into the prediction histogram.

    - one value per row (shape ``(n,)`` or ``(n, 1)``): one series, labelled ``""`` for the
      primary output (what a single-output server always exported) and ``method`` otherwise;
    - ``k`` values per row (shape ``(n, k)``, e.g. class probabilities): one series per column,
      labelled ``method:column`` with the column's class label when ``columns`` names them;
    - non-numeric values (string class labels), more dimensions or more than ``MAX_COLUMNS``
      columns: nothing.
    """
    a = np.asarray(arr)
    if a.dtype.kind not in "biuf" or a.ndim == 0 or a.ndim > 2:
        return []
    if a.ndim == 1 or a.shape[1] == 1:
        return [Series(PRIMARY_OUTPUT if primary else method, a.reshape(-1))]
    k = a.shape[1]
    if k > MAX_COLUMNS:
        return []
    names = [str(c) for c in columns] if columns is not None and len(columns) == k else None
    return [Series(f"{method}:{names[j] if names else j}", a[:, j]) for j in range(k)]


# --- the metrics ------------------------------------------------------------------------------

_RequestKey = tuple[str, str, str, int]
_Bound = tuple[Any, Any, Any]  # requests child, duration child, errors child or None


@dataclass(frozen=True)
class SlipwayMetrics:
    requests: Counter
    errors: Counter
    duration: Histogram
    prediction: Histogram
    _requests: dict[_RequestKey, _Bound] = field(default_factory=dict, repr=False)
    _predictions: dict[tuple[str, str, str], Callable[[np.ndarray], None]] = field(
        default_factory=dict, repr=False
    )

    @classmethod
    def create(
        cls,
        registry: CollectorRegistry = REGISTRY,
        prediction_buckets: Sequence[float] = DEFAULT_PREDICTION_BUCKETS,
    ) -> SlipwayMetrics:
        base = ["model_name", "model_version"]
        return cls(
            requests=Counter(
                "slipway_model_requests",
                "Inference requests by protocol and status class (2xx/4xx/5xx).",
                [*base, "protocol", "code"],
                registry=registry,
            ),
            errors=Counter(
                "slipway_model_errors",
                "Failed inference requests by reason.",
                [*base, "protocol", "reason"],
                registry=registry,
            ),
            duration=Histogram(
                "slipway_model_request_duration_seconds",
                "End-to-end inference request latency.",
                [*base, "protocol"],
                buckets=DURATION_BUCKETS,
                registry=registry,
            ),
            prediction=Histogram(
                "slipway_model_prediction",
                "Distribution of predicted values, for canary comparison and drift detection; "
                'one series per output column (output="" is the main prediction).',
                [*base, "output"],
                buckets=sorted(prediction_buckets),
                registry=registry,
            ),
        )

    def observe_predictions(self, model_name: str, model_version: str, values: Any) -> None:
        """Record a single-output prediction (class labels, scores or regression outputs)."""
        self.observe_series(model_name, model_version, prediction_series("predict", values, True))

    def observe_series(self, model_name: str, model_version: str, series: Iterable[Series]) -> None:
        for s in series:
            key = (model_name, model_version, s.output)
            observe = self._predictions.get(key)
            if observe is None:
                observe = _batch_observer(
                    self.prediction.labels(model_name, model_version, s.output)
                )
                self._predictions[key] = observe
            observe(s.values.astype(np.float64, copy=False))

    def record_request(
        self, model_name: str, model_version: str, protocol: str, status: int, seconds: float
    ) -> None:
        key = (model_name, model_version, protocol, status)
        bound = self._requests.get(key)
        if bound is None:
            bound = self._bind(key)
        requests, duration, errors = bound
        requests.inc()
        duration.observe(seconds)
        if errors is not None:
            errors.inc()

    def _bind(self, key: _RequestKey) -> _Bound:
        name, version, protocol, status = key
        errors = None
        if status >= 400:
            errors = self.errors.labels(name, version, protocol, error_reason(status))
        bound = (
            self.requests.labels(name, version, protocol, f"{status // 100}xx"),
            self.duration.labels(name, version, protocol),
            errors,
        )
        self._requests[key] = bound
        return bound


def match_inference_route(path: str) -> tuple[str, str] | None:
    """Return (protocol, model name) when ``path`` is a V1/V2 inference route."""
    for protocol, prefix, pattern in _ROUTES:
        if path.startswith(prefix):
            m = pattern.match(path)
            if m:
                return protocol, m.group("name")
    return None
