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
5. The canary story, under steady load: TrainingJob `fraud-train` trains v1, ModelDeployment
   `fraud` serves it under Canary `fraud`; a retrain to a good v2 is promoted step by step,
   then a retrain to a worse v3 (it fails a share of its requests) is rolled back on its own.
   Each step is printed as it happens, then `slipway canary status fraud`.
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
# Samples the local platform cannot serve: Knative mode (no Knative Serving here), a private
# bucket (needs a ServiceAccount with credentials), a Hugging Face model (needs network).
SKIP_SAMPLES = {"modeldeployment-gpu-knative.yaml": "Knative mode needs Knative Serving",
                "modeldeployment-private-s3.yaml": "a private bucket needs credentials",
                "modeldeployment-onnx-hf.yaml": "hf:// needs network access"}
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
                               extra_env={"SLIPWAY_PROMETHEUS_URL":
                                          cluster.endpoints["prometheus"]},
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
        for skipped, why in SKIP_SAMPLES.items():
            _say(f"skipped {skipped}: {why}, which the local platform does not have")

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
        canary_story(cluster, gateway)
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


def _trainingjob(version: str, quality: str) -> dict[str, Any]:
    return {"apiVersion": "slipway.dev/v1alpha1", "kind": "TrainingJob",
            "metadata": {"name": "fraud-train", "namespace": NAMESPACE},
            "spec": {"image": "slipway/example-trainer:0.1.0",
                     "env": [{"name": "SLIPWAY_TRAINER_QUALITY", "value": quality}],
                     "output": {"uri": "s3://models/{namespace}/{name}/{version}",
                                "version": version, "format": "sklearn"}}}


CANARY = {"apiVersion": "slipway.dev/v1alpha1", "kind": "Canary",
          "metadata": {"name": "fraud", "namespace": NAMESPACE},
          "spec": {"targetRef": {"name": "fraud"}, "interval": "10s", "steps": [20, 50],
                   "analysis": {"threshold": 2, "minSamples": 10, "metrics": [
                       {"name": "error-rate", "max": 5},
                       {"name": "latency-p99", "max": 500},
                       {"name": "prediction-drift", "max": 0.2}]}}}


def _train(cluster: Cluster, version: str, quality: str) -> None:
    cluster.kubectl("delete", "trainingjob", "fraud-train", "-n", NAMESPACE,
                    "--ignore-not-found", "--wait=true")
    cluster.kubectl("apply", "-f", "-", input=json.dumps(_trainingjob(version, quality)))
    _say(f"TrainingJob fraud-train: training {version} (quality {quality})")


def _checks(st: dict[str, Any]) -> str:
    return ", ".join(f"{m['name']} {m['value']:.3g} {m['outcome']}" if m.get("value") is not None
                     else f"{m['name']} {m['outcome']}" for m in st.get("lastAnalysis") or [])


def _follow(cluster: Cluster, version: str, started: float) -> str:
    """Print the rollout of *version* step by step until it ends; its final phase."""
    ends = ("Succeeded", "RolledBack", "Failed", "Aborted", "Paused")
    seen: tuple[Any, ...] | None = None
    while time.monotonic() - started < 300:
        st = _get(cluster, "canary", "fraud").get("status", {})
        ours = version in (st.get("canaryVersion"), st.get("stableVersion"))
        row = (st.get("phase"), st.get("canaryWeight"), st.get("failedChecks"))
        if ours and row != seen:
            seen = row
            print(f"    t+{time.monotonic() - started:5.1f}s  {st.get('phase'):<12} weight "
                  f"{st.get('canaryWeight') or 0:>3}%  failed checks "
                  f"{st.get('failedChecks') or 0}  {_checks(st)}", flush=True)
            if st.get("phase") in ends:
                return str(st.get("phase"))
        time.sleep(0.5)
    raise TimeoutError(f"the rollout of {version} did not end")


def canary_story(cluster: Cluster, gateway: str) -> None:
    _say("The Canary story: retrained models reach production step by step, judged on "
         "live metrics")
    _train(cluster, "v1", "good")
    cluster.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "slipway.dev/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": "fraud", "namespace": NAMESPACE},
        "spec": {"fromTrainingJob": "fraud-train"}}))
    cluster.kubectl("apply", "-f", "-", input=json.dumps(CANARY))
    _wait("Canary fraud to adopt v1", lambda: _get(cluster, "canary", "fraud").get(
        "status", {}).get("stableVersion") == "v1", 240)
    _wait("ModelDeployment fraud to be Ready", lambda: _get(cluster, "modeldeployment", "fraud")
          .get("status", {}).get("url") and _phase(cluster, "modeldeployment", "fraud") == "Ready",
          180)
    _say("ModelDeployment fraud serves v1; Canary fraud holds it as the stable version")
    print(cluster.kubectl("get", "canary", "fraud", "-n", NAMESPACE).stdout)
    host = urlsplit(_get(cluster, "modeldeployment", "fraud")["status"]["url"]).hostname
    load = load_in_background(gateway, host or "", "fraud", rate=25, duration=600,
                              tally_header="x-slipway-backend")
    try:
        for version, quality, expect in (("v2", "good", "Succeeded"),
                                         ("v3", "flaky", "RolledBack")):
            started = time.monotonic()
            _train(cluster, version, quality)
            phase = _follow(cluster, version, started)
            _say(f"{version}: {phase} after {time.monotonic() - started:.0f}s "
                 f"(expected {expect})")
            if phase != expect:
                raise RuntimeError(f"the rollout of {version} ended {phase}, not {expect}")
    finally:
        report = load.stop()
    _say(f"load during both rollouts: {report.summary()}")
    print(f"    answered by: {dict(report.tally)}")
    _say("slipway canary status fraud")
    from slipway.canary.commands import format_status
    canary = _get(cluster, "canary", "fraud")
    events = json.loads(cluster.kubectl("get", "events", "-n", NAMESPACE, "-o", "json").stdout)
    print(format_status(canary, events["items"]))
