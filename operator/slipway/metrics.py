"""Operator metrics, served on /metrics by prometheus-client."""

from __future__ import annotations

import collections

from prometheus_client import Counter, Gauge, Histogram, start_http_server

RECONCILES = Counter(
    "slipway_reconcile_total", "Reconciles by resource kind and result.", ["kind", "result"])
RECONCILE_SECONDS = Histogram(
    "slipway_reconcile_duration_seconds", "Time spent in one reconcile.", ["kind"])
PHASE = Gauge(
    "slipway_resources", "Resources per kind and phase, as of the last resync.",
    ["kind", "phase"])

_started = False
_seen: set[tuple[str, str]] = set()


def set_phases(kind: str, phases: list[str | None]) -> None:
    """Publish how many objects of *kind* are in each phase; phases now empty drop to 0."""
    counts = collections.Counter(phase or "Unknown" for phase in phases)
    for seen_kind, phase in _seen:
        if seen_kind == kind and phase not in counts:
            PHASE.labels(kind, phase).set(0)
    for phase, n in counts.items():
        PHASE.labels(kind, phase).set(n)
        _seen.add((kind, phase))


def serve(port: int) -> None:
    """Start the metrics endpoint once (port 0 disables it)."""
    global _started
    if port and not _started:
        start_http_server(port, addr="0.0.0.0")
        _started = True
