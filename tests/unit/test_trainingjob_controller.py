"""reconcile() against an in-memory fake of slipway.kube: the fresh read, owner-UID children,
and group restarts that survive an operator crash between any two steps."""

from __future__ import annotations

import asyncio
import copy
import itertools
from typing import Any

import pytest

from slipway import kube
from slipway.config import Settings
from slipway.controllers import trainingjob as ctl

NS = "ml"
FAIL_137 = ("Container trainer for pod ml/{job}-1-abcde failed with exit code 137 matching "
            "FailJob rule at index 1")


class Crash(Exception):
    """The operator process dying in the middle of a reconcile."""


class FakeKube:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.created: list[str] = []
        self.deleted: list[str] = []
        self.events: list[tuple[str, str, str]] = []
        self.crash_on: str | None = None  # "create" or "status": fail that call once
        self.uids = (f"uid-{i}" for i in itertools.count())

    def put(self, obj: dict[str, Any]) -> dict[str, Any]:
        obj.setdefault("metadata", {}).setdefault("uid", next(self.uids))
        obj["metadata"].setdefault("namespace", NS)
        self.objects[(obj["kind"], obj["metadata"]["name"])] = obj
        return obj

    def jobs(self) -> dict[str, dict[str, Any]]:
        return {n: o for (k, n), o in self.objects.items() if k == "Job"}

    def _crash(self, step: str) -> None:
        if self.crash_on == step:
            self.crash_on = None
            raise Crash(step)

    async def get(self, api_version: str, kind: str, namespace: str | None,
                  name: str) -> dict[str, Any] | None:
        obj = self.objects.get((kind, name))
        return copy.deepcopy(obj) if obj else None

    async def list_objects(self, api_version: str, kind: str, namespace: str | None,
                           label_selector: str | None = None) -> list[dict[str, Any]]:
        key, _, value = (label_selector or "").partition("=")
        return [copy.deepcopy(o) for (k, _), o in self.objects.items() if k == kind
                and (not key or (o["metadata"].get("labels") or {}).get(key) == value)]

    async def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        self._crash("create")
        if (manifest["kind"], manifest["metadata"]["name"]) in self.objects:
            raise kube.KubeError("409 AlreadyExists", 409)
        self.created.append(manifest["metadata"]["name"])
        return copy.deepcopy(self.put(copy.deepcopy(manifest)))

    async def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        return copy.deepcopy(self.put(copy.deepcopy(manifest)))

    async def patch(self, api_version: str, kind: str, namespace: str | None, name: str,
                    body: dict[str, Any], subresource: str | None = None) -> dict[str, Any]:
        if subresource == "status":
            self._crash("status")
        obj = self.objects[(kind, name)]
        for part, fields in body.items():
            obj.setdefault(part, {}).update(copy.deepcopy(fields))
        if "resourceVersion" in obj["metadata"]:  # as the API server does, on every write
            obj["metadata"]["resourceVersion"] = str(int(obj["metadata"]["resourceVersion"]) + 1)
        return copy.deepcopy(obj)

    async def delete(self, api_version: str, kind: str, namespace: str | None, name: str,
                     propagation: str = "Background") -> None:
        self.deleted.append(name)
        self.objects.pop((kind, name), None)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeKube:
    fk = FakeKube()
    for name in ("get", "list_objects", "create", "apply", "patch", "delete"):
        monkeypatch.setattr(kube, name, getattr(fk, name))
    monkeypatch.setattr(ctl, "emit", lambda obj, type_, reason, message: fk.events.append(
        (type_, reason, message)))
    return fk


def new_tj(fake: FakeKube, **spec: Any) -> dict[str, Any]:
    return fake.put({"apiVersion": "slipway.dev/v1alpha1", "kind": "TrainingJob",
                     "metadata": {"name": "bert", "generation": 1},
                     "spec": {"image": "trainer:1", **spec}})


def run(fake: FakeKube, snapshot: dict[str, Any] | None = None) -> dict[str, Any]:
    tj = snapshot or fake.objects[("TrainingJob", "bert")]
    asyncio.run(ctl.reconcile(copy.deepcopy(tj)))
    return fake.objects[("TrainingJob", "bert")]


