"""The apiserver rejects invalid TrainingJobs at apply time, naming the field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from slipway.api.trainingjob import TrainingJobSpec
from slipway.builders.trainingjob import BuildError, build_job
from tests.helpers import Kubectl, wait_for

ROOT = Path(__file__).resolve().parents[2]


def tj(name: str = "v", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "slipway.dev/v1alpha1", "kind": "TrainingJob",
            "metadata": {"name": name}, "spec": {"image": "img:1", **spec}}


INVALID = [
    ("zero workers", tj(workers=0), "spec.workers"),
    ("negative workers", tj(workers=-2), "spec.workers"),
    ("too many gpus", tj(gpusPerWorker=17), "spec.gpusPerWorker"),
    ("negative gpus", tj(gpusPerWorker=-1), "spec.gpusPerWorker"),
    ("nproc above gpus", tj(gpusPerWorker=2, distributed={"nprocPerNode": 4}),
     "spec.distributed.nprocPerNode must not exceed spec.gpusPerWorker"),
    ("bad queue name", tj(queue="Team_A"), "spec.queue"),
    ("queue too long", tj(queue="q" * 64), "spec.queue"),
    ("missing image", {"apiVersion": "slipway.dev/v1alpha1", "kind": "TrainingJob",
                       "metadata": {"name": "v"}, "spec": {"workers": 1}}, "spec.image"),
    ("multi worker without distributed", tj(workers=2),
     "spec.workers > 1 needs spec.distributed"),
    ("unknown backend", tj(workers=2, distributed={"backend": "mpi"}),
     "spec.distributed.backend"),
    ("negative backoff", tj(runPolicy={"backoffLimit": -1}), "spec.runPolicy.backoffLimit"),
    ("zero deadline", tj(runPolicy={"activeDeadlineSeconds": 0}),
     "spec.runPolicy.activeDeadlineSeconds"),
    ("bad output scheme", tj(output={"uri": "ftp://x/y"}), "spec.output.uri"),
    ("gpu type without gpus", tj(gpuType="NVIDIA-H100-80GB-HBM3"),
     "spec.gpuType needs spec.gpusPerWorker > 0"),
    ("relative checkpoint path", tj(checkpoint={"claimName": "c", "mountPath": "ckpt"}),
     "spec.checkpoint.mountPath"),
    ("bad cpu quantity", tj(resources={"cpu": "lots"}), "spec.resources.cpu"),
    ("master port too low", tj(workers=2, distributed={"masterPort": 80}),
     "spec.distributed.masterPort"),
    ("name too long", tj(name="n" * 46), "metadata.name must be at most 45 characters"),
    # Kubeflow's own example names: valid object names, invalid Service names.
    ("dotted name, distributed", tj(name="llama3.1-sft", workers=2, distributed={}),
     "metadata.name must be a DNS-1035 label"),
    ("name starting with a digit, distributed", tj(name="7b-pretrain", workers=2,
                                                   distributed={}),
     "metadata.name must be a DNS-1035 label"),
    ("ttl beyond int32", tj(runPolicy={"ttlSecondsAfterFinished": 2**31}),
     "spec.runPolicy.ttlSecondsAfterFinished"),
    ("deadline beyond int32", tj(runPolicy={"activeDeadlineSeconds": 10**12}),
     "spec.runPolicy.activeDeadlineSeconds"),
]


@pytest.mark.parametrize(("case", "obj", "message"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_spec_rejected_with_field(kubectl: Kubectl, namespace: str, case: str,
                                          obj: dict[str, Any], message: str) -> None:
    proc = kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-",
                   input=yaml.safe_dump(obj), check=False)
    assert proc.returncode != 0, f"{case}: accepted but should be rejected"
    assert message in proc.stderr, f"{case}: {proc.stderr}"



def dry_run(kubectl: Kubectl, namespace: str, obj: dict[str, Any]) -> Any:
    # JSON, not YAML: kubectl reads YAML 1.1, where a bare y or n is a boolean.
    return kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-",
                   input=json.dumps(obj), check=False)


def job_from(obj: dict[str, Any], namespace: str) -> dict[str, Any]:
    """The Job the operator would create for *obj*, built without the CRD's checks."""
    parent = {**obj, "metadata": {**obj["metadata"], "namespace": namespace,
                                  "uid": "00000000-0000-0000-0000-000000000001",
                                  "generation": 1}}
    return build_job(TrainingJobSpec.model_validate(obj["spec"]), parent, suspend=True)


