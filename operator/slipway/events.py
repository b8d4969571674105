"""Kubernetes Events on our resources.

Posted through slipway.kube rather than Kopf's event queue, because that queue
exists only inside Kopf handlers and the resync loop runs outside them. Posting
is fire-and-forget: an Event that cannot be written is logged, never raised.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from slipway import kube
from slipway.api.common import now_rfc3339

log = logging.getLogger("slipway.events")
COMPONENT = "slipway"
_pending: set[asyncio.Task[None]] = set()


def event_manifest(obj: Mapping[str, Any], type: str, reason: str,
                   message: str, now: str) -> dict[str, Any]:
    meta = obj["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"),
            "name": meta["name"], "namespace": meta["namespace"], "uid": meta.get("uid"),
        },
        "type": type,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": COMPONENT,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }


async def post(obj: Mapping[str, Any], type: str, reason: str, message: str) -> None:
    await _send(event_manifest(obj, type, reason, message, now_rfc3339()))


async def _send(manifest: dict[str, Any]) -> None:
    try:
        await kube.create(manifest)
    except kube.KubeError as exc:  # e.g. the namespace is terminating
        log.info(f"event {manifest['reason']} on {manifest['involvedObject']['name']} "
                 f"not posted: {exc}")


def emit(obj: Mapping[str, Any], type: str, reason: str, message: str) -> None:
    """Post an Event about *obj* (a dict with apiVersion, kind and metadata) in the background.
    The Event is built now: its time is when it happened, and a queue of unsent Events at a
    burst holds Events, not the whole objects they are about."""
    manifest = event_manifest(obj, type, reason, message, now_rfc3339())
    task = asyncio.get_running_loop().create_task(_send(manifest))
    _pending.add(task)
    task.add_done_callback(_pending.discard)
