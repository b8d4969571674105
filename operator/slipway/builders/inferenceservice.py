"""The KServe InferenceService child of a ModelDeployment (its status: status/modeldeployment.py).

Everything here is pure (no I/O), so it is unit-tested without a cluster:
- `resolve_model`: spec (+ the TrainingJob it points at) -> the model to deploy;
- `build_inference_service`: spec + parent + resolved model -> the InferenceService dict;
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from slipway.api.modeldeployment import (
    DEFAULT_RUNTIMES,
    LABEL_VALUE,
    SUPPORTED_FORMATS,
    URI_PATTERN,
    ModelDeploymentSpec,
    ResolvedModel,
)
from slipway.builders.meta import child_metadata

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
