"""TrainingJob handlers: parse, build, apply, observe, write status.

Level-based: create/update, the operator-wide resync and every event of an owned
Job all run the same idempotent `reconcile()`, which re-reads the TrainingJob under its lock
and only looks at the Jobs it controls (by owner UID). Finished jobs are never re-run.

Attempts: every Job runs one attempt of the whole worker group. Its podFailurePolicy fails it
as soon as any worker fails; the operator then judges the failure (exit code and
runPolicy.restartPolicy) and either fails the TrainingJob or starts the next attempt as a new
Job. The attempt number lives in status.attempt and on each Job (label slipway.dev/attempt);
the larger of the two wins, so it survives a lost status write. The status that starts an
attempt is written before its Job is created, and Job names are deterministic per attempt, so
an operator crash between the steps neither skips an attempt nor runs one twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import kopf
from pydantic import ValidationError

from slipway import kube, metrics
from slipway.api.common import API_VERSION, now_rfc3339
from slipway.api.trainingjob import TrainingJobSpec
from slipway.builders.trainingjob import (
    QUEUE_LABEL,
    BuildError,
    build_job,
    build_service,
    job_attempt,
    job_output,
    resolve_output,
)
from slipway.config import active
from slipway.controllers import resync, settled
from slipway.controllers.common import (
    apply_if_drifted,
    controller_uid,
    fresh,
    object_lock,
    owned,
    owned_by,
    stamped,
    transient,
    write_status,
)
from slipway.events import emit
from slipway.status.trainingjob import (
    SUCCEEDED,
    Observation,
    Verdict,
    build_failed,
    failure_from_job,
    failure_from_pods,
    is_final,
    job_condition,
    judge,
    kueue_reason,
    observe,
    restarting,
    running_workers,
    ttl_due,
    ttl_expired,
)
from slipway.watch import Retry, SelectorWatch, Store, resource_version

KIND = "TrainingJob"
_log = logging.getLogger("slipway.trainingjob")
LABEL = "slipway.dev/trainingjob"
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
PENDING_EDIT = "spec changes apply after suspend and resume"
WORKLOAD_API, JOB_UID_LABEL = "kueue.x-k8s.io/v1beta1", "kueue.x-k8s.io/job-uid"
# On a Kueue Workload that Slipway deactivated for runPolicy.suspend.
HELD_ANNOTATION = "slipway.dev/held"
# A phase in which nothing changes without an event of the Job (controllers.settled).
SETTLED_PHASES = ("Running",)


# Told (namespace, name) when a TrainingJob appears, changes phase or is deleted.
PhaseListener = Callable[[str, str], Awaitable[None]]
_PHASE_LISTENERS: list[PhaseListener] = []


def on_phase_change(listener: PhaseListener) -> PhaseListener:
    """Register *listener* (a decorator): controllers.modeldeployment serves a finished job's
    output as soon as it exists."""
    _PHASE_LISTENERS.append(listener)
    return listener


async def _phase_changed(namespace: str, name: str) -> None:
    for listener in _PHASE_LISTENERS:
        await listener(namespace, name)


class Terminating(Exception):
    """The TrainingJob's namespace is being deleted: nothing more to do."""


class Blocked(Exception):
    """A child's name is taken by an object this TrainingJob does not control: wait."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


async def _write(tj: dict[str, Any], obs: Observation) -> dict[str, Any]:
    """Patch the status fields that changed and post the events; returns the new object."""
    result = await write_status(tj, obs.status, obs.status)
    if result:
        TRAININGJOBS.put(result)
    for ev in obs.events:
        emit(tj, ev.type, ev.reason, ev.message)
    return result or {**tj, "status": {**(tj.get("status") or {}), **obs.status}}


def _desired_suspend(spec: TrainingJobSpec, current: dict[str, Any] | None) -> bool | None:
    """The value Slipway wants for Job.spec.suspend, or None to leave it to Kueue."""
    if spec.queue:
        # Created suspended; afterwards Kueue alone admits (unsuspends) and evicts it. Kueue
        # un-suspends any Job whose Workload is admitted, so runPolicy.suspend holds a queued
        # job through its Workload instead (_hold_in_kueue), never by writing suspend here.
        return True if current is None else None
    return bool(spec.policy.suspend)


async def _workload(job: dict[str, Any]) -> dict[str, Any] | None:
    """Kueue's Workload for *job* (None without Kueue, or before Kueue made it)."""
    meta = job["metadata"]
    found = await kube.list_objects(WORKLOAD_API, "Workload", meta["namespace"],
                                    f"{JOB_UID_LABEL}={meta['uid']}")
    return found[0] if found else None


