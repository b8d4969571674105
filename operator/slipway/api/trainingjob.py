"""TrainingJob: GPU training as batch/v1 Jobs (single pod or multi-node torchrun)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, PlainValidator

from slipway.api.common import ApiModel, ComputeResources, Condition, CRDInfo, PrinterColumn

MAX_GPUS_PER_WORKER = 16
MAX_WORKERS = 512
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# Job pod hostnames are "<job>-<index>": keep TrainingJob names short enough.
MAX_NAME_LENGTH = 45
# batch/v1 keeps these as int32; larger values overflow date arithmetic downstream.
INT32_MAX = 2**31 - 1
# A distributed job's name also names its headless Service, a DNS-1035 label.
DNS_1035 = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"


class EnvVar(ApiModel):
    """An environment variable for the training container."""

    name: str = Field(description="Variable name.", min_length=1, max_length=253,
                      pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
    value: str | None = Field(None, description="Literal value.")
    value_from: dict[str, Any] | None = Field(
        None, description="Source for the value (secretKeyRef, configMapKeyRef, fieldRef...).")


class Distributed(ApiModel):
    """Multi-process / multi-node training."""

    backend: Literal["torchrun"] = Field(
        "torchrun", description="Launcher whose environment is injected. Only torchrun.")
    nproc_per_node: int | None = Field(
        None, ge=1, le=MAX_GPUS_PER_WORKER,
        description="Processes per worker (PET_NPROC_PER_NODE). Defaults to gpusPerWorker, or 1.")
    master_port: int = Field(29500, ge=1024, le=65535,
                             description="Rendezvous port on worker 0 (MASTER_PORT).")


class RunPolicy(ApiModel):
    """Retries, deadlines, clean-up and suspension, as in Kubeflow's runPolicy."""

    backoff_limit: int = Field(
        3, ge=0, le=100,
        description="Group restarts (new attempts after a retriable worker failure, see "
                    "restartPolicy) before the job fails with BackoffLimitExceeded.")
    active_deadline_seconds: int | None = Field(
        None, ge=1, le=INT32_MAX,
        description="Wall-clock limit of each attempt; exceeding it fails the job with "
                    "DeadlineExceeded (never retried).")
    ttl_seconds_after_finished: int | None = Field(
        None, ge=0, le=INT32_MAX, description="Delete the TrainingJob this long after it finishes.")
    suspend: bool = Field(False, description="Stop all pods now; set back to false to resume.")
    restart_policy: Literal["ExitCode", "OnFailure", "Never"] = Field(
        "ExitCode",
        description="Which worker failures restart the whole group as a new attempt (up to "
                    "backoffLimit). ExitCode (Kubeflow's): exit codes 1-127 are permanent and "
                    "fail the job at once, 128 and above (signals, OOM kill, preemption) are "
                    "retried. OnFailure: every failure is retried. Never: the first failure "
                    "fails the job.")


class Checkpoint(ApiModel):
    """A volume that survives retries, so training can resume."""

    claim_name: str = Field(description="PersistentVolumeClaim mounted on every worker.",
                            min_length=1, max_length=253)
    mount_path: str = Field("/checkpoints", pattern=r"^/.*",
                            description="Mount path; also exported as CHECKPOINT_DIR.")


class Output(ApiModel):
    """Where the trained model lands. Reported in status.output on success."""

    uri: str = Field(
        description="Model URI template. {name}, {namespace} and {version} are substituted, "
                    "e.g. s3://models/{name}/{version}.",
        pattern=r"^(s3|gs|pvc|https|file)://.+")
    version: str | None = Field(
        None, max_length=63,
        description="Model version. Defaults to v<metadata.generation> at the time the "
                    "attempt's Job is created; the trainer gets it as SLIPWAY_OUTPUT_VERSION.")
    format: str | None = Field(None, description="Model format, e.g. sklearn or xgboost.")


