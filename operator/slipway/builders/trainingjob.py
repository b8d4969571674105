"""TrainingJob -> batch/v1 Job (+ headless Service for multi-node torchrun)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from slipway.api.trainingjob import TrainingJobSpec
from slipway.builders.meta import child_labels, child_metadata
from slipway.builders.podmerge import merge

GPU = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
CONTAINER = "trainer"
SPEC_HASH_ANNOTATION = "slipway.dev/spec-hash"
# On the Job and its pods: which attempt (group restart) of the TrainingJob this is, from 0.
ATTEMPT_LABEL = "slipway.dev/attempt"
# The model output this attempt was told to write (JSON of uri, version, format).
OUTPUT_ANNOTATION = "slipway.dev/output"
OUTPUT_ENV = {"uri": "SLIPWAY_OUTPUT_URI", "version": "SLIPWAY_OUTPUT_VERSION",
              "format": "SLIPWAY_OUTPUT_FORMAT"}


class BuildError(ValueError):
    """The spec passed the schema but cannot become a valid Job."""


def service_name(tj_name: str) -> str:
    return tj_name


def job_name(tj_name: str, spec_hash: str, attempt: int = 0) -> str:
    # The pod template of a Job is immutable, so a changed template (allowed only
    # while suspended or before it runs) gets a new, still deterministic, Job. Each group
    # restart is a new Job too; attempt 0 keeps the name Jobs had before attempts existed.
    base = f"{tj_name}-{spec_hash[:5]}"
    return base if attempt == 0 else f"{base}-a{attempt}"


def job_attempt(job: dict[str, Any]) -> int:
    """The attempt a Job runs (0 for Jobs made before attempts were recorded)."""
    raw = ((job.get("metadata") or {}).get("labels") or {}).get(ATTEMPT_LABEL, "0")
    try:
        return max(int(raw), 0)
    except ValueError:
        return 0


def _env(spec: TrainingJobSpec, tj_name: str, namespace: str, job: str) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = []
    if spec.distributed:
        master = f"{job}-0.{service_name(tj_name)}.{namespace}.svc"
        port = str(spec.distributed.master_port)
        index = {"valueFrom": {"fieldRef": {
            "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}}
        nproc = str(spec.nproc_per_node)
        # As Kubeflow's training operator does: MASTER_*/WORLD_SIZE for code that reads them,
        # PET_* for torchrun (which reads PET_<FLAG> as --<flag>). No RANK: torchrun sets RANK,
        # LOCAL_RANK and WORLD_SIZE for each process it starts; a pod-wide RANK would be the
        # node index, wrong for every process but the first. WORLD_SIZE is the same total
        # torchrun computes. The rendezvous is c10d on worker 0, with an ID per attempt
        # (PET_RDZV_ID, added in build_job) so no straggler of an old attempt can join.
        # PET_MAX_RESTARTS=0: torchrun does not restart its workers in place; any failure
        # ends the pod, fails the attempt's Job, and the operator restarts the whole group.
        env += [
            {"name": "MASTER_ADDR", "value": master},
            {"name": "MASTER_PORT", "value": port},
            {"name": "WORLD_SIZE", "value": str(spec.workers * spec.nproc_per_node)},
            {"name": "NNODES", "value": str(spec.workers)},
            {"name": "NODE_RANK", **index},
            {"name": "PET_NNODES", "value": str(spec.workers)},
            {"name": "PET_NPROC_PER_NODE", "value": nproc},
            {"name": "PET_NODE_RANK", **index},
            {"name": "PET_MASTER_ADDR", "value": master},
            {"name": "PET_MASTER_PORT", "value": port},
            {"name": "PET_RDZV_BACKEND", "value": "c10d"},
            {"name": "PET_RDZV_ENDPOINT", "value": f"{master}:{port}"},
            {"name": "PET_MAX_RESTARTS", "value": "0"},
        ]
    if spec.checkpoint:
        env.append({"name": "CHECKPOINT_DIR", "value": spec.checkpoint.mount_path})
    for var in spec.env or []:
        env = [e for e in env if e["name"] != var.name]  # the user's value wins
        env.append(var.wire())
    return env


def _resources(spec: TrainingJobSpec) -> dict[str, Any]:
    amounts: dict[str, str] = {}
    if spec.resources and spec.resources.cpu:
        amounts["cpu"] = spec.resources.cpu
    if spec.resources and spec.resources.memory:
        amounts["memory"] = spec.resources.memory
    if spec.gpus_per_worker:
        amounts[GPU] = str(spec.gpus_per_worker)
    return {"requests": dict(amounts), "limits": dict(amounts)} if amounts else {}


def pod_template(spec: TrainingJobSpec, tj: dict[str, Any], job: str) -> dict[str, Any]:
    name, namespace = tj["metadata"]["name"], tj["metadata"]["namespace"]
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": spec.image,
        "env": _env(spec, name, namespace, job),
        "resources": _resources(spec),
        "securityContext": {
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    if spec.command:
        container["command"] = spec.command
    if spec.args:
        container["args"] = spec.args
    if spec.distributed:
        container["ports"] = [{"name": "rendezvous", "containerPort":
                               spec.distributed.master_port}]
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [container],
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "fsGroup": 1000},
    }
    selector = dict(spec.node_selector or {})
    tolerations = list(spec.tolerations or [])
    if spec.gpus_per_worker:
        if spec.gpu_type:
            selector[GPU_PRODUCT_LABEL] = spec.gpu_type
        tolerations.append({"key": GPU, "operator": "Exists", "effect": "NoSchedule"})
    if selector:
        pod["nodeSelector"] = selector
    if tolerations:
        pod["tolerations"] = tolerations
    if spec.distributed:
        pod["subdomain"] = service_name(name)
    if spec.checkpoint:
        pod["volumes"] = [{"name": "checkpoint",
                           "persistentVolumeClaim": {"claimName": spec.checkpoint.claim_name}}]
        container["volumeMounts"] = [{"name": "checkpoint",
                                      "mountPath": spec.checkpoint.mount_path}]
    labels = child_labels("TrainingJob", name)
    annotations: dict[str, str] = {}
    if spec.pod_template:
        if spec.pod_template.spec:
            pod = merge(pod, spec.pod_template.spec)
        if spec.pod_template.metadata:
            labels = {**(spec.pod_template.metadata.labels or {}), **labels}
            annotations = dict(spec.pod_template.metadata.annotations or {})
    containers = pod.get("containers")
    if not isinstance(containers, list) or not all(isinstance(c, dict) for c in containers):
        raise BuildError("spec.podTemplate.spec.containers must be a list of containers")
    meta: dict[str, Any] = {"labels": labels}
    if annotations:
        meta["annotations"] = annotations
    return {"metadata": meta, "spec": pod}


def spec_hash(spec: TrainingJobSpec, tj: dict[str, Any]) -> str:
    """Hash of everything that shapes the (immutable) pod template and completions."""
    probe = pod_template(spec, tj, job="JOB")
    raw = json.dumps([probe, spec.workers], sort_keys=True)
    return hashlib.sha256(raw.encode()).hexdigest()[:10]


def _add_env(template: dict[str, Any], values: dict[str, str]) -> None:
    """Append *values* to the trainer's env after hashing; a variable the user set wins."""
    for container in template["spec"]["containers"]:
        if container.get("name") == CONTAINER:
            given = {e.get("name") for e in container.get("env") or []}
            container["env"] = [*(container.get("env") or []), *(
                {"name": k, "value": v} for k, v in values.items() if k not in given)]


