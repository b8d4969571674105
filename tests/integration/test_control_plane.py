"""The local control plane itself: scheduling onto fake GPU nodes, Jobs completing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from slipway.devcluster import Cluster
from slipway.devcluster.cluster import stop_from_state
from tests.helpers import Kubectl, wait_for


def test_nodes_gpus_and_crds(kubectl: Kubectl) -> None:
    nodes = kubectl.items("nodes", "default")
    gpu = [n for n in nodes if n["metadata"]["labels"].get("nvidia.com/gpu.present") == "true"]
    assert len(gpu) == 4 and len(nodes) == 6
    assert all(n["status"]["allocatable"]["nvidia.com/gpu"] == "8" for n in gpu)
    crds = {c["metadata"]["name"] for c in kubectl.items("crd", "default")}
    assert {"trainingjobs.slipway.dev", "modeldeployments.slipway.dev",
            "inferenceservices.serving.kserve.io",
            "clusterservingruntimes.serving.kserve.io"} <= crds


def _job(name: str, gpus: int, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
        "spec": {"backoffLimit": 0, "template": {
            "metadata": {"annotations": annotations or {}},
            "spec": {
                "restartPolicy": "Never",
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists",
                                 "effect": "NoSchedule"}],
                "containers": [{"name": "c", "image": "busybox",
                                "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}]}}},
    }


def test_gpu_job_is_scheduled_on_gpu_node_and_completes(kubectl: Kubectl, namespace: str) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(_job("gpu", 1)))

    def complete() -> bool:
        job = kubectl.get("job", "gpu", namespace) or {}
        conds = job.get("status", {}).get("conditions", [])
        return any(c["type"] == "Complete" and c["status"] == "True" for c in conds)

    wait_for(complete, 60, what="the GPU Job to complete")
    pods = kubectl.items("pods", namespace, "job-name=gpu")
    assert pods and pods[0]["spec"]["nodeName"].startswith("kwok-gpu-")
    assert pods[0]["status"]["phase"] == "Succeeded"


def test_failing_annotation_fails_the_job(kubectl: Kubectl, namespace: str) -> None:
    job = _job("bad", 1, {"slipway.dev/fake-exit": "3"})
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(job))

    def failed() -> dict[str, Any] | None:
        j = kubectl.get("job", "bad", namespace) or {}
        return next((c for c in j.get("status", {}).get("conditions", [])
                     if c["type"] == "Failed" and c["status"] == "True"), None)

    cond = wait_for(failed, 60, what="the Job to fail")
    assert cond["reason"] == "BackoffLimitExceeded"
    pod = kubectl.items("pods", namespace, "job-name=bad")[0]
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 3


def test_too_many_gpus_stays_pending_unschedulable(kubectl: Kubectl, namespace: str) -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "huge"},
           "spec": {"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
                    "containers": [{"name": "c", "image": "x",
                                    "resources": {"limits": {"nvidia.com/gpu": "9"}}}]}}
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(pod))

    def unschedulable() -> dict[str, Any] | None:
        p = kubectl.get("pod", "huge", namespace) or {}
        return next((c for c in p.get("status", {}).get("conditions", [])
                     if c["type"] == "PodScheduled" and c["reason"] == "Unschedulable"), None)

    cond = wait_for(unschedulable, 60, what="PodScheduled=False/Unschedulable")
    assert "nvidia.com/gpu" in cond["message"]
    assert (kubectl.get("pod", "huge", namespace) or {})["status"]["phase"] == "Pending"


def test_second_cluster_starts_and_stops_without_orphans(tmp_path: Path) -> None:
    c = Cluster(tmp_path / "c2", gpu_nodes=1, cpu_nodes=0, install_crds=False).start()
    pids = [comp.pid for comp in c.state.components] if c.state else []
    assert len(pids) == 5
    assert stop_from_state(tmp_path / "c2")
    for pid in pids:
        stat = Path(f"/proc/{pid}/stat")
        assert not stat.exists() or stat.read_text().split(")")[-1].split()[0] == "Z"
