"""Fake kwok nodes: GPU nodes shaped like a GPU-operator cluster, plus CPU nodes."""

from __future__ import annotations

from typing import Any

GPU_PRODUCT = "NVIDIA-H100-80GB-HBM3"
GPU_RESOURCE = "nvidia.com/gpu"


def _node(name: str, labels: dict[str, str], capacity: dict[str, str],
          taints: list[dict[str, str]]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            # kwok manages only nodes with this annotation (see its --manage-nodes-* flags).
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
                **labels,
            },
        },
        "spec": {"taints": taints},
        "status": {"capacity": capacity, "allocatable": dict(capacity)},
    }


def fake_nodes(gpu_nodes: int = 4, cpu_nodes: int = 2, gpus_per_node: int = 8,
               gpu_product: str = GPU_PRODUCT) -> list[dict[str, Any]]:
    """Node manifests: *gpu_nodes* with *gpus_per_node* GPUs each and a GPU taint."""
    nodes = []
    for i in range(gpu_nodes):
        nodes.append(_node(
            f"kwok-gpu-{i}",
            {"nvidia.com/gpu.product": gpu_product, "nvidia.com/gpu.present": "true",
             "nvidia.com/gpu.count": str(gpus_per_node)},
            {"cpu": "96", "memory": "1Ti", "pods": "110", GPU_RESOURCE: str(gpus_per_node)},
            # Mirror GPU-operator clusters: only pods that tolerate GPUs land here.
            [{"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"}],
        ))
    for i in range(cpu_nodes):
        nodes.append(_node(f"kwok-cpu-{i}", {}, {"cpu": "32", "memory": "128Gi", "pods": "110"},
                           []))
    return nodes
