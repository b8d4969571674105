"""`slipway dev demo`: the whole path on the local platform, nothing marked Ready by hand.

1. Starts the control plane with the serving stack (KServe's controller and webhooks,
   Prometheus, the pod runner and the local gateway) and the operator.
2. Puts a model into the local model store as a user would upload one to a bucket (the
   example trainer, run directly), then applies `manifests/samples/`.
3. The TrainingJob `churn-xgb` really trains (the pod runner runs the example trainer);
   ModelDeployment `churn` serves what it wrote. KServe's controller makes every
   InferenceService Ready through its own Deployment, Service and HTTPRoutes.
4. Sends predictions through the local gateway to the live model servers, prints the
   answers, runs a short steady load, and prints the request rate and p99 latency per
   model version from PromQL queries against the real Prometheus.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from slipway.devcluster.binaries import repo_root
from slipway.devcluster.cluster import Cluster
from slipway.devcluster.load import load_in_background, make_payloads
from slipway.devcluster.modelstore import local_path, upload_example_model
from slipway.devcluster.operator_process import OperatorProcess
from slipway.devcluster.serving import query

NAMESPACE = "slipway-demo"
# Knative mode needs Knative Serving, which the local platform does not run.
SKIP_SAMPLES = ("modeldeployment-gpu-knative.yaml",)
SERVED = {"iris": "v2", "churn": "v1"}  # ModelDeployment -> protocol its sample uses


def _say(msg: str) -> None:
    print(f"==> {msg}", flush=True)


def _wait(what: str, check: Callable[[], object], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(1)
    raise TimeoutError(f"timed out waiting for {what}")


def _get(cluster: Cluster, kind: str, name: str) -> dict[str, Any]:
    proc = cluster.kubectl("get", kind, name, "-n", NAMESPACE, "-o", "json", check=False)
    return dict(json.loads(proc.stdout)) if proc.returncode == 0 else {}


def _phase(cluster: Cluster, kind: str, name: str) -> str:
    return str(_get(cluster, kind, name).get("status", {}).get("phase", ""))


def predict(gateway: str, host: str, model: str, protocol: str,
            rows: list[list[float]]) -> Any:
    if protocol == "v2":
        path = f"/v2/models/{model}/infer"
        body: dict[str, Any] = {"inputs": [{
            "name": "input-0", "shape": [len(rows), len(rows[0])], "datatype": "FP32",
            "data": [x for row in rows for x in row]}]}
    else:
        path, body = f"/v1/models/{model}:predict", {"instances": rows}
    req = urllib.request.Request(gateway + path, data=json.dumps(body).encode(),
                                 headers={"Host": host, "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        answer = json.loads(resp.read())
    return answer["outputs"][0]["data"] if protocol == "v2" else answer["predictions"]


def run_demo(directory: Path, keep: bool = False) -> int:
    cluster = Cluster(directory)
    _say("starting the local platform (first run builds it from Go modules)")
    cluster.start()
    _say(f"platform up in {cluster.timings.get('total')}s (serving stack "
         f"{cluster.timings.get('serving')}s); RSS MiB {cluster.rss_mib()}")
    operator = OperatorProcess(cluster.kubeconfig, directory / "operator.log",
                               resync_seconds=5,
                               prometheus_targets=directory / "prometheus" / "targets")
    try:
        operator.start()
        _say(f"operator running (log: {operator.log_path})")
        cluster.kubectl("create", "namespace", NAMESPACE, check=False)

        where = upload_example_model(cluster.dir / "models", "s3://models/iris/v1", "sklearn",
                                     NAMESPACE)
        _say(f"uploaded a scikit-learn model for s3://models/iris/v1 (local store: {where})")
        samples = [s for s in sorted((repo_root() / "manifests" / "samples").glob("*.yaml"))
                   if s.name not in SKIP_SAMPLES]
        for sample in samples:
            _say(f"kubectl apply -f {sample.relative_to(repo_root())}")
            print(cluster.kubectl("apply", "-n", NAMESPACE, "-f", str(sample)).stdout.strip())
        _say(f"skipped {', '.join(SKIP_SAMPLES)}: Knative mode needs Knative Serving, which "
             "the local platform does not run")

        for name in ("tj-single-gpu", "tj-torchrun", "churn-xgb"):
            _wait(f"TrainingJob {name} to succeed",
                  lambda n=name: _phase(cluster, "trainingjob", n) == "Succeeded",  # type: ignore[misc]
                  180)
            _say(f"TrainingJob {name} Succeeded")
        output = _get(cluster, "trainingjob", "churn-xgb")["status"]["output"]
        _say(f"churn-xgb really trained (example trainer, run by the pod runner): "
             f"{output['uri']} -> {local_path(cluster.dir / 'models', output['uri'], NAMESPACE)}")

        for name in SERVED:
            _wait(f"ModelDeployment {name} to be Ready",
                  lambda n=name: _phase(cluster, "modeldeployment", n) == "Ready",  # type: ignore[misc]
                  180)
        _say("kubectl get inferenceservices,ingresses  (made by KServe's controller; the local "
             "gateway serves the ingresses)")
        print(cluster.kubectl("get", "inferenceservices,ingresses", "-n", NAMESPACE).stdout)
        _say("kubectl get slipway")
        print(cluster.kubectl("get", "slipway", "-n", NAMESPACE, "-o", "wide").stdout)

        gateway = cluster.endpoints["gateway"]
        rows = make_payloads(n_features=4, n=1, seed=7, rows_per_payload=3)[0]
        hosts = {}
        for name, protocol in SERVED.items():
            url = _get(cluster, "inferenceservice", name)["status"]["url"]
            hosts[name] = urlsplit(url).hostname or ""
            answer = predict(gateway, hosts[name], name, protocol, rows)
            _say(f"POST {url} ({protocol}) through the local gateway -> {answer}")

        _say("15 s of steady load (20 req/s per model) through the gateway")
        loads = [load_in_background(gateway, hosts[name], name, rate=20, duration=15,
                                    protocol=protocol)
                 for name, protocol in SERVED.items()]
        for name, handle in zip(SERVED, loads, strict=True):
            print(f"    {name}: {handle.wait(60).summary()}")
        end = time.time()
        time.sleep(5)  # two scrape intervals, so the last requests are in Prometheus
        prom = cluster.endpoints["prometheus"]
        # Evaluated at the end of the load, over its last 12 s.
        rate_q = (f'sum by (inferenceservice, model_version) '
                  f'(rate(slipway_model_requests_total{{namespace="{NAMESPACE}"}}[12s]))')
        p99_q = (f'1000 * histogram_quantile(0.99, sum by (le, inferenceservice, model_version) '
                 f'(rate(slipway_model_request_duration_seconds_bucket'
                 f'{{namespace="{NAMESPACE}"}}[12s])))')
        _say(f"PromQL: {rate_q}")
        for r in query(prom, rate_q, at=end):
            print(f"    {r['metric']}: {float(r['value'][1]):.1f} req/s")
        _say(f"PromQL: {p99_q}")
        for r in query(prom, p99_q, at=end):
            print(f"    {r['metric']}: p99 {float(r['value'][1]):.1f} ms")
        _say("demo finished")
        return 0
    finally:
        operator.stop()
        if keep:
            _say(f"platform left running: export KUBECONFIG={cluster.kubeconfig}; "
                 f"gateway {cluster.endpoints.get('gateway')}, "
                 f"Prometheus {cluster.endpoints.get('prometheus')}")
        else:
            cluster.stop()
            _say("platform stopped")