def fail(job: dict[str, Any], message: str) -> None:
    job["status"] = {"failed": 1, "conditions": [{"type": "Failed", "status": "True",
                                                  "reason": "PodFailurePolicy",
                                                  "message": message}]}


def complete(job: dict[str, Any]) -> None:
    job["status"] = {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}


DDP = {"workers": 2, "distributed": {}, "runPolicy": {"backoffLimit": 2}}


def test_group_restart_creates_one_job_per_attempt(fake: FakeKube) -> None:
    new_tj(fake, **DDP)
    run(fake)
    [first] = fake.created
    fail(fake.jobs()[first], FAIL_137.format(job=first))
    tj = run(fake)
    assert fake.created == [first, f"{first}-a1"]
    assert (tj["status"]["attempt"], tj["status"]["restarts"]) == (1, 1)
    assert tj["status"]["jobName"] == f"{first}-a1"
    restarts = [m for t, r, m in fake.events if r == "Restarting"]
    assert len(restarts) == 1 and "worker 1" in restarts[0] and "137" in restarts[0]
    assert set(fake.jobs()) == {first, f"{first}-a1"}  # the failed one kept for its logs
    for _ in range(3):  # level-based: more passes change nothing
        run(fake)
    assert fake.created == [first, f"{first}-a1"]
    # The next restart deletes attempt 0's Job and keeps attempt 1's.
    fail(fake.jobs()[f"{first}-a1"], FAIL_137.format(job=f"{first}-a1"))
    run(fake)
    assert set(fake.jobs()) == {f"{first}-a1", f"{first}-a2"} and first in fake.deleted


@pytest.mark.parametrize("step", ["status", "create"])
def test_a_crash_during_a_restart_neither_skips_nor_repeats_an_attempt(
        fake: FakeKube, step: str) -> None:
    new_tj(fake, **DDP)
    run(fake)
    [first] = fake.created
    fail(fake.jobs()[first], FAIL_137.format(job=first))
    fake.crash_on = step  # before the status write, or between it and the create
    with pytest.raises(Crash):
        run(fake)
    assert fake.created == [first]
    tj = run(fake)  # the operator is back
    run(fake)
    assert fake.created == [first, f"{first}-a1"]
    assert (tj["status"]["attempt"], tj["status"]["restarts"]) == (1, 1)
    assert [r for _, r, _ in fake.events].count("Restarting") == 1


def test_attempt_survives_a_lost_status_write(fake: FakeKube) -> None:
    new_tj(fake, **DDP)
    run(fake)
    [first] = fake.created
    fail(fake.jobs()[first], FAIL_137.format(job=first))
    run(fake)
    fake.objects[("TrainingJob", "bert")]["status"]["attempt"] = 0  # as if never written
    tj = run(fake)
    assert fake.created == [first, f"{first}-a1"]  # attempt 1's Job says which attempt runs
    assert tj["status"]["attempt"] == 1