async def _hold_in_kueue(spec: TrainingJobSpec, job: dict[str, Any]) -> dict[str, Any] | None:
    """Hold (runPolicy.suspend) or release a queued job by its Workload's spec.active, Kueue's
    own way; a hold somebody else set (no HELD mark) is never undone. Returns the Workload."""
    workload = await _workload(job)
    if workload is None:
        return None
    active = (workload.get("spec") or {}).get("active", True)
    ours = (workload["metadata"].get("annotations") or {}).get(HELD_ANNOTATION) == "true"
    if spec.policy.suspend and active:
        body: dict[str, Any] = {"metadata": {"annotations": {HELD_ANNOTATION: "true"}},
                                "spec": {"active": False}}
    elif not spec.policy.suspend and not active and ours:
        body = {"metadata": {"annotations": {HELD_ANNOTATION: None}}, "spec": {"active": True}}
    else:
        return workload
    meta = workload["metadata"]
    try:
        return await kube.patch(WORKLOAD_API, "Workload", meta["namespace"], meta["name"],
                                body) or workload
    except kube.KubeError as exc:
        if transient(exc):
            raise
        emit(job, "Warning", "HoldRejected", f"could not update Kueue Workload: {exc}")
        return workload


def _finished(job: dict[str, Any]) -> bool:
    return job_condition(job, *SUCCEEDED, "Failed") is not None


def _slim_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """Metadata as the reconcile reads it: Slipway's and Kueue's labels and annotations,
    the controller ownerReference, no managedFields (often half of an object)."""
    keep = {k: v for k, v in meta.items() if k not in (
        "managedFields", "labels", "annotations", "ownerReferences", "finalizers")}
    keep["labels"] = {k: v for k, v in (meta.get("labels") or {}).items()
                      if k.startswith("slipway.dev/") or k == QUEUE_LABEL}
    keep["annotations"] = {k: v for k, v in (meta.get("annotations") or {}).items()
                           if k.startswith("slipway.dev/")}
    keep["ownerReferences"] = [r for r in meta.get("ownerReferences") or []
                               if r.get("controller")]
    return keep


# What the reconcile reads of a Job's spec and status conditions (FailureTarget: the
# failed worker, before the Failed condition follows).
_JOB_SPEC = ("parallelism", "completions", "completionMode", "suspend",
             "activeDeadlineSeconds", "backoffLimit")
_JOB_CONDITIONS = (*SUCCEEDED, "Failed", "FailureTarget")
_CONDITION_FIELDS = ("type", "status", "reason", "message", "lastTransitionTime")


def _trim_job(job: dict[str, Any]) -> dict[str, Any]:
    """What the reconcile reads of a Job: slim metadata, a few scalar fields of the spec
    (not the pod template, most of a Job's size), the counts and times of its status and
    the conditions that say how it ended."""
    spec = job.get("spec") or {}
    status = {k: v for k, v in (job.get("status") or {}).items()
              if k != "conditions" and (v or v == 0)}
    status["conditions"] = [{k: c[k] for k in _CONDITION_FIELDS if k in c}
                            for c in (job.get("status") or {}).get("conditions") or []
                            if c.get("type") in _JOB_CONDITIONS]
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": _slim_meta(job["metadata"]),
            "spec": {k: spec[k] for k in _JOB_SPEC if k in spec}, "status": status}


STUB = "slipway.dev/stub"  # a store entry that holds only what _done_for_good reads


