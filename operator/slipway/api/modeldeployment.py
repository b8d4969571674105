"""ModelDeployment: serve a model (given directly or produced by a TrainingJob) as a
KServe InferenceService on the Slipway runtimes."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from slipway.api import trainingjob
from slipway.api.common import (
    ApiModel,
    ComputeResources,
    Condition,
    CpuQuantity,
    CRDInfo,
    MemoryQuantity,
    PrinterColumn,
    parse_quantity,
)
from slipway.api.trainingjob import MAX_QUALIFIED_NAME, QUALIFIED_NAME

# Formats Slipway ships a ClusterServingRuntime for (runtimes/servingruntimes/).
SUPPORTED_FORMATS: tuple[str, ...] = ("sklearn", "xgboost", "onnx")
DEFAULT_RUNTIMES: dict[str, str] = {f: f"slipway-{f}" for f in SUPPORTED_FORMATS}
# The storage URI schemes KServe's storage initializer reads (hf:// is Hugging Face Hub).
URI_SCHEMES: tuple[str, ...] = ("s3", "gs", "pvc", "http", "https", "hf", "file")
URI_PATTERN = rf"^({'|'.join(URI_SCHEMES)})://.+"
MAX_GPUS = 16
MAX_REPLICAS = 1000
# The name becomes the InferenceService name, and KServe derives "<name>-predictor-00001"
# style Service and revision names from it (DNS-1035 labels of at most 63 characters).
MAX_NAME_LENGTH = 45
DNS_1035 = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
DNS_1123 = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# A version goes into labels, so it must be a valid label value.
LABEL_VALUE = r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"

Format = Literal["sklearn", "xgboost", "onnx"]
Protocol = Literal["v1", "v2"]
DeploymentMode = Literal["Standard", "Knative"]
ScaleMetric = Literal["cpu", "memory", "concurrency", "rps"]
# Metrics only the Knative Pod Autoscaler has; Standard mode's HPA scales on cpu or memory.
KNATIVE_METRICS: tuple[str, ...] = ("concurrency", "rps")
LoggerMode = Literal["all", "request", "response"]
MAX_TIMEOUT_SECONDS = 86400
# Knative's container-concurrency-max-limit default.
MAX_CONTAINER_CONCURRENCY = 1000
MAX_ENV = 128
MAX_TOLERATIONS = 64
MAX_POD_METADATA = 64
# Keys Slipway writes itself; users may not set them in spec.labels / spec.annotations.
RESERVED_PREFIX = "slipway.dev/"
RESERVED_LABELS: tuple[str, ...] = ("app.kubernetes.io/managed-by",)
RESERVED_ANNOTATIONS: tuple[str, ...] = (
    "serving.kserve.io/deploymentMode", "serving.kserve.io/stop",
    "serving.kserve.io/storage-initializer-sourceuri")
# Env Slipway sets on the model server.
RESERVED_ENV: tuple[str, ...] = ("MODEL_VERSION",)
# Label values as the apiserver checks them (may be empty).
POD_LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
DNS_1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


class ModelSource(ApiModel):
    """A model artifact given directly."""

    format: Format = Field(
        description="Model format; picks the runtime. One of: sklearn, xgboost, onnx.")
    uri: str = Field(
        description="Where the model lives (KServe storageUri). Scheme s3://, gs://, pvc://, "
                    "http://, https://, hf:// (Hugging Face Hub, hf://<org>/<repo>) or file://. "
                    "For private s3:// and gs:// models, set spec.serviceAccountName.",
        pattern=URI_PATTERN, max_length=2048)
    version: str | None = Field(
        None, max_length=63, pattern=LABEL_VALUE,
        description="Model version, shown in status.servingVersion and put on the "
                    "InferenceService (label slipway.dev/model-version, env MODEL_VERSION) so "
                    "the runtime's metrics carry it. Defaults to a digest of the URI.")


class Replicas(ApiModel):
    """Bounds for the predictor's replica count (KServe minReplicas/maxReplicas)."""

    model_config = ApiModel.model_config | {"json_schema_extra": {"x-kubernetes-validations": [
        {"rule": "!has(self.min) || !has(self.max) || self.min <= self.max",
         "message": "spec.replicas.min must be less than or equal to spec.replicas.max",
         "fieldPath": ".min"},
    ]}}

    min: int | None = Field(None, ge=0, le=MAX_REPLICAS,
                            description="Minimum replicas; 0 allows scale to zero (Knative).")
    max: int | None = Field(None, ge=1, le=MAX_REPLICAS, description="Maximum replicas.")

    @model_validator(mode="after")
    def _min_le_max(self) -> Replicas:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("spec.replicas.min must be less than or equal to spec.replicas.max")
        return self


