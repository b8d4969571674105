"""KServe with `enableGatewayApi: true` on a platform of its own: KServe's own HTTPRoutes
become Accepted through the local gateway (the stand-in for a Gateway API implementation),
the InferenceService goes Ready and serves through them; `dev down` leaves no process."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from slipway.devcluster import Cluster
from slipway.devcluster.modelstore import upload_example_model
from tests.helpers import Kubectl, wait_for


@pytest.fixture(scope="module")
def gw_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("gwapi"), gpu_nodes=0, cpu_nodes=1,
                kserve_gateway_api=True)
    c.start()
    yield c
    c.stop()


def test_kserve_httproutes_accepted_and_served(gw_cluster: Cluster) -> None:
    kubectl = Kubectl(gw_cluster.bin / "kubectl", gw_cluster.kubeconfig)
    uri = "s3://models/gw/iris"
    upload_example_model(gw_cluster.dir / "models", uri, "sklearn")
    kubectl.apply({
        "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
        "metadata": {"name": "iris", "namespace": "default"},
        "spec": {"predictor": {"model": {"modelFormat": {"name": "sklearn"},
                                         "runtime": "slipway-sklearn", "storageUri": uri,
                                         "protocolVersion": "v2"}}}})

    def ready() -> dict[str, object]:
        obj = kubectl.get("inferenceservice", "iris", "default") or {}
        st = obj.get("status") or {}
        conds = {c["type"]: c["status"] for c in st.get("conditions", [])}
        assert conds.get("Ready") == "True", st
        return dict(st)

    st = wait_for(ready, 90, what="InferenceService Ready through KServe's HTTPRoutes")
    routes = kubectl.items("httproutes", "default")
    assert sorted(r["metadata"]["name"] for r in routes) == ["iris", "iris-predictor"]
    for route in routes:
        assert route["spec"]["parentRefs"][0]["name"] == "kserve-ingress-gateway"
        parent = route["status"]["parents"][0]
        assert parent["controllerName"] == "slipway.dev/local-gateway"
        assert {c["type"]: c["status"] for c in parent["conditions"]} == {
            "Accepted": "True", "ResolvedRefs": "True"}
    assert not kubectl.items("ingresses", "default")  # Gateway API mode makes no Ingress

    body = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP32",
                        "data": [0.1, 0.2, 0.3, 0.4]}]}
    req = urllib.request.Request(f"{gw_cluster.endpoints['gateway']}/v2/models/iris/infer",
                                 data=json.dumps(body).encode(),
                                 headers={"Host": urlsplit(str(st["url"])).netloc,
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.headers["x-slipway-backend"] == "default/iris-predictor"
        assert len(json.loads(resp.read())["outputs"][0]["data"]) == 1


def _cmdlines() -> dict[int, str]:
    out = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                out[int(proc.name)] = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                    errors="replace")
            except OSError:
                continue  # it exited meanwhile
    return out


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_stop_leaves_no_process(gw_cluster: Cluster) -> None:
    """Runs after the test above: the model server it started must go down with the rest."""
    assert gw_cluster.state is not None
    pids = [comp.pid for comp in gw_cluster.state.components]
    assert {"kserve-manager", "prometheus", "gateway", "podrunner"} <= {
        comp.name for comp in gw_cluster.state.components}
    servers = [pid for pid, cmd in _cmdlines().items()
               if "sklearn-server" in cmd and str(gw_cluster.dir) in cmd]
    assert servers, "no live model server process found"
    gw_cluster.stop()
    assert [p for p in pids + servers if _running(p)] == []