def _trim_trainingjob(tj: dict[str, Any]) -> dict[str, Any]:
    """A TrainingJob as the store keeps it. A finished one becomes a stub: nothing but its
    TTL is ever looked at again, and at 10,000 objects most of them are finished."""
    meta = _slim_meta(tj["metadata"])
    if not is_final(tj):
        return {**tj, "metadata": meta}
    status = tj.get("status") or {}
    ttl = _raw_ttl(tj)
    return {STUB: True, "metadata": meta,
            "spec": {"runPolicy": {"ttlSecondsAfterFinished": ttl}} if ttl is not None else {},
            "status": {"phase": status.get("phase"),
                       "completionTime": status.get("completionTime"),
                       "observedGeneration": status.get("observedGeneration"),
                       "conditions": [c for c in status.get("conditions") or []
                                      if c.get("type") == "Failed"]}}


def _trim_service(svc: dict[str, Any]) -> dict[str, Any]:
    """A headless Service as `apply_if_drifted` compares it: all but managedFields."""
    meta = {k: v for k, v in svc["metadata"].items() if k != "managedFields"}
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": svc.get("spec")}


# Every Job Slipway owns, as its watch last saw it (or as written here since).
JOBS = Store(LABEL, _trim_job)
# The headless Services of distributed TrainingJobs, the same way.
SERVICES = Store(LABEL, _trim_service)
# Every TrainingJob, the same way: a reconcile reads it here, not with a GET per pass.
TRAININGJOBS = Store(LABEL, _trim_trainingjob)


def _newest(*copies: dict[str, Any] | None) -> dict[str, Any] | None:
    """The copy with the highest resourceVersion (None when there is none)."""
    known = [(rv, c) for c in copies if c and (rv := resource_version(c)) is not None]
    return max(known, key=lambda rc: rc[0], default=(0, None))[1]


async def _current(tj: dict[str, Any]) -> dict[str, Any] | None:
    """The TrainingJob as it is now: the newest of the copy given and the watch's (which
    also holds Slipway's own status writes); a GET when the watch has not listed yet or
    does not know it. Never older than anything a previous reconcile acted on."""
    meta = tj["metadata"]
    if TRAININGJOBS.synced:
        held = _newest(tj, TRAININGJOBS.get(meta["namespace"], meta["name"]))
        if held is not None and held.get(STUB):
            if _done_for_good(held):
                return None  # finished, no TTL due: nothing to do, not even a GET
        elif held is not None:
            if held["metadata"].get("deletionTimestamp"):
                return None
            return {"apiVersion": API_VERSION, "kind": KIND, **held}
    return await fresh(API_VERSION, KIND, meta["namespace"], meta["name"])


async def _jobs(tj: dict[str, Any]) -> list[dict[str, Any]]:
    """The Jobs this TrainingJob controls, from the watch's store (a LIST until the watch
    has listed once). Same-named leftovers of a deleted predecessor (or orphans) carry the
    label too, but not this object's UID."""
    meta = tj["metadata"]
    if JOBS.synced:
        return owned(JOBS.by_label(meta["namespace"], meta["name"]), tj)
    found = await kube.list_objects("batch/v1", "Job", meta["namespace"],
                                    f"{LABEL}={meta['name']}")
    return owned(found, tj)


async def _pods(job: dict[str, Any]) -> list[dict[str, Any]]:
    """The pods of *job* (by the Job controller's label, then by owner UID)."""
    meta = job["metadata"]
    found = await kube.list_objects("v1", "Pod", meta["namespace"],
                                    f"{JOB_NAME_LABEL}={meta['name']}")
    return owned(found, job)


def current_attempt(tj: dict[str, Any], jobs: list[dict[str, Any]]) -> int:
    recorded = int((tj.get("status") or {}).get("attempt") or 0)
    return max([recorded, *(job_attempt(j) for j in jobs)])


