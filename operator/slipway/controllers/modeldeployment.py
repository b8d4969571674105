"""ModelDeployment handlers: keep one KServe InferenceService per ModelDeployment.

One level-based `reconcile()` sits behind create/update, the operator-wide
resync loop (controllers.resync), InferenceService events and TrainingJob events:
parse the spec, resolve the model, build the InferenceService (pure),
server-side apply it, and mirror its status back. User mistakes become a condition, a
Warning Event and (in change handlers) kopf.PermanentError; API faults become
kopf.TemporaryError in change handlers and a log line in the resync (it comes back anyway).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import kopf
from pydantic import ValidationError

from slipway import events, kube, metrics
from slipway.api.canary import CanaryStatus
from slipway.api.common import API_VERSION, GROUP, VERSION, get_condition, set_condition
from slipway.api.modeldeployment import DEFAULT_RUNTIMES, ModelDeploymentSpec, ResolvedModel
from slipway.builders import inferenceservice as isvc_builder
from slipway.builders.inferenceservice import (
    MODEL_RESOLVED,
    SPEC_SUPPORTED,
    ResolutionError,
    build_inference_service,
    effective_mode,
    resolve_model,
    unsupported,
)
from slipway.canary import children
from slipway.config import active
from slipway.controllers import common, resync, settled, trainingjob
from slipway.status.modeldeployment import mirror_status, transition_events
from slipway.status.predictor import predictor_problem

KIND = "ModelDeployment"
PLURAL = "modeldeployments"
TJ_KIND = "TrainingJob"
TEMPORARY_DELAY = 10.0
# The status fields this controller owns (the rest of status belongs to Kopf).
OWNED = ("phase", "message", "conditions", "observedGeneration", "url", "servingVersion",
         "model", "inferenceService")

# Phases in which nothing changes without an event of a child (controllers.settled).
SETTLED_PHASES = ("Ready", "Stopped")
# KServe labels every pod of an InferenceService with its name.
ISVC_POD_LABEL = "serving.kserve.io/inferenceservice"

_log = logging.getLogger("slipway.modeldeployment")


@dataclass(frozen=True)
class Outcome:
    """What one reconcile found; `user_error` is set when the spec needs fixing."""

    phase: str
    message: str
    user_error: bool = False


async def _resolve(spec: ModelDeploymentSpec, namespace: str,
                   previous: dict[str, Any] | None
                   ) -> tuple[ResolvedModel | None, ResolutionError | None]:
    """The model to deploy, and why it is not (fully) resolved. When a TrainingJob stops
    being usable after a model was deployed from it (it re-runs, fails, is deleted), the
    model already deployed keeps being served."""
    tj = None
    if spec.from_training_job:
        tj = await kube.get(API_VERSION, TJ_KIND, namespace, spec.from_training_job)
    try:
        return resolve_model(spec, tj), None
    except ResolutionError as err:
        if previous and previous.get("source") == f"TrainingJob/{spec.from_training_job}":
            kept = ResolvedModel.model_validate(previous)
            fmt = spec.format or kept.format
            kept = kept.model_copy(update={
                "format": fmt, "runtime": spec.runtime or DEFAULT_RUNTIMES[fmt]})
            return kept, err
        return None, err


def governing_canary(canaries: list[dict[str, Any]], md_name: str) -> dict[str, Any] | None:
    """The Canary in charge of *md_name*: the oldest live one that targets it."""
    mine = [c for c in canaries if not c["metadata"].get("deletionTimestamp")
            and ((c.get("spec") or {}).get("targetRef") or {}).get("name") == md_name]
    mine.sort(key=lambda c: (c["metadata"].get("creationTimestamp") or "",
                             c["metadata"]["name"]))
    return mine[0] if mine else None


async def canary_pin(namespace: str, name: str, mode: children.Mode) -> children.Pin | None:
    canary = governing_canary(
        await kube.list_objects(API_VERSION, "Canary", namespace), name)
    if canary is None:
        return None
    try:
        status = CanaryStatus.model_validate(canary.get("status") or {})
    except ValidationError:
        return None
    return children.pinned(status, mode)


async def reconcile(namespace: str, name: str, logger: kopf.Logger) -> Outcome | None:
    """Converge one ModelDeployment; None when it is gone. Raises kube.KubeError on API
    faults (the caller decides between TemporaryError and retry-on-next-tick)."""
    async with common.object_lock(KIND, namespace, name):
        body = await common.fresh(API_VERSION, KIND, namespace, name)
        if body is None:
            return None
        settled.forget(KIND, body)  # marked again below only if it ends settled
        generation = body["metadata"].get("generation")
        old = body.get("status") or {}
        conditions: list[dict[str, Any]] = list(old.get("conditions") or [])
        user_error = False

        try:
            spec = ModelDeploymentSpec.model_validate(body.get("spec") or {})
        except ValidationError as exc:  # the CRD schema should have caught it
            msg = f"invalid spec: {exc.errors()[0].get('msg')}"
            conditions = set_condition(conditions, MODEL_RESOLVED, False, "InvalidSpec", msg,
                                       generation)
            new = {"phase": "Failed", "message": msg, "conditions": conditions,
                   "observedGeneration": generation}
            await _write_status(body, old, new, logger)
            return Outcome("Failed", msg, user_error=True)

        default_mode = active().kserve_default_deployment_mode
        # A field that cannot apply in the mode used (Knative-only metrics in Standard mode):
        # the InferenceService is built without it, and the spec needs fixing.
        spec_problem = unsupported(spec, default_mode)
        if spec_problem is not None:
            user_error = True
            conditions = set_condition(conditions, SPEC_SUPPORTED, False, *spec_problem,
                                       generation)
        elif get_condition(conditions, SPEC_SUPPORTED) is not None:
            conditions = set_condition(
                conditions, SPEC_SUPPORTED, True, "Supported",
                f"every field of the spec applies in {effective_mode(spec, default_mode)} mode",
                generation)

        model, err = await _resolve(spec, namespace, old.get("model"))
        if err is None and model is not None:
            conditions = set_condition(
                conditions, MODEL_RESOLVED, True, "Resolved",
                f"{model.format} model {model.version} at {model.uri} (from {model.source})",
                generation)
        elif err is not None:
            user_error = user_error or err.user_error
            msg = err.message + (f"; still serving version {model.version}" if model else "")
            conditions = set_condition(conditions, MODEL_RESOLVED, False, err.reason, msg,
                                       generation)

        isvc: dict[str, Any] | None = None
        apply_error: str | None = None
        pin = await canary_pin(namespace, name, children.mode_of(spec, default_mode))
        conflict: str | None = None
        existing = await kube.get(isvc_builder.API_VERSION, isvc_builder.KIND, namespace, name)
        if existing is not None and not common.owned_by(existing, body):
            # A deleted predecessor's InferenceService (awaiting garbage collection) or one
            # somebody else made: never adopt or overwrite it. Its deletion wakes us.
            conflict = (f"InferenceService {name} exists and is not controlled by this "
                        "ModelDeployment (a previous one of the same name, still being "
                        "deleted, or created by someone else); waiting for it to go")
            existing = None
        elif model is not None or pin is not None:
            # Under a Canary, the InferenceService serves what the Canary says (the stable
            # version, or the one being promoted); the resolved model starts a rollout.
            served = pin.model if pin else model
            assert served is not None
            manifest = build_inference_service(
                spec, body, served, default_mode,
                canary_traffic_percent=pin.canary_traffic_percent if pin else None)
            try:
                isvc = await common.apply_if_drifted(manifest, existing)
            except kube.KubeError as exc:
                if common.transient(exc):
                    raise
                apply_error = f"the InferenceService was rejected: {exc}"
                user_error = True
        if isvc is None:  # unresolved or rejected: report on whatever of ours is there now
            isvc = existing

        problem = None
        if isvc is not None and not spec.stopped:
            pods = await kube.list_objects("v1", "Pod", namespace, f"{ISVC_POD_LABEL}={name}")
            problem = predictor_problem(pods)
        seen = mirror_status(isvc, conditions, spec.stopped, generation, apply_error=apply_error,
                             pod_problem=problem, conflict=conflict,
                             unsupported=spec_problem[1] if spec_problem else None)
        new = {
            "phase": seen.phase, "message": seen.message, "conditions": seen.conditions,
            "observedGeneration": generation, "url": seen.url,
            "servingVersion": seen.serving_version,
            "model": model.wire() if model else old.get("model"),
            "inferenceService": name if isvc else None,
        }
        written = await _write_status(body, old, new, logger)
        if seen.phase in SETTLED_PHASES and not user_error:
            settled.mark(KIND, written or body)
        return Outcome(seen.phase, seen.message, user_error=user_error)


async def _write_status(body: dict[str, Any], old: dict[str, Any], new: dict[str, Any],
                        logger: kopf.Logger) -> dict[str, Any] | None:
    """Patch the status fields this controller owns when they changed, and emit Events.
    Returns the patched object (None when nothing changed)."""
    written = await common.write_status(body, new, OWNED)
    if not written:
        return None
    for type_, reason, message in transition_events(old, new):
        logger.info(f"{type_} {reason}: {message}")
        events.emit(body, type_, reason, message)
    return written


HANDLER_OPTIONS: dict[str, Any] = {"retries": 20, "backoff": 5.0, "timeout": 600.0}


@kopf.on.create(GROUP, VERSION, PLURAL, **HANDLER_OPTIONS)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec", **HANDLER_OPTIONS)
async def reconcile_modeldeployment(namespace: str | None, name: str, logger: kopf.Logger,
                                    **_: Any) -> None:
    assert namespace is not None
    try:
        with metrics.RECONCILE_SECONDS.labels(KIND).time():
            outcome = await reconcile(namespace, name, logger)
    except kube.KubeError as exc:
        metrics.RECONCILES.labels(KIND, "error").inc()
        raise kopf.TemporaryError(f"API error, will retry: {exc}", delay=TEMPORARY_DELAY) from exc
    metrics.RECONCILES.labels(KIND, "ok").inc()
    if outcome is not None and outcome.user_error:
        # The condition and the Warning Event are written; retrying cannot help until the
        # spec (or the TrainingJob) changes, which the timer and the watches notice.
        raise kopf.PermanentError(outcome.message)


async def _resync(body: dict[str, Any]) -> None:
    """Level-based resync (see controllers.resync): a deleted or edited InferenceService
    converges back, and its status keeps flowing into the ModelDeployment."""
    meta = body["metadata"]
    await reconcile(meta["namespace"], meta["name"], _log)


def _nothing_to_do(body: dict[str, Any]) -> bool:
    """The resync tick skips a ModelDeployment still as it settled (controllers.settled):
    its InferenceService's, TrainingJob's and Canary's changes wake it by their events."""
    return settled.is_settled(KIND, body)


