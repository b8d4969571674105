"""What the resync tick may skip: settled objects, unchanged children, finished jobs."""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from slipway import kube
from slipway.controllers import common, resync, settled
from slipway.controllers import trainingjob as tj_controller
from slipway.watch import Store


@pytest.fixture(autouse=True)
def _clean_memo() -> Iterator[None]:
    settled.clear()
    yield
    settled.clear()


def obj(uid: str, rv: str, phase: str | None = None, **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": f"o-{uid}", "namespace": "ns", "uid": uid,
                         "resourceVersion": rv, "generation": 1},
            "spec": spec, "status": {"phase": phase} if phase else {}}


def test_settled_holds_only_while_the_resource_version_is_the_same() -> None:
    a = obj("a", "10")
    assert not settled.is_settled("K", a)
    settled.mark("K", a)
    assert settled.is_settled("K", a)
    assert not settled.is_settled("K", obj("a", "11"))  # edited since
    assert not settled.is_settled("Other", a)  # per kind
    settled.forget("K", a)
    assert not settled.is_settled("K", a)


def test_prune_drops_deleted_objects_of_that_kind_only() -> None:
    settled.mark("K", obj("a", "1"))
    settled.mark("K", obj("b", "1"))
    settled.mark("J", obj("c", "1"))
    settled.prune("K", {"a"})
    assert settled.size() == 2
    assert settled.is_settled("K", obj("a", "1"))
    assert not settled.is_settled("K", obj("b", "1"))
    assert settled.is_settled("J", obj("c", "1"))


def test_covers_ignores_server_added_fields_but_not_changed_ones() -> None:
    desired = {"spec": {"a": 1, "ports": [{"port": 80}]}}
    live = {"spec": {"a": 1, "b": 2, "ports": [{"port": 80, "protocol": "TCP"}]},
            "status": {"x": 1}}
    assert common.covers(live, desired)
    assert not common.covers({"spec": {"a": 2, "ports": [{"port": 80}]}}, desired)
    assert not common.covers({"spec": {"a": 1, "ports": []}}, desired)
    assert not common.covers({"spec": {"ports": [{"port": 80}]}}, desired)  # a missing
    assert not common.covers({"spec": {"a": 1, "ports": [{"port": 80}, {"port": 81}]}},
                             desired)


def test_unchanged_sees_a_field_dropped_from_the_spec() -> None:
    """Server-side apply removes a field the manifest no longer sets; the hash tells."""
    first = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "labels": {}},
             "spec": {"selector": {"a": "b"}, "nodeSelector": {"gpu": "a100"}}}
    live = copy.deepcopy(common.stamped(first))
    live["metadata"]["resourceVersion"] = "7"  # what the server adds
    live["spec"]["clusterIP"] = "None"
    assert common.unchanged(live, common.stamped(first))
    dropped = copy.deepcopy(first)
    del dropped["spec"]["nodeSelector"]
    assert common.covers(live, dropped)  # a subset check alone would skip the apply
    assert not common.unchanged(live, common.stamped(dropped))
    assert not common.unchanged(None, common.stamped(first))
    live["spec"]["selector"]["a"] = "edited by hand"
    assert not common.unchanged(live, common.stamped(first))


def finished_tj(uid: str, ttl: int | None, done_ago_s: float) -> dict[str, Any]:
    done = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=done_ago_s)
    tj = obj(uid, "5", "Succeeded", image="trainer:1",
             **({"runPolicy": {"ttlSecondsAfterFinished": ttl}} if ttl is not None else {}))
    tj["status"]["completionTime"] = done.strftime("%Y-%m-%dT%H:%M:%SZ")
    return tj