def _pick(jobs: list[dict[str, Any]], desired: dict[str, Any], attempt: int
          ) -> tuple[dict[str, Any] | None, str | None, list[dict[str, Any]]]:
    """(the Job of this attempt to observe, a note for the status, the Jobs to delete)."""
    mine = [j for j in jobs if job_attempt(j) == attempt]
    current = next((j for j in mine if j["metadata"]["name"] == desired["metadata"]["name"]),
                   None)
    note = None
    if current is None:
        # The pod template changed (it is immutable, so the desired Job has another name).
        # A running Job keeps running until suspend and resume; one that already finished
        # is this attempt's outcome, which a later edit must not erase by re-running it.
        running = [j for j in mine if not j["spec"].get("suspend") and not _finished(j)]
        done = [j for j in mine if _finished(j)]
        if running:
            current, note = running[0], PENDING_EDIT
        elif done:
            current = done[0]
    # The failed Job of the previous attempt is kept, so the failed worker's logs can still
    # be read (kubectl logs) while the next attempt runs; older ones go.
    keep = {id(current)} | {id(j) for j in jobs if job_attempt(j) == attempt - 1
                            and _finished(j)}
    return current, note, [j for j in jobs if id(j) not in keep]


async def reconcile(tj: dict[str, Any], uid: str | None = None) -> float | None:
    """Reconcile the TrainingJob *tj* names. *tj* may be an old copy (a LIST in the resync
    loop, a Job event): the object is read again under the lock and only that copy is used.
    With *uid*, only that incarnation of the name is reconciled (a Job's owner). Returns
    the seconds after which it wants another look even if nothing changes (None: never)."""
    meta = tj["metadata"]
    async with object_lock(KIND, meta["namespace"], meta["name"]):
        current = await _current(tj)
        if current is None:
            return None
        if uid is not None and current["metadata"].get("uid") != uid:
            return None
        with metrics.RECONCILE_SECONDS.labels(KIND).time():
            recheck = await _reconcile(current)
    # Status writes go through the store, so it holds the phase just written.
    after = TRAININGJOBS.get(meta["namespace"], meta["name"]) or {}
    if _phase(after) != _phase(current):
        await _phase_changed(meta["namespace"], meta["name"])
    return recheck


def _phase(tj: dict[str, Any]) -> str | None:
    return (tj.get("status") or {}).get("phase")


async def _reconcile(tj: dict[str, Any]) -> float | None:
    meta = tj["metadata"]
    settled.forget(KIND, tj)  # marked again below only if it ends settled
    now = now_rfc3339()
    try:
        spec = TrainingJobSpec.model_validate(tj.get("spec") or {})
    except ValidationError as exc:
        await _write(tj, build_failed(tj, f"invalid spec: {exc.errors()[0]['msg']}", now))
        return None

    if is_final(tj):
        if ttl_expired(spec, tj, dt.datetime.now(dt.UTC)):
            emit(tj, "Normal", "TTLExpired", "deleting the finished TrainingJob")
            await kube.delete(API_VERSION, KIND, meta["namespace"], meta["name"])
        return None

    jobs = await _jobs(tj)
    attempt = current_attempt(tj, jobs)
    try:
        desired = build_job(spec, tj, suspend=False, attempt=attempt)
        service = build_service(spec, tj)
    except BuildError as exc:
        await _write(tj, build_failed(tj, str(exc), now))
        return None

    current, note, stale = _pick(jobs, desired, attempt)
    for old in stale:
        await kube.delete("batch/v1", "Job", meta["namespace"], old["metadata"]["name"])
        JOBS.remove(old)

    try:
        if service:  # read from the watch's store: no request unless it drifted
            await _ensure_service(service, tj)
        if current is None:
            current = await _create(spec, tj, desired)
        else:
            # Also while a template change waits for suspend/resume: the Job kept running
            # still takes the mutable fields, suspend above all (else the change could never
            # apply).
            current = await _converge(spec, desired, current)
    except Terminating:
        return None
    except Blocked as blocked:
        await _write(tj, observe(spec, tj, None, None, now, attempt=attempt,
                                 waiting=("NameConflict", blocked.message)))
        return None
    except BuildError as exc:
        await _write(tj, build_failed(tj, str(exc), now))
        return None

    verdict = None
    if job_condition(current, "Failed"):
        verdict = await _judge(spec, current, attempt)
        if verdict.retry:
            tj = await _write(tj, restarting(spec, tj, verdict, attempt + 1, now))
            # Creates the next attempt's Job now, not at the next resync.
            return await _reconcile(tj)

    workload = await _hold_in_kueue(spec, current) \
        if spec.queue and not _finished(current) else None
    pods: list[dict[str, Any]] = []
    recheck = None
    if _waiting_for_workers(spec, current):
        recheck = _pods_due_in(current)
        if recheck is None:
            pods = await _pods(current)
        elif note is None and verdict is None and _status_current(tj, current, attempt):
            # A start in progress: only the worker counts would change. One write when the
            # pods are read or the workers run covers them (a burst's writes per job: 4).
            return recheck
    else:
        _WAITING_SINCE.pop(current["metadata"].get("uid"), None)
    output = job_output(current) or resolve_output(spec, tj)
    result = await _write(tj, observe(spec, tj, current, output, now, note, pods=pods,
                                      attempt=attempt, verdict=verdict,
                                      kueue=kueue_reason(workload)))
    if (result.get("status") or {}).get("phase") in SETTLED_PHASES:
        settled.mark(KIND, result)
    else:  # still waiting: the next tick may leave it alone unless it changes
        settled.mark(KIND, result, for_seconds=active().resync_seconds)
    return recheck


