"""`slipway dev demo`: the whole path on a real local control plane.

Starts the cluster and the operator, applies the samples, waits for the
TrainingJobs to succeed and every ModelDeployment's InferenceService (one of
them built from a TrainingJob's output), stands in for KServe's controller to
mark them Ready, prints what `kubectl get slipway` shows, then tears down.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from slipway.devcluster.binaries import repo_root
from slipway.devcluster.cluster import Cluster
from slipway.devcluster.operator_process import OperatorProcess

NAMESPACE = "slipway-demo"


def _say(msg: str) -> None:
    print(f"==> {msg}", flush=True)


def _wait(what: str, check: object, timeout: float = 120.0) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(1)
    raise TimeoutError(f"timed out waiting for {what}")


def _phase(cluster: Cluster, kind: str, name: str) -> str:
    proc = cluster.kubectl("get", kind, name, "-n", NAMESPACE, "-o", "json", check=False)
    if proc.returncode != 0:
        return ""
    return str(json.loads(proc.stdout).get("status", {}).get("phase", ""))


def _mark_ready(cluster: Cluster, name: str) -> None:
    """Write the status KServe's controller would write for a ready predictor."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    url = f"http://{name}.{NAMESPACE}.example.com"
    status = {"status": {
        "url": url, "observedGeneration": 1,
        "conditions": [{"type": t, "status": "True", "lastTransitionTime": now}
                       for t in ("IngressReady", "PredictorReady", "Ready")],
        "modelStatus": {"transitionStatus": "UpToDate",
                        "states": {"activeModelState": "Loaded", "targetModelState": "Loaded"}},
    }}
    cluster.kubectl("patch", "inferenceservice", name, "-n", NAMESPACE, "--subresource=status",
                    "--type=merge", "-p", json.dumps(status))


def run_demo(directory: Path, keep: bool = False) -> int:
    cluster = Cluster(directory)
    _say("starting the local control plane (first run builds it from Go modules)")
    cluster.start()
    _say(f"control plane up in {cluster.timings.get('total')}s; RSS MiB {cluster.rss_mib()}")
    operator = OperatorProcess(cluster.kubeconfig, directory / "operator.log",
                               resync_seconds=5)
    try:
        operator.start()
        _say(f"operator running (log: {operator.log_path})")

        cluster.kubectl("create", "namespace", NAMESPACE, check=False)
        samples = sorted((repo_root() / "manifests" / "samples").glob("*.yaml"))
        for sample in samples:
            _say(f"kubectl apply -f {sample.relative_to(repo_root())}")
            print(cluster.kubectl("apply", "-n", NAMESPACE, "-f", str(sample)).stdout.strip())

        for name in ("tj-single-gpu", "tj-torchrun", "churn-xgb"):
            _wait(f"TrainingJob {name} to succeed",
                  lambda n=name: _phase(cluster, "trainingjob", n) == "Succeeded", 180)
            _say(f"TrainingJob {name} Succeeded")
        deployments = [d["metadata"]["name"] for d in json.loads(cluster.kubectl(
            "get", "modeldeployment", "-n", NAMESPACE, "-o", "json").stdout)["items"]]
        for name in deployments:
            _wait(f"the InferenceService of {name}",
                  lambda n=name: cluster.kubectl("get", "inferenceservice", n, "-n", NAMESPACE,
                                                 check=False).returncode == 0, 120)
        _say("kubectl get inferenceservices  (created by Slipway, owned by each ModelDeployment)")
        print(cluster.kubectl("get", "inferenceservices", "-n", NAMESPACE).stdout)
        _say("standing in for the KServe controller (not part of the local control plane): "
             "marking each InferenceService Ready")
        for name in deployments:
            _mark_ready(cluster, name)
        for name in deployments:
            _wait(f"ModelDeployment {name} to be Ready",
                  lambda n=name: _phase(cluster, "modeldeployment", n) == "Ready", 120)
        _say("kubectl get slipway")
        print(cluster.kubectl("get", "slipway", "-n", NAMESPACE, "-o", "wide").stdout)
        _say("kubectl get jobs,pods -o wide")
        print(cluster.kubectl("get", "jobs,pods", "-n", NAMESPACE, "-o", "wide").stdout)
        _say("demo finished")
        return 0
    finally:
        operator.stop()
        if keep:
            _say(f"cluster left running: export KUBECONFIG={cluster.kubeconfig}")
        else:
            cluster.stop()
            _say("control plane stopped")