class Autoscaling(ApiModel):
    """What the autoscaler tracks (KServe scaleMetric/scaleTarget)."""

    metric: ScaleMetric = Field(
        description="cpu or memory (utilization %), concurrency (in-flight requests per "
                    "replica) or rps (requests per second per replica). concurrency and rps "
                    "need Knative mode: rejected with deploymentMode Standard; with the "
                    "operator's default mode Standard, reported as condition SpecSupported=False "
                    "and left out of the InferenceService. cpu and memory in Knative mode use "
                    "Knative's HPA class.")
    target: int = Field(ge=1, le=100000, description="Target value of the metric per replica.")


def _amount(path: str) -> str:
    return f"quantity(string({path}))"


def _is_amount(path: str) -> str:
    return f"isQuantity(string({path}))"


def _request_limit_rules(res: str) -> list[Any]:
    """CEL: the effective request of *res* (requests.<res>, else <res>) must not exceed its
    effective limit (limits.<res>, else <res>). Numbers and strings both (int-or-string), so
    every value goes through string() before quantity()."""
    has_req = f"(has(self.requests) && has(self.requests.{res}))"
    has_lim = f"(has(self.limits) && has(self.limits.{res}))"
    req, lim, both = f"self.requests.{res}", f"self.limits.{res}", f"self.{res}"
    limit = f"({has_lim} ? {lim} : {both})"
    return [
        {"rule": f"!{has_req} || !({has_lim} || has(self.{res})) || !{_is_amount(req)} || "
                 f"!{_is_amount(limit)} || {_amount(req)}.compareTo({_amount(limit)}) <= 0",
         "message": f"spec.resources.requests.{res} must be less than or equal to the {res} "
                    f"limit (spec.resources.limits.{res}, else spec.resources.{res})",
         "fieldPath": f".requests.{res}"},
        {"rule": f"{has_req} || !has(self.{res}) || !{has_lim} || !{_is_amount(both)} || "
                 f"!{_is_amount(lim)} || {_amount(both)}.compareTo({_amount(lim)}) <= 0",
         "message": f"spec.resources.limits.{res} must be greater than or equal to "
                    f"spec.resources.{res} (the {res} request)",
         "fieldPath": f".limits.{res}"},
    ]


class ResourceAmounts(ApiModel):
    """CPU and memory, as Kubernetes quantities (strings, or whole numbers)."""

    cpu: CpuQuantity | None = Field(None, description="CPU, e.g. '500m', '2' or 2.")
    memory: MemoryQuantity | None = Field(
        None, description="Memory, e.g. '1Gi' or a number of bytes.")


class ModelResources(ComputeResources):
    """CPU and memory of the model server. cpu and memory set both the request and the limit
    (as before); requests and limits override either side, so they may differ as KServe
    allows. Each request must not exceed its limit."""

    model_config = ComputeResources.model_config | {"json_schema_extra": {
        "x-kubernetes-validations": _request_limit_rules("cpu") + _request_limit_rules("memory"),
    }}

    requests: ResourceAmounts | None = Field(
        None, description="Requests only (override cpu/memory for the request side).")
    limits: ResourceAmounts | None = Field(
        None, description="Limits only (override cpu/memory for the limit side).")

    def request(self, res: str) -> str | None:
        return (getattr(self.requests, res) if self.requests else None) or getattr(self, res)

    def limit(self, res: str) -> str | None:
        return (getattr(self.limits, res) if self.limits else None) or getattr(self, res)

    @model_validator(mode="after")
    def _requests_within_limits(self) -> ModelResources:
        for res in ("cpu", "memory"):
            req, lim = self.request(res), self.limit(res)
            if req and lim and parse_quantity(req) > parse_quantity(lim):
                raise ValueError(f"spec.resources.requests.{res} must be less than or equal "
                                 f"to the {res} limit")
        return self


class EnvVar(trainingjob.EnvVar):
    """An environment variable for the model server container."""

    model_config = trainingjob.EnvVar.model_config | {"json_schema_extra": {
        "x-kubernetes-validations": [
            {"rule": "!has(self.value) || !has(self.valueFrom)",
             "message": "spec.env[].value and spec.env[].valueFrom are mutually exclusive",
             "fieldPath": ".valueFrom"},
        ]}}


