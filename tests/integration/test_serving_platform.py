"""The serving platform end to end: KServe's real controller and webhooks, live model servers
(run by the pod runner, the stand-in for a container runtime), the local gateway (the
stand-in for a Gateway API data plane) and the real Prometheus."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from slipway.devcluster.load import load_in_background
from slipway.devcluster.modelstore import local_path, upload_example_model
from slipway.devcluster.serving import query
from tests.helpers import Kubectl, OperatorProcess, wait_for

TIMEOUT = 90
ROWS = [[0.5, -1.0, 0.25, 2.0], [1.5, 0.0, -0.5, 0.1]]


def apply(kubectl: Kubectl, namespace: str, obj: dict[str, Any]) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(obj))


def md(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "slipway.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": name}, "spec": spec}


def status(kubectl: Kubectl, kind: str, namespace: str, name: str) -> dict[str, Any]:
    obj = kubectl.get(kind, name, namespace)
    return dict((obj or {}).get("status") or {})


def condition(st: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in st.get("conditions") or [] if c["type"] == type_), {})


def phase_is(kubectl: Kubectl, kind: str, namespace: str, name: str, phase: str
             ) -> dict[str, Any] | None:
    st = status(kubectl, kind, namespace, name)
    return st if st.get("phase") == phase else None


def infer(gateway: str, url: str, model: str, rows: list[list[float]]) -> Any:
    """A V2 request through the local gateway, routed by the InferenceService's host."""
    body = {"inputs": [{"name": "input-0", "shape": [len(rows), len(rows[0])],
                        "datatype": "FP32", "data": [x for r in rows for x in r]}]}
    req = urllib.request.Request(f"{gateway}/v2/models/{model}/infer",
                                 data=json.dumps(body).encode(),
                                 headers={"Host": urlsplit(url).netloc,
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())["outputs"][0]["data"]


def pod_events(kubectl: Kubectl, namespace: str) -> list[tuple[str, str]]:
    return [(e.get("reason", ""), e.get("message", ""))
            for e in kubectl.items("events", namespace)
            if e["involvedObject"].get("kind") == "Pod"]


def test_inferenceservice_ready_through_kserve_and_serves_through_gateway(
        kubectl: Kubectl, namespace: str, operator: OperatorProcess, gateway: str,
        prometheus: str, model_store: Path) -> None:
    uri = f"s3://models/{namespace}/iris/v1"
    upload_example_model(model_store, uri, "sklearn")
    apply(kubectl, namespace, md("iris", {"model": {"format": "sklearn", "uri": uri,
                                                    "version": "v1"}, "protocol": "v2"}))
    st = wait_for(lambda: phase_is(kubectl, "modeldeployment", namespace, "iris", "Ready"),
                  TIMEOUT, what="ModelDeployment Ready through the real KServe controller")
    assert st["url"] == f"http://iris-{namespace}.example.com"

    isvc = status(kubectl, "inferenceservice", namespace, "iris")
    for ctype in ("PredictorReady", "IngressReady", "Ready"):
        assert condition(isvc, ctype)["status"] == "True", isvc
    # Ours says Loaded at once; KServe's own field follows on its next reconcile (the one that
    # first writes Ready=True leaves activeModelState empty).
    assert condition(st, "ModelLoaded")["status"] == "True", st
    wait_for(lambda: status(kubectl, "inferenceservice", namespace, "iris")
             .get("modelStatus", {}).get("states", {}).get("activeModelState") == "Loaded",
             30, what="KServe's activeModelState Loaded")
    # KServe's defaulter ran (the deployment-mode annotation), and the Ingress it made for
    # the local gateway's class was taken up, as an ingress controller does.
    obj = kubectl.get("inferenceservice", "iris", namespace)
    assert obj is not None
    assert obj["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"
    ingress = wait_for(lambda: kubectl.get("ingress", "iris", namespace), 10, what="Ingress")
    assert ingress["spec"]["ingressClassName"] == "slipway-local"
    wait_for(lambda: (kubectl.get("ingress", "iris", namespace) or {}).get("status", {})
             .get("loadBalancer", {}).get("ingress") == [{"ip": "127.0.0.1"}],
             10, what="Ingress status written by the local gateway")

    # The predictor pod runs the real sklearn server: a real prediction comes back.
    answer = infer(gateway, st["url"], "iris", ROWS)
    assert len(answer) == 2 and all(v in (0, 1) for v in answer), answer
    pods = kubectl.items("pods", namespace, "serving.kserve.io/inferenceservice=iris")
    assert len(pods) == 1
    assert "slipway.dev/loopback-ports" in pods[0]["metadata"]["annotations"]
    assert pods[0]["status"]["phase"] == "Running"

    # Prometheus scrapes the live server with namespace/inferenceservice/pod labels.
    def scraped() -> list[dict[str, Any]]:
        return query(prometheus, f'slipway_model_requests_total{{namespace="{namespace}",'
                                 f'inferenceservice="iris",code="2xx"}}')

    series = wait_for(scraped, 30, what="the model server's request counter in Prometheus")
    assert series[0]["metric"]["pod"] == pods[0]["metadata"]["name"]
    assert series[0]["metric"]["model_version"] == "v1"
    assert float(series[0]["value"][1]) >= 1


def test_kserve_webhooks_run(kubectl: Kubectl, namespace: str,
                             operator: OperatorProcess) -> None:
    """KServe's own webhooks are registered: the pod mutator injects its storage initializer,
    and the validator refuses a change of deployment mode (our CRD refuses it earlier on the
    ModelDeployment; this is KServe's rule on the InferenceService itself)."""
    uri = "s3://models/none/v1"
    apply(kubectl, namespace, md("iris", {"model": {"format": "sklearn", "uri": uri},
                                          "deploymentMode": "Standard"}))
    pods = wait_for(lambda: kubectl.items("pods", namespace,
                                          "serving.kserve.io/inferenceservice=iris"),
                    TIMEOUT, what="the predictor pod")
    init = pods[0]["spec"]["initContainers"]
    assert [(c["name"], c["args"]) for c in init] == [("storage-initializer",
                                                       [uri, "/mnt/models"])]
    # KServe's validator compares with the mode its controller recorded in status.
    wait_for(lambda: status(kubectl, "inferenceservice", namespace, "iris")
             .get("deploymentMode") == "Standard", TIMEOUT, what="status.deploymentMode")
    proc = kubectl("annotate", "inferenceservice", "iris", "-n", namespace, "--overwrite",
                   "serving.kserve.io/deploymentMode=Knative", check=False)
    assert proc.returncode != 0
    assert "admission webhook" in proc.stderr, proc.stderr
    assert "deploymentMode cannot be changed from 'Standard' to 'Knative'" in proc.stderr


def test_unschedulable_predictor_is_not_ready(kubectl: Kubectl, namespace: str,
                                              operator: OperatorProcess,
                                              model_store: Path) -> None:
    uri = f"s3://models/{namespace}/big/v1"
    upload_example_model(model_store, uri, "sklearn")
    apply(kubectl, namespace, md("big", {"model": {"format": "sklearn", "uri": uri},
                                         "gpus": 16}))

    def not_ready() -> dict[str, Any]:
        isvc = status(kubectl, "inferenceservice", namespace, "big")
        cond = condition(isvc, "PredictorReady")
        assert cond.get("status") == "False", isvc
        return cond

    wait_for(not_ready, TIMEOUT, what="PredictorReady=False")

    def says_why() -> dict[str, Any]:
        st = status(kubectl, "modeldeployment", namespace, "big")
        assert st["phase"] == "Pending", st
        assert condition(st, "Ready")["reason"] == "Unschedulable", st
        return st

    # The scheduler's own words, read from the predictor pod (KServe's status has none).
    st = wait_for(says_why, TIMEOUT, what="Ready=False reason Unschedulable")
    assert "nvidia.com/gpu" in st["message"], st


def test_model_load_failure_then_fix(kubectl: Kubectl, namespace: str,
                                     operator: OperatorProcess, model_store: Path) -> None:
    """A missing model fails the storage step; a corrupt one crashes the real server; the
    ModelDeployment says why (from KServe's modelStatus), and a fix brings it to Ready."""
    uri = f"s3://models/{namespace}/churn/v1"
    apply(kubectl, namespace, md("churn", {"model": {"format": "sklearn", "uri": uri,
                                                     "version": "v1"}}))

    def failed(reason_text: str) -> dict[str, Any]:
        st = status(kubectl, "modeldeployment", namespace, "churn")
        loaded = condition(st, "ModelLoaded")
        assert st.get("phase") == "Failed", st
        assert loaded.get("reason") == "ModelLoadFailed", st
        assert reason_text in loaded.get("message", ""), loaded
        return st

    wait_for(lambda: failed("no model at"), TIMEOUT, what="Failed: model missing")

    # A corrupt file: the storage step passes, the sklearn server itself fails to load it.
    folder = local_path(model_store, uri)
    folder.mkdir(parents=True)
    (folder / "model.joblib").write_bytes(b"not a model")
    wait_for(lambda: failed("cannot load model file"), TIMEOUT,
             what="Failed: the real server's load error")
    wait_for(lambda: any(r == "BackOff" and "exit code 1" in m
                         for r, m in pod_events(kubectl, namespace)),
             TIMEOUT, what="a BackOff event on the pod")

    # The fix: a good model at the same URI; the next restart loads it.
    upload_example_model(model_store, uri, "sklearn")
    wait_for(lambda: phase_is(kubectl, "modeldeployment", namespace, "churn", "Ready"),
             TIMEOUT, what="Ready after the fix")


def test_trainingjob_really_trains_and_its_model_is_served(
        kubectl: Kubectl, namespace: str, operator: OperatorProcess, gateway: str,
        model_store: Path) -> None:
    apply(kubectl, namespace, {
        "apiVersion": "slipway.dev/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": "churn"},
        "spec": {"image": "slipway/example-trainer:0.1.0",
                 "output": {"uri": "s3://models/{namespace}/{name}/{version}",
                            "format": "xgboost"}}})
    apply(kubectl, namespace, md("churn", {"fromTrainingJob": "churn", "protocol": "v2"}))
    st = wait_for(lambda: phase_is(kubectl, "trainingjob", namespace, "churn", "Succeeded"),
                  TIMEOUT, what="TrainingJob Succeeded (real exit code 0)")
    out = st["output"]
    assert out == {"uri": f"s3://models/{namespace}/churn/v1", "version": "v1",
                   "format": "xgboost"}
    written = local_path(model_store, out["uri"])
    meta = json.loads((written / "metadata.json").read_text())
    assert meta["version"] == "v1" and meta["format"] == "xgboost"

    md_st = wait_for(lambda: phase_is(kubectl, "modeldeployment", namespace, "churn", "Ready"),
                     TIMEOUT, what="the trained model served")
    answer = infer(gateway, md_st["url"], "churn", ROWS)
    assert len(answer) == 2, answer

    # A trainer that fails: the pod ends Failed with the process's own exit code.
    apply(kubectl, namespace, {
        "apiVersion": "slipway.dev/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": "broken"},
        "spec": {"image": "slipway/example-trainer:0.1.0",
                 "env": [{"name": "SLIPWAY_TRAINER_FAIL", "value": "3"}],
                 "runPolicy": {"backoffLimit": 0},
                 "output": {"uri": "s3://models/{namespace}/{name}/{version}"}}})
    wait_for(lambda: phase_is(kubectl, "trainingjob", namespace, "broken", "Failed"),
             TIMEOUT, what="TrainingJob Failed")
    pods = kubectl.items("pods", namespace, "slipway.dev/trainingjob=broken")
    terminated = pods[0]["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 3, terminated


def isvc_manifest(name: str, uri: str, version: str, model_name: str) -> dict[str, Any]:
    return {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": {"name": name},
            "spec": {"predictor": {"model": {
                "modelFormat": {"name": "sklearn"}, "runtime": "slipway-sklearn",
                "storageUri": uri, "protocolVersion": "v2",
                # Both versions answer to one model name, as a canary's two services must.
                "args": [f"--model_name={model_name}"],
                "env": [{"name": "MODEL_VERSION", "value": version}]}}}}


def test_httproute_weights_split_traffic_90_10(kubectl: Kubectl, namespace: str,
                                               gateway: str, prometheus: str,
                                               model_store: Path) -> None:
    for name in ("stable", "canary"):
        uri = f"s3://models/{namespace}/{name}"
        upload_example_model(model_store, uri, "sklearn")
        apply(kubectl, namespace, isvc_manifest(name, uri, name, "split"))
    for name in ("stable", "canary"):
        wait_for(lambda n=name: condition(status(kubectl, "inferenceservice", namespace, n),
                                          "Ready").get("status") == "True",
                 TIMEOUT, what=f"InferenceService {name} Ready")
    host = f"split.{namespace}.example.com"
    apply(kubectl, namespace, {
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "split"},
        "spec": {"hostnames": [host],
                 "parentRefs": [{"name": "kserve-ingress-gateway", "namespace": "kserve"}],
                 "rules": [{"backendRefs": [
                     {"name": "stable-predictor", "port": 80, "weight": 90},
                     {"name": "canary-predictor", "port": 80, "weight": 10}]}]}})
    wait_for(lambda: any(c["type"] == "Accepted" and c["status"] == "True"
                         for p in status(kubectl, "httproute", namespace, "split")
                         .get("parents", []) for c in p["conditions"]),
             30, what="the HTTPRoute Accepted by the local gateway")

    total = 10_000
    # An open-loop rate this machine (2 cores: load, gateway and two servers) keeps up with.
    report = load_in_background(gateway, host, "split", rate=350, requests=total,
                                concurrency=16, timeout=10, tally_header="x-slipway-backend"
                                ).wait(120)
    assert report.ok == total, report

    def counts() -> dict[str, float]:
        got = {r["metric"]["inferenceservice"]: float(r["value"][1]) for r in query(
            prometheus, f'sum by (inferenceservice) (slipway_model_requests_total'
                        f'{{namespace="{namespace}"}})')}
        assert sum(got.values()) == total, got
        return got

    # Counted twice, independently: by the gateway's backend header and by the model servers'
    # own counters in Prometheus.
    got = wait_for(counts, 30, what="every request counted in Prometheus")
    share = got["canary"] / total
    assert report.tally[f"{namespace}/canary-predictor"] == got["canary"], report.tally
    print(f"\n90/10 HTTPRoute: {got} -> canary share {share:.4f} over {total} requests; "
          f"{report.summary()}")
    assert 0.08 <= share <= 0.12, got