def sidecar(**fields: Any) -> dict[str, Any]:
    return {"name": "log-shipper", "image": "fluent-bit:3", **fields}


# (case, spec.podTemplate, the path the error must name, what it must say, and how the same
# spec failed before the CRD checked it: "job" = the Job API refused the generated Job,
# "pod" = the Job was accepted but its pods are refused (the Job controller's FailedCreate),
# "build" = the builder raised BuildError, None = it was accepted: a policy rule).
POD_TEMPLATE_INVALID: list[tuple[str, dict[str, Any], str, str, str | None]] = [
    ("restartPolicy Always", {"spec": {"restartPolicy": "Always"}},
     "spec.podTemplate.spec.restartPolicy", "must be Never", "job"),
    # The Job API allows OnFailure, but not with the podFailurePolicy Slipway sets.
    ("restartPolicy OnFailure", {"spec": {"restartPolicy": "OnFailure"}},
     "spec.podTemplate.spec.restartPolicy", "must be Never", "job"),
    ("sidecar without image", {"spec": {"containers": [{"name": "trainer"},
                                                       {"name": "log-shipper"}]}},
     "spec.podTemplate.spec.containers[1].image",
     "is required for every container except trainer", "job"),
    # Unnamed items do not merge: the list would replace the generated one, trainer included.
    ("container without name", {"spec": {"containers": [{"image": "fluent-bit:3"}]}},
     "spec.podTemplate.spec.containers[0].name", "Required value", "job"),
    ("trainer image set", {"spec": {"containers": [{"name": "trainer", "image": "img:2"}]}},
     "spec.podTemplate.spec.containers[0].image",
     "the trainer container's image is spec.image", None),
    ("containers not a list", {"spec": {"containers": "trainer"}},
     "spec.podTemplate.spec.containers", "must be of type array", "build"),
    ("container not an object", {"spec": {"containers": ["trainer"]}},
     "spec.podTemplate.spec.containers[0]", "must be of type object", "build"),
    ("duplicate container names", {"spec": {"containers": [sidecar(), sidecar()]}},
     "spec.podTemplate.spec.containers[1]", "Duplicate value", "job"),
    ("container name not a DNS label", {"spec": {"containers": [sidecar(name="Log_Shipper")]}},
     "spec.podTemplate.spec.containers[0].name", "should match", "job"),
    ("sidecar image with trailing space", {"spec": {"containers": [sidecar(image="log:1 ")]}},
     "spec.podTemplate.spec.containers[0].image", "should match", "pod"),
    ("init container without image", {"spec": {"initContainers": [{"name": "fetch"}]}},
     "spec.podTemplate.spec.initContainers[0].image", "Required value", "job"),
    ("init container without name", {"spec": {"initContainers": [{"image": "busybox:1"}]}},
     "spec.podTemplate.spec.initContainers[0].name", "Required value", "job"),
    ("init container named trainer",
     {"spec": {"initContainers": [{"name": "trainer", "image": "busybox:1"}]}},
     "spec.podTemplate.spec.initContainers", "names must differ from every container's", "job"),
    ("init container named like a sidecar",
     {"spec": {"initContainers": [{"name": "log-shipper", "image": "busybox:1"}],
               "containers": [sidecar()]}},
     "spec.podTemplate.spec.initContainers", "names must differ from every container's", "job"),
    ("trainer env without name",
     {"spec": {"containers": [{"name": "trainer", "env": [{"value": "1"}]}]}},
     "spec.podTemplate.spec.containers[0].env[0].name", "Required value", "job"),
    ("trainer volumeMount without name",
     {"spec": {"containers": [{"name": "trainer", "volumeMounts": [{"mountPath": "/x"}]}]}},
     "spec.podTemplate.spec.containers[0].volumeMounts[0].name", "Required value", "job"),
    ("volume without name", {"spec": {"volumes": [{"emptyDir": {}}]}},
     "spec.podTemplate.spec.volumes[0].name", "Required value", "job"),
    ("duplicate volume names", {"spec": {"volumes": [{"name": "a", "emptyDir": {}},
                                                     {"name": "a", "emptyDir": {}}]}},
     "spec.podTemplate.spec.volumes[1]", "Duplicate value", "job"),
    ("label value with a space", {"metadata": {"labels": {"team": "nlp research"}}},
     "spec.podTemplate.metadata.labels.team", "should match", "job"),
    ("label key not a qualified name", {"metadata": {"labels": {"-team": "nlp"}}},
     "spec.podTemplate.metadata.labels", "keys must be qualified names", "job"),
    ("annotation key not a qualified name", {"metadata": {"annotations": {"a/b/c": "x"}}},
     "spec.podTemplate.metadata.annotations", "keys must be qualified names", "job"),
]


