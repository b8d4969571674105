"""Shared fixtures. Tests marked `cluster` run against one real local control
plane per session (see slipway.devcluster); each test gets its own namespace."""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from slipway.devcluster import Cluster
from slipway.devcluster.cluster import free_port
from tests.helpers import Kubectl, OperatorProcess


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    directory = Path(os.environ.get("SLIPWAY_TEST_CLUSTER_DIR") or
                     tmp_path_factory.mktemp("cluster"))
    c = Cluster(directory)
    c.start()
    print(f"\ncluster up: timings {c.timings}, rss MiB {c.rss_mib()}")
    yield c
    c.stop()


@pytest.fixture(scope="session")
def kubectl(cluster: Cluster) -> Kubectl:
    return Kubectl(cluster.bin / "kubectl", cluster.kubeconfig)


@pytest.fixture(scope="session")
def kube_env(cluster: Cluster) -> Iterator[None]:
    """Point the in-process API client (slipway.kube) at the test cluster."""
    import slipway.kube

    old = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = str(cluster.kubeconfig)
    slipway.kube.connect(str(cluster.kubeconfig))
    yield
    slipway.kube._connection = None
    if old is None:
        os.environ.pop("KUBECONFIG", None)
    else:
        os.environ["KUBECONFIG"] = old


def operator_env(cluster: Cluster) -> dict[str, str]:
    """What an operator run against the local platform needs (Canary analyses query its
    Prometheus)."""
    prometheus = cluster.endpoints.get("prometheus")
    return {"SLIPWAY_PROMETHEUS_URL": prometheus} if prometheus else {}


@pytest.fixture(scope="session")
def operator(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[OperatorProcess]:
    """One `slipway run` process for the whole session."""
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    op = OperatorProcess(cluster.kubeconfig, log, free_port(),
                         extra_env=operator_env(cluster),
                         prometheus_targets=cluster.dir / "prometheus" / "targets").start()
    yield op
    op.stop()


# Kueue (the `kueue` fixture) manages the Jobs of namespaces with this label only.
KUEUE_NAMESPACE_LABEL = ("slipway.dev/kueue", "managed")


@pytest.fixture(scope="session")
def kueue(cluster: Cluster) -> Cluster:
    """Kueue on the session cluster, started on first use and left running: built the first
    time from hack/tools/kueue (about 135 s cold on 2 cores, cached afterwards). It manages
    only the Jobs of namespaces labelled KUEUE_NAMESPACE_LABEL, so other tests' Jobs with a
    queue-name label (and no Kueue in mind) are left alone."""
    from slipway.devcluster.peers import start_kueue

    key, value = KUEUE_NAMESPACE_LABEL
    start_kueue(cluster, namespace_selector={"matchLabels": {key: value}})
    print(f"\nkueue up: build {cluster.timings.get('kueue-build')}s, "
          f"total {cluster.timings.get('kueue')}s")
    return cluster


@pytest.fixture(scope="session")
def gateway(cluster: Cluster) -> str:
    """Base URL of the local gateway (stand-in for a Gateway API data plane)."""
    return cluster.endpoints["gateway"]


@pytest.fixture(scope="session")
def prometheus(cluster: Cluster) -> str:
    """Base URL of the local Prometheus."""
    return cluster.endpoints["prometheus"]


@pytest.fixture(scope="session")
def model_store(cluster: Cluster) -> Path:
    """Root of the local model store (storage URIs map to folders below it)."""
    return cluster.dir / "models"


_namespace_serial = itertools.count()


@pytest.fixture
def namespace(kubectl: Kubectl, request: pytest.FixtureRequest) -> Iterator[str]:
    # The counter makes names unique within a session by construction (parametrized tests
    # share a 24-character prefix, and 5 random hex digits alone did collide once); the
    # random part keeps a reused cluster's terminating namespaces out of the way.
    # At most 40 characters: KServe builds the host label "<isvc>-predictor-<namespace>",
    # which must fit in 63 (a canary's "churn-canary-predictor-" leaves 40).
    name = f"t-{request.node.name[:24].lower().replace('_', '-').strip('-')}-" \
           f"{next(_namespace_serial)}-{uuid.uuid4().hex[:5]}"
    name = "".join(ch for ch in name if ch.isalnum() or ch == "-")
    kubectl("create", "namespace", name)
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Everything under tests/integration needs the control plane.
    for item in items:
        if "integration" in Path(str(item.fspath)).parts:
            item.add_marker(pytest.mark.cluster)
