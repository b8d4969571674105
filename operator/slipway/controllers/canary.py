"""Canary controller: one asyncio loop per Canary, woken by events, requeued at its own pace.

Each turn: read the Canary, its ModelDeployment and their InferenceServices; turn what was
observed into machine Events; run the pure state machine (canary.machine), measuring in
Prometheus when it asks for an analysis; persist the status (the truth, with an optimistic
lock); post the Events; then converge the children from the status, level-based
(canary.children): the canary InferenceService, the split HTTPRoute and the ModelDeployment's
own InferenceService, pinned to the stable version. A restart mid-rollout re-reads the status
and rebuilds the same weights.

The loop is requeued at the Canary's own pace (its step interval, 1 s while waiting for
readiness or a promotion), not by the operator-wide resync tick, which only makes sure a loop
runs for every Canary.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Any

import kopf
from pydantic import ValidationError

from slipway import events, kube, metrics
from slipway.api.canary import (
    ACTION_ANNOTATION,
    CanarySpec,
    CanaryStatus,
    RolloutRecord,
)
from slipway.api.common import API_VERSION, GROUP, VERSION
from slipway.api.modeldeployment import ModelDeploymentSpec, ResolvedModel
from slipway.builders import inferenceservice as isvc_builder
from slipway.canary import children, machine
from slipway.canary.analysis import evaluate
from slipway.canary.prometheus import PrometheusClient, measure
from slipway.config import active
from slipway.controllers import common, modeldeployment, resync

KIND = "Canary"
PLURAL = "canaries"
MD_KIND = "ModelDeployment"
HISTORY_LIMIT = 10
ENDED = ("Succeeded", "RolledBack", "Aborted", "Failed")
# Seconds until the next turn, by what the Canary waits for.
POLL, WAITING, QUIET, ERROR_DELAY, CONFLICT_DELAY = 1.0, 5.0, 60.0, 5.0, 0.2
MIN_TURN_GAP = 0.1  # a burst of watch events makes one turn, not a hot loop

_log = logging.getLogger("slipway.canary")


@dataclass
class _Loop:
    task: asyncio.Task[None]
    wake: asyncio.Event = field(default_factory=asyncio.Event)


_loops: dict[tuple[str, str], _Loop] = {}


def wake(namespace: str, name: str) -> None:
    """Run a turn for this Canary soon, starting its loop when none runs."""
    key = (namespace, name)
    loop = _loops.get(key)
    if loop is None or loop.task.done():
        wake_event = asyncio.Event()
        task = asyncio.get_running_loop().create_task(_run(namespace, name, wake_event))
        loop = _loops[key] = _Loop(task, wake_event)
    loop.wake.set()


async def _run(namespace: str, name: str, wake_event: asyncio.Event) -> None:
    while True:
        wake_event.clear()
        try:
            delay = await reconcile(namespace, name)
        except kube.KubeError as exc:
            _log.warning(f"Canary {namespace}/{name}: API error, retrying in "
                         f"{ERROR_DELAY:.0f}s: {exc}")
            delay = ERROR_DELAY
        except Exception:  # a bug must not kill the loop for good, nor spin it
            _log.exception(f"Canary {namespace}/{name}: turn failed; retrying in "
                           f"{ERROR_DELAY:.0f}s")
            delay = ERROR_DELAY
        if delay is None:
            _loops.pop((namespace, name), None)
            metrics.forget_canary(namespace, name)
            return
        await asyncio.sleep(MIN_TURN_GAP)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake_event.wait(), max(0.0, delay - MIN_TURN_GAP))


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class _Turn:
    """One reconcile: what was observed, and the status and actions the machine returned."""

    body: dict[str, Any]
    spec: CanarySpec
    status: CanaryStatus
    now: dt.datetime
    actions: list[machine.Action] = field(default_factory=list)

    def feed(self, event: machine.Event) -> None:
        self.status, actions = machine.step(self.spec, self.status, event, self.now)
        self.actions += actions


def _parse_model(raw: Any) -> ResolvedModel | None:
    try:
        return ResolvedModel.model_validate(raw) if raw else None
    except ValidationError:
        return None


async def _take_action(body: dict[str, Any]) -> str | None:
    """Remove the action annotation before handling it: a crash in between loses the action
    (ask again) rather than doing it twice. The optimistic lock keeps a newer one."""
    meta = body["metadata"]
    action = (meta.get("annotations") or {}).get(ACTION_ANNOTATION)
    if not action:
        return None
    patched = await kube.patch(API_VERSION, KIND, meta["namespace"], meta["name"], {
        "metadata": {"resourceVersion": meta["resourceVersion"],
                     "annotations": {ACTION_ANNOTATION: None}}})
    if patched:
        meta["resourceVersion"] = patched["metadata"]["resourceVersion"]
    return str(action).strip()


async def _analyze(turn: _Turn, namespace: str, model: str, step: int) -> None:
    s = turn.status
    url = active().prometheus_url
    if not url:
        turn.feed(machine.Analyzed(
            "Error", (), "no Prometheus to query: set SLIPWAY_PROMETHEUS_URL (chart value "
                         "canary.prometheusUrl)", step))
    else:
        async with PrometheusClient(url) as client:
            measured = await measure(client, turn.spec, namespace, model,
                                     s.stable_version or "", s.canary_version or "",
                                     turn.spec.interval)
        result = evaluate(turn.spec.analysis, measured)
        turn.feed(machine.Analyzed(result.verdict, result.results, result.message, step))
        for r in result.results:
            metrics.CANARY_CHECKS.labels(namespace, turn.body["metadata"]["name"], r.name,
                                         r.outcome).inc()
            if r.value is not None:
                metrics.CANARY_METRIC.labels(namespace, turn.body["metadata"]["name"],
                                             r.name).set(r.value)
    turn.status.last_analysis_time = machine.rfc3339(turn.now)


def _bookkeeping(before: CanaryStatus, turn: _Turn, desired: ResolvedModel | None) -> None:
    """The parts of the status the machine does not know: models, lineage and history."""
    s = turn.status
    if s.stable_version and s.stable_model is None and desired is not None \
            and desired.version == s.stable_version:
        s.stable_model = desired  # adopted
    if s.canary_version and desired is not None and desired.version == s.canary_version \
            and (s.canary_model is None or s.canary_model.version != s.canary_version):
        s.canary_model = desired
    promoted = before.canary_model
    if s.phase == "Succeeded" and before.phase == "Promoting" and promoted is not None:
        s.stable_model, s.canary_model = promoted, None
    if s.canary_version is None and s.phase != "Promoting":
        s.canary_model = None
    ended = s.phase in ENDED and s.phase != before.phase
    cancelled = s.phase == "Idle" and before.phase in machine.ACTIVE
    if (ended or cancelled) and before.canary_version:
        started = before.rollout_started_at
        seconds = ((turn.now - dt.datetime.fromisoformat(started)).total_seconds()
                   if started else None)
        outcome = "Cancelled" if cancelled else str(s.phase)
        source = before.canary_model.source if before.canary_model else None
        record = RolloutRecord(version=before.canary_version, outcome=outcome,
                               reason=s.message, started_at=started,
                               finished_at=machine.rfc3339(turn.now),
                               duration_seconds=round(seconds, 1) if seconds else seconds,
                               source=source)
        s.history = [record, *(s.history or [])][:HISTORY_LIMIT]
        metrics.CANARY_ROLLOUTS.labels(outcome).inc()
        if seconds is not None:
            metrics.CANARY_ROLLOUT_SECONDS.labels(outcome).observe(seconds)


async def _write_status(body: dict[str, Any], old: dict[str, Any],
                        status: CanaryStatus) -> bool:
    """Patch the status when it changed; False when someone else wrote first (retry)."""
    new = status.wire()
    if new == old:
        return True
    keys = set(old) | set(new)
    meta = body["metadata"]
    try:
        await kube.patch(API_VERSION, KIND, meta["namespace"], meta["name"], {
            "metadata": {"resourceVersion": meta["resourceVersion"]},
            "status": {k: new.get(k) for k in keys}}, subresource="status")
    except kube.KubeError as exc:
        if exc.status in (404, 409):
            return False
        raise
    return True


async def _delete(api_version: str, kind: str, namespace: str, name: str,
                  present: dict[str, Any] | None) -> None:
    if present is None:
        return
    with contextlib.suppress(kube.KubeError):  # already gone: fine; else the next turn
        await kube.delete(api_version, kind, namespace, name)


async def _converge(body: dict[str, Any], status: CanaryStatus, mode: children.Mode,
                    md: dict[str, Any], md_spec: ModelDeploymentSpec,
                    canary_isvc: dict[str, Any] | None, route: dict[str, Any] | None,
                    foreign: set[str]) -> None:
    """Make the children match the status (in an order that never sends traffic to a backend
    that is not there: the route goes before the canary, and comes after it). Children of
    the same name that another owner controls (*foreign* kinds) are left alone; the canary
    waits for them to go."""
    namespace, md_name = md["metadata"]["namespace"], md["metadata"]["name"]
    host = children.model_host(md.get("status") or {})
    if foreign:
        _log.info(f"Canary {namespace}/{body['metadata']['name']}: waiting for "
                  f"{', '.join(sorted(foreign))} of a previous owner to be deleted")
        return
    # Applied only when they drifted: a turn runs every second while the canary gets ready.
    if children.wants_canary_isvc(status, mode):
        assert status.canary_model is not None
        await common.apply_if_drifted(children.build_canary_isvc(
            md_spec, md, body, status.canary_model, active().kserve_default_deployment_mode),
            canary_isvc)
    if children.wants_route(status, mode) and host:
        await common.apply_if_drifted(
            children.build_route(body, md_name, host, status.canary_weight or 0), route)
    else:
        await _delete(children.ROUTE_API_VERSION, children.ROUTE_KIND, namespace,
                      children.route_name(md_name), route)
    if not children.wants_canary_isvc(status, mode):
        await _delete(isvc_builder.API_VERSION, isvc_builder.KIND, namespace,
                      children.canary_isvc_name(md_name), canary_isvc)


def _next_delay(spec: CanarySpec, status: CanaryStatus, now: dt.datetime) -> float:
    if status.phase in ("Initializing", "Promoting"):
        return POLL
    if status.phase == "Progressing":
        if not status.step_started_at:
            return POLL
        due = (dt.datetime.fromisoformat(status.step_started_at)
               + machine.duration(spec.interval))
        return max(0.2, (due - now).total_seconds())
    if status.phase is None:
        return WAITING
    return QUIET


async def _fail(body: dict[str, Any], old: dict[str, Any], reason: str, message: str,
                waiting: bool = False) -> float:
    """A Canary that cannot act: say why in its status (and an Event, once)."""
    status = CanaryStatus.model_validate(old)
    if status.message == message:
        return QUIET
    status.message = message
    if not waiting:
        status.phase = "Failed"
    if await _write_status(body, old, status):
        events.emit(body, "Normal" if waiting else "Warning", reason, message)
    return WAITING if waiting else QUIET


async def reconcile(namespace: str, name: str) -> float | None:
    """One turn; the seconds until the next one, or None when the Canary is gone."""
    body = await kube.get(API_VERSION, KIND, namespace, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return None
    old: dict[str, Any] = dict(body.get("status") or {})
    try:
        spec = CanarySpec.model_validate(body.get("spec") or {})
    except ValidationError as exc:  # the CRD schema should have caught it
        return await _fail(body, old, "InvalidSpec",
                           f"invalid spec: {exc.errors()[0].get('msg')}")
    try:
        status = CanaryStatus.model_validate(old)
    except ValidationError:
        status = CanaryStatus()
    md_name = spec.target_ref.name
    md = await kube.get(API_VERSION, MD_KIND, namespace, md_name)
    if md is None:
        return await _fail(body, old, "TargetNotFound",
                           f"waiting for ModelDeployment {md_name} to exist", waiting=True)
    governing = modeldeployment.governing_canary(
        await kube.list_objects(API_VERSION, KIND, namespace), md_name)
    if governing is not None and governing["metadata"]["name"] != name:
        return await _fail(body, old, "TargetTaken",
                           f"ModelDeployment {md_name} is already governed by Canary "
                           f"{governing['metadata']['name']}; one Canary per ModelDeployment")
    try:
        md_spec = ModelDeploymentSpec.model_validate(md.get("spec") or {})
    except ValidationError:
        return await _fail(body, old, "TargetInvalid",
                           f"ModelDeployment {md_name} has an invalid spec", waiting=True)
    mode = children.mode_of(md_spec, active().kserve_default_deployment_mode)
    md_status = md.get("status") or {}
    desired = _parse_model(md_status.get("model"))

    action = await _take_action(body)
    now = _now()
    turn = _Turn(body, spec, status.model_copy(deep=True), now)  # status stays "before"
    if action:
        turn.feed(machine.Manual(action))

    s = turn.status
    if s.stable_version is None:
        if desired is None or md_status.get("servingVersion") != desired.version:
            if not s.message:
                s.message = f"waiting for ModelDeployment {md_name} to serve a model"
        else:
            turn.feed(machine.NewVersion(desired.version))
    elif desired is not None and (
            desired.version not in (s.stable_version, s.canary_version)
            or (desired.version == s.stable_version and s.phase in machine.ACTIVE)):
        turn.feed(machine.NewVersion(desired.version))

    md_isvc = await kube.get(isvc_builder.API_VERSION, isvc_builder.KIND, namespace, md_name)
    canary_isvc = await kube.get(isvc_builder.API_VERSION, isvc_builder.KIND, namespace,
                                 children.canary_isvc_name(md_name))
    foreign: set[str] = set()
    if canary_isvc is not None and not common.owned_by(canary_isvc, body):
        # Not ours (a deleted predecessor's, awaiting GC): never judge, adopt or delete it.
        foreign.add(isvc_builder.KIND)
        canary_isvc = None
    s = turn.status
    if s.phase == "Initializing" and s.canary_version:
        turn.feed(machine.CanaryReady(children.canary_ready(mode, s.canary_version,
                                                            canary_isvc, md_isvc)))
    elif s.phase == "Promoting" and s.canary_version:
        pods = await kube.list_objects("v1", "Pod", namespace,
                                       f"{modeldeployment.ISVC_POD_LABEL}={md_name}")
        if children.stable_serves(s.canary_version, md_isvc, pods, mode):
            turn.feed(machine.Promoted(s.canary_version))
        else:
            turn.feed(machine.Tick())
    else:
        turn.feed(machine.Tick())
    runs = [a for a in turn.actions if isinstance(a, machine.RunAnalysis)]
    if runs:
        await _analyze(turn, namespace, md_name, runs[-1].step)
    _bookkeeping(status, turn, desired)
    turn.status.observed_generation = body["metadata"].get("generation")

    if not await _write_status(body, old, turn.status):
        return CONFLICT_DELAY  # the Canary changed meanwhile: redo the turn on fresh data
    for act in turn.actions:
        if isinstance(act, machine.EmitEvent):
            _log.info(f"Canary {namespace}/{name}: {act.reason}: {act.message}")
            events.emit(body, act.type, act.reason, act.message)
    metrics.set_canary(namespace, name, turn.status.phase, turn.status.canary_weight)

    route = await kube.get(children.ROUTE_API_VERSION, children.ROUTE_KIND, namespace,
                           children.route_name(md_name))
    if route is not None and not common.owned_by(route, body):
        foreign.add(children.ROUTE_KIND)
        route = None
    before = children.pinned(status, mode)  # machine.step worked on a copy
    after = children.pinned(turn.status, mode)
    await _converge(body, turn.status, mode, md, md_spec, canary_isvc, route, foreign)
    if before != after or turn.status.phase == "Promoting":
        await modeldeployment.reconcile(namespace, md_name, _log)
    return _next_delay(spec, turn.status, _now())


async def _resync(body: dict[str, Any]) -> None:
    """The safety net: a loop runs for every Canary (after a restart, or one that died)."""
    meta = body["metadata"]
    wake(meta["namespace"], meta["name"])


resync.register(API_VERSION, KIND, _resync)


@kopf.index(GROUP, VERSION, PLURAL)
async def canaries_by_target(namespace: str | None, name: str, spec: kopf.Spec,
                             **_: Any) -> dict[tuple[str | None, str], str] | None:
    """(namespace, ModelDeployment name) -> the Canaries that target it."""
    target = (spec.get("targetRef") or {}).get("name")
    return {(namespace, target): name} if target else None


@kopf.on.event(GROUP, VERSION, PLURAL)
async def canary_changed(namespace: str | None, name: str, spec: kopf.Spec, **kwargs: Any
                         ) -> None:
    if namespace is None:
        return
    wake(namespace, name)
    event = kwargs.get("event") or {}
    target = (spec.get("targetRef") or {}).get("name")
    if event.get("type") == "DELETED" and target:
        # The ModelDeployment deploys its own resolved model again.
        with contextlib.suppress(kube.KubeError):
            await modeldeployment.reconcile(namespace, target, _log)


def _wake_targeting(index: kopf.Index[tuple[str | None, str], str], namespace: str,
                    md_name: str) -> None:
    for canary in list(index.get((namespace, md_name), [])):
        wake(namespace, canary)


@kopf.on.event(GROUP, VERSION, "modeldeployments")
async def target_changed(namespace: str | None, name: str, **kwargs: Any) -> None:
    """A new resolved model (a spec edit, a retrain) or a new status of the target."""
    if namespace is not None:
        _wake_targeting(kwargs["canaries_by_target"], namespace, name)


@kopf.on.event("serving.kserve.io", "v1beta1", "inferenceservices",
               labels={"app.kubernetes.io/managed-by": "slipway"})
async def isvc_changed(namespace: str | None, body: kopf.Body, **kwargs: Any) -> None:
    """KServe's status of the canary or the stable InferenceService moved."""
    if namespace is None:
        return
    for owner in body["metadata"].get("ownerReferences", []):
        if owner.get("kind") == KIND:
            wake(namespace, owner["name"])
        elif owner.get("kind") == MD_KIND:
            _wake_targeting(kwargs["canaries_by_target"], namespace, owner["name"])


@kopf.on.cleanup()
async def stop_loops(**_: Any) -> None:
    loops = list(_loops.values())
    _loops.clear()
    for loop in loops:
        loop.task.cancel()
    for loop in loops:
        with contextlib.suppress(asyncio.CancelledError):
            await loop.task
