"""Chaos: the operator is SIGKILLed again and again, and the kube-apiserver restarted once,
while 100 TrainingJobs and 20 ModelDeployments are created and run.

At the end every object must be in the phase its spec implies, with exactly one child per
object (no duplicate from a half-finished reconcile), no orphaned child, no startTime that
moved, and no traceback in the operator's log. The figures are printed.

The session's single operator is stopped for this test: the test runs its own, to kill it.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from slipway.devcluster.cluster import Cluster, free_port
from tests.conftest import operator_env
from tests.helpers import Kubectl, OperatorProcess, wait_for

MIN_KILLS = 20
SINGLE, DISTRIBUTED, FAILING, SUSPENDED = 60, 20, 10, 10
FROM_SPEC, FROM_TRAINING = 10, 10
EXPECTED_TJ = {"single": "Succeeded", "ddp": "Succeeded", "failing": "Failed",
               "suspended": "Queued"}


def trainingjobs() -> dict[str, dict[str, Any]]:
    """name -> spec, for the 100 TrainingJobs (their name prefix says what to expect)."""
    rng = random.Random(7)
    out: dict[str, dict[str, Any]] = {}

    def pod(seconds: int, **extra: str) -> dict[str, Any]:
        return {"metadata": {"annotations": {"slipway.dev/fake-duration": f"{seconds}s",
                                             **extra}}}

    for i in range(SINGLE):
        out[f"single-{i:02d}"] = {"image": "trainer:1", "podTemplate": pod(rng.randint(1, 6)),
                                  "output": {"uri": "s3://models/{name}/{version}",
                                             "format": "sklearn"}}
    for i in range(DISTRIBUTED):
        out[f"ddp-{i:02d}"] = {"image": "trainer:1", "workers": 2, "gpusPerWorker": 1,
                               "distributed": {}, "podTemplate": pod(rng.randint(1, 6))}
    for i in range(FAILING):
        out[f"failing-{i:02d}"] = {"image": "trainer:1", "runPolicy": {"backoffLimit": 0},
                                   "podTemplate": pod(1, **{"slipway.dev/fake-exit": "1"})}
    for i in range(SUSPENDED):
        out[f"suspended-{i:02d}"] = {"image": "trainer:1", "runPolicy": {"suspend": True}}
    return out


def modeldeployments() -> dict[str, dict[str, Any]]:
    """Stopped ModelDeployments: what is under test is the operator, not model servers."""
    out: dict[str, dict[str, Any]] = {}
    for i in range(FROM_SPEC):
        out[f"md-spec-{i:02d}"] = {"stopped": True, "model": {
            "format": "sklearn", "uri": f"s3://models/chaos/{i}", "version": "v1"}}
    for i in range(FROM_TRAINING):
        out[f"md-tj-{i:02d}"] = {"stopped": True, "fromTrainingJob": f"single-{i:02d}"}
    return out


def manifest(kind: str, name: str, spec: dict[str, Any]) -> str:
    return yaml.safe_dump({"apiVersion": "slipway.dev/v1alpha1", "kind": kind,
                           "metadata": {"name": name}, "spec": spec})


class Chaos:
    """Kills (and restarts) the operator at random moments until told to stop."""

    def __init__(self, op: OperatorProcess, seed: int = 11) -> None:
        self.op, self.rng = op, random.Random(seed)
        self.kills = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            # Sometimes right after start-up (mid-first-reconcile), sometimes later.
            if self.stop.wait(self.rng.uniform(0.2, 4.0)):
                return
            self.op.kill()
            self.kills += 1
            self.op.start()


@pytest.fixture
def own_operator(cluster: Cluster, operator: OperatorProcess,
                 tmp_path: Path) -> Iterator[OperatorProcess]:
    operator.stop()
    op = OperatorProcess(cluster.kubeconfig, tmp_path / "operator.log", free_port(),
                         extra_env=operator_env(cluster))
    try:
        yield op.start()
    finally:
        op.stop()
        operator.start()


def test_kills_and_an_apiserver_restart_lose_nothing(
        cluster: Cluster, kubectl: Kubectl, namespace: str,
        own_operator: OperatorProcess) -> None:
    tjs, mds = trainingjobs(), modeldeployments()
    chaos = Chaos(own_operator)
    chaos.thread.start()
    started = time.monotonic()
    first_start: dict[str, str] = {}

    def record_start_times() -> None:
        for obj in kubectl.items("trainingjobs", namespace, None):
            st = (obj.get("status") or {}).get("startTime")
            if st:
                first_start.setdefault(obj["metadata"]["name"], st)

    apiserver_away = 0.0
    names = list(tjs)
    random.Random(3).shuffle(names)
    for i, name in enumerate(names):
        kubectl("apply", "-n", namespace, "-f", "-", input=manifest("TrainingJob", name,
                                                                    tjs[name]))
        if i == len(names) // 2:
            record_start_times()
            apiserver_away = cluster.restart_apiserver()
            probe = kubectl("get", "--raw", "/readyz", check=False)
            assert probe.returncode == 0, (probe.stderr, (cluster.dir / "logs" /
                                                          "kube-apiserver.log").read_text()[-4000:])
    for name, spec in mds.items():
        kubectl("apply", "-n", namespace, "-f", "-", input=manifest("ModelDeployment", name,
                                                                    spec))
    created = time.monotonic()

    # Keep killing until the minimum is reached, recording start times as they appear.
    while chaos.kills < MIN_KILLS and time.monotonic() - created < 240:
        record_start_times()
        time.sleep(1)
    chaos.stop.set()
    chaos.thread.join(60)
    if own_operator.proc is None:  # stopped between a kill and its restart
        own_operator.start()
    calm = time.monotonic()

    def settled() -> bool:
        record_start_times()
        phases = {o["metadata"]["name"]: (o.get("status") or {}).get("phase")
                  for o in kubectl.items("trainingjobs", namespace, None)}
        wrong = {n: p for n, p in phases.items() if p != EXPECTED_TJ[n.split("-")[0]]}
        assert not wrong and len(phases) == len(tjs), wrong
        md_phases = {o["metadata"]["name"]: (o.get("status") or {}).get("phase")
                     for o in kubectl.items("modeldeployments", namespace, None)}
        assert set(md_phases.values()) == {"Stopped"} and len(md_phases) == len(mds), md_phases
        return True

    wait_for(settled, 300, interval=2, what="every object in its expected phase")
    settle = time.monotonic() - calm

    # Exactly one Job per TrainingJob (one attempt each: failures here are permanent), each
    # controlled by its live TrainingJob; one InferenceService per ModelDeployment, likewise.
    owners = {o["metadata"]["name"]: o["metadata"]["uid"]
              for o in kubectl.items("trainingjobs", namespace, None)}
    jobs = kubectl.items("jobs", namespace, None)
    per_tj = Counter(j["metadata"]["labels"].get("slipway.dev/trainingjob") for j in jobs)
    duplicates = {n: c for n, c in per_tj.items() if c != 1}
    orphans = [j["metadata"]["name"] for j in jobs if not any(
        r.get("controller") and owners.get(r["name"]) == r["uid"]
        for r in j["metadata"].get("ownerReferences") or [])]
    md_owners = {o["metadata"]["name"]: o["metadata"]["uid"]
                 for o in kubectl.items("modeldeployments", namespace, None)}
    isvcs = kubectl.items("inferenceservices", namespace, None)
    isvc_orphans = [i["metadata"]["name"] for i in isvcs if not any(
        r.get("controller") and md_owners.get(r["name"]) == r["uid"]
        for r in i["metadata"].get("ownerReferences") or [])]
    final = {o["metadata"]["name"]: (o.get("status") or {})
             for o in kubectl.items("trainingjobs", namespace, None)}
    moved = {n: (t, final[n].get("startTime")) for n, t in first_start.items()
             if final[n].get("startTime") != t}
    served = {o["metadata"]["name"]: ((o.get("status") or {}).get("model") or {}).get("uri")
              for o in kubectl.items("modeldeployments", namespace, None)}
    lost = [n for n in mds if n.startswith("md-tj-")
            and served[n] != (final[mds[n]["fromTrainingJob"]].get("output") or {}).get("uri")]
    log = own_operator.log_path.read_text(errors="replace")
    tracebacks = log.count("Traceback (most recent call last)")

    print(f"\nchaos: {chaos.kills} operator kills, 1 kube-apiserver restart "
          f"({apiserver_away:.1f}s away), {len(tjs)} TrainingJobs + {len(mds)} "
          f"ModelDeployments; created in {created - started:.0f}s; settled "
          f"{settle:.0f}s after the last kill; duplicates {len(duplicates)}, orphaned Jobs "
          f"{len(orphans)}, orphaned InferenceServices {len(isvc_orphans)}, startTimes moved "
          f"{len(moved)}, lost status {len(lost)}, tracebacks {tracebacks}")
    assert chaos.kills >= MIN_KILLS
    assert set(per_tj) == set(tjs) and not duplicates, duplicates
    assert not orphans and not isvc_orphans, (orphans, isvc_orphans)
    assert len(isvcs) == len(mds)
    assert not moved, moved
    assert not lost, lost
    assert tracebacks == 0, log[log.index("Traceback"):][:3000]