class Toleration(ApiModel):
    """A toleration of the predictor pods (corev1 Toleration)."""

    model_config = ApiModel.model_config | {"json_schema_extra": {"x-kubernetes-validations": [
        {"rule": "(has(self.key) && self.key != '') || "
                 "(has(self.operator) && self.operator == 'Exists')",
         "message": "spec.tolerations[].operator must be Exists when key is empty",
         "fieldPath": ".operator"},
        {"rule": "!has(self.operator) || self.operator != 'Exists' || !has(self.value) || "
                 "self.value == ''",
         "message": "spec.tolerations[].value must be empty when operator is Exists",
         "fieldPath": ".value"},
        {"rule": "!has(self.tolerationSeconds) || (has(self.effect) && "
                 "self.effect == 'NoExecute')",
         "message": "spec.tolerations[].tolerationSeconds needs effect NoExecute",
         "fieldPath": ".tolerationSeconds"},
    ]}}

    key: str | None = Field(
        None, max_length=MAX_QUALIFIED_NAME, pattern=f"^({QUALIFIED_NAME[1:-1]})?$",
        description="Taint key; empty (with operator Exists) tolerates every taint.")
    operator: Literal["Exists", "Equal"] | None = Field(
        None, description="Exists or Equal (Kubernetes' default).")
    value: str | None = Field(None, max_length=63, pattern=POD_LABEL_VALUE,
                              description="Taint value, with operator Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="Taint effect to tolerate; empty tolerates all effects.")
    toleration_seconds: int | None = Field(
        None, description="With effect NoExecute: how long the pod stays bound after the taint "
                          "appears.")


class Affinity(ApiModel):
    """Pod scheduling constraints (corev1 Affinity), passed to the predictor as written."""

    node_affinity: dict[str, Any] | None = Field(
        None, description="Node affinity (corev1 NodeAffinity).")
    pod_affinity: dict[str, Any] | None = Field(
        None, description="Pod affinity (corev1 PodAffinity).")
    pod_anti_affinity: dict[str, Any] | None = Field(
        None, description="Pod anti-affinity (corev1 PodAntiAffinity).")


class PayloadLogger(ApiModel):
    """Payload logging (KServe predictor.logger): KServe's agent sends each request and/or
    response as a CloudEvent to url."""

    url: str | None = Field(
        None, min_length=1, max_length=2048, pattern=r"^https?://.+",
        description="Where the CloudEvents go (http:// or https://). Defaults to KServe's "
                    "logger.defaultUrl (inferenceservice-config).")
    mode: LoggerMode = Field("all", description="What to log: all, request or response.")


def _keys_rule(field: str, reserved: tuple[str, ...] | None) -> dict[str, Any]:
    """CEL: the keys of a map are qualified names and, with *reserved*, none of Slipway's own
    (the slipway.dev/ prefix and the keys in *reserved*)."""
    rule = f"k.size() <= {MAX_QUALIFIED_NAME} && k.matches('{QUALIFIED_NAME}')"
    message = (f"spec.{field} keys must be qualified names (an optional DNS subdomain prefix "
               f"and '/', then up to 63 letters, digits, '-', '_' or '.')")
    if reserved is not None:
        exact = ", ".join(f"'{k}'" for k in reserved)
        rule += f" && !k.startsWith('{RESERVED_PREFIX}') && !(k in [{exact}])"
        message += (f" and must not be Slipway's own ({RESERVED_PREFIX}*, "
                    f"{', '.join(reserved)})")
    return {"rule": f"self.all(k, {rule})", "message": message}


class ModelDeploymentSpec(ApiModel):
    """Which model to serve, on which runtime, and how to scale it."""

    model_config = ApiModel.model_config | {"json_schema_extra": {"x-kubernetes-validations": [
        {"rule": "has(self.model) != has(self.fromTrainingJob)",
         "message": "exactly one of spec.model or spec.fromTrainingJob must be set",
         "fieldPath": ".model"},
        {"rule": "!has(self.format) || has(self.fromTrainingJob)",
         "message": "spec.format only applies with spec.fromTrainingJob; "
                    "set spec.model.format instead",
         "fieldPath": ".format"},
        {"rule": "!has(self.autoscaling) || !has(self.deploymentMode) || "
                 "self.deploymentMode != 'Standard' || "
                 f"!(self.autoscaling.metric in {list(KNATIVE_METRICS)})",
         "message": "spec.autoscaling.metric concurrency and rps need deploymentMode Knative; "
                    "in Standard mode KServe scales with an HPA on cpu or memory",
         "fieldPath": ".autoscaling.metric"},
    ]}}

    model: ModelSource | None = Field(
        None, description="The model to serve. Exactly one of model or fromTrainingJob.")
    from_training_job: str | None = Field(
        None, min_length=1, max_length=253, pattern=DNS_1123,
        description="Serve the output of this TrainingJob (same namespace) once it has "
                    "Succeeded: uri, version and format come from its status.output.")
    format: Format | None = Field(
        None, description="With fromTrainingJob: the model format, overriding (or supplying, "
                          "when the TrainingJob declares none) status.output.format.")
    runtime: str | None = Field(
        None, min_length=1, max_length=253, pattern=DNS_1123,
        description="ServingRuntime or ClusterServingRuntime name. Defaults by format: "
                    "sklearn -> slipway-sklearn, xgboost -> slipway-xgboost, "
                    "onnx -> slipway-onnx.")
    protocol: Protocol = Field(
        "v1", description="Inference protocol (KServe protocolVersion): v1 or v2 (Open "
                          "Inference Protocol).")
    deployment_mode: DeploymentMode | None = Field(
        None, description="KServe deployment mode, written as the annotation "
                          "serving.kserve.io/deploymentMode: Standard (Deployment + HPA) or "
                          "Knative. Defaults to the operator's setting. Immutable: KServe "
                          "cannot change the mode of an existing InferenceService.",
        json_schema_extra={"x-kubernetes-validations": [
            {"rule": "self == oldSelf",
             "message": "spec.deploymentMode is immutable (KServe cannot change the mode of an "
                        "existing InferenceService); delete and recreate the ModelDeployment"},
        ]})
    replicas: Replicas | None = Field(None, description="Replica bounds.")
    autoscaling: Autoscaling | None = Field(None, description="Autoscaling metric and target.")
    resources: ModelResources | None = Field(
        None, description="CPU and memory of the model server: cpu and memory set both the "
                          "request and the limit; requests and limits override one side. "
                          "Quantities may be strings or whole numbers (cpu: 4, "
                          "memory: 1073741824).")
    gpus: int = Field(0, ge=0, le=MAX_GPUS,
                      description="nvidia.com/gpu for the model server (0 to 16).")
    stopped: bool = Field(
        False, description="Stop serving without deleting anything (annotation "
                           "serving.kserve.io/stop); set back to false to resume.")
    service_account_name: str | None = Field(
        None, min_length=1, max_length=253, pattern=DNS_1123_SUBDOMAIN,
        description="ServiceAccount of the predictor pods (KServe predictor.serviceAccountName). "
                    "KServe's storage initializer reads the credentials of private s3:// and "
                    "gs:// models from the Secrets attached to it.")
    node_selector: dict[str, str] | None = Field(
        None, max_length=MAX_POD_METADATA,
        description="Node labels the predictor pods must match (predictor.nodeSelector).",
        json_schema_extra={"additionalProperties": {"type": "string", "maxLength": 63,
                                                    "pattern": POD_LABEL_VALUE},
                           "x-kubernetes-validations": [_keys_rule("nodeSelector", None)]})
    tolerations: list[Toleration] | None = Field(
        None, max_length=MAX_TOLERATIONS,
        description="Tolerations of the predictor pods (predictor.tolerations), after the "
                    "nvidia.com/gpu toleration Slipway adds when gpus > 0.")
    affinity: Affinity | None = Field(
        None, description="Node and pod (anti-)affinity of the predictor pods "
                          "(predictor.affinity).")
    env: list[EnvVar] | None = Field(
        None, max_length=MAX_ENV,
        description="Extra environment variables of the model server (predictor.model.env), "
                    "after MODEL_VERSION, which Slipway sets and which may not be given here.",
        json_schema_extra={
            "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
            "x-kubernetes-validations": [
                {"rule": f"self.all(e, !(e.name in {list(RESERVED_ENV)}))",
                 "message": "spec.env must not set MODEL_VERSION: Slipway sets it to the "
                            "model version"},
            ]})
    labels: dict[str, str] | None = Field(
        None, max_length=MAX_POD_METADATA,
        description="Extra labels of the predictor pods (predictor.labels). Keys under "
                    "slipway.dev/ and app.kubernetes.io/managed-by are Slipway's and refused.",
        json_schema_extra={"additionalProperties": {"type": "string", "maxLength": 63,
                                                    "pattern": POD_LABEL_VALUE},
                           "x-kubernetes-validations": [_keys_rule("labels", RESERVED_LABELS)]})
    annotations: dict[str, str] | None = Field(
        None, max_length=MAX_POD_METADATA,
        description="Extra annotations of the predictor pods (predictor.annotations). Keys "
                    "under slipway.dev/ and serving.kserve.io/deploymentMode, stop and "
                    "storage-initializer-sourceuri are Slipway's and refused.",
        json_schema_extra={"x-kubernetes-validations": [
            _keys_rule("annotations", RESERVED_ANNOTATIONS)]})
    timeout: int | None = Field(
        None, ge=1, le=MAX_TIMEOUT_SECONDS,
        description="Seconds a request may take (predictor.timeout): Knative's revision "
                    "timeout (capped by its max-revision-timeout-seconds, 600 by default), or "
                    "the HTTPRoute timeout in Standard mode with the Gateway API.")
    container_concurrency: int | None = Field(
        None, ge=0, le=MAX_CONTAINER_CONCURRENCY,
        description="Hard limit of concurrent requests per model server replica "
                    "(predictor.containerConcurrency; 0 = unlimited). Enforced by Knative's "
                    "queue-proxy, so it takes effect in Knative mode only.")
    logger: PayloadLogger | None = Field(
        None, description="Payload logging (predictor.logger): requests and/or responses are "
                          "sent as CloudEvents to logger.url.")

    @model_validator(mode="after")
    def _one_source(self) -> ModelDeploymentSpec:
        if (self.model is None) == (self.from_training_job is None):
            raise ValueError("exactly one of spec.model or spec.fromTrainingJob must be set")
        if self.format is not None and self.from_training_job is None:
            raise ValueError("spec.format only applies with spec.fromTrainingJob; "
                             "set spec.model.format instead")
        return self


class ResolvedModel(ApiModel):
    """The model actually deployed, after resolving fromTrainingJob."""

    format: str = Field(description="Model format.")
    uri: str = Field(description="Model URI (the InferenceService storageUri).")
    version: str = Field(description="Model version.")
    runtime: str = Field(description="Serving runtime.")
    source: str = Field(description="'spec' or 'TrainingJob/<name>'.")
    image: str | None = Field(None, description="With a TrainingJob: the image that trained it.")


Phase = Literal["Pending", "Ready", "Failed", "Stopped"]


class ModelDeploymentStatus(ApiModel):
    phase: Phase | None = Field(None, description="Pending, Ready, Failed or Stopped.")
    message: str | None = Field(None, description="Why the deployment is in this phase.")
    conditions: list[Condition] | None = Field(
        None, description="ModelResolved, Ready (from the InferenceService), ModelLoaded, "
                          "SpecSupported (when a field does not apply in the mode used).")
    observed_generation: int | None = Field(None, description="Generation last reconciled.")
    url: str | None = Field(None, description="URL of the InferenceService.")
    serving_version: str | None = Field(
        None, description="Model version the InferenceService serves.")
    model: ResolvedModel | None = Field(None, description="The resolved model.")
    inference_service: str | None = Field(None, description="Name of the InferenceService.")


CRD = CRDInfo(
    kind="ModelDeployment",
    plural="modeldeployments",
    short_names=("md",),
    spec_model=ModelDeploymentSpec,
    status_model=ModelDeploymentStatus,
    description="ModelDeployment serves a model as a KServe InferenceService on the Slipway "
                "runtimes, from a model URI or from the output of a TrainingJob.",
    printer_columns=(
        PrinterColumn("Phase", ".status.phase"),
        PrinterColumn("Model", ".status.model.format", description="Model format."),
        PrinterColumn("Version", ".status.servingVersion",
                      description="Model version being served."),
        PrinterColumn("URL", ".status.url"),
        PrinterColumn("Age", ".metadata.creationTimestamp", "date"),
        PrinterColumn("URI", ".status.model.uri", priority=1),
        PrinterColumn("Runtime", ".status.model.runtime", priority=1),
        PrinterColumn("TrainingJob", ".spec.fromTrainingJob", priority=1),
        PrinterColumn("Message", ".status.message", priority=1),
    ),
    root_validations=(
        {"rule": f"self.metadata.name.size() <= {MAX_NAME_LENGTH} && "
                 f"self.metadata.name.matches('{DNS_1035}')",
         "message": f"metadata.name must be a DNS-1035 label (lowercase letters, digits, '-', "
                    f"starting with a letter) of at most {MAX_NAME_LENGTH} characters: it names "
                    f"the InferenceService"},
    ),
)
