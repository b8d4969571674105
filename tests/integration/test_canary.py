"""Canary rollouts on the full local platform: the real control plane, KServe's controller,
Prometheus, live model servers (the runtimes' own processes) and the local gateway (the
stand-in for a Gateway API data plane), with steady load through the gateway.

Every scenario serves tiny real models from the example trainer; the versions differ only in
their artifact (a good one, one that fails a share of requests, a slow one, one with shifted
predictions)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slipway.devcluster import Cluster
from slipway.devcluster.load import LoadHandle, LoadReport, load_in_background
from slipway.devcluster.modelstore import upload_example_model
from tests.helpers import Kubectl, OperatorProcess, wait_for
from tests.integration.test_serving_platform import apply, condition, phase_is, status

READY_TIMEOUT = 120
INTERVAL = "10s"


def model_uri(namespace: str, version: str) -> str:
    return f"s3://models/{namespace}/churn/{version}"


def upload(store: Path, namespace: str, version: str, quality: str = "good") -> str:
    uri = model_uri(namespace, version)
    # The slow model sleeps on the server's event loop. 100 ms at the canary's 5 req/s keeps
    # it half busy; the trainer's default 200 ms saturates it, and then Prometheus' scrapes of
    # its /metrics queue behind requests and time out (the canary looks like it has no data).
    extra = ["--added-latency-ms", "100"] if quality == "slow" else []
    upload_example_model(store, uri, "sklearn", quality=quality, extra_args=extra)
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


def explain(kubectl: Kubectl, namespace: str, name: str) -> str:
    """A failed rollout's story, for the assertion message."""
    st = canary_status(kubectl, namespace, name)
    lines = [f"phase {st.get('phase')}: {st.get('message')}",
             *(f"  {reason}: {message}" for reason, message in
               canary_events(kubectl, namespace, name))]
    return "\n".join(lines)


def test_good_version_is_promoted_step_by_step(kubectl: Kubectl, namespace: str,
                                               operator: OperatorProcess, gateway: str,
                                               model_store: Path) -> None:
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
    assert st["phase"] == "Succeeded", explain(kubectl, namespace, "churn")
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


TERMINAL = ("Succeeded", "RolledBack", "Aborted", "Failed", "Paused")


@dataclass
class Rollout:
    """What one rollout of v2 did."""

    status: dict[str, Any]
    weights: list[int]
    seconds: float
    load: LoadReport | None


def roll_out(kubectl: Kubectl, namespace: str, gateway: str, store: Path,
             canary_spec: dict[str, Any], quality: str = "good", *, traffic: bool = True,
             name: str = "churn") -> Rollout:
    """Serve v1 under a Canary, then move the ModelDeployment to a v2 of *quality* under
    steady load, and wait for the rollout to end (or pause)."""
    host = serving_md(kubectl, namespace, store, name)
    apply(kubectl, namespace, canary_manifest(name, name, **canary_spec))
    wait_phase(kubectl, namespace, name, "Idle")
    uri = upload(store, namespace, "v2", quality)
    handle = load_in_background(gateway, host, name, rate=25, duration=600, concurrency=8,
                                timeout=10, tally_header="x-slipway-backend") if traffic else None
    watch = RouteWatch(kubectl, namespace, name)
    started = time.monotonic()
    try:
        set_version(kubectl, namespace, name, uri, "v2")
        wait_phase(kubectl, namespace, name, "Initializing", "Progressing", *TERMINAL)
        st = wait_phase(kubectl, namespace, name, *TERMINAL, timeout=240)
    finally:
        weights = watch.stop()
        report = handle.stop() if handle else None
    took = time.monotonic() - started
    print(f"\n{namespace}: {st['phase']} after {took:.1f}s, weights {weights}: "
          f"{st.get('message')}" + (f"; {report.summary()}" if report else ""))
    return Rollout(st, weights, took, report)