# The pods of a Job waiting for its workers are first read settings.pod_reason_seconds (60)
# after they were seen made: until then they are being scheduled and started, which on a
# busy cluster takes tens of seconds, and why one is stuck (unschedulable, an image that
# cannot be pulled) only shows after a while. Later reads back off, doubling up to
# POD_READ_MAX_SECONDS (or the first wait, if longer): a job that waits long waits for the
# same reason, and its Job's counts still say at once when the workers run. At a burst of
# a thousand 2-worker jobs that wait for GPUs, reading after 15 s cost a LIST, a status
# write and a Warning Event per waiting job, and half again the burst's time.
POD_READ_MAX_SECONDS = 60.0
# Job UID -> (when its pods are next worth reading, the wait before the read after that),
# in time.monotonic().
_WAITING_SINCE: dict[str, tuple[float, float]] = {}


def _pods_due_in(job: dict[str, Any]) -> float | None:
    """Seconds until the pods of *job* (waiting for workers) are worth reading; None: now
    (and the next read is twice as far away as the last, up to POD_READ_MAX_SECONDS)."""
    uid, now = job["metadata"].get("uid") or job["metadata"]["name"], time.monotonic()
    grace = active().pod_reason_seconds
    due, gap = _WAITING_SINCE.setdefault(uid, (now + grace, grace))
    if now < due:
        return due - now
    gap = min(2 * gap, max(grace, POD_READ_MAX_SECONDS))
    _WAITING_SINCE[uid] = (now + gap, gap)
    return None


def _status_current(tj: dict[str, Any], job: dict[str, Any], attempt: int) -> bool:
    """Whether *tj*'s status already says: Pending on this very Job, this generation and
    attempt."""
    st = tj.get("status") or {}
    return (st.get("phase") == "Pending" and st.get("jobName") == job["metadata"]["name"]
            and st.get("observedGeneration") == tj["metadata"].get("generation")
            and st.get("attempt", 0) == attempt)


def _waiting_for_workers(spec: TrainingJobSpec, job: dict[str, Any]) -> bool:
    """Whether the Job's pods must be read to tell Running from Pending (and why): only
    when some of its pods exist but are not ready. Before the Job controller has made any,
    there is nothing to read (at a burst of a thousand jobs, that LIST per Job event was a
    third of the operator's requests)."""
    if _finished(job) or job["spec"].get("suspend"):
        return False
    js = job.get("status") or {}
    if (js.get("active") or 0) <= (js.get("ready") or 0):
        return False
    return running_workers(job, []) < spec.workers