def failure_policy() -> dict[str, Any]:
    """Any failure of a worker's trainer fails the attempt's Job at once: a replacement pod
    could not rejoin the running group's rendezvous, so the operator restarts the whole group
    instead (or fails the job, by runPolicy.restartPolicy). Preempted or evicted pods
    (DisruptionTarget) are replaced by the Job as before, without failing it."""
    return {"rules": [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
        {"action": "FailJob", "onExitCodes": {"containerName": CONTAINER, "operator": "NotIn",
                                              "values": [0]}},
    ]}


def build_job(spec: TrainingJobSpec, tj: dict[str, Any], *, suspend: bool,
              attempt: int = 0) -> dict[str, Any]:
    """The batch/v1 Job of one attempt. *suspend* is decided by the controller (user, Kueue)."""
    digest = spec_hash(spec, tj)
    name = job_name(tj["metadata"]["name"], digest, attempt)
    policy = spec.policy
    template = pod_template(spec, tj, name)
    annotations = {SPEC_HASH_ANNOTATION: digest}
    # What differs per attempt (the rendezvous ID, the attempt label) and the output below
    # are added after hashing, so neither a restart nor a generation bump alone (suspend,
    # resume) changes the hash: attempt 0 keeps its name.
    template["metadata"]["labels"][ATTEMPT_LABEL] = str(attempt)
    if spec.distributed:
        _add_env(template, {"PET_RDZV_ID": f"{tj['metadata']['uid']}-{attempt}"})
    # The output is resolved once, here, and handed to the trainer: the version it writes is
    # the version status reports, whatever later edits do to metadata.generation.
    output = resolve_output(spec, tj)
    if output:
        annotations[OUTPUT_ANNOTATION] = json.dumps(output, sort_keys=True)
        _add_env(template, {var: output[key] for key, var in OUTPUT_ENV.items()
                            if key in output})
    labels = {ATTEMPT_LABEL: str(attempt)}
    if spec.queue:
        labels[QUEUE_LABEL] = spec.queue
    job_spec: dict[str, Any] = {
        # The operator owns retries (runPolicy.backoffLimit counts group restarts).
        "backoffLimit": 0,
        "completions": spec.workers,
        "parallelism": spec.workers,
        "suspend": suspend,
        "template": template,
        "podFailurePolicy": failure_policy(),
    }
    if spec.distributed:
        job_spec["completionMode"] = "Indexed"
    if policy.active_deadline_seconds:
        job_spec["activeDeadlineSeconds"] = policy.active_deadline_seconds
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": child_metadata(tj, name, extra_labels=labels,
                                   annotations=annotations),
        "spec": job_spec,
    }