def assert_rolled_back(kubectl: Kubectl, namespace: str, r: Rollout, metric: str,
                       name: str = "churn") -> None:
    assert r.status["phase"] == "RolledBack", explain(kubectl, namespace, name)
    assert metric in r.status["message"], r.status["message"]
    assert r.status["stableVersion"] == "v1" and r.status["canaryWeight"] == 0
    assert r.status["history"][0]["outcome"] == "RolledBack"
    assert served_version(kubectl, namespace, name) == "v1"
    wait_for(lambda: isvc(kubectl, namespace, f"{name}-canary") is None, 30,
             what="the canary InferenceService removed")
    assert kubectl.get("httproute", f"{name}-split", namespace) is None
    failed = [r for r in r.status["lastAnalysis"] if r["outcome"] == "Fail"]
    assert [f["name"] for f in failed] == [metric], r.status["lastAnalysis"]
    warnings = [m for reason, m in canary_events(kubectl, namespace, name)
                if reason == "RolledBack"]
    assert warnings and metric in warnings[0], warnings


def test_failing_version_is_rolled_back_on_error_rate(
        kubectl: Kubectl, namespace: str, operator: OperatorProcess, gateway: str,
        model_store: Path) -> None:
    r = roll_out(kubectl, namespace, gateway, model_store,
                 {"analysis": analysis({"name": "error-rate", "max": 5},
                                       {"name": "latency-p99", "max": 5000})}, "flaky")
    assert_rolled_back(kubectl, namespace, r, "error-rate")
    assert r.load is not None and r.load.errors.get(500, 0) > 0, r.load
    assert r.status["failedChecks"] == 2


def test_slow_version_is_rolled_back_on_p99(kubectl: Kubectl, namespace: str,
                                            operator: OperatorProcess, gateway: str,
                                            model_store: Path) -> None:
    r = roll_out(kubectl, namespace, gateway, model_store, {"analysis": analysis(
        {"name": "error-rate", "max": 5},
        {"name": "latency-p99", "max": 50, "compare": "RelativeToStable"})}, "slow")
    assert_rolled_back(kubectl, namespace, r, "latency-p99")
    p99 = next(m for m in r.status["lastAnalysis"] if m["name"] == "latency-p99")
    assert p99["value"] > 50 and p99["stableValue"] is not None, p99


def test_shifted_predictions_are_rolled_back_by_drift_alone(
        kubectl: Kubectl, namespace: str, operator: OperatorProcess, gateway: str,
        model_store: Path) -> None:
    r = roll_out(kubectl, namespace, gateway, model_store, {"analysis": analysis(
        {"name": "error-rate", "max": 1}, {"name": "latency-p99", "max": 2000},
        {"name": "prediction-drift", "max": 0.1}, minSamples=30)}, "shifted")
    assert_rolled_back(kubectl, namespace, r, "prediction-drift")
    outcomes = {m["name"]: m["outcome"] for m in r.status["lastAnalysis"]}
    assert outcomes == {"error-rate": "Pass", "latency-p99": "Pass",
                        "prediction-drift": "Fail"}, r.status["lastAnalysis"]
    assert r.load is not None and r.load.errors == {}, r.load


def test_no_traffic_applies_the_no_data_policy(kubectl: Kubectl, namespace: str,
                                              operator: OperatorProcess, gateway: str,
                                              model_store: Path) -> None:
    paused = roll_out(kubectl, namespace, gateway, model_store,
                      {"analysis": analysis({"name": "error-rate", "max": 5})},
                      traffic=False)
    st = paused.status
    assert st["phase"] == "Paused" and st["stableVersion"] == "v1", st
    assert condition(st, "Paused")["reason"] == "NoData", st["conditions"]
    assert "0 canary requests < minSamples 10" in st["message"]
    assert served_version(kubectl, namespace, "churn") == "v1"
    assert st["canaryWeight"] == 20  # held where it was, for a person to decide

    failing = roll_out(kubectl, namespace, gateway, model_store, {"analysis": analysis(
        {"name": "error-rate", "max": 5}, threshold=1, noData="fail")},
        traffic=False, name="fraud")
    assert failing.status["phase"] == "RolledBack", explain(kubectl, namespace, "fraud")
    assert "noData: fail" in failing.status["message"]
    assert served_version(kubectl, namespace, "fraud") == "v1"