async def _judge(spec: TrainingJobSpec, job: dict[str, Any], attempt: int) -> Verdict:
    """The verdict on the failed Job of *attempt*: the failed worker comes from the Job's
    FailJob message, or else from its pods."""
    failure = failure_from_job(job) or failure_from_pods(await _pods(job))
    return judge(spec, job, failure, restarts=attempt)


def _taken(kind: str, obj: dict[str, Any]) -> Blocked:
    name = obj["metadata"]["name"]
    ref = next((r for r in obj["metadata"].get("ownerReferences") or []
                if r.get("controller")), None)
    if ref is None:
        return Blocked(f"waiting for {kind} {name} of a previous TrainingJob with this name to "
                       f"be deleted: it has no owner, so nothing deletes it for you "
                       f"(kubectl delete {kind.lower()} {name})")
    if ref.get("kind") == KIND:
        return Blocked(f"waiting for {kind} {name} of a previous TrainingJob with this name to "
                       "be deleted")
    return Blocked(f"{kind} {name} is controlled by {ref.get('kind')} {ref.get('name')}; "
                   "waiting for it to be deleted")


async def _create(spec: TrainingJobSpec, tj: dict[str, Any],
                  desired: dict[str, Any]) -> dict[str, Any]:
    """Create the attempt's Job; an existing one of ours (an earlier pass) is used as is."""
    desired["spec"]["suspend"] = bool(_desired_suspend(spec, None))
    meta = desired["metadata"]
    try:
        job = await kube.create(desired)
        JOBS.put(job)
    except kube.KubeError as exc:
        if exc.status == 409:
            existing = await kube.get("batch/v1", "Job", meta["namespace"], meta["name"])
            if existing is None:
                raise  # deleted meanwhile: try again
            if owned_by(existing, tj):
                JOBS.put(existing)
                return existing
            raise _taken("Job", existing) from exc
        if exc.status == 403 and "being terminated" in str(exc):
            # The namespace is being deleted (its Jobs can go before the TrainingJob): the
            # TrainingJob goes too, and marking it Failed would only be noise.
            raise Terminating() from exc
        if transient(exc):
            raise
        raise BuildError(f"the Job was rejected: {exc}") from exc
    emit(tj, "Normal", "Created", f"created Job {meta['name']}")
    return job


async def _ensure_service(service: dict[str, Any], tj: dict[str, Any]) -> None:
    """Apply the headless Service, unless its name belongs to someone else. A Service of ours
    orphaned by a deleted predecessor (no owner, our labels) is adopted: it holds no state."""
    meta = service["metadata"]
    existing = SERVICES.get(meta["namespace"], meta["name"]) if SERVICES.synced else None
    if existing is None and SERVICES.synced:
        # Not in the listed store, so most likely absent: one POST creates it (a GET and
        # an apply were two round trips before every distributed Job's create). A 409 is a
        # same-named Service without our label, or one the watch has not shown yet: it is
        # read and judged below.
        try:
            # Stamped as an apply would be: the next pass then sees no drift to apply.
            SERVICES.put(await kube.create(stamped(service)))
            return
        except kube.KubeError as exc:
            if exc.status != 409:
                raise
    if existing is None or not owned_by(existing, tj):
        # Not ours, or not seen: the store only holds Services with our label, and a
        # same-named one without it must not be taken over.
        existing = await kube.get("v1", "Service", meta["namespace"], meta["name"])
    if existing is not None and not owned_by(existing, tj):
        labels = existing["metadata"].get("labels") or {}
        orphan_of_ours = controller_uid(existing) is None and \
            labels.get(LABEL) == tj["metadata"]["name"]
        if not orphan_of_ours:
            raise _taken("Service", existing)
        existing = None  # an orphan of ours: adopted by the apply
    applied = await apply_if_drifted(service, existing)
    if applied is not existing:
        SERVICES.put(applied)


