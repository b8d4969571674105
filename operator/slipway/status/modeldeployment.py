"""A ModelDeployment's status, derived from its InferenceService. Pure: no I/O.

- `mirror_status`: the InferenceService's status -> the ModelDeployment's status fields;
- `transition_events`: old vs new status -> the Kubernetes Events worth emitting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from slipway.api.common import get_condition, set_condition
from slipway.builders.inferenceservice import (
    DEPLOYMENT_MODE_ANNOTATION,
    MODEL_LOADED,
    MODEL_RESOLVED,
    RAW_MODES,
    READY,
    SPEC_SUPPORTED,
    VERSION_KEY,
)
from slipway.status.predictor import MODEL_LOAD_FAILED, PodProblem


@dataclass(frozen=True)
class Observed:
    """What the ModelDeployment's status says after one reconcile."""

    phase: str
    message: str
    conditions: list[dict[str, Any]]
    url: str | None
    serving_version: str | None


def _isvc_ready(isvc_status: dict[str, Any]) -> dict[str, Any] | None:
    return get_condition(isvc_status.get("conditions"), "Ready")


def mirror_status(isvc: dict[str, Any] | None, conditions: list[dict[str, Any]],
                  stopped: bool, generation: int | None = None,
                  apply_error: str | None = None, now: str | None = None,
                  pod_problem: PodProblem | None = None,
                  conflict: str | None = None, unsupported: str | None = None) -> Observed:
    """Fold the InferenceService's status into the ModelDeployment's conditions and phase.

    *conditions* are the ModelDeployment's current conditions (so transition times hold);
    *apply_error* is set when the apiserver rejected the InferenceService we built;
    *conflict* when an InferenceService of the same name is not ours (we wait for it to go);
    *unsupported* when a field of the spec cannot apply in the mode used (condition
    SpecSupported=False, set by the caller): Failed, though the InferenceService is deployed;
    *pod_problem* is what the predictor pods say when none serves (KServe does not watch
    pods, so its own status can lag or stay silent).
    """
    status = (isvc or {}).get("status") or {}
    annotations = ((isvc or {}).get("metadata") or {}).get("annotations") or {}
    version = annotations.get(VERSION_KEY) if isvc else None

    # Ready: copied from the InferenceService's own Ready condition, unless the pods say why
    # it is not Ready and KServe does not.
    ready = _isvc_ready(status)
    if pod_problem is not None and (ready or {}).get("status") == "True":
        pod_problem = None  # KServe saw a pod serve; trust it
    if pod_problem is not None and not pod_problem.model_failure and not apply_error \
            and isvc is not None:
        conditions = set_condition(conditions, READY, "False", pod_problem.reason,
                                   pod_problem.message, generation, now)
    elif apply_error:
        conditions = set_condition(conditions, READY, "False", "InferenceServiceRejected",
                                   apply_error, generation, now)
    elif conflict:
        conditions = set_condition(conditions, READY, "False", "NameConflict", conflict,
                                   generation, now)
    elif isvc is None:
        conditions = set_condition(conditions, READY, "False", "InferenceServiceMissing",
                                   "the InferenceService does not exist yet", generation, now)
    elif ready is None:
        conditions = set_condition(conditions, READY, "Unknown", "InferenceServicePending",
                                   "the InferenceService reports no Ready condition yet",
                                   generation, now)
    else:
        rstatus = str(ready.get("status")) if ready.get("status") in ("True", "False") \
            else "Unknown"
        conditions = set_condition(conditions, READY, rstatus,
                                   ready.get("reason") or ("Ready" if rstatus == "True"
                                                           else "NotReady"),
                                   ready.get("message") or "", generation, now)

    # ModelLoaded: from modelStatus (states + lastFailureInfo).
    model_status = status.get("modelStatus") or {}
    active = (model_status.get("states") or {}).get("activeModelState") or ""
    failure = model_status.get("lastFailureInfo") or {}
    # KServe never clears lastFailureInfo, even once a later load succeeds: it only counts
    # while the model is not Loaded.
    failed = active == "FailedToLoad" or (
        bool(failure.get("reason")) and active != "Loaded"
        and model_status.get("transitionStatus") != "UpToDate")
    if pod_problem is not None and pod_problem.model_failure and not stopped:
        # The pods are the current truth: KServe's lastFailureInfo is only refreshed when
        # something else makes it reconcile, so it can describe an earlier failure.
        failure = {"reason": MODEL_LOAD_FAILED, "message": pod_problem.message}
        failed = True
    if failed:
        conditions = set_condition(
            conditions, MODEL_LOADED, "False", failure.get("reason") or "FailedToLoad",
            failure.get("message") or "the model server failed to load the model",
            generation, now)
    elif active == "Loaded" or (
            annotations.get(DEPLOYMENT_MODE_ANNOTATION) in RAW_MODES
            and (ready or {}).get("status") == "True"):
        # In Standard mode KServe itself takes a Ready InferenceService as Loaded, but only
        # on its next reconcile: the one that first writes Ready=True still leaves
        # activeModelState empty. Apply its rule now rather than show a served model as
        # not loaded.
        conditions = set_condition(conditions, MODEL_LOADED, "True", "Loaded",
                                   "the model is loaded", generation, now)
    else:
        conditions = set_condition(conditions, MODEL_LOADED, "Unknown", active or "Pending",
                                   "the model is not loaded yet", generation, now)

    resolved = get_condition(conditions, MODEL_RESOLVED)
    resolved_ok = resolved is None or resolved.get("status") == "True"
    ready_now = get_condition(conditions, READY) or {}
    if apply_error:
        phase, message = "Failed", apply_error
    elif unsupported:
        phase, message = "Failed", unsupported
    elif conflict:
        phase, message = "Pending", conflict
    elif isvc is None:
        if resolved is not None and not resolved_ok:
            phase, message = ("Failed" if _is_user_error(resolved)
                              or resolved.get("reason") in FAILED_SOURCE_REASONS else "Pending",
                              resolved.get("message") or "")
        else:
            phase, message = "Pending", "creating the InferenceService"
    elif failed:
        phase = "Failed"
        message = f"{failure.get('reason') or 'FailedToLoad'}: " \
                  f"{failure.get('message') or 'the model failed to load'}"
    elif stopped:
        phase, message = "Stopped", "stopped (serving.kserve.io/stop)"
    elif ready_now.get("status") == "True":
        phase, message = "Ready", f"serving version {version}" if version else "ready"
    else:
        phase = "Pending"
        message = ready_now.get("message") or "waiting for the InferenceService to become Ready"
    if resolved is not None and not resolved_ok and isvc is not None:
        message = f"{message}; {resolved.get('message')}"
    return Observed(phase=phase, message=message, conditions=conditions,
                    url=status.get("url") or None, serving_version=version)


