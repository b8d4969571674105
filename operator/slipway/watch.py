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

With a `batch` period, a change waits that long before its handler runs, so the burst of
updates a child goes through (a Job's active, ready, succeeded, complete) is handled once,
not once per step: the Job controller's own `syncJobBatchPeriod` does the same with pods.
Deletions are never held back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import marshal
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import urllib3

from slipway import credentials, kube, metrics

log = logging.getLogger("slipway.watch")

Handler = Callable[[str | None, dict[str, Any]], Awaitable[None]]
Trim = Callable[[dict[str, Any]], dict[str, Any]]
Key = tuple[str, str]
WATCH_SECONDS = 300  # the server ends each watch request after this; it is then renewed
BACKOFF = (1.0, 2.0, 5.0, 10.0)  # between failed LIST/WATCH attempts


class Gone(Exception):
    """The watch's resourceVersion is too old (410): list again."""


class Retry(Exception):
    """Raised by a handler: run it again for this object after *delay* seconds (an API
    fault), with the same event, unless a newer one comes first."""

    def __init__(self, delay: float) -> None:
        super().__init__(f"retry in {delay:.0f}s")
        self.delay = delay


def object_key(obj: dict[str, Any]) -> Key:
    """(namespace, name) of *obj*."""
    meta = obj.get("metadata") or {}
    return meta.get("namespace") or "", meta.get("name") or ""


def resource_version(obj: dict[str, Any]) -> int | None:
    """*obj*'s resourceVersion as a number (None when it has none)."""
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion") or "")
    except ValueError:
        return None


class Store:
    """The watched objects as last seen, indexed by one label's value per namespace: what
    client-go's informer cache is to a Go controller. A reconcile reads its children here
    instead of LISTing them from the API server on every pass.

    *trim* drops what no reader needs (a Job's pod template, managedFields). Each object is
    then held as one encoded blob, decoded on read: a trimmed Job takes 1.1 KB against 2.6 KB
    as dicts, and blobs over 512 bytes live outside Python's small-object arenas, which a
    burst's short-lived objects keep fragmented and resident (measured at 3,000 objects).
    Every read returns a fresh copy: a caller cannot change the store by
    accident. The controller also writes its own creates, patches and deletes through
    (`put`, `remove`), so its next pass sees them before their watch events arrive; an
    event older than the copy held (by resourceVersion) is then ignored."""

    def __init__(self, label: str, trim: Trim = dict) -> None:
        self.label, self.trim = label, trim
        self.synced = False  # True once a first LIST has filled it
        # key -> (resourceVersion, index key, the trimmed object marshalled)
        self._objects: dict[Key, tuple[int | None, Key | None, bytes]] = {}
        self._index: dict[Key, set[str]] = {}  # (namespace, label value) -> names

    def _index_key(self, obj: dict[str, Any]) -> Key | None:
        meta = obj.get("metadata") or {}
        value = (meta.get("labels") or {}).get(self.label)
        return (sys.intern(meta.get("namespace") or ""), value) if value else None

    def put(self, obj: dict[str, Any], trimmed: bool = False) -> bool:
        """Hold *obj* (*trimmed* already: it went through `trim`); False when it is no news:
        the very version held already (the watch event of a write the controller has put
        here itself), or an older one."""
        key = object_key(obj)
        new_rv = resource_version(obj)
        old = self._objects.get(key)
        if old is not None:
            if new_rv is not None and old[0] is not None and new_rv <= old[0]:
                return False  # a late event of a change already written through
            self._unindex(key, old[1])
        kept = obj if trimmed else self.trim(obj)
        index = self._index_key(kept)
        self._objects[(sys.intern(key[0]), key[1])] = (new_rv, index, marshal.dumps(kept))
        if index is not None:
            self._index.setdefault(index, set()).add(key[1])
        return True

    def remove(self, obj: dict[str, Any]) -> None:
        self._drop(object_key(obj))

    def _drop(self, key: Key) -> None:
        old = self._objects.pop(key, None)
        if old is not None:
            self._unindex(key, old[1])

    def _unindex(self, key: Key, index: Key | None) -> None:
        names = self._index.get(index) if index else None
        if names is not None and index is not None:
            names.discard(key[1])
            if not names:
                del self._index[index]

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        held = self._objects.get((namespace, name))
        return marshal.loads(held[2]) if held is not None else None

    def by_label(self, namespace: str, value: str) -> list[dict[str, Any]]:
        """The objects in *namespace* whose label has *value*."""
        names = self._index.get((namespace, value)) or set()
        return [marshal.loads(self._objects[(namespace, n)][2]) for n in sorted(names)]

    def snapshot(self) -> list[dict[str, Any]] | None:
        """Every object held (None until a first LIST has filled the store)."""
        pages = self.pages(len(self._objects) or 1)
        return None if pages is None else [o for page in pages for o in page]

    def pages(self, size: int) -> Iterator[list[dict[str, Any]]] | None:
        """Every object held, decoded *size* at a time (None until a first LIST has filled
        the store): a walk over 10,000 objects holds one page of them, not all at once."""
        if not self.synced:
            return None
        blobs = [blob for _, _, blob in self._objects.values()]

        def decode() -> Iterator[list[dict[str, Any]]]:
            for start in range(0, len(blobs), size):
                yield [marshal.loads(b) for b in blobs[start:start + size]]

        return decode()

    def keep_only(self, keys: set[Key]) -> None:
        """After a full LIST: forget the objects it did not return (deleted meanwhile)."""
        for key in set(self._objects) - keys:
            self._drop(key)
        self.synced = True

    def clear(self) -> None:
        self._objects.clear()
        self._index.clear()
        self.synced = False

    def __len__(self) -> int:
        return len(self._objects)


class SelectorWatch:
    """Watch *kind* objects matching *selector* (in *namespace*, or everywhere) and run
    *handler* for each change, coalesced per object. `run()` until cancelled."""

    def __init__(self, api_version: str, kind: str, selector: str, handler: Handler,
                 namespace: str | None = None, workers: int = 8,
                 store: Store | None = None, initial: bool = True, batch: float = 0.0,
                 queue_trimmed: bool = False) -> None:
        self.api_version, self.kind, self.selector = api_version, kind, selector
        # Queue the store's trimmed copy, not the whole object, where the handler reads no
        # more than the store keeps (a child's handler): at a burst, thousands of changes
        # wait in the queue.
        self.queue_trimmed = queue_trimmed and store is not None
        self.namespace, self.handler, self.workers = namespace, handler, workers
        self.batch = batch  # seconds a change waits, to be handled with the ones after it
        # With a store: *initial* False leaves the objects of the first LIST to another
        # start-up pass (the resync loop's); later relists hand on only what changed.
        self.store, self.initial = store, initial
        # key -> (event type, the newest object marshalled): a backlog of thousands of
        # changes is then one block each, not thousands of small dicts that fragment the heap.
        self._pending: dict[Key, tuple[str | None, bytes]] = {}
        self._queue: asyncio.Queue[Key] = asyncio.Queue()
        self._busy: set[Key] = set()
        self._held: set[Key] = set()  # waiting out the batch period
        # key -> the one pending "look again" (Retry) of that object, with the newest change
        # to hand on then: every event of a job that waits would otherwise add a timer, each
        # firing a reconcile (and, while it still waits, arming the next): at a burst,
        # reconciles multiplied.
        self._retries: dict[Key, tuple[asyncio.TimerHandle, str | None, dict[str, Any]]] = {}
        self._stop = threading.Event()

    # -- the work queue ----------------------------------------------------------------
    def put(self, type_: str | None, obj: dict[str, Any], blob: bytes | None = None) -> None:
        """Take a change: into the store, then the work queue (unless it is no news).
        With *blob*, `_handoff` already made *obj* what the queue keeps, and *blob* is it
        marshalled."""
        if blob is None:
            obj = self._slim(obj)
        if self.store is not None:  # before the handler runs: it reads the store
            if type_ == "DELETED":
                self.store.remove(obj)
            elif not self.store.put(obj, trimmed=self.queue_trimmed):
                return  # the controller's own write, or a relist: nothing new to handle
            if type_ is None and not self.store.synced and not self.initial:
                return  # the first LIST only fills the store
        self._enqueue(type_, obj, blob)

    def _slim(self, obj: dict[str, Any]) -> dict[str, Any]:
        """What a queued change keeps of *obj*. Nobody here reads managedFields, often half
        of an object; a child's handler reads no more than its store keeps."""
        (obj.get("metadata") or {}).pop("managedFields", None)
        return self.store.trim(obj) if self.queue_trimmed and self.store is not None else obj

    def _handoff(self, type_: str | None, obj: dict[str, Any],
                 loop: asyncio.AbstractEventLoop) -> None:
        """In the watch thread: pass a change to the event loop slimmed and marshalled. The
        thread reads as fast as the API server sends; while the loop is busy (a settle of
        10,000 objects), the changes wait in its callback queue. As decoded objects they
        were most of the operator's peak memory (tracemalloc: 195 MB at the peak, 47 MB
        just after), and the peak is what the heap keeps."""
        obj = self._slim(obj)
        loop.call_soon_threadsafe(self._take, type_, marshal.dumps(obj))

    def _take(self, type_: str | None, blob: bytes) -> None:
        self.put(type_, marshal.loads(blob), blob=blob)

    def _enqueue(self, type_: str | None, obj: dict[str, Any],
                 blob: bytes | None = None) -> None:
        key = object_key(obj)
        queued = key in self._pending
        # the newest copy wins
        self._pending[key] = (type_, blob if blob is not None else marshal.dumps(obj))
        if key in self._held and type_ == "DELETED":
            self._release(key)  # a deletion is handled at once
        elif not queued and key not in self._busy:
            if self.batch > 0 and type_ == "MODIFIED":
                self._held.add(key)
                asyncio.get_running_loop().call_later(self.batch, self._release, key)
            else:
                self._queue.put_nowait(key)

    def _release(self, key: Key) -> None:
        """The batch period of *key* is over: queue it (unless a deletion already did)."""
        if key in self._held:
            self._held.discard(key)
            if key not in self._busy:
                self._queue.put_nowait(key)

    def _enqueue_unless_newer(self, type_: str | None, obj: dict[str, Any]) -> None:
        if object_key(obj) not in self._pending:  # a newer event is queued: it wins
            self._enqueue(type_, obj)

    def _retry_later(self, key: Key, type_: str | None, obj: dict[str, Any],
                     delay: float) -> None:
        """Handle *obj* again in *delay* seconds, unless an earlier look is already due (it
        then takes *obj*, the newest)."""
        loop = asyncio.get_running_loop()
        pending = self._retries.get(key)
        if pending is not None:
            if pending[0].when() <= loop.time() + delay:
                self._retries[key] = (pending[0], type_, obj)
                return
            pending[0].cancel()
        self._retries[key] = (loop.call_later(delay, self._retry_now, key), type_, obj)

    def _retry_now(self, key: Key) -> None:
        _, type_, obj = self._retries.pop(key)
        self._enqueue_unless_newer(type_, obj)

    async def _work(self) -> None:
        while True:
            key = await self._queue.get()
            type_, blob = self._pending.pop(key)
            obj = marshal.loads(blob)
            self._busy.add(key)
            try:
                await self.handler(type_, obj)
            except Retry as retry:  # past the store: it already holds this very version
                self._retry_later(key, type_, obj, retry.delay)
            except Exception:  # one object's failure must not stop the queue
                log.exception(f"{self.kind} {key[0]}/{key[1]}: handler failed")
            else:  # handled for good: a look asked for earlier is moot
                pending = self._retries.pop(key, None)
                if pending is not None:
                    pending[0].cancel()
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
        listed: set[Key] = set()
        async for page, meta in kube.list_pages_with_meta(
                self.api_version, self.kind, self.namespace, self.selector):
            for obj in page:
                self.put(None, obj)
                listed.add(object_key(obj))
            rv = meta.get("resourceVersion") or rv
        if self.store is not None:
            self.store.keep_only(listed)
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
            self._handoff(type_, obj, loop)
        return rv


def watch_events(url: str, query: list[tuple[str, Any]], seconds: int,
                 stop: threading.Event) -> Iterator[dict[str, Any]]:
    """One WATCH request on *url* (blocking: run it in a thread): yields its decoded events
    until the server ends it after *seconds*, or until *stop* is set. A 410 raises Gone,
    another error status KubeError."""
    try:
        resp = kube.request("GET", url,
                            [("watch", "true"), ("timeoutSeconds", seconds), *query],
                            timeout=urllib3.Timeout(connect=10, read=seconds + 30), stream=True)
    except (urllib3.exceptions.HTTPError, credentials.CredentialsError) as exc:
        raise kube.KubeError(f"watch {url}: {exc}") from exc
    if resp.status == 410:
        resp.drain_conn()
        raise Gone()
    if resp.status != 200:
        resp.drain_conn()
        raise kube.KubeError(f"watch {url}: {resp.status}", resp.status)
    buffer = b""
    try:
        for chunk in resp.stream(65536, decode_content=True):
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                if line.strip():
                    yield json.loads(line)
            if stop.is_set():
                return
    except urllib3.exceptions.HTTPError as exc:  # the stream broke: list and watch again
        raise kube.KubeError(f"watch {url}: {exc}") from exc
    finally:
        resp.close()  # a stopped watch is unread: its connection cannot go back to the pool
