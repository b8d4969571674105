"""slipway.events.emit builds the Event when it is emitted."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from slipway import events, kube


async def test_emit_builds_the_event_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[dict[str, Any]] = []

    async def create(manifest: dict[str, Any]) -> dict[str, Any]:
        sent.append(manifest)
        return manifest

    monkeypatch.setattr(kube, "create", create)
    obj = {"apiVersion": "slipway.dev/v1alpha1", "kind": "TrainingJob",
           "metadata": {"name": "bert", "namespace": "ml", "uid": "u1"},
           "spec": {"big": "x" * 1000}}
    events.emit(obj, "Normal", "Created", "created Job bert")
    obj["metadata"]["name"] = "changed-before-it-was-sent"
    await asyncio.gather(*events._pending)
    (event,) = sent
    assert event["involvedObject"] == {"apiVersion": "slipway.dev/v1alpha1",
                                       "kind": "TrainingJob", "name": "bert",
                                       "namespace": "ml", "uid": "u1"}
    assert event["reason"] == "Created" and "spec" not in str(event)