@pytest.mark.parametrize(("case", "pod_template", "path", "message", "late"),
                         POD_TEMPLATE_INVALID, ids=[c[0] for c in POD_TEMPLATE_INVALID])
def test_invalid_pod_template_rejected_naming_its_path(
        kubectl: Kubectl, namespace: str, case: str, pod_template: dict[str, Any], path: str,
        message: str, late: str | None) -> None:
    obj = tj(podTemplate=pod_template)
    proc = dry_run(kubectl, namespace, obj)
    assert proc.returncode != 0, f"{case}: accepted but should be rejected"
    # The path the user wrote, not one in the generated Job (containers[1].image).
    assert f"{path}:" in proc.stderr, f"{case}: {proc.stderr}"
    assert message in proc.stderr, f"{case}: {proc.stderr}"
    # Each rule guards a failure that otherwise came late, from the operator.
    if late == "build":
        with pytest.raises(BuildError):
            job_from(obj, namespace)
    elif late == "job":
        job = dry_run(kubectl, namespace, job_from(obj, namespace))
        assert job.returncode != 0, f"{case}: the Job API accepts the generated Job"
        assert "spec.template" in job.stderr, job.stderr
    elif late == "pod":
        job = job_from(obj, namespace)
        assert dry_run(kubectl, namespace, job).returncode == 0
        template = job["spec"]["template"]
        pod = dry_run(kubectl, namespace, {
            "apiVersion": "v1", "kind": "Pod", "spec": template["spec"],
            "metadata": {**template["metadata"], "name": "worker"}})
        assert pod.returncode != 0, f"{case}: the Pod API accepts the generated pod"


VALID_POD_TEMPLATES: list[tuple[str, dict[str, Any]]] = [
    ("sidecar with image", {"podTemplate": {"spec": {"containers": [sidecar()]}}}),
    ("trainer overrides", {"podTemplate": {"spec": {
        "containers": [{"name": "trainer",
                        "resources": {"limits": {"memory": "1Gi"},
                                      "requests": {"memory": "1Gi"}},
                        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
                        "env": [{"name": "NCCL_DEBUG", "value": "INFO"}]},
                       sidecar(ports=[{"containerPort": 2020}])],
        "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory"}}]}}}),
    ("restartPolicy Never", {"podTemplate": {"spec": {"restartPolicy": "Never"}}}),
    ("init container and native sidecar", {"podTemplate": {"spec": {"initContainers": [
        {"name": "fetch", "image": "busybox:1", "command": ["true"]},
        {"name": "proxy", "image": "envoy:1", "restartPolicy": "Always"}]}}}),
    ("other PodSpec fields kept", {"podTemplate": {"spec": {
        "terminationGracePeriodSeconds": 120, "shareProcessNamespace": True,
        "nodeSelector": {"topology.kubernetes.io/zone": "a"}}}}),
    ("labels and annotations", {"podTemplate": {"metadata": {
        "labels": {"team": "nlp", "example.com/tier": "gold", "empty": ""},
        "annotations": {"slipway.dev/fake-duration": "3s", "note": "free text: any value"}}}}),
    ("checkpoint mount and distributed port merged", {
        "workers": 2, "distributed": {}, "checkpoint": {"claimName": "ckpt"},
        "podTemplate": {"spec": {"containers": [{
            "name": "trainer", "volumeMounts": [{"name": "checkpoint", "readOnly": False}],
            "ports": [{"name": "metrics", "containerPort": 9090}]}]}}}),
]