def test_permanent_failure_and_backoff_limit(fake: FakeKube) -> None:
    new_tj(fake, workers=2, distributed={}, runPolicy={"backoffLimit": 0})
    run(fake)
    [first] = fake.created
    fail(fake.jobs()[first], FAIL_137.format(job=first))
    tj = run(fake)
    assert tj["status"]["phase"] == "Failed" and fake.created == [first]
    failed = next(c for c in tj["status"]["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "BackoffLimitExceeded"
    run(fake)  # final: never re-run
    assert fake.created == [first]


def test_reconcile_works_from_a_fresh_read_not_the_snapshot(fake: FakeKube) -> None:
    tj = new_tj(fake)
    run(fake)
    stale = copy.deepcopy(fake.objects[("TrainingJob", "bert")])
    tj["spec"]["runPolicy"] = {"suspend": True}
    tj["spec"]["image"] = "trainer:2"
    tj["metadata"]["generation"] = 3
    run(fake)
    run(fake, snapshot=stale)  # the resync loop's old copy
    [job] = fake.jobs().values()
    assert job["spec"]["suspend"] is True
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == "trainer:2"


def test_a_job_of_another_owner_is_neither_adopted_nor_deleted(fake: FakeKube) -> None:
    tj = new_tj(fake, workers=2, distributed={})
    desired = ctl.build_job(ctl.TrainingJobSpec.model_validate(tj["spec"]), tj, suspend=False)
    old = copy.deepcopy(desired)
    old["metadata"]["ownerReferences"][0]["uid"] = "uid-of-the-deleted-one"
    complete(fake.put(old))
    st = run(fake)["status"]
    assert st["phase"] == "Pending" and desired["metadata"]["name"] in st["message"]
    assert fake.deleted == [] and fake.created == []
    run(fake)
    assert [r for _, r, _ in fake.events].count("NameConflict") == 1
    fake.objects.pop(("Job", desired["metadata"]["name"]))  # the GC gets to it
    st = run(fake)["status"]
    assert fake.created == [desired["metadata"]["name"]] and st["phase"] == "Pending"
    job = fake.jobs()[desired["metadata"]["name"]]
    assert job["metadata"]["ownerReferences"][0]["uid"] == tj["metadata"]["uid"]


def test_a_service_controlled_by_another_uid_is_not_taken_over(fake: FakeKube) -> None:
    tj = new_tj(fake, workers=2, distributed={})
    svc = ctl.build_service(ctl.TrainingJobSpec.model_validate(tj["spec"]), tj)
    assert svc is not None
    svc["metadata"]["ownerReferences"][0]["uid"] = "uid-of-the-deleted-one"
    fake.put(svc)
    st = run(fake)["status"]
    assert st["phase"] == "Pending" and "Service bert" in st["message"]
    assert fake.created == []
    # An orphan of ours (owner stripped, labels kept) is adopted: it holds no state.
    svc["metadata"]["ownerReferences"] = []
    run(fake)
    owner = fake.objects[("Service", "bert")]["metadata"]["ownerReferences"][0]
    assert owner["uid"] == tj["metadata"]["uid"] and len(fake.created) == 1


def test_a_finished_attempt_is_the_outcome_even_after_a_template_edit(fake: FakeKube) -> None:
    tj = new_tj(fake)
    run(fake)
    [first] = fake.created
    tj["spec"]["env"] = [{"name": "LR", "value": "0.1"}]  # edited while it ran
    tj["metadata"]["generation"] = 2
    run(fake)
    complete(fake.jobs()[first])
    st = run(fake)["status"]
    assert st["phase"] == "Succeeded" and fake.created == [first] and fake.deleted == []


@pytest.fixture
def stores() -> Any:
    """The watch stores as the running operator has them after their first LIST."""
    for store in (ctl.JOBS, ctl.TRAININGJOBS, ctl.SERVICES):
        store.keep_only(set())
    yield ctl.JOBS, ctl.TRAININGJOBS
    for store in (ctl.JOBS, ctl.TRAININGJOBS, ctl.SERVICES):
        store.clear()
    ctl._WAITING_SINCE.clear()


def test_with_the_stores_own_writes_are_seen_before_their_watch_events(
        fake: FakeKube, stores: Any) -> None:
    jobs, tjs = stores
    tj = new_tj(fake)
    tj["metadata"]["resourceVersion"] = "1"
    tjs.put(tj)
    run(fake)
    assert len(fake.created) == 1 and len(jobs) == 1  # the create was written through
    # No watch event has arrived yet (the fake has none): the next pass, say a Job event
    # coming early, reads the Job from the store and creates nothing.
    fake.objects[("TrainingJob", "bert")]["metadata"]["resourceVersion"] = "2"
    asyncio.run(ctl.reconcile({"metadata": {"namespace": NS, "name": "bert"}}))
    assert len(fake.created) == 1
    # A stale copy handed in (a resync LIST from before a suspend) loses to the store's.
    stale = copy.deepcopy(tj)
    newer = {**copy.deepcopy(tj), "spec": {"image": "trainer:1",
                                           "runPolicy": {"suspend": True}}}
    newer["metadata"]["resourceVersion"] = "5"
    tjs.put(newer)
    asyncio.run(ctl.reconcile(stale))
    (job,) = fake.jobs().values()
    assert job["spec"]["suspend"] is True


def test_a_finished_job_is_a_stub_in_the_store_and_costs_no_read(
        fake: FakeKube, stores: Any) -> None:
    _, tjs = stores
    done = {"apiVersion": "slipway.dev/v1alpha1", "kind": "TrainingJob",
            "metadata": {"name": "old", "namespace": NS, "uid": "u1", "generation": 1,
                         "resourceVersion": "3", "managedFields": [{"manager": "x"}]},
            "spec": {"image": "trainer:1"},
            "status": {"phase": "Succeeded", "completionTime": "2026-01-01T00:00:00Z",
                       "conditions": [{"type": "Succeeded", "status": "True"}]}}
    tjs.put(done)
    held = tjs.get(NS, "old")
    assert held[ctl.STUB] and "image" not in held["spec"] and held["status"]["conditions"] == []
    reads: list[str] = []

    async def counted_get(*args: Any) -> None:
        reads.append(args[3])

    kube.get = counted_get  # type: ignore[assignment]  # restored by the fake fixture
    asyncio.run(ctl.reconcile({"metadata": {"namespace": NS, "name": "old"}}))
    assert reads == [] and fake.created == []


def test_a_terminating_namespace_is_not_a_failed_job(fake: FakeKube,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    new_tj(fake)

    async def forbidden(manifest: dict[str, Any]) -> dict[str, Any]:
        raise kube.KubeError("POST jobs: 403 unable to create new content in namespace ml "
                             "because it is being terminated", 403)

    monkeypatch.setattr(kube, "create", forbidden)
    tj = run(fake)
    assert (tj.get("status") or {}).get("phase") != "Failed" and fake.events == []


def test_listeners_hear_of_phase_changes_only(fake: FakeKube, stores: Any,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    heard: list[tuple[str, str]] = []

    async def listener(namespace: str, name: str) -> None:
        heard.append((namespace, name))

    monkeypatch.setattr(ctl, "_PHASE_LISTENERS", [listener])
    jobs, tjs = stores
    tj = new_tj(fake)
    tj["metadata"]["resourceVersion"] = "1"
    tjs.put(tj)
    run(fake)  # no phase -> Pending
    assert heard == [(NS, "bert")]
    run(fake)  # nothing changed
    assert heard == [(NS, "bert")]
    (job,) = fake.jobs().values()
    complete(job)
    jobs.put(job)  # as its watch event would
    assert run(fake)["status"]["phase"] == "Succeeded"
    assert heard == [(NS, "bert")] * 2


def test_the_headless_service_is_read_from_its_store(fake: FakeKube, stores: Any) -> None:
    new_tj(fake, **DDP)
    run(fake)  # not in the listed store: created (no read first) and written through
    assert ctl.SERVICES.get(NS, "bert") is not None
    reads: list[str] = []
    real_get = kube.get

    async def counted_get(api_version: str, kind: str, namespace: str | None,
                          name: str) -> dict[str, Any] | None:
        reads.append(kind)
        return await real_get(api_version, kind, namespace, name)

    applies: list[str] = []
    real_apply = kube.apply

    async def counted_apply(manifest: dict[str, Any], *args: Any) -> dict[str, Any]:
        applies.append(manifest["kind"])
        return await real_apply(manifest, *args)

    kube.get = counted_get  # type: ignore[assignment]  # restored by the fake fixture
    kube.apply = counted_apply  # type: ignore[assignment]
    for _ in range(3):
        run(fake)
    assert "Service" not in reads and "Service" not in applies  # created as applied: no drift
    # Deleted (its watch event removes it from the store): put back at the next pass, by a
    # create alone.
    svc = fake.objects.pop(("Service", "bert"))
    ctl.SERVICES.remove(svc)
    run(fake)
    assert ("Service", "bert") in fake.objects and reads.count("Service") == 0
    # Someone else's Service by that name (no label: the store never sees it): the create
    # fails with 409, and only then is it read, and left alone.
    fake.objects.pop(("Service", "bert"))
    ctl.SERVICES.remove(svc)
    theirs = {"apiVersion": "v1", "kind": "Service",
              "metadata": {"name": "bert", "namespace": NS, "uid": "theirs"}}
    fake.objects[("Service", "bert")] = theirs
    run(fake)
    assert reads.count("Service") == 1 and fake.objects[("Service", "bert")] == theirs


def test_pods_of_a_job_waiting_for_workers_are_read_after_a_grace_and_then_paced(
        fake: FakeKube, stores: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    jobs, _ = stores
    new_tj(fake, **DDP)
    run(fake)
    (job,) = fake.jobs().values()
    lists: list[str] = []
    writes: list[dict[str, Any]] = []
    real_list, real_write = kube.list_objects, ctl.write_status

    async def counted(api_version: str, kind: str, namespace: str | None,
                      label_selector: str | None = None) -> list[dict[str, Any]]:
        lists.append(kind)
        return await real_list(api_version, kind, namespace, label_selector)

    async def written(tj: dict[str, Any], *args: Any) -> Any:
        writes.append(args[0])
        return await real_write(tj, *args)

    monkeypatch.setattr(kube, "list_objects", counted)
    monkeypatch.setattr(ctl, "write_status", written)
    grace = 15.0  # settings.pod_reason_seconds: reads at 15, 30 s later, then every 60 s
    monkeypatch.setattr(ctl, "active", lambda: Settings(pod_reason_seconds=grace))
    # The Job controller made the pods long after the Job started (behind, at a burst): the
    # grace runs from when the operator first sees the pods made, not from the Job's start.
    job["status"] = {"active": 2, "ready": 0, "startTime": "2020-01-01T00:00:00Z"}
    jobs.put(job)
    ref = {"metadata": {"namespace": NS, "name": "bert"}}
    recheck = asyncio.run(ctl.reconcile(ref))
    assert lists == [] and recheck is not None and 0 < recheck <= grace
    # Pending on this Job already: a change of the counts alone is no status write.
    assert writes == [] and fake.objects[("TrainingJob", "bert")]["status"]["phase"] == \
        "Pending"
    # A Job event then asks for the same look again, through the work queue.
    with pytest.raises(ctl.Retry):
        asyncio.run(ctl.job_event("MODIFIED", job))
    # Past the grace: the pods are read for the reason, and the status written.
    uid = job["metadata"]["uid"]

    def skip(seconds: float) -> None:  # as if *seconds* had passed
        due, gap = ctl._WAITING_SINCE[uid]
        ctl._WAITING_SINCE[uid] = (due - seconds, gap)

    skip(grace)
    assert asyncio.run(ctl.reconcile(ref)) is None and lists == ["Pod"] and len(writes) == 1
    # The next Job event comes a moment later: no second read until twice the grace has
    # passed (a job that waits long waits for the same reason), then four times, at most
    # POD_READ_MAX_SECONDS.
    job["status"]["ready"] = 1
    jobs.put(job)
    recheck = asyncio.run(ctl.reconcile(ref))
    assert recheck is not None and 1.9 * grace < recheck <= \
        2 * grace and lists == ["Pod"]
    skip(2 * grace)
    assert asyncio.run(ctl.reconcile(ref)) is None and lists == ["Pod", "Pod"]
    recheck = asyncio.run(ctl.reconcile(ref))
    assert recheck is not None and recheck > 3 * grace
    skip(ctl.POD_READ_MAX_SECONDS)
    asyncio.run(ctl.reconcile(ref))
    assert lists == ["Pod"] * 3 and ctl._WAITING_SINCE[uid][1] == ctl.POD_READ_MAX_SECONDS
    # Every worker ready: Running is written at once, and the pacing forgotten.
    job["status"]["ready"] = 2
    jobs.put(job)
    assert asyncio.run(ctl.reconcile(ref)) is None and lists == ["Pod"] * 3
    assert fake.objects[("TrainingJob", "bert")]["status"]["phase"] == "Running"
    assert uid not in ctl._WAITING_SINCE
