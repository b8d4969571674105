"""TrainingJob handlers: parse, build, apply, observe, write status.

Level-based: create/update/resume, the operator-wide resync and every event of an owned
Job all run the same idempotent `reconcile()`. Finished jobs are never re-run.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import defaultdict
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
    job_output,
    resolve_output,
)
from slipway.controllers import resync
from slipway.events import emit
from slipway.status.trainingjob import (
    Observation,
    build_failed,
    is_final,
    job_condition,
    observe,
    ttl_expired,
)

KIND = "TrainingJob"
LABEL = "slipway.dev/trainingjob"
_locks: defaultdict[tuple[str, str], asyncio.Lock] = defaultdict(asyncio.Lock)


def _transient(exc: kube.KubeError) -> bool:
    return exc.status in (0, 409, 429) or exc.status >= 500


async def _write(tj: dict[str, Any], obs: Observation) -> None:
    meta = tj["metadata"]
    old = tj.get("status") or {}
    changed = {k: v for k, v in obs.status.items() if old.get(k) != v}
    if changed:
        await kube.patch(API_VERSION, KIND, meta["namespace"], meta["name"], {"status": changed},
                         subresource="status")
    for ev in obs.events:
        emit(tj, ev.type, ev.reason, ev.message)


def _desired_suspend(spec: TrainingJobSpec, current: dict[str, Any] | None) -> bool | None:
    """The value Slipway wants for Job.spec.suspend, or None to leave it to Kueue."""
    if spec.policy.suspend:
        return True
    if spec.queue:
        # Created suspended; afterwards Kueue admits (unsuspends) and may preempt.
        return True if current is None else None
    return False


async def _jobs(namespace: str, name: str) -> list[dict[str, Any]]:
    return await kube.list_objects("batch/v1", "Job", namespace, f"{LABEL}={name}")


async def reconcile(tj: dict[str, Any]) -> None:
    meta = tj["metadata"]
    key = (meta["namespace"], meta["name"])
    async with _locks[key]:
        with metrics.RECONCILE_SECONDS.labels(KIND).time():
            await _reconcile(tj)


async def _reconcile(tj: dict[str, Any]) -> None:
    meta = tj["metadata"]
    now = now_rfc3339()
    try:
        spec = TrainingJobSpec.model_validate(tj.get("spec") or {})
    except ValidationError as exc:
        await _write(tj, build_failed(tj, f"invalid spec: {exc.errors()[0]['msg']}", now))
        return

    if is_final(tj):
        if ttl_expired(spec, tj, dt.datetime.now(dt.UTC)):
            emit(tj, "Normal", "TTLExpired", "deleting the finished TrainingJob")
            await kube.delete(API_VERSION, KIND, meta["namespace"], meta["name"])
        return

    jobs = await _jobs(meta["namespace"], meta["name"])
    try:
        desired = build_job(spec, tj, suspend=False)
        service = build_service(spec, tj)
    except BuildError as exc:
        await _write(tj, build_failed(tj, str(exc), now))
        return

    current = next((j for j in jobs if j["metadata"]["name"] == desired["metadata"]["name"]), None)
    note = None
    for old in jobs:
        if old is current:
            continue
        if current is None and not old.get("spec", {}).get("suspend") and not _finished(old):
            # The pod template changed while running: keep the running Job.
            current, note = old, "spec changes apply after suspend and resume"
            continue
        await kube.delete("batch/v1", "Job", meta["namespace"], old["metadata"]["name"])

    if service:
        await kube.apply(service)
    if current is None:
        desired["spec"]["suspend"] = bool(_desired_suspend(spec, None))
        try:
            current = await kube.create(desired)
        except kube.KubeError as exc:
            if _transient(exc):
                raise
            await _write(tj, build_failed(tj, f"the Job was rejected: {exc}", now))
            return
        emit(tj, "Normal", "Created", f"created Job {desired['metadata']['name']}")
    else:
        # Also while a template change waits for suspend/resume: the Job kept running still
        # takes the mutable fields, suspend above all (else the change could never apply).
        current = await _converge(spec, desired, current)

    output = job_output(current) or resolve_output(spec, tj)
    await _write(tj, observe(spec, tj, current, output, now, note))


def _finished(job: dict[str, Any]) -> bool:
    return job_condition(job, "Complete", "Failed") is not None


async def _converge(spec: TrainingJobSpec, desired: dict[str, Any],
                    current: dict[str, Any]) -> dict[str, Any]:
    """Patch the mutable fields of an existing Job that drifted from the spec."""
    if _finished(current):
        return current
    patch: dict[str, Any] = {}
    suspend = _desired_suspend(spec, current)
    if suspend is not None and bool(current["spec"].get("suspend")) != suspend:
        patch["suspend"] = suspend
    for field in ("activeDeadlineSeconds", "backoffLimit"):
        if current["spec"].get(field) != desired["spec"].get(field):
            patch[field] = desired["spec"].get(field)
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
        if _transient(exc):
            raise
        emit(current, "Warning", "PatchRejected", str(exc))
        return current
    return result or current


# -- handlers -------------------------------------------------------------------

async def _handle(body: kopf.Body) -> None:
    tj = {"apiVersion": API_VERSION, "kind": KIND, **dict(body)}
    try:
        await reconcile(tj)
        metrics.RECONCILES.labels(KIND, "ok").inc()
    except kube.KubeError as exc:
        metrics.RECONCILES.labels(KIND, "error").inc()
        if _transient(exc):
            raise kopf.TemporaryError(str(exc), delay=5) from exc
        raise kopf.PermanentError(str(exc)) from exc


@kopf.on.create("slipway.dev", "v1alpha1", "trainingjobs", retries=10, backoff=5, timeout=300)
@kopf.on.update("slipway.dev", "v1alpha1", "trainingjobs", retries=10, backoff=5, timeout=300)
@kopf.on.resume("slipway.dev", "v1alpha1", "trainingjobs", retries=10, backoff=5, timeout=300)
async def trainingjob_changed(body: kopf.Body, **_: Any) -> None:
    await _handle(body)


async def _resync(tj: dict[str, Any]) -> None:
    await reconcile(tj)


resync.register(API_VERSION, KIND, _resync)


@kopf.on.event("batch", "v1", "jobs", labels={LABEL: kopf.PRESENT})
async def job_event(body: kopf.Body, type: str | None, logger: kopf.Logger, **_: Any) -> None:
    """Reflect every change of an owned Job into its TrainingJob's status at once."""
    meta = body["metadata"]
    owner = next((o for o in meta.get("ownerReferences", []) if o.get("kind") == KIND), None)
    if owner is None:
        return
    tj = await kube.get(API_VERSION, KIND, meta["namespace"], owner["name"])
    if tj is None or tj["metadata"].get("deletionTimestamp"):
        return
    if is_final(tj):
        return
    try:
        await reconcile(tj)
    except kube.KubeError as exc:
        logger.warning(f"could not reconcile {owner['name']} after a Job event: {exc}")
