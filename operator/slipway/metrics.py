"""Operator metrics, served on /metrics by prometheus-client."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

RECONCILES = Counter(
    "slipway_reconcile_total", "Reconciles by resource kind and result.", ["kind", "result"])
RECONCILE_SECONDS = Histogram(
    "slipway_reconcile_duration_seconds", "Time spent in one reconcile.", ["kind"])
PHASE = Gauge(
    "slipway_resources", "Resources per kind and phase (as last seen).", ["kind", "phase"])

_started = False


def serve(port: int) -> None:
    """Start the metrics endpoint once (port 0 disables it)."""
    global _started
    if port and not _started:
        start_http_server(port, addr="0.0.0.0")
        _started = True
