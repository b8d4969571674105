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

API_REQUESTS = Counter(
    "slipway_api_requests_total",
    "Requests the operator's own client made to the API server, by verb (LIST apart from "
    "GET) and resource. Kopf's watches and its own patches are not counted.",
    ["verb", "resource"])
RESYNC_SKIPPED = Counter(
    "slipway_resync_skipped_total",
    "Objects a resync tick left alone because nothing changed since they settled.", ["kind"])
RESYNC_SECONDS = Histogram(
    "slipway_resync_duration_seconds", "Time one resync pass over every kind took.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))

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

# Canary rollouts (controllers.canary).
CANARY_WEIGHT = Gauge(
    "slipway_canary_weight", "Percent of traffic on the canary version.", ["namespace", "name"])
CANARY_PHASE = Gauge(
    "slipway_canary_phase", "1 for the phase a Canary is in, 0 for the others.",
    ["namespace", "name", "phase"])
CANARY_METRIC = Gauge(
    "slipway_canary_metric_value", "The last value each analysis metric measured.",
    ["namespace", "name", "metric"])
CANARY_CHECKS = Counter(
    "slipway_canary_checks_total", "Analysis results by metric and outcome.",
    ["namespace", "name", "metric", "outcome"])
CANARY_ROLLOUTS = Counter(
    "slipway_canary_rollouts_total", "Finished rollouts by outcome.", ["outcome"])
CANARY_ROLLOUT_SECONDS = Histogram(
    "slipway_canary_rollout_duration_seconds", "Rollout duration by outcome.", ["outcome"],
    buckets=(10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600))
CANARY_PHASES = ("Initializing", "Idle", "Progressing", "Paused", "Promoting", "Succeeded",
                 "RolledBack", "Aborted", "Failed")


def set_canary(namespace: str, name: str, phase: str | None, weight: int | None) -> None:
    CANARY_WEIGHT.labels(namespace, name).set(weight or 0)
    for p in CANARY_PHASES:
        CANARY_PHASE.labels(namespace, name, p).set(1 if p == phase else 0)


def forget_canary(namespace: str, name: str) -> None:
    """Drop a deleted Canary's series."""
    for gauge in (CANARY_WEIGHT, CANARY_PHASE, CANARY_METRIC):
        for labels in list(gauge._metrics):  # prometheus_client has no public list
            if labels[:2] == (namespace, name):
                gauge.remove(*labels)