# Reasons of ModelResolved=False that need a user to fix the spec (the others are waits).
USER_ERROR_REASONS = frozenset({"TrainingJobHasNoOutput", "UnsupportedURI", "FormatUnknown",
                                "UnsupportedFormat", "InvalidSpec", "Rejected"})


# Reasons of ModelResolved=False after which nothing will be deployed unless the source changes:
# Failed, though not a mistake in this spec (a new TrainingJob run can still resolve it).
FAILED_SOURCE_REASONS = frozenset({"TrainingJobFailed"})


# Reasons of ModelResolved=False that are an expected wait, reported as Normal Events.
WAIT_REASONS = frozenset({"WaitingForTrainingJob"})


def _is_user_error(condition: dict[str, Any]) -> bool:
    return condition.get("reason") in USER_ERROR_REASONS


def transition_events(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Events (type, reason, message) for what changed between two ModelDeployment statuses:
    a new served version, entering Failed or Ready, and a newly failing condition."""
    events: list[tuple[str, str, str]] = []
    old_v, new_v = old.get("servingVersion"), new.get("servingVersion")
    if new_v and new_v != old_v:
        what = f"{old_v} -> {new_v}" if old_v else new_v
        events.append(("Normal", "VersionChanged", f"serving model version {what}"))
    old_phase, new_phase = old.get("phase"), new.get("phase")
    if new_phase != old_phase:
        if new_phase == "Failed":
            events.append(("Warning", "Failed", new.get("message") or "failed"))
        elif new_phase == "Ready":
            events.append(("Normal", "Ready", new.get("message") or "ready"))
        elif new_phase == "Stopped":
            events.append(("Normal", "Stopped", new.get("message") or "stopped"))
    for ctype in (SPEC_SUPPORTED, MODEL_RESOLVED, MODEL_LOADED):
        before = get_condition(old.get("conditions"), ctype) or {}
        after = get_condition(new.get("conditions"), ctype) or {}
        if after.get("status") == "False" and (
                before.get("status") != "False" or before.get("reason") != after.get("reason")):
            reason = after.get("reason") or ctype
            type_ = "Normal" if reason in WAIT_REASONS else "Warning"
            events.append((type_, reason, after.get("message") or ""))
    # One Event per fact: drop a phase event that repeats a condition's message.
    messages = [m for _, r, m in events if r != "Failed"]
    return [e for e in events if not (e[1] == "Failed" and any(
        m and m in e[2] for m in messages))]
