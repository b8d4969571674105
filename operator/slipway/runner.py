"""`slipway run`: start Kopf with the settings production operators need."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
from typing import Any

import kopf

from slipway import health, kube, memory, metrics
from slipway.config import SETTINGS, Settings, activate, active
from slipway.leader import Elector

log = logging.getLogger("slipway.runner")
API_THREADS = 32  # API calls in flight at once (and the client's connection pool size)


KOPF_WORKERS = 64  # objects Kopf handles at once, per kind


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
    # Kopf's own INFO lines ("Handler ... succeeded") would be two more Events per object and
    # edit: a POST each that the API server pays for at scale. Slipway posts its own Events
    # for what users act on; Kopf still posts its warnings and errors.
    settings.posting.level = logging.WARNING
    settings.queueing.error_delays = [1, 2, 5, 10, 30, 60]
    # Kopf keeps a worker, with the last body it saw, per object that had an event in the
    # last idle_timeout seconds (5 by default): at a burst of a thousand ModelDeployments,
    # a thousand bodies at once. A change after a worker has gone starts a new one.
    settings.queueing.idle_timeout = 1.0
    # And no more than this many at once: measured at 10,000 objects, the creation of 1,000
    # ModelDeployments took the operator's live memory from 75 to 139 MB in under a minute
    # (one worker each), and the heap that peak left behind stayed resident (54 MB free in
    # it). A worker slot frees within about a second, so a burst is handled 64 at a time.
    settings.queueing.worker_limit = KOPF_WORKERS
    metrics.serve(active().metrics_port)


@kopf.on.login()
def login(**_: Any) -> kopf.ConnectionInfo:
    """Kopf connects with slipway.kube's credentials. (Its fallbacks would go through the
    official client whenever it is installed.) Kopf logs in again after a 401, so a rotated
    token or an expired exec credential is fetched afresh."""
    creds = kube.connection()[1]
    creds.forget_token()
    auth = creds.authorization() or ""
    return kopf.ConnectionInfo(
        server=creds.server, ca_path=creds.ca_file, ca_data=creds.ca_data,
        insecure=creds.insecure or None, username=creds.username, password=creds.password,
        token=auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else None,
        certificate_path=creds.cert_file, certificate_data=creds.cert_data,
        private_key_path=creds.key_file, private_key_data=creds.key_data,
        default_namespace=creds.namespace)


def _lost_lease() -> None:
    # Another replica may be reconciling already: stop now, not after a graceful shutdown
    # that could still write. The pod restarts and comes back as a standby.
    log.critical("lost the leader Lease; exiting so that only one replica reconciles")
    logging.shutdown()
    os._exit(1)


async def _main(settings: Settings) -> None:
    # Every API call runs in a worker thread (slipway.kube). asyncio's default pool has
    # min(32, cores + 4) threads, 6 on 2 cores: a burst of a thousand creates would queue
    # behind 6 calls in flight. The calls wait on the network, not the CPU.
    asyncio.get_running_loop().set_default_executor(
        concurrent.futures.ThreadPoolExecutor(API_THREADS, thread_name_prefix="kube"))
    # A resync tick may take a while with many objects; liveness waits several intervals.
    health.HEALTH.stale_after = max(180.0, 6 * settings.resync_seconds)
    server = await health.serve(settings.liveness_port)
    elector: Elector | None = None
    keeper: asyncio.Task[None] | None = None
    try:
        if settings.leader_election:
            elector = Elector(settings.lease_name, settings.lease_namespace, settings.identity,
                              on_attempt=lambda: health.HEALTH.beat("leader-election"))
            health.HEALTH.role = health.STANDBY
            log.info(f"{settings.identity}: standby until it holds the Lease "
                     f"{settings.lease_namespace}/{settings.lease_name}")
            await elector.acquire()
            keeper = asyncio.create_task(elector.keep(on_lost=_lost_lease))
        health.HEALTH.role = health.ACTIVE
        await kopf.operator(
            standalone=True,  # one active replica at a time is the Lease's job
            clusterwide=settings.namespace is None,
            namespaces=[settings.namespace] if settings.namespace else [],
        )
    finally:
        if keeper is not None:
            keeper.cancel()
        if elector is not None:
            await elector.release()
        await server.cleanup()


def run(settings: Settings = SETTINGS) -> None:
    """Run the operator until interrupted."""
    activate(settings)
    memory.tune_malloc()  # before any thread allocates
    memory.report_from_env()
    import slipway.controllers  # noqa: F401  (registers the handlers)

    kopf.configure(
        verbose=False,
        log_format=kopf.LogFormat.JSON if settings.json_logs else kopf.LogFormat.PLAIN,
    )
    asyncio.run(_main(settings))