# The generated training container (builders.trainingjob.CONTAINER): podTemplate entries with
# this name are merged into it.
TRAINER_CONTAINER = "trainer"
# Bounds on the podTemplate lists, so the CEL cost of the rules over them is bounded.
MAX_POD_CONTAINERS = 32
MAX_POD_VOLUMES = 256
MAX_CONTAINER_ITEMS = 256
MAX_POD_METADATA = 128
# Label values and qualified names (label and annotation keys), as the API server checks them.
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
QUALIFIED_NAME = (r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                  r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
MAX_QUALIFIED_NAME = 253 + 1 + 63


def _keys_rule(what: str) -> dict[str, Any]:
    return {"rule": f"self.all(k, k.size() <= {MAX_QUALIFIED_NAME} && "
                    f"k.matches('{QUALIFIED_NAME}'))",
            "message": f"spec.podTemplate.metadata.{what} keys must be qualified names: an "
                       "optional DNS subdomain prefix and '/', then up to 63 letters, digits, "
                       "'-', '_' or '.', starting and ending with a letter or digit"}


class PodTemplateMeta(ApiModel):
    labels: dict[str, str] | None = Field(
        None, max_length=MAX_POD_METADATA,
        description="Extra pod labels. Slipway's own labels (slipway.dev/...) win on conflict.",
        json_schema_extra={"additionalProperties": {"type": "string", "maxLength": 63,
                                                    "pattern": LABEL_VALUE},
                           "x-kubernetes-validations": [_keys_rule("labels")]})
    annotations: dict[str, str] | None = Field(
        None, max_length=MAX_POD_METADATA, description="Extra pod annotations.",
        json_schema_extra={"x-kubernetes-validations": [_keys_rule("annotations")]})


class NamedItem(ApiModel):
    """An item merged by name; its other fields are kept as written."""

    model_config = ApiModel.model_config | {"extra": "allow"}

    name: str = Field(min_length=1, description="The key the item is merged on.")


class _ContainerBase(ApiModel):
    model_config = ApiModel.model_config | {"extra": "allow"}

    name: str = Field(min_length=1, max_length=63, pattern=DNS_LABEL,
                      description="Container name (a DNS label); the key it is merged on.")
    env: list[NamedItem] | None = Field(
        None, max_length=MAX_CONTAINER_ITEMS,
        description="Environment variables, merged by name (yours win).")
    volume_mounts: list[NamedItem] | None = Field(
        None, max_length=MAX_CONTAINER_ITEMS,
        description="Volume mounts, merged by (volume) name.")


class PodContainer(_ContainerBase):
    """A container, merged by name: trainer (the training container) or a sidecar."""

    model_config = _ContainerBase.model_config | {"json_schema_extra": {
        "x-kubernetes-validations": [
            {"rule": f"self.name == '{TRAINER_CONTAINER}' || has(self.image)",
             "message": "spec.podTemplate.spec.containers[].image is required for every "
                        f"container except {TRAINER_CONTAINER} (whose image is spec.image)",
             "fieldPath": ".image"},
            {"rule": f"self.name != '{TRAINER_CONTAINER}' || !has(self.image)",
             "message": f"the {TRAINER_CONTAINER} container's image is spec.image: set it "
                        "there, not in spec.podTemplate.spec.containers[].image",
             "fieldPath": ".image"},
        ]}}

    image: str | None = Field(
        None, min_length=1, pattern=r"^\S+$",
        description=f"Image of a sidecar; required for every container except "
                    f"{TRAINER_CONTAINER}, whose image is spec.image and is refused here.")


class PodInitContainer(_ContainerBase):
    """An init container (or native sidecar, restartPolicy: Always), merged by name."""

    image: str = Field(min_length=1, pattern=r"^\S+$", description="Container image.")


class PodVolume(ApiModel):
    """A pod volume, merged by name; its source (emptyDir, configMap, ...) is kept as written."""

    model_config = ApiModel.model_config | {"extra": "allow"}

    name: str = Field(min_length=1, max_length=63, pattern=DNS_LABEL,
                      description="Volume name (a DNS label); the key it is merged on.")


class PodSpecOverride(ApiModel):
    """The fields of a partial PodSpec that Slipway checks; any other PodSpec field is kept as
    written and merged (maps merge, lists of named items merge by name, else replace)."""

    model_config = ApiModel.model_config | {"extra": "allow", "json_schema_extra": {
        "x-kubernetes-validations": [
            {"rule": "!has(self.initContainers) || self.initContainers.all(i, "
                     f"i.name != '{TRAINER_CONTAINER}' && (!has(self.containers) || "
                     "!self.containers.exists(c, c.name == i.name)))",
             "message": "spec.podTemplate.spec.initContainers names must differ from every "
                        f"container's, {TRAINER_CONTAINER} included",
             "fieldPath": ".initContainers"},
        ]}}

    restart_policy: str | None = Field(
        None,
        description="Must be Never if set (the default): a failed worker pod is not restarted "
                    "in place; runPolicy decides whether the group is retried as a new attempt.",
        json_schema_extra={"x-kubernetes-validations": [
            {"rule": "self == 'Never'",
             "message": "spec.podTemplate.spec.restartPolicy must be Never: retries are "
                        "handled by spec.runPolicy (backoffLimit, restartPolicy)"},
        ]})
    containers: list[PodContainer] | None = Field(
        None, max_length=MAX_POD_CONTAINERS,
        description=f"Containers, merged by name. The training container is named "
                    f"{TRAINER_CONTAINER} (its image is spec.image); any other name adds a "
                    "sidecar, which needs an image.",
        json_schema_extra={"x-kubernetes-list-type": "map",
                           "x-kubernetes-list-map-keys": ["name"]})
    init_containers: list[PodInitContainer] | None = Field(
        None, max_length=MAX_POD_CONTAINERS,
        description="Init containers (and native sidecars), merged by name; each needs a name "
                    "and an image.",
        json_schema_extra={"x-kubernetes-list-type": "map",
                           "x-kubernetes-list-map-keys": ["name"]})
    volumes: list[PodVolume] | None = Field(
        None, max_length=MAX_POD_VOLUMES,
        description="Volumes, merged by name (spec.checkpoint adds one named checkpoint).",
        json_schema_extra={"x-kubernetes-list-type": "map",
                           "x-kubernetes-list-map-keys": ["name"]})


def _partial_pod_spec(value: Any) -> dict[str, Any] | None:
    # The operator keeps the user's PodSpec as the plain dict it merges; the apiserver has
    # checked it against PodSpecOverride's schema already.
    if value is not None and not isinstance(value, dict):
        raise ValueError("spec.podTemplate.spec must be an object")
    return value


class PodTemplate(ApiModel):
    """Escape hatch merged into the generated pod template (volumes, sidecars, ...)."""

    metadata: PodTemplateMeta | None = Field(None, description="Extra pod labels/annotations.")
    spec: Annotated[dict[str, Any] | None, PlainValidator(
        _partial_pod_spec, json_schema_input_type=PodSpecOverride | None)] = Field(
        None,
        description="A partial PodSpec merged into every worker pod: maps merge, lists of named "
                    "items (containers, initContainers, volumes, env, volumeMounts, ports) merge "
                    "by name, anything else replaces the generated value. The training container "
                    f"is named {TRAINER_CONTAINER}: list it under containers to add env, "
                    "volumeMounts or resources (its image is spec.image and is refused here); "
                    "any other container is a sidecar and needs an image. restartPolicy, if "
                    "set, must be Never. tolerations here replace the generated ones (the GPU "
                    "toleration included): prefer spec.tolerations.")


class TrainingJobSpec(ApiModel):
    """What to train, on what hardware, and how to handle failure."""

    model_config = ApiModel.model_config | {"json_schema_extra": {"x-kubernetes-validations": [
        {"rule": "!has(self.distributed) || !has(self.distributed.nprocPerNode) || "
                 "!has(self.gpusPerWorker) || self.gpusPerWorker == 0 || "
                 "self.distributed.nprocPerNode <= self.gpusPerWorker",
         "message": "spec.distributed.nprocPerNode must not exceed spec.gpusPerWorker",
         "fieldPath": ".distributed.nprocPerNode"},
        {"rule": "!has(self.gpuType) || (has(self.gpusPerWorker) && self.gpusPerWorker > 0)",
         "message": "spec.gpuType needs spec.gpusPerWorker > 0",
         "fieldPath": ".gpuType"},
        {"rule": "self.workers == 1 || has(self.distributed)",
         "message": "spec.workers > 1 needs spec.distributed (e.g. backend: torchrun)",
         "fieldPath": ".workers"},
    ]}}

    image: str = Field(description="Container image of the training code.", min_length=1)
    command: list[str] | None = Field(None, description="Entrypoint override.")
    args: list[str] | None = Field(None, description="Arguments to the entrypoint.")
    env: list[EnvVar] | None = Field(None, description="Extra environment variables.")
    workers: int = Field(1, ge=1, le=MAX_WORKERS, description="Number of worker pods.")
    gpus_per_worker: int = Field(0, ge=0, le=MAX_GPUS_PER_WORKER,
                                 description="nvidia.com/gpu requested by each worker.")
    gpu_type: str | None = Field(
        None, max_length=63, pattern=r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$",
        description="GPU product, matched against the node label nvidia.com/gpu.product, "
                    "e.g. NVIDIA-H100-80GB-HBM3.")
    resources: ComputeResources | None = Field(None, description="CPU and memory per worker.")
    node_selector: dict[str, str] | None = Field(None, description="Extra node selector.")
    tolerations: list[dict[str, Any]] | None = Field(
        None, description="Extra tolerations (the nvidia.com/gpu taint is tolerated already "
                          "when GPUs are requested).")
    distributed: Distributed | None = Field(None, description="Multi-node torchrun settings.")
    run_policy: RunPolicy | None = Field(None, description="Retries, deadline, TTL, suspend.")
    queue: str | None = Field(
        None, max_length=63, pattern=DNS_LABEL,
        description="Kueue LocalQueue: sets kueue.x-k8s.io/queue-name and starts suspended "
                    "until Kueue admits the job.")
    checkpoint: Checkpoint | None = Field(None, description="Volume kept across retries.")
    output: Output | None = Field(None, description="The model artifact this job produces.")
    pod_template: PodTemplate | None = Field(
        None, description="Pod template overrides: extra pod labels and annotations, and a "
                          f"partial PodSpec merged into every worker pod. The training container "
                          f"is named {TRAINER_CONTAINER}; restartPolicy must be Never.")

    @property
    def policy(self) -> RunPolicy:
        return self.run_policy or RunPolicy()

    @property
    def nproc_per_node(self) -> int:
        if self.distributed and self.distributed.nproc_per_node:
            return self.distributed.nproc_per_node
        return max(self.gpus_per_worker, 1)


class WorkerCounts(ApiModel):
    active: int = Field(0, description="Pods running now.")
    succeeded: int = Field(0, description="Pods that completed.")
    failed: int = Field(0, description="Pods of the current attempt that failed.")


class OutputStatus(ApiModel):
    uri: str = Field(description="Resolved model URI.")
    version: str = Field(description="Model version.")
    format: str | None = Field(None, description="Model format, when declared.")


Phase = Literal["Pending", "Queued", "Running", "Succeeded", "Failed"]


class TrainingJobStatus(ApiModel):
    phase: Phase | None = Field(None, description="Pending, Queued, Running, Succeeded, Failed.")
    message: str | None = Field(None, description="Why the job is in this phase.")
    conditions: list[Condition] | None = Field(
        None, description="Created, Running, Suspended, Succeeded, Failed.")
    observed_generation: int | None = Field(None, description="Generation last reconciled.")
    job_name: str | None = Field(None, description="The batch/v1 Job running the workers.")
    service_name: str | None = Field(None, description="Headless Service of a multi-node job.")
    workers: WorkerCounts | None = Field(None, description="Pod counts from the Job.")
    restarts: int | None = Field(
        None, description="Times the whole worker group was restarted as a new attempt after "
                          "a retriable failure (see runPolicy.restartPolicy).")
    attempt: int | None = Field(
        None, description="The current attempt, from 0; each group restart creates a new Job.")
    gpus: int | None = Field(None, description="Total GPUs requested (workers x gpusPerWorker).")
    start_time: str | None = Field(None, description="When the Job started.")
    completion_time: str | None = Field(None, description="When the job finished.")
    duration: str | None = Field(None, description="Run time of a finished job, e.g. 5m12s.")
    output: OutputStatus | None = Field(None, description="The model produced on success.")


_RUNNING_IMMUTABLE = (
    "!has(oldSelf.status) || !has(oldSelf.status.phase) || oldSelf.status.phase != 'Running' "
    "|| (has(oldSelf.spec.runPolicy) && has(oldSelf.spec.runPolicy.suspend) "
    "&& oldSelf.spec.runPolicy.suspend)"
)

CRD = CRDInfo(
    kind="TrainingJob",
    plural="trainingjobs",
    short_names=("tj",),
    spec_model=TrainingJobSpec,
    status_model=TrainingJobStatus,
    description="TrainingJob runs GPU training on Kubernetes as batch/v1 Jobs: one pod, or "
                "multi-node torchrun through an Indexed Job and a headless Service.",
    printer_columns=(
        PrinterColumn("Phase", ".status.phase"),
        PrinterColumn("Workers", ".spec.workers", "integer"),
        PrinterColumn("GPUs", ".status.gpus", "integer"),
        PrinterColumn("Restarts", ".status.restarts", "integer", priority=1),
        PrinterColumn("Duration", ".status.duration"),
        PrinterColumn("Age", ".metadata.creationTimestamp", "date"),
        PrinterColumn("Message", ".status.message", priority=1),
    ),
    root_validations=(
        {"rule": f"self.metadata.name.size() <= {MAX_NAME_LENGTH}",
         "message": f"metadata.name must be at most {MAX_NAME_LENGTH} characters"},
        {"rule": f"!has(self.spec.distributed) || self.metadata.name.matches('{DNS_1035}')",
         "message": "metadata.name must be a DNS-1035 label (lowercase letters, digits and "
                    "'-', starting with a letter; no '.') when spec.distributed is set: it "
                    "names the headless Service of the workers"},
        {"rule": f"self.spec.image == oldSelf.spec.image || {_RUNNING_IMMUTABLE}",
         "message": "spec.image is immutable while the job is Running; suspend it first",
         "fieldPath": ".spec.image"},
        {"rule": f"self.spec.workers == oldSelf.spec.workers || {_RUNNING_IMMUTABLE}",
         "message": "spec.workers is immutable while the job is Running; suspend it first",
         "fieldPath": ".spec.workers"},
    ),
)
