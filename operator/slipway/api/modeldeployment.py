"""ModelDeployment: serve a model (given directly or produced by a TrainingJob) as a
KServe InferenceService on the Slipway runtimes."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from slipway.api.common import ApiModel, ComputeResources, Condition, CRDInfo, PrinterColumn

# Formats Slipway ships a ClusterServingRuntime for (runtimes/servingruntimes/).
SUPPORTED_FORMATS: tuple[str, ...] = ("sklearn", "xgboost")
DEFAULT_RUNTIMES: dict[str, str] = {f: f"slipway-{f}" for f in SUPPORTED_FORMATS}
URI_SCHEMES: tuple[str, ...] = ("s3", "gs", "pvc", "https", "file")
URI_PATTERN = r"^(s3|gs|pvc|https|file)://.+"
MAX_GPUS = 16
MAX_REPLICAS = 1000
# The name becomes the InferenceService name, and KServe derives "<name>-predictor-00001"
# style Service and revision names from it (DNS-1035 labels of at most 63 characters).
MAX_NAME_LENGTH = 45
DNS_1035 = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
DNS_1123 = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# A version goes into labels, so it must be a valid label value.
LABEL_VALUE = r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"

Format = Literal["sklearn", "xgboost"]
Protocol = Literal["v1", "v2"]
DeploymentMode = Literal["Standard", "Knative"]
ScaleMetric = Literal["cpu", "memory", "concurrency", "rps"]


class ModelSource(ApiModel):
    """A model artifact given directly."""

    format: Format = Field(
        description="Model format; picks the runtime. One of: sklearn, xgboost.")
    uri: str = Field(
        description="Where the model lives (KServe storageUri). Scheme s3://, gs://, pvc://, "
                    "https:// or file://.",
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
                    "need Knative mode (or KEDA).")
    target: int = Field(ge=1, le=100000, description="Target value of the metric per replica.")


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
                    "sklearn -> slipway-sklearn, xgboost -> slipway-xgboost.")
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
    resources: ComputeResources | None = Field(
        None, description="CPU and memory of the model server (requests = limits).")
    gpus: int = Field(0, ge=0, le=MAX_GPUS,
                      description="nvidia.com/gpu for the model server (0 to 16).")
    stopped: bool = Field(
        False, description="Stop serving without deleting anything (annotation "
                           "serving.kserve.io/stop); set back to false to resume.")

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
        None, description="ModelResolved, Ready (from the InferenceService), ModelLoaded.")
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