async def _converge(spec: TrainingJobSpec, desired: dict[str, Any],
                    current: dict[str, Any]) -> dict[str, Any]:
    """Patch the mutable fields of an existing Job that drifted from the spec. backoffLimit is
    not one: it is 0 on every attempt's Job (the operator owns retries), and Jobs made before
    attempts existed keep the limit they were made with."""
    if _finished(current):
        return current
    patch: dict[str, Any] = {}
    suspend = _desired_suspend(spec, current)
    if suspend is not None and bool(current["spec"].get("suspend")) != suspend:
        patch["suspend"] = suspend
    if current["spec"].get("activeDeadlineSeconds") != desired["spec"].get(
            "activeDeadlineSeconds"):
        patch["activeDeadlineSeconds"] = desired["spec"].get("activeDeadlineSeconds")
    labels = current["metadata"].get("labels") or {}
    want_queue = desired["metadata"]["labels"].get(QUEUE_LABEL)
    body: dict[str, Any] = {}
    if patch:
        body["spec"] = patch
    if labels.get(QUEUE_LABEL) != want_queue:
        body["metadata"] = {"labels": {QUEUE_LABEL: want_queue}}
    if not body:
        return current
    meta = current["metadata"]
    try:
        result = await kube.patch("batch/v1", "Job", meta["namespace"], meta["name"], body)
    except kube.KubeError as exc:
        if transient(exc):
            raise
        emit(current, "Warning", "PatchRejected", str(exc))
        return current
    if result:
        JOBS.put(result)
    return result or current


# -- handlers -------------------------------------------------------------------

RETRY_SECONDS = 5.0  # after an API fault, before the object is reconciled again
# A Job's status changes in quick steps (active, ready, succeeded, complete); each change
# waits this long so that one reconcile (one status write) covers the steps that follow.
JOB_BATCH_SECONDS = 1.0


def _needs_reconcile(type_: str | None, tj: dict[str, Any]) -> bool:
    """Whether a watch event of *tj* asks for a reconcile. A spec change (a generation not
    yet observed) or a new object does; a status write (most often Slipway's own) does
    not; nor does a finished job with no TTL due. A relist (type None) after a broken watch
    only picks up unobserved specs: the resync loop covers the rest, and at start it
    reconciles everything once."""
    if _done_for_good(tj):
        return False
    status = tj.get("status") or {}
    if status.get("observedGeneration") != tj["metadata"].get("generation"):
        return True
    return type_ == "ADDED"


async def trainingjob_event(type_: str | None, tj: dict[str, Any]) -> None:
    """A TrainingJob was created, edited or deleted (its children go with it, by owner)."""
    meta = tj["metadata"]
    if type_ == "DELETED":
        settled.forget(KIND, tj)
        await _phase_changed(meta["namespace"], meta["name"])
        return
    if type_ == "ADDED":
        await _phase_changed(meta["namespace"], meta["name"])
    if not _needs_reconcile(type_, tj):
        return
    try:
        await reconcile(tj)
        metrics.RECONCILES.labels(KIND, "ok").inc()
    except kube.KubeError as exc:
        metrics.RECONCILES.labels(KIND, "error").inc()
        if not transient(exc):  # not for a retry to fix; the next edit runs it again
            _log.error(f"reconcile of {tj['metadata']['name']} failed: {exc}")
            return
        _log.warning(f"reconcile of {tj['metadata']['name']} failed, again in "
                     f"{RETRY_SECONDS:.0f}s: {exc}")
        raise Retry(RETRY_SECONDS) from exc


async def _resync(tj: dict[str, Any]) -> None:
    await reconcile(tj)


def _done_for_good(tj: dict[str, Any]) -> bool:
    """Finished with no TTL due: a finished job is never re-run, so nothing is left to do."""
    if not is_final(tj):
        return False
    # The raw field, not a parsed spec: this runs for every finished job on every tick.
    ttl = _raw_ttl(tj)
    if ttl is None:
        return True
    if not isinstance(ttl, int):  # the schema forbids it: let the reconcile report it
        return False
    return not ttl_due(ttl, tj, dt.datetime.now(dt.UTC))


