"""Slipway Prometheus metrics for model servers.

kserve already exports per-stage latency histograms (request_predict_seconds, ...) on the
default registry, which its REST server exposes at ``/metrics``. We register ours on the same
registry so one scrape sees both. Every series carries ``model_name`` and ``model_version`` so a
canary can be compared against the stable version.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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

# Inference routes of kserve's REST server: V1 and V2 (Open Inference Protocol).
_ROUTES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("v1", re.compile(r"^/v1/models/(?P<name>[^/:]+):predict$")),
    ("v2", re.compile(r"^/v2/models/(?P<name>[^/]+)(?:/versions/[^/]+)?/infer$")),
)

# Error reason per HTTP status, as raised by kserve's exception handlers and FastAPI.
_REASONS = {
    400: "invalid_input",
    404: "model_not_found",
    405: "method_not_allowed",
    422: "validation_error",
    503: "model_not_ready",
}


@dataclass(frozen=True)
class SlipwayMetrics:
    requests: Counter
    errors: Counter
    duration: Histogram
    prediction: Histogram

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
                "Distribution of predicted values, for canary comparison and drift detection.",
                base,
                buckets=sorted(prediction_buckets),
                registry=registry,
            ),
        )

    def observe_predictions(self, model_name: str, model_version: str, values: Any) -> None:
        """Record every numeric predicted value (class labels, scores or regression outputs)."""
        arr = np.asarray(values)
        if arr.dtype.kind not in "biuf":
            return  # e.g. string class labels: nothing meaningful to put in a histogram
        child = self.prediction.labels(model_name, model_version)
        for v in arr.ravel().tolist():
            child.observe(float(v))

    def record_request(
        self, model_name: str, model_version: str, protocol: str, status: int, seconds: float
    ) -> None:
        self.requests.labels(model_name, model_version, protocol, f"{status // 100}xx").inc()
        self.duration.labels(model_name, model_version, protocol).observe(seconds)
        if status >= 400:
            reason = _REASONS.get(status, "client_error" if status < 500 else "internal_error")
            self.errors.labels(model_name, model_version, protocol, reason).inc()


def match_inference_route(path: str) -> tuple[str, str] | None:
    """Return (protocol, model name) when ``path`` is a V1/V2 inference route."""
    for protocol, pattern in _ROUTES:
        m = pattern.match(path)
        if m:
            return protocol, m.group("name")
    return None


class RequestMetricsMiddleware:
    """ASGI middleware counting every inference request by the status code actually sent.

    Pure ASGI (not BaseHTTPMiddleware) so it sees the final status, including 4xx responses
    produced by kserve's exception handlers and FastAPI's request validation; an exception that
    escapes the app is counted as a 500 and re-raised.
    """

    def __init__(
        self,
        app: ASGIApp,
        metrics: SlipwayMetrics,
        model_versions: dict[str, str],
    ) -> None:
        self.app = app
        self.metrics = metrics
        # Only served model names become label values: unknown names must not blow up cardinality.
        self.model_versions = model_versions

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = match_inference_route(scope.get("path", "")) if scope["type"] == "http" else None
        if route is None:
            await self.app(scope, receive, send)
            return
        protocol, name = route
        version = self.model_versions.get(name)
        if version is None:
            name, version = UNKNOWN_MODEL, UNKNOWN_MODEL
        status = 500
        start = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.record_request(
                name, version, protocol, status, time.perf_counter() - start
            )