@pytest.mark.parametrize(("case", "spec"), VALID_POD_TEMPLATES,
                         ids=[c[0] for c in VALID_POD_TEMPLATES])
def test_valid_pod_template_accepted_and_builds_a_valid_job(
        kubectl: Kubectl, namespace: str, case: str, spec: dict[str, Any]) -> None:
    obj = tj(**spec)
    proc = dry_run(kubectl, namespace, obj)
    assert proc.returncode == 0, f"{case}: {proc.stderr}"
    job = job_from(obj, namespace)
    trainer = next(c for c in job["spec"]["template"]["spec"]["containers"]
                   if c["name"] == "trainer")
    assert trainer["image"] == "img:1"
    proc = dry_run(kubectl, namespace, job)
    assert proc.returncode == 0, f"{case}: the Job API refuses the generated Job: {proc.stderr}"


def test_explain_documents_pod_template_rules(kubectl: Kubectl) -> None:
    def explained() -> str | None:
        proc = kubectl("explain", "trainingjob.spec.podTemplate", check=False)
        return proc.stdout if proc.returncode == 0 else None

    text = " ".join(wait_for(explained, 30, what="kubectl explain").split())
    assert "named trainer" in text and "restartPolicy must be Never" in text

def test_valid_samples_apply(kubectl: Kubectl, namespace: str) -> None:
    # Relative to this file, not the working directory: an empty glob would pass silently.
    samples = sorted((ROOT / "manifests" / "samples").glob("trainingjob-*.yaml"))
    assert len(samples) >= 3, samples
    for sample in samples:
        proc = kubectl("apply", "--dry-run=server", "-n", namespace, "-f", str(sample),
                       check=False)
        assert proc.returncode == 0, f"{sample}: {proc.stderr}"


def test_image_and_workers_immutable_while_running(kubectl: Kubectl, namespace: str,
                                                   operator: object) -> None:
    obj = tj("imm", podTemplate={"metadata": {"annotations": {
        "slipway.dev/fake-duration": "120s"}}})
    kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(obj))
    wait_for(lambda: (kubectl.get("trainingjob", "imm", namespace) or {}).get(
        "status", {}).get("phase") == "Running", 60, what="phase Running")
    proc = kubectl("patch", "trainingjob", "imm", "-n", namespace, "--type=merge",
                   "-p", '{"spec":{"image":"img:2"}}', check=False)
    assert proc.returncode != 0
    assert "spec.image is immutable while the job is Running" in proc.stderr
    proc = kubectl("patch", "trainingjob", "imm", "-n", namespace, "--type=merge",
                   "-p", '{"spec":{"workers":2,"distributed":{}}}', check=False)
    assert proc.returncode != 0 and "spec.workers is immutable" in proc.stderr
    # Once suspended, the image may change.
    kubectl("patch", "trainingjob", "imm", "-n", namespace, "--type=merge",
            "-p", '{"spec":{"runPolicy":{"suspend":true}}}')
    kubectl("patch", "trainingjob", "imm", "-n", namespace, "--type=merge",
            "-p", '{"spec":{"image":"img:2"}}')
