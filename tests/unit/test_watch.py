"""The selector watch's work queue and event parsing (no API server: pure logic)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from slipway.watch import Gone, Retry, SelectorWatch, Store


def job(name: str, rv: str) -> dict[str, Any]:
    return {"metadata": {"namespace": "ns", "name": name, "resourceVersion": rv}}


async def test_events_of_one_object_coalesce_while_its_handler_runs() -> None:
    release = asyncio.Event()
    calls: list[tuple[str | None, str]] = []

    async def handler(type_: str | None, obj: dict[str, Any]) -> None:
        calls.append((type_, obj["metadata"]["resourceVersion"]))
        if len(calls) == 1:
            await release.wait()

    w = SelectorWatch("batch/v1", "Job", "a", handler, workers=4)
    workers = [asyncio.create_task(w._work()) for _ in range(4)]
    w.put("ADDED", job("a", "1"))
    await asyncio.sleep(0.01)
    for rv in ("2", "3", "4"):  # while the first run is busy: one more run, the newest copy
        w.put("MODIFIED", job("a", rv))
    await asyncio.sleep(0.01)
    assert calls == [("ADDED", "1")]  # never two handlers for one object at once
    release.set()
    await asyncio.sleep(0.05)
    assert calls == [("ADDED", "1"), ("MODIFIED", "4")]
    for t in workers:
        t.cancel()


async def test_at_most_workers_handlers_run_at_once_and_failures_do_not_stop_it() -> None:
    running = peak = 0
    done: list[str] = []

    async def handler(_: str | None, obj: dict[str, Any]) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1
        if obj["metadata"]["name"] == "bad":
            raise RuntimeError("boom")
        done.append(obj["metadata"]["name"])

    w = SelectorWatch("batch/v1", "Job", "a", handler, workers=3)
    workers = [asyncio.create_task(w._work()) for _ in range(3)]
    w.put(None, job("bad", "1"))
    for i in range(10):
        w.put(None, job(f"j{i}", "1"))
    for _ in range(100):
        if len(done) == 10:
            break
        await asyncio.sleep(0.01)
    assert sorted(done) == sorted(f"j{i}" for i in range(10))
    assert peak == 3
    for t in workers:
        t.cancel()


async def test_watch_events_bookmarks_and_expiry() -> None:
    got: list[tuple[str | None, dict[str, Any]]] = []
    w = SelectorWatch("batch/v1", "Job", "a", lambda t, o: asyncio.sleep(0))
    w.put = lambda t, o, **_: got.append((t, o))  # type: ignore[method-assign]
    loop = asyncio.get_running_loop()
    assert w._event({"type": "ADDED", "object": job("a", "7")}, "5", loop) == "7"
    assert w._event({"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}},
                    "7", loop) == "9"
    await asyncio.sleep(0)
    assert [(t, o["metadata"]["name"], o["kind"]) for t, o in got] == [("ADDED", "a", "Job")]
    with pytest.raises(Gone):
        w._event({"type": "ERROR", "object": {"code": 410, "message": "too old"}}, "9", loop)


async def test_watch_thread_hands_on_changes_slimmed_and_marshalled() -> None:
    """What waits in the event loop's queue behind a busy loop is one compact block per
    change: no managedFields, and a child's only what its store keeps."""
    handled: list[dict[str, Any]] = []

    async def handler(t: str | None, o: dict[str, Any]) -> None:
        handled.append(o)

    store = Store("app", lambda o: {"metadata": {k: v for k, v in o["metadata"].items()
                                                 if k != "managedFields"}})
    w = SelectorWatch("batch/v1", "Job", "app", handler, store=store, queue_trimmed=True)
    loop = asyncio.get_running_loop()
    waiting: list[tuple[Any, ...]] = []
    w._handoff("ADDED", labelled("a", "5", "x"), _Recorder(waiting))  # type: ignore[arg-type]
    [(callback, type_, blob)] = waiting
    assert isinstance(blob, bytes) and b"managedFields" not in blob and b"template" not in blob
    callback(type_, blob)  # as the loop runs it
    assert store.get("ns", "a") == {"metadata": {"namespace": "ns", "name": "a",
                                                 "resourceVersion": "5",
                                                 "labels": {"app": "x"}}}
    worker = loop.create_task(w._work())
    for _ in range(100):
        if handled:
            break
        await asyncio.sleep(0.01)
    worker.cancel()
    assert handled == [store.get("ns", "a")]


class _Recorder:
    """An event loop's call_soon_threadsafe, recorded instead of run."""

    def __init__(self, calls: list[tuple[Any, ...]]) -> None:
        self.calls = calls

    def call_soon_threadsafe(self, callback: Any, *args: Any) -> None:
        self.calls.append((callback, *args))


