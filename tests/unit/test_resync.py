"""The operator-wide resync loop keeps running whatever one tick throws."""

from __future__ import annotations

import asyncio

import pytest

from slipway.controllers import resync


async def test_loop_survives_a_failing_tick(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = 0
    done = asyncio.Event()

    async def tick() -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("connection reset")  # not a KubeError
        done.set()
        return 0

    monkeypatch.setattr(resync, "resync_once", tick)
    task = asyncio.create_task(resync._loop(0))
    await asyncio.wait_for(done.wait(), timeout=5)
    task.cancel()
    assert calls >= 2