def _raw_ttl(tj: dict[str, Any]) -> Any:
    """spec.runPolicy.ttlSecondsAfterFinished as stored (None when unset)."""
    return ((tj.get("spec") or {}).get("runPolicy") or {}).get("ttlSecondsAfterFinished")


def _nothing_to_do(tj: dict[str, Any]) -> bool:
    """Whether the resync tick may skip *tj* as listed: done for good, or settled and
    unchanged since (controllers.settled)."""
    return _done_for_good(tj) or settled.is_settled(KIND, tj)


resync.register(API_VERSION, KIND, _resync, skip=_nothing_to_do,
                source=TRAININGJOBS.pages)


async def service_event(type_: str | None, svc: dict[str, Any]) -> None:
    """A headless Service was changed or deleted (not by Slipway: its own writes are in the
    store already): its TrainingJob puts it back."""
    await _child_event("Service", type_, svc)


async def job_event(type_: str | None, body: dict[str, Any]) -> None:
    """Reflect every change of an owned Job into its TrainingJob's status at once."""
    if type_ == "DELETED":
        _WAITING_SINCE.pop(body["metadata"].get("uid"), None)
    await _child_event("Job", type_, body)


async def _child_event(kind: str, type: str | None, body: dict[str, Any]) -> None:
    """Reconcile the TrainingJob of a changed child.

    The child is mapped to its TrainingJob by the controller ownerReference's UID: a Job left
    by a deleted TrainingJob of the same name is not the new one's. When such a child (or an
    orphan) goes away, the same-named TrainingJob is reconciled too: it may be waiting for
    the name."""
    meta = body["metadata"]
    ref = next((r for r in meta.get("ownerReferences") or [] if r.get("controller")), None)
    if ref is not None and ref.get("kind") == KIND:
        name, uid = ref["name"], ref.get("uid")
    elif type == "DELETED":
        name, uid = (meta.get("labels") or {}).get(LABEL), None
    else:
        return
    if not name:
        return
    try:  # an API outage is logged; the resync loop catches up afterwards
        # The fresh read (and the final/UID checks) happen once, under the lock.
        recheck = await reconcile({"metadata": {"namespace": meta["namespace"], "name": name}},
                                  uid=None if type == "DELETED" else uid)
    except kube.KubeError as exc:
        _log.warning(f"could not reconcile {name} after a {kind} event: {exc}")
        return
    if recheck is not None:  # e.g. its pods are worth reading then: the same event again
        raise Retry(recheck)


@kopf.on.startup()
async def watch_trainingjobs(memo: kopf.Memo, **_: Any) -> None:
    """TrainingJobs and their Jobs are watched by slipway.watch, not through Kopf.

    Jobs: with a server-side label selector; Kopf would stream every Job of the cluster to
    the operator. TrainingJobs: Kopf's create/update handlers cost a PATCH of its own
    bookkeeping per object (status.kopf) and a diff of every status write; reconciles are
    level-based and keyed on the observed generation, so none of that is needed."""
    namespace = active().namespace
    tjs = SelectorWatch(API_VERSION, KIND, "", trainingjob_event, namespace, workers=32,
                        store=TRAININGJOBS)
    jobs = SelectorWatch("batch/v1", "Job", LABEL, job_event, namespace, store=JOBS,
                         initial=False,  # the resync loop's first pass covers start-up
                         workers=32, batch=JOB_BATCH_SECONDS, queue_trimmed=True)
    services = SelectorWatch("v1", "Service", LABEL, service_event, namespace,
                             store=SERVICES, initial=False, workers=4,
                             queue_trimmed=True)
    memo["trainingjob_watches"] = [asyncio.create_task(w.run()) for w in (tjs, jobs, services)]


@kopf.on.cleanup()
async def stop_watching_trainingjobs(memo: kopf.Memo, **_: Any) -> None:
    for task in memo.get("trainingjob_watches") or []:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    JOBS.clear()
    TRAININGJOBS.clear()
    SERVICES.clear()
