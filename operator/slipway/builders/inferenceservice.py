"""The KServe InferenceService child of a ModelDeployment, and reading it back.

Everything here is pure (no I/O), so it is unit-tested without a cluster:
- `resolve_model`: spec (+ the TrainingJob it points at) -> the model to deploy;
- `build_inference_service`: spec + parent + resolved model -> the InferenceService dict;
- `mirror_status`: the InferenceService's status -> the ModelDeployment's status fields;
- `transition_events`: old vs new status -> the Kubernetes Events worth emitting.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from slipway.api.common import get_condition, set_condition
from slipway.api.modeldeployment import (
    DEFAULT_RUNTIMES,
    LABEL_VALUE,
    SUPPORTED_FORMATS,
    URI_PATTERN,
    ModelDeploymentSpec,
    ResolvedModel,
)
from slipway.builders.meta import child_metadata
from slipway.status.predictor import MODEL_LOAD_FAILED, PodProblem

API_VERSION = "serving.kserve.io/v1beta1"
KIND = "InferenceService"
DEPLOYMENT_MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
STOP_ANNOTATION = "serving.kserve.io/stop"
VERSION_KEY = "slipway.dev/model-version"
FORMAT_LABEL = "slipway.dev/model-format"
GPU_RESOURCE = "nvidia.com/gpu"

# Condition types on the ModelDeployment.
MODEL_RESOLVED = "ModelResolved"
READY = "Ready"
MODEL_LOADED = "ModelLoaded"


class ResolutionError(Exception):
    """The model cannot be resolved yet (or ever). `reason` goes into the condition;
    `user_error` tells a mistake in the spec from a wait (TrainingJob still running)."""

    def __init__(self, reason: str, message: str, user_error: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.user_error = user_error


def default_version(uri: str) -> str:
    """A stable version for a model given without one: changes exactly when the URI does."""
    return "uri-" + hashlib.sha256(uri.encode()).hexdigest()[:10]


def _runtime(spec: ModelDeploymentSpec, fmt: str) -> str:
    return spec.runtime or DEFAULT_RUNTIMES[fmt]


def resolve_model(spec: ModelDeploymentSpec,
                  training_job: dict[str, Any] | None = None) -> ResolvedModel:
    """The model to deploy. With fromTrainingJob, *training_job* is that TrainingJob's body
    (None when it does not exist). Raises ResolutionError until it can be resolved."""
    if spec.model is not None:
        m = spec.model
        return ResolvedModel(format=m.format, uri=m.uri,
                             version=m.version or default_version(m.uri),
                             runtime=_runtime(spec, m.format), source="spec")

    name = spec.from_training_job
    assert name is not None  # the spec validator guarantees one source
    if training_job is None:
        raise ResolutionError("TrainingJobNotFound", f"TrainingJob {name} does not exist")
    status = training_job.get("status") or {}
    phase = status.get("phase") or "Pending"
    if phase == "Failed":
        detail = f": {status['message']}" if status.get("message") else ""
        raise ResolutionError("TrainingJobFailed", f"TrainingJob {name} failed{detail}")
    if phase != "Succeeded":
        raise ResolutionError("WaitingForTrainingJob",
                              f"waiting for TrainingJob {name} to succeed (phase {phase})")
    output = status.get("output") or {}
    uri = output.get("uri")
    if not uri:
        raise ResolutionError(
            "TrainingJobHasNoOutput",
            f"TrainingJob {name} succeeded without status.output.uri; give it spec.output.uri",
            user_error=True)
    if not re.match(URI_PATTERN, uri):
        raise ResolutionError(
            "UnsupportedURI", f"TrainingJob {name} output URI {uri!r} is not s3://, gs://, "
                              f"pvc://, https:// or file://", user_error=True)
    fmt = spec.format or output.get("format")
    if not fmt:
        raise ResolutionError(
            "FormatUnknown", f"TrainingJob {name} declares no output format; set spec.format "
                             f"(one of {', '.join(SUPPORTED_FORMATS)})", user_error=True)
    if fmt not in SUPPORTED_FORMATS:
        raise ResolutionError(
            "UnsupportedFormat", f"TrainingJob {name} produced format {fmt!r}; supported: "
                                 f"{', '.join(SUPPORTED_FORMATS)} (override with spec.format)",
            user_error=True)
    version = str(output.get("version") or default_version(uri))
    return ResolvedModel(format=fmt, uri=uri, version=version, runtime=_runtime(spec, fmt),
                         source=f"TrainingJob/{name}",
                         image=(training_job.get("spec") or {}).get("image"))


def _label_safe(value: str) -> bool:
    return len(value) <= 63 and re.match(LABEL_VALUE, value) is not None


def build_inference_service(spec: ModelDeploymentSpec, parent: dict[str, Any],
                            model: ResolvedModel, default_mode: str,
                            canary_traffic_percent: int | None = None) -> dict[str, Any]:
    """The InferenceService for *parent* (a ModelDeployment body), named like it.
    *canary_traffic_percent*: KServe's Knative-mode split, set while a Canary rolls *model*
    out (the rest of the traffic stays on the previously rolled-out revision)."""
    labels = {FORMAT_LABEL: model.format}
    if _label_safe(model.version):
        labels[VERSION_KEY] = model.version
    annotations = {
        DEPLOYMENT_MODE_ANNOTATION: spec.deployment_mode or default_mode,
        STOP_ANNOTATION: "true" if spec.stopped else "false",
        VERSION_KEY: model.version,
    }
    meta = child_metadata(parent, parent["metadata"]["name"], extra_labels=labels,
                          annotations=annotations)

    container: dict[str, Any] = {
        "modelFormat": {"name": model.format},
        "runtime": model.runtime,
        "storageUri": model.uri,
        "protocolVersion": spec.protocol,
        "env": [{"name": "MODEL_VERSION", "value": model.version}],
    }
    requests: dict[str, str] = {}
    limits: dict[str, str | int] = {}
    if spec.resources:
        for key, value in (("cpu", spec.resources.cpu), ("memory", spec.resources.memory)):
            if value:
                requests[key] = limits[key] = value
    if spec.gpus:
        limits[GPU_RESOURCE] = spec.gpus
    if requests or limits:
        container["resources"] = {k: v for k, v in
                                  (("requests", requests), ("limits", limits)) if v}

    predictor: dict[str, Any] = {"model": container}
    if spec.replicas:
        if spec.replicas.min is not None:
            predictor["minReplicas"] = spec.replicas.min
        if spec.replicas.max is not None:
            predictor["maxReplicas"] = spec.replicas.max
    if canary_traffic_percent is not None:
        predictor["canaryTrafficPercent"] = canary_traffic_percent
    if spec.autoscaling:
        predictor["scaleMetric"] = spec.autoscaling.metric
        predictor["scaleTarget"] = spec.autoscaling.target
    # Pod labels, so scraped runtime metrics can be joined to the version.
    predictor["labels"] = dict(labels)
    if spec.gpus:
        predictor["tolerations"] = [{"key": GPU_RESOURCE, "operator": "Exists",
                                     "effect": "NoSchedule"}]

    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": meta,
            "spec": {"predictor": predictor}}


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
                  pod_problem: PodProblem | None = None) -> Observed:
    """Fold the InferenceService's status into the ModelDeployment's conditions and phase.

    *conditions* are the ModelDeployment's current conditions (so transition times hold);
    *apply_error* is set when the apiserver rejected the InferenceService we built;
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
    elif active == "Loaded":
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
    for ctype in (MODEL_RESOLVED, MODEL_LOADED):
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