async def test_one_pending_retry_per_object_and_a_clean_pass_cancels_it() -> None:
    """A waiting job's every event asks to be looked at again later; one look is enough.
    (Each used to arm its own timer, each firing a reconcile that armed the next.)"""
    calls: list[str] = []
    wait = True

    async def handler(type_: str | None, obj: dict[str, Any]) -> None:
        calls.append(obj["metadata"]["resourceVersion"])
        if wait:
            raise Retry(0.2)

    w = SelectorWatch("batch/v1", "Job", "a", handler)
    worker = asyncio.create_task(w._work())
    for rv in ("1", "2", "3"):
        w.put("ADDED", job("a", rv))
        await asyncio.sleep(0.01)
    assert calls == ["1", "2", "3"] and len(w._retries) == 1
    await asyncio.sleep(0.3)
    assert calls == ["1", "2", "3", "3"]  # one look again, not three
    wait = False
    w.put("MODIFIED", job("a", "4"))  # handled for good: the next look is moot
    await asyncio.sleep(0.3)
    assert calls == ["1", "2", "3", "3", "4"] and w._retries == {}
    worker.cancel()


def labelled(name: str, rv: str, owner: str, ns: str = "ns") -> dict[str, Any]:
    return {"metadata": {"namespace": ns, "name": name, "resourceVersion": rv,
                         "labels": {"app": owner}, "managedFields": [{"big": "x"}]},
            "spec": {"template": {"big": "x"}, "suspend": False}}


def test_store_indexes_by_label_trims_and_ignores_old_versions() -> None:
    def trim(o: dict[str, Any]) -> dict[str, Any]:
        return {"metadata": {k: v for k, v in o["metadata"].items() if k != "managedFields"},
                "spec": {"suspend": o["spec"]["suspend"]}}

    store = Store("app", trim)
    assert store.put(labelled("a-1", "5", "a"))
    assert store.put(labelled("a-2", "6", "a"))
    assert store.put(labelled("b-1", "7", "b"))
    assert store.put(labelled("a-9", "8", "a", ns="other"))
    assert [o["metadata"]["name"] for o in store.by_label("ns", "a")] == ["a-1", "a-2"]
    assert "managedFields" not in store.by_label("ns", "a")[0]["metadata"]
    assert "template" not in store.by_label("ns", "a")[0]["spec"]
    # The same version again (the watch event of a write put here first), or an older one:
    # no news, and the newer copy stays.
    assert store.put(labelled("b-1", "9", "b"))
    assert not store.put(labelled("b-1", "9", "b"))
    assert not store.put(labelled("b-1", "7", "b"))
    assert store.by_label("ns", "b")[0]["metadata"]["resourceVersion"] == "9"
    # A label change moves it in the index; a removal drops it.
    assert store.put(labelled("a-2", "10", "b"))
    assert [o["metadata"]["name"] for o in store.by_label("ns", "b")] == ["a-2", "b-1"]
    store.remove(labelled("a-1", "11", "a"))
    assert store.by_label("ns", "a") == []
    # A relist keeps only what it returned, and the store is then synced.
    assert not store.synced
    store.keep_only({("ns", "b-1")})
    assert store.synced and len(store) == 1


async def test_a_store_turns_echoes_of_own_writes_and_the_first_list_into_no_work() -> None:
    handled: list[tuple[str | None, str]] = []

    async def handler(type_: str | None, obj: dict[str, Any]) -> None:
        handled.append((type_, obj["metadata"]["name"]))

    store = Store("app")
    w = SelectorWatch("batch/v1", "Job", "app", handler, store=store, initial=False)
    workers = [asyncio.create_task(w._work())]
    w.put(None, labelled("listed", "1", "a"))  # the first LIST: stored, not handled
    store.keep_only({("ns", "listed")})
    store.put(labelled("mine", "2", "a"))  # the controller created it and wrote it here
    w.put("ADDED", labelled("mine", "2", "a"))  # ... then its watch event came: an echo
    w.put("MODIFIED", labelled("mine", "3", "a"))  # somebody else changed it: news
    w.put(None, labelled("listed", "1", "a"))  # a relist of an unchanged object
    w.put("DELETED", labelled("listed", "4", "a"))
    await asyncio.sleep(0.05)
    assert handled == [("MODIFIED", "mine"), ("DELETED", "listed")]
    assert [o["metadata"]["name"] for o in store.by_label("ns", "a")] == ["mine"]
    for t in workers:
        t.cancel()


