"""Rollback delay of a Canary on the full local platform. Prints figures; asserts nothing.

A version that fails a share of its requests is rolled out under steady load. The delay is
measured from the moment the threshold-th failed check becomes decidable (the end of the
interval that fails it: its window start, status.stepStartedAt, plus the interval) to the
split HTTPRoute being gone, i.e. no traffic left on the canary. Goal: at most one interval
plus 2 s. Flagger's figure for the same settings, interval x threshold, is printed beside it
(it counts failed checks one interval apart, from the first failing one).

Usage: python -m bench.canary_rollback [--runs 3] [--interval 10s] [--threshold 2]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.run import report
from slipway.api.canary import duration_seconds
from slipway.devcluster import Cluster
from slipway.devcluster.load import load_in_background
from slipway.devcluster.modelstore import upload_example_model
from slipway.devcluster.operator_process import OperatorProcess


def _get(cluster: Cluster, kind: str, ns: str, name: str) -> dict[str, Any] | None:
    proc = cluster.kubectl("get", kind, name, "-n", ns, "-o", "json", check=False)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def _apply(cluster: Cluster, ns: str, obj: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(obj))


def _wait(fn: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = fn()
        if got:
            return got
        time.sleep(0.05)
    raise TimeoutError(what)


def _epoch(rfc3339: str) -> float:
    return dt.datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


def one_run(cluster: Cluster, gateway: str, run: int, interval: str,
            threshold: int) -> dict[str, Any]:
    ns = f"bench-canary-{run}"
    cluster.kubectl("create", "namespace", ns)
    store = cluster.dir / "models"
    for version, quality in (("v1", "good"), ("v2", "flaky")):
        upload_example_model(store, f"s3://models/{ns}/m/{version}", "sklearn",
                             quality=quality)
    model = {"format": "sklearn", "uri": f"s3://models/{ns}/m/v1", "version": "v1"}
    _apply(cluster, ns, {"apiVersion": "slipway.dev/v1alpha1", "kind": "ModelDeployment",
                         "metadata": {"name": "m"}, "spec": {"model": model}})
    _apply(cluster, ns, {"apiVersion": "slipway.dev/v1alpha1", "kind": "Canary",
                         "metadata": {"name": "m"},
                         "spec": {"targetRef": {"name": "m"}, "interval": interval,
                                  "steps": [50], "analysis": {
                                      "threshold": threshold, "minSamples": 10,
                                      "metrics": [{"name": "error-rate", "max": 5}]}}})
    st = _wait(lambda: ((_get(cluster, "canary", ns, "m") or {}).get("status") or {}).get(
        "phase") == "Idle", 120, "Canary Idle")
    md = _wait(lambda: (m := _get(cluster, "modeldeployment", ns, "m") or {}).get(
        "status", {}).get("url") and m, 120, "ModelDeployment URL")
    host = urlsplit(md["status"]["url"]).hostname or ""
    load = load_in_background(gateway, host, "m", rate=25, duration=600, concurrency=8)
    try:
        cluster.kubectl("patch", "modeldeployment", "m", "-n", ns, "--type=merge", "-p",
                        json.dumps({"spec": {"model": {**model, "version": "v2",
                                                       "uri": f"s3://models/{ns}/m/v2"}}}))
        decidable: float | None = None
        while True:  # watch the last window open, then the route go
            st = (_get(cluster, "canary", ns, "m") or {}).get("status") or {}
            if st.get("phase") == "Progressing" and (st.get("canaryWeight") or 0) > 0 and \
                    (st.get("failedChecks") or 0) == threshold - 1:
                decidable = _epoch(st["stepStartedAt"]) + duration_seconds(interval)
            if st.get("phase") in ("RolledBack", "Succeeded", "Paused", "Failed"):
                break
            time.sleep(0.05)
        _wait(lambda: _get(cluster, "httproute", ns, "m-split") is None, 30, "route gone")
        gone = time.time()
    finally:
        report = load.stop()
    assert decidable is not None
    return {"phase": st["phase"], "message": st.get("message"),
            "rollback_delay_s": round(gone - decidable, 2), "load": report.summary()}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--interval", default="10s")
    ap.add_argument("--threshold", type=int, default=2)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    seconds = duration_seconds(args.interval)
    results: dict[str, Any] = {"interval": args.interval, "threshold": args.threshold,
                               "goal_s": seconds + 2,
                               "flagger_interval_x_threshold_s": seconds * args.threshold,
                               "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        cluster = Cluster(Path(tmp) / "cluster")
        cluster.start()
        op = OperatorProcess(cluster.kubeconfig, Path(tmp) / "operator.log",
                             extra_env={"SLIPWAY_PROMETHEUS_URL":
                                        cluster.endpoints["prometheus"]},
                             prometheus_targets=cluster.dir / "prometheus" / "targets").start()
        try:
            for run in range(args.runs):
                results["runs"].append(one_run(cluster, cluster.endpoints["gateway"], run,
                                               args.interval, args.threshold))
                print(json.dumps(results["runs"][-1]), file=sys.stderr)
        finally:
            op.stop()
            cluster.stop()
    delays = [r["rollback_delay_s"] for r in results["runs"]]
    results["rollback_delay_s"] = {"min": min(delays), "max": max(delays),
                                   "mean": round(sum(delays) / len(delays), 2)}
    report(results, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