ONNX_MODEL = """
import sys
import numpy as np
from skl2onnx import to_onnx
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression
X, y = make_classification(n_samples=400, n_features=4, n_informative=3, n_redundant=0,
                           random_state=0)
clf = LogisticRegression().fit(X, y)
graph = to_onnx(clf, X[:1].astype(np.float32), options={"zipmap": False}, target_opset=17)
open(sys.argv[1] + "/model.onnx", "wb").write(graph.SerializeToString())
rows = np.array(eval(sys.argv[2]))
print(clf.predict(rows).tolist())
"""


def test_onnx_model_autoselects_the_slipway_onnx_runtime(
        kubectl: Kubectl, namespace: str, gateway: str, prometheus: str,
        model_store: Path) -> None:
    """An InferenceService of model format onnx gets the slipway-onnx ClusterServingRuntime
    (supportedModelFormats onnx, autoSelect) and its server answers V2 through the gateway."""
    import subprocess

    from slipway.devcluster.serving import runtimes_venv

    uri = f"s3://models/{namespace}/onnx/v1"
    target = local_path(model_store, uri)
    target.mkdir(parents=True)
    built = subprocess.run([str(runtimes_venv() / "bin" / "python"), "-c", ONNX_MODEL,
                            str(target), repr(ROWS)], check=True, capture_output=True, text=True)
    expected = json.loads(built.stdout)
    apply(kubectl, namespace, {
        "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
        "metadata": {"name": "churn"},
        "spec": {"predictor": {"model": {
            "modelFormat": {"name": "onnx"}, "storageUri": uri, "protocolVersion": "v2",
            "env": [{"name": "MODEL_VERSION", "value": "onnx-v1"}]}}}})
    wait_for(lambda: condition(status(kubectl, "inferenceservice", namespace, "churn"),
                               "Ready").get("status") == "True",
             TIMEOUT, what="InferenceService of format onnx Ready")
    isvc = kubectl.get("inferenceservice", "churn", namespace)
    assert isvc is not None
    pods = kubectl.items("pods", namespace, "serving.kserve.io/inferenceservice=churn")
    assert [c["command"] for c in pods[0]["spec"]["containers"]
            if c["name"] == "kserve-container"] == [["slipway-onnx-server"]]

    # The graph's first output (label) answers first; the ONNX input name does not matter
    # for a single-input graph.
    assert infer(gateway, isvc["status"]["url"], "churn", ROWS) == expected

    def scraped() -> list[dict[str, Any]]:
        return query(prometheus, f'slipway_model_requests_total{{namespace="{namespace}",'
                                 f'inferenceservice="churn",code="2xx"}}')

    series = wait_for(scraped, 30, what="the ONNX server's request counter in Prometheus")
    assert series[0]["metric"]["model_version"] == "onnx-v1"
