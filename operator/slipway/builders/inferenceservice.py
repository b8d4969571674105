"""The KServe InferenceService child of a ModelDeployment (its status: status/modeldeployment.py).

Everything here is pure (no I/O), so it is unit-tested without a cluster:
- `resolve_model`: spec (+ the TrainingJob it points at) -> the model to deploy;
- `build_inference_service`: spec + parent + resolved model -> the InferenceService dict;
- `unsupported`: what in the spec cannot apply in the deployment mode used (a condition).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from slipway.api.modeldeployment import (
    DEFAULT_RUNTIMES,
    KNATIVE_METRICS,
    LABEL_VALUE,
    RESERVED_ANNOTATIONS,
    RESERVED_ENV,
    RESERVED_LABELS,
    RESERVED_PREFIX,
    SUPPORTED_FORMATS,
    URI_PATTERN,
    URI_SCHEMES,
    ModelDeploymentSpec,
    ResolvedModel,
)
from slipway.builders.meta import child_metadata

API_VERSION = "serving.kserve.io/v1beta1"
KIND = "InferenceService"
DEPLOYMENT_MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
# KServe's names for a Deployment-backed (not Knative) InferenceService, new and old.
RAW_MODES = frozenset({"Standard", "RawDeployment"})
STOP_ANNOTATION = "serving.kserve.io/stop"
VERSION_KEY = "slipway.dev/model-version"
FORMAT_LABEL = "slipway.dev/model-format"
GPU_RESOURCE = "nvidia.com/gpu"
# Knative mode: cpu and memory metrics need Knative's HPA class (the default KPA class scales
# on concurrency or rps only, and KServe's webhook refuses cpu/memory with it).
KNATIVE_CLASS_ANNOTATION = "autoscaling.knative.dev/class"
KNATIVE_HPA_CLASS = "hpa.autoscaling.knative.dev"

# Condition types on the ModelDeployment.
MODEL_RESOLVED = "ModelResolved"
READY = "Ready"
MODEL_LOADED = "ModelLoaded"
# Written when a field of the spec does not apply in the deployment mode used.
SPEC_SUPPORTED = "SpecSupported"
METRIC_NEEDS_KNATIVE = "MetricNeedsKnative"


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
            "UnsupportedURI", f"TrainingJob {name} output URI {uri!r} is not one of "
                              f"{', '.join(f'{s}://' for s in URI_SCHEMES)}", user_error=True)
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


def effective_mode(spec: ModelDeploymentSpec, default_mode: str) -> str:
    """The KServe deployment mode the InferenceService gets: the spec's, else the operator's."""
    return spec.deployment_mode or default_mode


def unsupported(spec: ModelDeploymentSpec, default_mode: str) -> tuple[str, str] | None:
    """(reason, message) when a field of *spec* cannot apply in the mode it runs in. The CRD
    rejects these with an explicit deploymentMode: Standard; this catches the operator's
    default (and objects stored before that rule). The builder leaves such fields out."""
    mode = effective_mode(spec, default_mode)
    if spec.autoscaling and spec.autoscaling.metric in KNATIVE_METRICS and mode != "Knative":
        source = ("spec.deploymentMode" if spec.deployment_mode
                  else "the operator's default, SLIPWAY_KSERVE_DEPLOYMENT_MODE")
        return (METRIC_NEEDS_KNATIVE,
                f"spec.autoscaling.metric {spec.autoscaling.metric} needs Knative mode, but this "
                f"ModelDeployment runs in {mode} mode ({source}), where KServe scales with an "
                f"HPA on cpu or memory; the InferenceService is deployed without the metric. Use "
                f"metric cpu or memory, or recreate the ModelDeployment with "
                f"spec.deploymentMode: Knative")
    return None


def _reserved_label(key: str) -> bool:
    return key.startswith(RESERVED_PREFIX) or key in RESERVED_LABELS


def _reserved_annotation(key: str) -> bool:
    return key.startswith(RESERVED_PREFIX) or key in RESERVED_ANNOTATIONS


def _resources(spec: ModelDeploymentSpec) -> dict[str, Any] | None:
    """requests/limits: cpu and memory are both, spec.resources.{requests,limits} override one
    side; GPUs are a limit (Kubernetes sets the request equal)."""
    requests: dict[str, str] = {}
    limits: dict[str, str | int] = {}
    if spec.resources:
        for key in ("cpu", "memory"):
            if request := spec.resources.request(key):
                requests[key] = request
            if limit := spec.resources.limit(key):
                limits[key] = limit
    if spec.gpus:
        limits[GPU_RESOURCE] = spec.gpus
    out = {k: v for k, v in (("requests", requests), ("limits", limits)) if v}
    return out or None


def build_inference_service(spec: ModelDeploymentSpec, parent: dict[str, Any],
                            model: ResolvedModel, default_mode: str,
                            canary_traffic_percent: int | None = None) -> dict[str, Any]:
    """The InferenceService for *parent* (a ModelDeployment body), named like it.
    *canary_traffic_percent*: KServe's Knative-mode split, set while a Canary rolls *model*
    out (the rest of the traffic stays on the previously rolled-out revision).

    The user's labels, annotations, env and tolerations come first and Slipway's own win:
    the CRD refuses Slipway's keys, and whatever slips through is dropped here."""
    mode = effective_mode(spec, default_mode)
    labels = {FORMAT_LABEL: model.format}
    if _label_safe(model.version):
        labels[VERSION_KEY] = model.version
    annotations = {
        DEPLOYMENT_MODE_ANNOTATION: mode,
        STOP_ANNOTATION: "true" if spec.stopped else "false",
        VERSION_KEY: model.version,
    }
    metric = spec.autoscaling.metric if spec.autoscaling else None
    if mode == "Knative" and metric in ("cpu", "memory"):
        annotations[KNATIVE_CLASS_ANNOTATION] = KNATIVE_HPA_CLASS
    meta = child_metadata(parent, parent["metadata"]["name"], extra_labels=labels,
                          annotations=annotations)

    env: list[dict[str, Any]] = [{"name": "MODEL_VERSION", "value": model.version}]
    env += [e.wire() for e in spec.env or [] if e.name not in RESERVED_ENV]
    container: dict[str, Any] = {
        "modelFormat": {"name": model.format},
        "runtime": model.runtime,
        "storageUri": model.uri,
        "protocolVersion": spec.protocol,
        "env": env,
    }
    if (resources := _resources(spec)) is not None:
        container["resources"] = resources

    predictor: dict[str, Any] = {"model": container}
    if spec.replicas:
        if spec.replicas.min is not None:
            predictor["minReplicas"] = spec.replicas.min
        if spec.replicas.max is not None:
            predictor["maxReplicas"] = spec.replicas.max
    if canary_traffic_percent is not None:
        predictor["canaryTrafficPercent"] = canary_traffic_percent
    if spec.autoscaling and unsupported(spec, default_mode) is None:
        predictor["scaleMetric"] = spec.autoscaling.metric
        predictor["scaleTarget"] = spec.autoscaling.target
    if spec.timeout is not None:
        predictor["timeout"] = spec.timeout
    if spec.container_concurrency is not None:
        predictor["containerConcurrency"] = spec.container_concurrency
    if spec.logger is not None:
        predictor["logger"] = spec.logger.wire()
    # Pod labels, so scraped runtime metrics can be joined to the version.
    user_labels = {k: v for k, v in (spec.labels or {}).items() if not _reserved_label(k)}
    predictor["labels"] = {**user_labels, **labels}
    user_annotations = {k: v for k, v in (spec.annotations or {}).items()
                        if not _reserved_annotation(k)}
    if user_annotations:
        predictor["annotations"] = user_annotations
    if spec.service_account_name:
        predictor["serviceAccountName"] = spec.service_account_name
    if spec.node_selector:
        predictor["nodeSelector"] = dict(spec.node_selector)
    tolerations: list[dict[str, Any]] = []
    if spec.gpus:
        tolerations.append({"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"})
    for toleration in spec.tolerations or []:
        if (wired := toleration.wire()) not in tolerations:
            tolerations.append(wired)
    if tolerations:
        predictor["tolerations"] = tolerations
    if spec.affinity is not None and (affinity := spec.affinity.wire()):
        predictor["affinity"] = affinity

    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": meta,
            "spec": {"predictor": predictor}}