def build_service(spec: TrainingJobSpec, tj: dict[str, Any]) -> dict[str, Any] | None:
    """Headless Service giving each worker a stable DNS name (needed for MASTER_ADDR)."""
    if not spec.distributed:
        return None
    name = tj["metadata"]["name"]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": child_metadata(tj, service_name(name)),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": child_labels("TrainingJob", name),
            "ports": [{"name": "rendezvous", "port": spec.distributed.master_port,
                       "targetPort": spec.distributed.master_port}],
        },
    }


def job_output(job: dict[str, Any] | None) -> dict[str, str] | None:
    """The output an attempt's Job was created with (None for Jobs made before we recorded it)."""
    raw = ((job or {}).get("metadata") or {}).get("annotations", {}).get(OUTPUT_ANNOTATION)
    if not raw:
        return None
    try:
        out = json.loads(raw)
    except ValueError:
        return None
    return {k: str(v) for k, v in out.items()} if isinstance(out, dict) else None


def resolve_output(spec: TrainingJobSpec, tj: dict[str, Any]) -> dict[str, str] | None:
    """The output for a new attempt: the URI template filled in."""
    if not spec.output:
        return None
    meta = tj["metadata"]
    version = spec.output.version or f"v{meta.get('generation', 1)}"
    uri = (spec.output.uri.replace("{name}", meta["name"])
           .replace("{namespace}", meta["namespace"]).replace("{version}", version))
    out = {"uri": uri, "version": version}
    if spec.output.format:
        out["format"] = spec.output.format
    return out