resync.register(API_VERSION, KIND, _resync, skip=_nothing_to_do)


@kopf.on.event("serving.kserve.io", "v1beta1", "inferenceservices",
               labels={"app.kubernetes.io/managed-by": "slipway"})
async def inferenceservice_changed(namespace: str | None, body: kopf.Body,
                                   logger: kopf.Logger, **_: Any) -> None:
    """Mirror a change of an owned InferenceService (e.g. KServe's status) at once."""
    owner = next((o for o in body["metadata"].get("ownerReferences", [])
                  if o.get("kind") == KIND), None)
    if namespace is None or owner is None:
        return
    try:
        await reconcile(namespace, owner["name"], logger)
    except kube.KubeError as exc:
        logger.warning(f"reconciling ModelDeployment {owner['name']} after its "
                       f"InferenceService changed failed; the resync retries: {exc}")


# (namespace, TrainingJob name) -> the ModelDeployments that serve its output, kept from the
# ModelDeployments' own events.
_SERVING: dict[tuple[str, str], set[str]] = {}
_SERVES: dict[tuple[str, str], str] = {}  # (namespace, ModelDeployment) -> TrainingJob


def index_trainingjob(namespace: str, name: str, trainingjob: str | None) -> None:
    """Record which TrainingJob (None: none, or deleted) ModelDeployment *name* serves."""
    old = _SERVES.pop((namespace, name), None)
    if old is not None:
        names = _SERVING.get((namespace, old), set())
        names.discard(name)
        if not names:
            _SERVING.pop((namespace, old), None)
    if trainingjob:
        _SERVES[(namespace, name)] = trainingjob
        _SERVING.setdefault((namespace, trainingjob), set()).add(name)


@kopf.on.event(GROUP, VERSION, PLURAL)
async def modeldeployment_event(type: str | None, namespace: str | None, name: str,
                                spec: kopf.Spec, **_: Any) -> None:
    if namespace is not None:
        index_trainingjob(namespace, name,
                          None if type == "DELETED" else spec.get("fromTrainingJob"))


@trainingjob.on_phase_change
async def serve_trainingjob_output(namespace: str, name: str) -> None:
    """React to a TrainingJob appearing, finishing or vanishing at once instead of on the
    next tick. Told by the TrainingJob controller, whose watch sees every TrainingJob
    already: a Kopf handler on them cost a second stream of every status write."""
    for md in sorted(_SERVING.get((namespace, name), ())):
        try:
            await reconcile(namespace, md, _log)
        except kube.KubeError as exc:
            _log.warning(f"reconciling ModelDeployment {md} after TrainingJob {name} "
                         f"changed failed; the resync retries: {exc}")
