"""LIST + WATCH with a server-side label selector, for the children Slipway watches at scale.

Kopf's `labels=` filters run in the operator: Kopf streams every Job of the cluster to it
(every CronJob run, every pipeline step) and drops the ones without the label afterwards.
Released Kopf has no way to put a selector on its watch (nolar/kopf#1311 proposes one), so
the Jobs Slipway owns are watched here instead, with `labelSelector` on the request.

Like client-go's informer and work queue, events of one object are coalesced: while a
handler runs for an object, later events for it collapse into one more run with the newest
copy, and at most `workers` handlers run at once. A handler gets the event type (None for
objects found by a LIST, as Kopf does) and the object; handlers must be level-based (they
re-read what they need), since an intermediate event can be skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from slipway import kube, metrics

log = logging.getLogger("slipway.watch")

Handler = Callable[[str | None, dict[str, Any]], Awaitable[None]]
Key = tuple[str, str]
WATCH_SECONDS = 300  # the server ends each watch request after this; it is then renewed
BACKOFF = (1.0, 2.0, 5.0, 10.0)  # between failed LIST/WATCH attempts


class Gone(Exception):
    """The watch's resourceVersion is too old (410): list again."""


class SelectorWatch:
    """Watch *kind* objects matching *selector* (in *namespace*, or everywhere) and run
    *handler* for each change, coalesced per object. `run()` until cancelled."""

    def __init__(self, api_version: str, kind: str, selector: str, handler: Handler,
                 namespace: str | None = None, workers: int = 8) -> None:
        self.api_version, self.kind, self.selector = api_version, kind, selector
        self.namespace, self.handler, self.workers = namespace, handler, workers
        self._pending: dict[Key, tuple[str | None, dict[str, Any]]] = {}
        self._queue: asyncio.Queue[Key] = asyncio.Queue()
        self._busy: set[Key] = set()
        self._stop = threading.Event()

    # -- the work queue ----------------------------------------------------------------
    def put(self, type_: str | None, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        key = (meta.get("namespace") or "", meta.get("name") or "")
        queued = key in self._pending
        self._pending[key] = (type_, obj)  # the newest copy wins
        if not queued and key not in self._busy:
            self._queue.put_nowait(key)

    async def _work(self) -> None:
        while True:
            key = await self._queue.get()
            type_, obj = self._pending.pop(key)
            self._busy.add(key)
            try:
                await self.handler(type_, obj)
            except Exception:  # one object's failure must not stop the queue
                log.exception(f"{self.kind} {key[0]}/{key[1]}: handler failed")
            finally:
                self._busy.discard(key)
                if key in self._pending:  # changed meanwhile: once more, with the newest
                    self._queue.put_nowait(key)

    # -- list and watch ----------------------------------------------------------------
    async def run(self) -> None:
        workers = [asyncio.create_task(self._work()) for _ in range(self.workers)]
        loop = asyncio.get_running_loop()
        failures = 0
        try:
            while True:
                try:
                    rv = await self._list()
                    failures = 0
                    done = loop.create_future()
                    threading.Thread(target=self._stream, args=(rv, loop, done), daemon=True,
                                     name=f"watch-{self.kind}").start()
                    await done
                except (kube.KubeError, OSError, Gone) as exc:
                    delay = BACKOFF[min(failures, len(BACKOFF) - 1)]
                    failures += 1
                    if not isinstance(exc, Gone):
                        log.warning(f"watching {self.kind}: {exc}; again in {delay:.0f}s")
                    await asyncio.sleep(delay if not isinstance(exc, Gone) else 0)
        finally:
            self._stop.set()
            for w in workers:
                w.cancel()
            for w in workers:
                with contextlib.suppress(asyncio.CancelledError):
                    await w

    async def _list(self) -> str:
        """Queue every matching object (type None); returns the LIST's resourceVersion."""
        rv = ""
        async for page, meta in kube.list_pages_with_meta(
                self.api_version, self.kind, self.namespace, self.selector):
            for obj in page:
                self.put(None, obj)
            rv = meta.get("resourceVersion") or rv
        return rv

    def _stream(self, rv: str, loop: asyncio.AbstractEventLoop,
                done: asyncio.Future[None]) -> None:
        """In a thread: renew the watch from *rv* until it fails or the watcher stops; the
        outcome goes to *done* (an exception means: list again)."""
        error: BaseException | None = None
        try:
            while not self._stop.is_set():
                rv = self._watch_once(rv, loop)
        except BaseException as exc:  # handed to the event loop, which decides
            error = exc

        def finish() -> None:
            if done.done():
                return
            if error is None:
                done.set_result(None)
            else:
                done.set_exception(error)

        with contextlib.suppress(RuntimeError):  # the loop is closed: shutting down
            loop.call_soon_threadsafe(finish)

    def _watch_once(self, rv: str, loop: asyncio.AbstractEventLoop) -> str:
        url = kube.path(self.api_version, self.kind, self.namespace)
        metrics.API_REQUESTS.labels("WATCH", kube.resource_of(url)).inc()
        query = [("labelSelector", self.selector), ("resourceVersion", rv),
                 ("allowWatchBookmarks", "true")]
        for event in watch_events(url, query, WATCH_SECONDS, self._stop):
            rv = self._event(event, rv, loop)
        return rv

    def _event(self, event: dict[str, Any], rv: str, loop: asyncio.AbstractEventLoop) -> str:
        type_, obj = event.get("type"), event.get("object") or {}
        if type_ == "ERROR":
            if obj.get("code") == 410:
                raise Gone()
            raise kube.KubeError(f"watch {self.kind}: {obj.get('message')}",
                                 int(obj.get("code") or 0))
        rv = (obj.get("metadata") or {}).get("resourceVersion") or rv
        if type_ != "BOOKMARK":
            obj.setdefault("apiVersion", self.api_version)
            obj.setdefault("kind", self.kind)
            loop.call_soon_threadsafe(self.put, type_, obj)
        return rv


def watch_events(url: str, query: list[tuple[str, Any]], seconds: int,
                 stop: threading.Event) -> Iterator[dict[str, Any]]:
    """One WATCH request on *url* (blocking: run it in a thread): yields its decoded events
    until the server ends it after *seconds*, or until *stop* is set. A 410 raises Gone,
    another error status KubeError."""
    api = kube.api_client()
    method, full, headers, body, post = api.param_serialize(
        method="GET", resource_path=url,
        query_params=[("watch", "true"), ("timeoutSeconds", seconds), *query],
        header_params={"Accept": "application/json"}, auth_settings=["BearerToken"])
    resp = api.call_api(method, full, headers, body, post, _request_timeout=(10, seconds + 30))
    if resp.status == 410:
        raise Gone()
    if resp.status != 200:
        raise kube.KubeError(f"watch {url}: {resp.status}", resp.status)
    buffer = b""
    for chunk in resp.response.stream(65536, decode_content=True):
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if line.strip():
                yield json.loads(line)
        if stop.is_set():
            resp.response.release_conn()
            return
