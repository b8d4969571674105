"""`slipway run`: start Kopf with the settings production operators need."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from slipway import metrics
from slipway.config import SETTINGS, Settings, activate, active


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Progress and diff-base live in status, never in the size-limited annotations.
    settings.persistence.progress_storage = kopf.StatusProgressStorage(field="status.kopf.progress")
    settings.persistence.diffbase_storage = kopf.StatusDiffBaseStorage(field="status.kopf.diffbase")
    # Short watches: a silently frozen watch is replaced within two minutes.
    settings.watching.server_timeout = 90
    settings.watching.client_timeout = 120
    settings.watching.connect_timeout = 10
    settings.networking.error_backoffs = [1, 2, 5, 10, 30]
    settings.posting.level = logging.INFO
    settings.batching.error_delays = [1, 2, 5, 10, 30, 60]
    metrics.serve(active().metrics_port)


@kopf.on.probe(id="alive")
async def alive(**_: Any) -> bool:
    return True


def run(settings: Settings = SETTINGS) -> None:
    """Run the operator until interrupted."""
    activate(settings)
    import slipway.controllers  # noqa: F401  (registers the handlers)

    kopf.configure(
        verbose=False,
        log_format=kopf.LogFormat.JSON if settings.json_logs else kopf.LogFormat.PLAIN,
    )
    asyncio.run(kopf.operator(
        standalone=True,
        clusterwide=settings.namespace is None,
        namespaces=[settings.namespace] if settings.namespace else [],
        liveness_endpoint=f"http://0.0.0.0:{settings.liveness_port}/healthz",
    ))
