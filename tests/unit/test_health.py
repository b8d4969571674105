"""Liveness follows the loops that must keep turning."""

from __future__ import annotations

import time

from slipway.health import Health


def test_a_loop_that_stopped_beating_is_stuck() -> None:
    health = Health(stale_after=10)
    health.beat("resync")
    health.beat("leader-election")
    assert health.stuck() == []
    health.beats["resync"] = time.monotonic() - 11  # last progress 11 s ago
    assert health.stuck() == ["resync"]
    health.beat("resync")
    assert health.stuck() == []


def test_a_forgotten_loop_is_not_stuck() -> None:
    health = Health(stale_after=10)
    health.beats["resync"] = time.monotonic() - 60
    health.forget("resync")  # the operator stopped the loop on purpose (shutdown)
    assert health.stuck() == []
