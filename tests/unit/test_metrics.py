"""Operator metrics: phase gauges follow what the resync loop saw."""

from __future__ import annotations

from prometheus_client import REGISTRY

from slipway import metrics


def gauge(kind: str, phase: str) -> float | None:
    return REGISTRY.get_sample_value("slipway_resources", {"kind": kind, "phase": phase})


def test_phase_gauge_counts_and_resets() -> None:
    metrics.set_phases("Demo", ["Running", "Running", None, "Succeeded"])
    assert gauge("Demo", "Running") == 2
    assert gauge("Demo", "Unknown") == 1
    metrics.set_phases("Demo", ["Succeeded"])
    assert gauge("Demo", "Running") == 0 and gauge("Demo", "Succeeded") == 1
    assert gauge("Other", "Running") is None