async def test_a_retry_runs_the_handler_again_past_the_store() -> None:
    calls: list[str] = []

    async def handler(type_: str | None, obj: dict[str, Any]) -> None:
        calls.append(obj["metadata"]["resourceVersion"])
        if len(calls) == 1:
            raise Retry(0.01)

    store = Store("app")
    w = SelectorWatch("batch/v1", "Job", "app", handler, store=store)
    workers = [asyncio.create_task(w._work())]
    store.keep_only(set())
    # The store holds this version by the time the retry comes: it must still run.
    w.put("ADDED", labelled("a", "1", "a"))
    await asyncio.sleep(0.1)
    assert calls == ["1", "1"]
    for t in workers:
        t.cancel()


async def test_a_batch_period_coalesces_updates_but_not_deletions() -> None:
    calls: list[tuple[str | None, str]] = []

    async def handler(type_: str | None, obj: dict[str, Any]) -> None:
        calls.append((type_, obj["metadata"]["resourceVersion"]))

    w = SelectorWatch("batch/v1", "Job", "a", handler, workers=2, batch=0.1)
    workers = [asyncio.create_task(w._work()) for _ in range(2)]
    w.put("ADDED", job("a", "1"))  # a new object is not held back
    await asyncio.sleep(0.01)
    assert calls == [("ADDED", "1")]
    for rv in ("2", "3", "4"):  # the steps of one change: handled once, after the period
        w.put("MODIFIED", job("a", rv))
        await asyncio.sleep(0.02)
    assert calls == [("ADDED", "1")]
    await asyncio.sleep(0.1)
    assert calls == [("ADDED", "1"), ("MODIFIED", "4")]
    w.put("MODIFIED", job("a", "5"))  # held ...
    await asyncio.sleep(0.01)
    w.put("DELETED", job("a", "6"))  # ... but a deletion goes at once, as the newest copy
    await asyncio.sleep(0.01)
    assert calls[-1] == ("DELETED", "6")
    await asyncio.sleep(0.15)
    assert len(calls) == 3  # the released timer does not run it again
    for t in workers:
        t.cancel()


def test_store_hands_out_copies_that_cannot_change_it() -> None:
    store = Store("app")
    store.put(labelled("a-1", "5", "a"))
    got = store.get("ns", "a-1")
    assert got is not None and got["spec"]["suspend"] is False
    got["spec"]["suspend"] = True  # a caller edits what it read ...
    store.by_label("ns", "a")[0]["metadata"]["labels"]["app"] = "z"
    snapshot = store.snapshot()
    assert snapshot is None  # not synced yet
    store.keep_only({("ns", "a-1")})
    again = store.get("ns", "a-1")
    assert again == labelled("a-1", "5", "a")  # ... and the store still holds what was put
    assert again is not got
    assert store.snapshot() == [again]
    assert store.get("ns", "missing") is None


async def test_queued_changes_hold_only_what_the_handler_reads() -> None:
    seen: list[dict[str, Any]] = []

    async def handler(type_: str | None, obj: dict[str, Any]) -> None:
        seen.append(obj)

    trims: list[str] = []

    def trim(o: dict[str, Any]) -> dict[str, Any]:
        trims.append(o["metadata"]["name"])
        return {"metadata": o["metadata"]}

    plain = SelectorWatch("batch/v1", "Job", "app", handler)
    store = Store("app", trim)
    slimmed = SelectorWatch("batch/v1", "Job", "app", handler, store=store, queue_trimmed=True)
    workers = [asyncio.create_task(w._work()) for w in (plain, slimmed)]
    plain.put("ADDED", labelled("a", "1", "a"))
    await asyncio.sleep(0.01)
    slimmed.put("ADDED", labelled("b", "1", "a"))
    await asyncio.sleep(0.01)
    assert [sorted(o) for o in seen] == [["metadata", "spec"], ["metadata"]]
    assert all("managedFields" not in o["metadata"] for o in seen)  # never kept
    assert seen[1]["metadata"]["labels"] == {"app": "a"}
    assert trims == ["b"]  # trimmed once: the store keeps the very copy that was queued
    assert store.by_label("ns", "a") == [seen[1]]
    for t in workers:
        t.cancel()


def test_store_pages_decode_a_page_at_a_time() -> None:
    store = Store("app")
    for i in range(5):
        store.put(labelled(f"o{i}", "1", "a"))
    assert store.pages(2) is None  # not listed yet
    store.keep_only({("ns", f"o{i}") for i in range(5)})
    pages = store.pages(2)
    assert pages is not None
    first = next(iter(pages))
    assert [o["metadata"]["name"] for o in first] == ["o0", "o1"]
    store.remove(labelled("o4", "1", "a"))  # a walk already begun keeps its own view
    assert [[o["metadata"]["name"] for o in p] for p in pages] == [["o2", "o3"], ["o4"]]
    assert [o["metadata"]["name"] for o in store.snapshot() or []] == [f"o{i}" for i in range(4)]
