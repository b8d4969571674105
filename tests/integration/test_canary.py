"""Canary rollouts on the full local platform: the real control plane, KServe's controller,
Prometheus, live model servers (the runtimes' own processes) and the local gateway (the
stand-in for a Gateway API data plane), with steady load through the gateway.

Every scenario serves tiny real models from the example trainer; the versions differ only in
their artifact (a good one, one that fails a share of requests, a slow one, one with shifted
predictions)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from slipway.devcluster.load import LoadHandle, load_in_background
from slipway.devcluster.modelstore import upload_example_model
from slipway.devcluster.serving import query
from tests.helpers import Kubectl, OperatorProcess, wait_for
from tests.integration.test_serving_platform import apply, status

READY_TIMEOUT = 120
INTERVAL = "5s"


def model_uri(namespace: str, version: str) -> str:
    return f"s3://models/{namespace}/churn/{version}"


def upload(store: Path, namespace: str, version: str, quality: str = "good") -> str:
    uri = model_uri(namespace, version)
    upload_example_model(store, uri, "sklearn", quality=quality)
    return uri


def md_manifest(name: str, uri: str, version: str) -> dict[str, Any]:
    return {"apiVersion": "slipway.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": name},
            "spec": {"model": {"format": "sklearn", "uri": uri, "version": version}}}


def canary_manifest(name: str, target: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"targetRef": {"name": target}, "interval": INTERVAL,
                            "steps": [20, 50]}
    body.update(spec)
    return {"apiVersion": "slipway.dev/v1alpha1", "kind": "Canary",
            "metadata": {"name": name}, "spec": body}


def analysis(*metrics: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"threshold": 2, "minSamples": 10, "metrics": list(metrics), **extra}


def set_version(kubectl: Kubectl, namespace: str, name: str, uri: str, version: str) -> None:
    patch = {"spec": {"model": {"format": "sklearn", "uri": uri, "version": version}}}
    kubectl("patch", "modeldeployment", name, "-n", namespace, "--type=merge",
            "-p", json.dumps(patch))


def canary_status(kubectl: Kubectl, namespace: str, name: str) -> dict[str, Any]:
    return status(kubectl, "canary", namespace, name)


def wait_phase(kubectl: Kubectl, namespace: str, name: str, *phases: str,
               timeout: float = READY_TIMEOUT) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        st = canary_status(kubectl, namespace, name)
        return st if st.get("phase") in phases else None
    return wait_for(reached, timeout, what=f"Canary {name} in {'/'.join(phases)} "
                                           f"(now {canary_status(kubectl, namespace, name)})")


def serving_md(kubectl: Kubectl, namespace: str, store: Path, name: str = "churn",
               version: str = "v1") -> str:
    """A Ready ModelDeployment serving *version*; returns its host."""
    apply(kubectl, namespace, md_manifest(name, upload(store, namespace, version), version))
    st = wait_for(lambda: (s := status(kubectl, "modeldeployment", namespace, name)).get(
        "phase") == "Ready" and s, READY_TIMEOUT, what=f"ModelDeployment {name} Ready")
    from urllib.parse import urlsplit
    host = urlsplit(st["url"]).hostname
    assert host
    return host


class RouteWatch:
    """Samples the split HTTPRoute's canary weight in the background."""

    def __init__(self, kubectl: Kubectl, namespace: str, name: str) -> None:
        self.kubectl, self.namespace, self.name = kubectl, namespace, name
        self.weights: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            route = self.kubectl.get("httproute", f"{self.name}-split", self.namespace)
            if route:
                refs = route["spec"]["rules"][0]["backendRefs"]
                weight = next(r["weight"] for r in refs if r["name"].endswith("-canary-predictor"))
                if not self.weights or self.weights[-1] != weight:
                    self.weights.append(weight)
            self._stop.wait(0.3)

    def stop(self) -> list[int]:
        self._stop.set()
        self._thread.join(5)
        return self.weights


@contextmanager
def steady_load(gateway: str, host: str, model: str, rate: float = 25.0
                ) -> Iterator[LoadHandle]:
    handle = load_in_background(gateway, host, model, rate=rate, duration=600,
                                concurrency=8, timeout=10, tally_header="x-slipway-backend")
    try:
        yield handle
    finally:
        handle.stop()


def isvc(kubectl: Kubectl, namespace: str, name: str) -> dict[str, Any] | None:
    return kubectl.get("inferenceservice", name, namespace)


def served_version(kubectl: Kubectl, namespace: str, name: str) -> str | None:
    obj = isvc(kubectl, namespace, name) or {}
    return (obj.get("metadata", {}).get("annotations") or {}).get("slipway.dev/model-version")


def canary_events(kubectl: Kubectl, namespace: str, name: str) -> list[tuple[str, str]]:
    items = [e for e in kubectl.items("events", namespace)
             if e["involvedObject"].get("kind") == "Canary"
             and e["involvedObject"].get("name") == name]
    items.sort(key=lambda e: e.get("lastTimestamp") or e["metadata"]["creationTimestamp"])
    return [(e.get("reason", ""), e.get("message", "")) for e in items]


def test_good_version_is_promoted_step_by_step(kubectl: Kubectl, namespace: str,
                                               operator: OperatorProcess, gateway: str,
                                               prometheus: str, model_store: Path) -> None:
    host = serving_md(kubectl, namespace, model_store)
    apply(kubectl, namespace, canary_manifest("churn", "churn", analysis=analysis(
        {"name": "error-rate", "max": 5}, {"name": "latency-p99", "max": 2000})))
    st = wait_phase(kubectl, namespace, "churn", "Idle")
    assert st["stableVersion"] == "v1" and st["stableModel"]["uri"] == model_uri(namespace, "v1")

    uri = upload(model_store, namespace, "v2")
    with steady_load(gateway, host, "churn") as load:
        watch = RouteWatch(kubectl, namespace, "churn")
        started = time.monotonic()
        set_version(kubectl, namespace, "churn", uri, "v2")
        wait_phase(kubectl, namespace, "churn", "Progressing")
        # While the canary runs, the ModelDeployment's own InferenceService stays on v1.
        assert served_version(kubectl, namespace, "churn") == "v1"
        assert served_version(kubectl, namespace, "churn-canary") == "v2"
        st = wait_phase(kubectl, namespace, "churn", "Succeeded", "RolledBack", "Paused",
                        "Failed")
        took = time.monotonic() - started
        weights = watch.stop()
        report = load.stop()
    assert st["phase"] == "Succeeded", (st, canary_events(kubectl, namespace, "churn"),
                                        weights, report.tally, report.errors,
                                        query(prometheus, f'slipway_model_requests_total'
                                                          f'{{namespace="{namespace}"}}[30s]'))
    assert weights == [20, 50], weights
    assert st["stableVersion"] == "v2" and st.get("canaryVersion") is None
    assert st["history"][0]["version"] == "v2" and st["history"][0]["outcome"] == "Succeeded"
    assert served_version(kubectl, namespace, "churn") == "v2"
    wait_for(lambda: isvc(kubectl, namespace, "churn-canary") is None, 30,
             what="the canary InferenceService removed")
    assert kubectl.get("httproute", "churn-split", namespace) is None
    assert report.tally[f"{namespace}/churn-canary-predictor"] > 0, report.tally
    assert report.errors == {} and report.connection_errors == 0, report
    reasons = [r for r, _ in canary_events(kubectl, namespace, "churn")]
    assert "RolloutStarted" in reasons and "Promoted" in reasons, reasons
    print(f"\npromoted v2 in {took:.1f}s, weights {weights}; {report.summary()}")
