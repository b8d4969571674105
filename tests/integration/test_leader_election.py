"""Two operator replicas with leader election, on the real control plane.

The session's single operator is stopped for these tests (a third, standalone operator
would reconcile next to the two replicas) and started again afterwards.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from slipway.devcluster.cluster import Cluster, free_port
from tests.conftest import operator_env
from tests.helpers import Kubectl, OperatorProcess, wait_for

TAKEOVER_LIMIT = 30.0  # seconds from SIGKILL of the active replica to the standby active
JOBS = 24


@pytest.fixture
def replicas(cluster: Cluster, operator: OperatorProcess, namespace: str,
             tmp_path: Path) -> Iterator[tuple[OperatorProcess, OperatorProcess]]:
    operator.stop()

    def replica(name: str) -> OperatorProcess:
        return OperatorProcess(cluster.kubeconfig, tmp_path / f"{name}.log", free_port(),
                               extra_env={**operator_env(cluster),
                                          "SLIPWAY_LEADER_ELECTION": "true",
                                          "SLIPWAY_LEASE_NAMESPACE": namespace,
                                          "POD_NAME": name})

    a, b = replica("replica-a"), replica("replica-b")
    try:
        a.start()
        wait_for(lambda: a.role() == "active", 30, what="replica-a active")
        b.start()
        yield a, b
    finally:
        a.stop()
        b.stop()
        operator.start()


def lease(kubectl: Kubectl, namespace: str) -> dict[str, object]:
    obj = kubectl.get("lease", "slipway-operator", namespace)
    assert obj is not None
    return dict(obj["spec"])


def tj(name: str) -> str:
    return yaml.safe_dump({
        "apiVersion": "slipway.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name},
        "spec": {"image": "trainer:1", "podTemplate": {"metadata": {"annotations": {
            "slipway.dev/fake-duration": "3s"}}}}})


def test_standby_takes_over_after_sigkill_without_duplicates(
        kubectl: Kubectl, namespace: str,
        replicas: tuple[OperatorProcess, OperatorProcess]) -> None:
    a, b = replicas
    assert b.role() == "standby"
    assert lease(kubectl, namespace)["holderIdentity"] == "replica-a"

    names = [f"job-{i:02d}" for i in range(JOBS)]
    created: list[str] = []

    def create_all() -> None:
        for name in names:
            kubectl("apply", "-n", namespace, "-f", "-", input=tj(name))
            created.append(name)
            time.sleep(0.5)

    creator = threading.Thread(target=create_all, daemon=True)
    creator.start()
    wait_for(lambda: len(created) >= JOBS // 3, 60, what="a third of the jobs created")
    a.kill()
    killed = time.monotonic()
    wait_for(lambda: b.role() == "active", TAKEOVER_LIMIT + 5, interval=0.2,
             what="the standby to take over")
    takeover = time.monotonic() - killed
    creator.join(60)
    print(f"\ntakeover {takeover:.1f}s after SIGKILL of the active replica "
          f"({len(created)} TrainingJobs, {JOBS // 3} before the kill)")
    assert takeover <= TAKEOVER_LIMIT
    spec = lease(kubectl, namespace)
    assert spec["holderIdentity"] == "replica-b" and int(str(spec["leaseTransitions"])) >= 1

    def all_succeeded() -> bool:
        phases = [((kubectl.get("trainingjob", n, namespace) or {}).get("status") or {})
                  .get("phase") for n in names]
        assert all(p == "Succeeded" for p in phases), phases
        return True

    wait_for(all_succeeded, 120, what="every TrainingJob Succeeded")
    jobs = kubectl.items("jobs", namespace, None)
    per_tj: dict[str, int] = {}
    for job in jobs:
        owner = job["metadata"]["labels"]["slipway.dev/trainingjob"]
        per_tj[owner] = per_tj.get(owner, 0) + 1
    assert per_tj == dict.fromkeys(names, 1), per_tj


def test_clean_stop_hands_over_at_once(
        kubectl: Kubectl, namespace: str,
        replicas: tuple[OperatorProcess, OperatorProcess]) -> None:
    a, b = replicas
    wait_for(lambda: b.role() == "standby", 30, what="replica-b standby")
    a.stop()  # SIGTERM: the Lease is released, not left to expire
    stopped = time.monotonic()
    wait_for(lambda: b.role() == "active", 15, interval=0.2, what="replica-b active")
    print(f"\nhand-over {time.monotonic() - stopped:.1f}s after a clean stop")
    assert time.monotonic() - stopped < 10  # well inside the 15 s lease duration
    kubectl("apply", "-n", namespace, "-f", "-", input=tj("after"))
    wait_for(lambda: ((kubectl.get("trainingjob", "after", namespace) or {}).get("status")
                      or {}).get("phase") == "Succeeded", 60, what="a job run by replica-b")
