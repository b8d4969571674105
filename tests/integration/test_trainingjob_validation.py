"""The apiserver rejects invalid TrainingJobs at apply time, naming the field."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.helpers import Kubectl, wait_for


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


def test_valid_samples_apply(kubectl: Kubectl, namespace: str) -> None:
    from pathlib import Path

    # Relative to this file, not the working directory: an empty glob would pass silently.
    samples = sorted((Path(__file__).resolve().parents[2] / "manifests" / "samples")
                     .glob("trainingjob-*.yaml"))
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