def slipway_cli(cluster: Cluster, *args: str) -> str:
    """`slipway ARGS` as a person runs it, against the test cluster."""
    proc = subprocess.run([sys.executable, "-m", "slipway.cli", *args], capture_output=True,
                          text=True, env=dict(os.environ, KUBECONFIG=str(cluster.kubeconfig)),
                          check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def prometheus_ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def test_prometheus_down_pauses_on_the_error_limit_then_resumes(
        kubectl: Kubectl, namespace: str, operator: OperatorProcess, gateway: str,
        prometheus: str, cluster: Cluster, model_store: Path) -> None:
    host = serving_md(kubectl, namespace, model_store)
    apply(kubectl, namespace, canary_manifest("churn", "churn", analysis=analysis(
        {"name": "error-rate", "max": 5}, consecutiveErrorLimit=2)))
    wait_phase(kubectl, namespace, "churn", "Idle")
    uri = upload(model_store, namespace, "v2")
    assert cluster.state is not None
    prom = next(c for c in reversed(cluster.state.components) if c.name == "prometheus")
    with steady_load(gateway, host, "churn") as load:
        set_version(kubectl, namespace, "churn", uri, "v2")
        wait_phase(kubectl, namespace, "churn", "Progressing")
        os.kill(prom.pid, signal.SIGKILL)
        try:
            st = wait_phase(kubectl, namespace, "churn", "Paused", "RolledBack", "Succeeded",
                            timeout=90)
            assert st["phase"] == "Paused", explain(kubectl, namespace, "churn")
            assert condition(st, "Paused")["reason"] == "AnalysisErrors", st["conditions"]
            assert "Prometheus unreachable" in st["message"], st["message"]
            assert st["failedChecks"] == 0 and st["canaryWeight"] == 20, st
            assert operator.healthy()
        finally:  # the platform is shared: Prometheus comes back whatever happened
            cluster.spawn("prometheus", prom.cmdline[1:], binary=prom.cmdline[0])
            wait_for(lambda: prometheus_ready(prometheus), 60, what="Prometheus back")
        print(slipway_cli(cluster, "canary", "resume", "churn", "-n", namespace))
        st = wait_phase(kubectl, namespace, "churn", "Succeeded", "RolledBack", "Paused",
                        timeout=120)
        report = load.stop()
    assert st["phase"] == "Succeeded", explain(kubectl, namespace, "churn")
    assert report.errors == {}, report


def wait_status(kubectl: Kubectl, namespace: str, what: str, **expected: Any
                ) -> dict[str, Any]:
    def matches() -> dict[str, Any] | None:
        st = canary_status(kubectl, namespace, "churn")
        return st if all(st.get(k) == v for k, v in expected.items()) else None
    return wait_for(matches, 60, what=f"{what}: {expected}")


def test_manual_verbs_from_the_cli_the_annotation_and_the_field(
        kubectl: Kubectl, namespace: str, operator: OperatorProcess, gateway: str,
        cluster: Cluster, model_store: Path) -> None:
    host = serving_md(kubectl, namespace, model_store)
    # A long interval: only people move this rollout.
    apply(kubectl, namespace, canary_manifest("churn", "churn", interval="10m",
                                              steps=[10, 20, 30, 40], analysis=analysis(
                                                  {"name": "error-rate", "max": 5})))
    wait_phase(kubectl, namespace, "churn", "Idle")
    uri = upload(model_store, namespace, "v2")
    ns = ("-n", namespace)
    with steady_load(gateway, host, "churn"):
        set_version(kubectl, namespace, "churn", uri, "v2")
        wait_status(kubectl, namespace, "started", phase="Progressing", canaryWeight=10)
        slipway_cli(cluster, "canary", "pause", "churn", *ns)
        st = wait_status(kubectl, namespace, "CLI pause", phase="Paused", lastAction="pause")
        assert condition(st, "Paused")["reason"] == "Manual"
        kubectl("annotate", "canary", "churn", *ns, "slipway.dev/canary-action=resume")
        wait_status(kubectl, namespace, "annotation resume", phase="Progressing",
                    lastAction="resume", canaryWeight=10)
        assert "slipway.dev/canary-action" not in (
            kubectl.get("canary", "churn", namespace) or {})["metadata"].get("annotations", {})
        slipway_cli(cluster, "canary", "promote", "churn", *ns)
        wait_status(kubectl, namespace, "CLI promote", phase="Progressing", canaryWeight=20)
        kubectl("patch", "canary", "churn", *ns, "--type=merge", "-p",
                '{"spec": {"paused": true}}')
        st = wait_status(kubectl, namespace, "spec.paused", phase="Paused")
        assert condition(st, "Paused")["reason"] == "SpecPaused"
        slipway_cli(cluster, "canary", "resume", "churn", *ns)  # refused: the field holds it
        wait_for(lambda: any(r == "ActionIgnored" for r, _ in
                             canary_events(kubectl, namespace, "churn")), 30,
                 what="the resume refused while spec.paused is true")
        assert canary_status(kubectl, namespace, "churn")["phase"] == "Paused"
        kubectl("patch", "canary", "churn", *ns, "--type=merge", "-p",
                '{"spec": {"paused": false}}')
        wait_status(kubectl, namespace, "spec.paused false", phase="Progressing",
                    canaryWeight=20)
        slipway_cli(cluster, "canary", "abort", "churn", *ns)
        wait_status(kubectl, namespace, "CLI abort", phase="Aborted", canaryWeight=0)
        wait_for(lambda: isvc(kubectl, namespace, "churn-canary") is None, 30,
                 what="the aborted canary removed")
        assert served_version(kubectl, namespace, "churn") == "v1"
        slipway_cli(cluster, "canary", "retry", "churn", *ns)
        wait_status(kubectl, namespace, "CLI retry", phase="Progressing", canaryWeight=10,
                    canaryVersion="v2")
        slipway_cli(cluster, "canary", "promote-full", "churn", *ns)
        st = wait_status(kubectl, namespace, "CLI promote-full", phase="Succeeded",
                         stableVersion="v2")
    assert [h["outcome"] for h in st["history"]] == ["Succeeded", "Aborted"]
    assert served_version(kubectl, namespace, "churn") == "v2"
    text = slipway_cli(cluster, "canary", "status", "churn", *ns)
    assert "Aborted" in text and "Promoted" in text, text


def test_operator_killed_mid_rollout_resumes_at_the_same_step(
        kubectl: Kubectl, namespace: str, operator: OperatorProcess, gateway: str,
        model_store: Path) -> None:
    host = serving_md(kubectl, namespace, model_store)
    apply(kubectl, namespace, canary_manifest("churn", "churn", steps=[20, 40, 60],
                                              analysis=analysis(
                                                  {"name": "error-rate", "max": 5})))
    wait_phase(kubectl, namespace, "churn", "Idle")
    uri = upload(model_store, namespace, "v2")
    watch = RouteWatch(kubectl, namespace, "churn")
    with steady_load(gateway, host, "churn") as load:
        set_version(kubectl, namespace, "churn", uri, "v2")
        wait_status(kubectl, namespace, "second step", phase="Progressing", canaryWeight=40)
        assert operator.proc is not None
        operator.proc.kill()  # no clean shutdown
        operator.proc.wait()
        time.sleep(4)
        route = kubectl.get("httproute", "churn-split", namespace)
        assert route is not None  # the split stays as it was while no operator runs
        operator.start()
        st = wait_phase(kubectl, namespace, "churn", "Succeeded", "RolledBack", "Paused",
                        timeout=120)
        weights = watch.stop()
        report = load.stop()
    assert st["phase"] == "Succeeded", explain(kubectl, namespace, "churn")
    assert weights == [20, 40, 60], weights  # never back to 0, never a jump to 100
    assert report.errors == {} and report.connection_errors == 0, report


def test_newer_version_mid_rollout_restarts_the_analysis(
        kubectl: Kubectl, namespace: str, operator: OperatorProcess, gateway: str,
        model_store: Path) -> None:
    host = serving_md(kubectl, namespace, model_store)
    apply(kubectl, namespace, canary_manifest("churn", "churn", analysis=analysis(
        {"name": "error-rate", "max": 5})))
    wait_phase(kubectl, namespace, "churn", "Idle")
    v2, v3 = upload(model_store, namespace, "v2"), upload(model_store, namespace, "v3")
    with steady_load(gateway, host, "churn"):
        set_version(kubectl, namespace, "churn", v2, "v2")
        wait_status(kubectl, namespace, "v2 rolling", phase="Progressing", canaryWeight=20)
        set_version(kubectl, namespace, "churn", v3, "v3")
        wait_status(kubectl, namespace, "v3 replaces v2", canaryVersion="v3")
        st = wait_phase(kubectl, namespace, "churn", "Succeeded", "RolledBack", "Paused")
    assert st["phase"] == "Succeeded" and st["stableVersion"] == "v3", \
        explain(kubectl, namespace, "churn")
    assert served_version(kubectl, namespace, "churn") == "v3"
    reasons = [r for r, _ in canary_events(kubectl, namespace, "churn")]
    assert "RolloutRestarted" in reasons, reasons
    assert st["failedChecks"] == 0 and st["history"][0]["version"] == "v3"


def trainingjob(version: str, quality: str = "good") -> dict[str, Any]:
    return {"apiVersion": "slipway.dev/v1alpha1", "kind": "TrainingJob",
            "metadata": {"name": "train"},
            "spec": {"image": "slipway/example-trainer:0.1.0",
                     "env": [{"name": "SLIPWAY_TRAINER_QUALITY", "value": quality}],
                     "output": {"uri": "s3://models/{namespace}/{name}/{version}",
                                "version": version, "format": "sklearn"}}}


def retrain(kubectl: Kubectl, namespace: str, version: str, quality: str = "good") -> None:
    """A new training run under the same name: what a scheduled retrain does."""
    kubectl("delete", "trainingjob", "train", "-n", namespace, "--ignore-not-found",
            "--wait=true")
    apply(kubectl, namespace, trainingjob(version, quality))


def test_closed_loop_retrain_is_promoted_and_a_worse_retrain_rolled_back(
        kubectl: Kubectl, namespace: str, operator: OperatorProcess, gateway: str) -> None:
    apply(kubectl, namespace, trainingjob("v1"))
    apply(kubectl, namespace, {"apiVersion": "slipway.dev/v1alpha1", "kind": "ModelDeployment",
                               "metadata": {"name": "churn"},
                               "spec": {"fromTrainingJob": "train"}})
    apply(kubectl, namespace, canary_manifest("churn", "churn", analysis=analysis(
        {"name": "error-rate", "max": 5})))
    st = wait_phase(kubectl, namespace, "churn", "Idle", timeout=180)
    assert st["stableModel"]["source"] == "TrainingJob/train"
    md_st = wait_for(lambda: phase_is(kubectl, "modeldeployment", namespace, "churn", "Ready"),
                     READY_TIMEOUT, what="ModelDeployment churn Ready")
    from urllib.parse import urlsplit
    host = urlsplit(md_st["url"]).hostname
    assert host
    with steady_load(gateway, host, "churn"):
        retrain(kubectl, namespace, "v2")
        wait_status(kubectl, namespace, "the retrain rolling out", canaryVersion="v2")
        st = wait_phase(kubectl, namespace, "churn", "Succeeded", "RolledBack", "Paused",
                        timeout=180)
        assert st["phase"] == "Succeeded" and st["stableVersion"] == "v2", \
            explain(kubectl, namespace, "churn")
        lineage = st["stableModel"]
        assert (lineage["source"], lineage["image"]) == (
            "TrainingJob/train", "slipway/example-trainer:0.1.0"), lineage
        assert lineage["uri"] == f"s3://models/{namespace}/train/v2"

        retrain(kubectl, namespace, "v3", quality="flaky")
        wait_status(kubectl, namespace, "the worse retrain rolling out", canaryVersion="v3")
        st = wait_phase(kubectl, namespace, "churn", "Succeeded", "RolledBack", "Paused",
                        timeout=180)
    assert st["phase"] == "RolledBack" and st["stableVersion"] == "v2", \
        explain(kubectl, namespace, "churn")
    assert served_version(kubectl, namespace, "churn") == "v2"
    assert [(h["version"], h["outcome"], h["source"]) for h in st["history"]] == [
        ("v3", "RolledBack", "TrainingJob/train"), ("v2", "Succeeded", "TrainingJob/train")]
