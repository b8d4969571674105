"""One operator-wide resync loop instead of per-object Kopf timers.

Kopf adds a finalizer to every object that has a timer or daemon; a stale
finalizer then blocks namespace deletion once the operator is gone. A single
background loop that lists each kind and reconciles every object gives the same
level-based safety net (deleted children come back, TTLs fire, child status
flows in) with no finalizer at all.

At scale, a tick must cost little when nothing changes: each kind is listed in pages (a page
at a time is held and reconciled), and a kind's `skip` predicate leaves alone the objects a
LIST shows need nothing (a finished TrainingJob, an object still as it settled, see
controllers.settled). So an idle operator makes one LIST per kind per tick, not one GET and
LIST per object; a kind whose watch keeps a store (TrainingJobs) is walked there, with no
LIST at all, as an informer resyncs from its cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import kopf

from slipway import health, kube, memory, metrics
from slipway.config import active
from slipway.controllers import settled

log = logging.getLogger("slipway.resync")

RECONCILE_TIMEOUT = 60.0  # seconds one object may take within a tick
LOOP = "resync"  # its name in /healthz
CONCURRENCY = 8  # objects reconciled at once within a tick

PAGE = 500  # objects per LIST page
Reconciler = Callable[[dict[str, Any]], Awaitable[Any]]
Skip = Callable[[dict[str, Any]], bool]
# The objects of a kind as a watch's store holds them, in pages of the size given; None while
# it cannot (not listed yet).
Source = Callable[[int], Iterable[list[dict[str, Any]]] | None]


def _never(_: dict[str, Any]) -> bool:
    return False


@dataclass(frozen=True)
class _Entry:
    api_version: str
    kind: str
    reconcile: Reconciler
    skip: Skip
    source: Source | None


_REGISTRY: list[_Entry] = []


def register(api_version: str, kind: str, reconcile: Reconciler, skip: Skip = _never,
             source: Source | None = None) -> None:
    """Have *reconcile* called with every object of *kind* on each resync tick, except those
    for which *skip* (given the object as listed) says there is nothing to do. With a
    *source* (a watch's store), a tick walks it instead of LISTing the kind, as an informer
    resyncs from its cache: at 10,000 objects a LIST per tick was most of an idle
    operator's requests and CPU."""
    _REGISTRY.append(_Entry(api_version, kind, reconcile, skip, source))


async def _pages(entry: _Entry) -> AsyncIterator[list[dict[str, Any]]]:
    """The objects of *entry*'s kind, a page at a time: from its source, else a LIST."""
    held = entry.source(PAGE) if entry.source is not None else None
    if held is not None:
        for page in held:
            yield page
        return
    async for page in kube.list_pages(entry.api_version, entry.kind, active().namespace,
                                      limit=PAGE):
        yield page


async def resync_once(concurrency: int = CONCURRENCY) -> int:
    """Reconcile every registered object once; errors are logged, never raised.

    Objects are reconciled *concurrency* at a time: one tick over a thousand objects must
    not take a thousand round trips end to end. Each reconcile still takes its object's lock
    and re-reads it, so a tick never races a handler on the same object."""
    count = 0
    gate = asyncio.Semaphore(concurrency)

    async def one(entry: _Entry, obj: dict[str, Any]) -> bool:
        async with gate:
            health.HEALTH.beat(LOOP)
            try:
                # A stuck object (say a hung API call) must not stall every other one.
                await asyncio.wait_for(entry.reconcile(obj), RECONCILE_TIMEOUT)
                return True
            except Exception as exc:  # one bad object must not stop the others
                name = f"{obj['metadata'].get('namespace')}/{obj['metadata']['name']}"
                log.warning(f"resync of {entry.kind} {name} failed: {exc}")
                return False

    for entry in _REGISTRY:
        phases: list[str | None] = []
        uids: set[str] = set()
        try:
            async for page in _pages(entry):
                phases += [(o.get("status") or {}).get("phase") for o in page]
                uids |= {o["metadata"]["uid"] for o in page}
                live = [o for o in page if not o["metadata"].get("deletionTimestamp")]
                todo = [o for o in live if not entry.skip(o)]
                metrics.RESYNC_SKIPPED.labels(entry.kind).inc(len(live) - len(todo))
                done = await asyncio.gather(*(one(entry, o) for o in todo))
                count += sum(done)
        except kube.KubeError as exc:
            log.warning(f"listing {entry.kind} failed, retrying next tick: {exc}")
            continue
        metrics.set_phases(entry.kind, phases)
        settled.prune(entry.kind, uids)
    return count


async def _loop(interval: float) -> None:
    # The first pass runs at once: it is what Kopf's on.resume handlers would do at start
    # (re-check every object), without Kopf's bookkeeping patch on each of them.
    while True:
        health.HEALTH.beat(LOOP)
        start = time.monotonic()
        try:
            count = await resync_once()
        except Exception:  # the safety net itself must never stop
            log.exception("resync tick failed; trying again next tick")
        else:
            took = time.monotonic() - start
            metrics.RESYNC_SECONDS.observe(took)
            if took > interval:
                log.warning(f"resync of {count} objects took {took:.1f}s, longer than the "
                            f"{interval:.0f}s interval")
        memory.trim()  # what a tick (or the burst before it) decoded and dropped
        await asyncio.sleep(interval)


@kopf.on.startup()
async def start_resync(memo: kopf.Memo, **_: Any) -> None:
    memo["resync_task"] = asyncio.create_task(_loop(active().resync_seconds))


@kopf.on.cleanup()
async def stop_resync(memo: kopf.Memo, **_: Any) -> None:
    task = memo.get("resync_task")
    health.HEALTH.forget(LOOP)
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