def test_trainingjob_skip_rules() -> None:
    skip = tj_controller._nothing_to_do
    assert skip(finished_tj("a", None, 10))  # finished for good, no TTL
    assert skip(finished_tj("b", 3600, 10))  # TTL not due yet
    assert not skip(finished_tj("c", 5, 10))  # TTL due: the reconcile deletes it
    running = obj("d", "9", "Running", image="trainer:1")
    assert not skip(running)  # never settled by a reconcile of this process
    settled.mark(tj_controller.KIND, running)
    assert skip(running)
    assert not skip({**running, "metadata": {**running["metadata"], "resourceVersion": "10"}})
    assert not skip(obj("e", "1", "Pending", image="trainer:1"))


async def test_resync_reconciles_only_what_skip_leaves_page_by_page(
        monkeypatch: pytest.MonkeyPatch) -> None:
    pages = [[obj("a", "1"), obj("b", "1")], [obj("c", "1")]]
    pages[1][0]["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    listed: list[int] = []

    async def list_pages(api_version: str, kind: str, namespace: str | None,
                         label_selector: str | None = None, limit: int = 500
                         ) -> AsyncIterator[list[dict[str, Any]]]:
        for page in pages:
            listed.append(limit)
            yield page

    seen: list[str] = []

    async def reconcile(o: dict[str, Any]) -> None:
        seen.append(o["metadata"]["uid"])

    settled.mark("K", obj("gone", "1"))
    monkeypatch.setattr(kube, "list_pages", list_pages)
    monkeypatch.setattr(resync, "_REGISTRY", [])
    resync.register("v1", "K", reconcile, skip=lambda o: o["metadata"]["uid"] == "b")
    assert await resync.resync_once() == 1
    assert seen == ["a"]  # b skipped, c being deleted
    assert listed == [resync.PAGE, resync.PAGE]
    assert not settled.is_settled("K", obj("gone", "1"))  # pruned: not in the LIST


async def test_resync_walks_a_synced_store_instead_of_listing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    listed: list[str] = []

    async def list_pages(api_version: str, kind: str, namespace: str | None,
                         label_selector: str | None = None, limit: int = 500
                         ) -> AsyncIterator[list[dict[str, Any]]]:
        listed.append(kind)
        yield [obj("from-list", "1")]

    seen: list[str] = []

    async def reconcile(o: dict[str, Any]) -> None:
        seen.append(o["metadata"]["uid"])

    store = Store("app")
    monkeypatch.setattr(kube, "list_pages", list_pages)
    monkeypatch.setattr(resync, "_REGISTRY", [])
    resync.register("v1", "K", reconcile, source=store.pages)
    await resync.resync_once()  # not listed by its watch yet: a LIST
    assert (listed, seen) == (["K"], ["from-list"])
    for i in range(resync.PAGE + 1):  # more than a page
        store.put({"metadata": {"namespace": "ns", "name": f"o{i}", "uid": f"u{i}",
                                "resourceVersion": "1"}})
    store.keep_only({("ns", f"o{i}") for i in range(resync.PAGE + 1)})
    seen.clear()
    assert await resync.resync_once() == resync.PAGE + 1
    assert listed == ["K"] and sorted(seen) == sorted(f"u{i}" for i in range(resync.PAGE + 1))


@pytest.mark.parametrize(("url", "resource"), [
    ("/api/v1/namespaces/ns/pods", "pods"),
    ("/apis/batch/v1/namespaces/ns/jobs/train-a1", "jobs"),
    ("/apis/slipway.dev/v1alpha1/trainingjobs", "trainingjobs"),
    ("/apis/slipway.dev/v1alpha1/namespaces/ns/trainingjobs/t/status", "trainingjobs"),
    ("/api/v1/namespaces/ns", "namespaces"),
])
def test_request_metric_names_the_resource(url: str, resource: str) -> None:
    assert kube.resource_of(url) == resource


def test_a_mark_for_a_while_lapses(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr(settled.time, "monotonic", lambda: clock[0])
    a = obj("a", "10", "Pending")
    settled.mark("K", a, for_seconds=15)
    assert settled.is_settled("K", a)
    assert not settled.is_settled("K", obj("a", "11", "Pending"))  # changed since
    clock[0] = 116.0
    assert not settled.is_settled("K", a)  # the next tick looks at it again
