"""Benchmarks on the real local control plane. Prints figures; asserts nothing.

- control plane: warm start time per component, and RSS once up;
- TrainingJob throughput against its peer, plain batch/v1 Jobs, in the same run:
  N Jobs created directly vs N TrainingJobs through the operator, both to
  completion on kwok; the difference is Slipway's overhead;
- the operator's RSS after the run.

Usage: python -m bench.run [--jobs 50] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from slipway.devcluster import Cluster
from slipway.devcluster.operator_process import OperatorProcess


def report(results: dict[str, Any], out: Path | None) -> None:
    """Print the figures as JSON, and write them to *out* when given."""
    text = json.dumps(results, indent=2)
    print(text)
    if out:
        out.write_text(text)


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def _count_done(cluster: Cluster, kind: str, ns: str) -> int:
    items = json.loads(cluster.kubectl("get", kind, "-n", ns, "-o", "json").stdout)["items"]
    if kind == "jobs":
        return sum(any(c["type"] == "Complete" and c["status"] == "True"
                       for c in (j.get("status") or {}).get("conditions", [])) for j in items)
    return sum((t.get("status") or {}).get("phase") == "Succeeded" for t in items)


def _timed(cluster: Cluster, kind: str, ns: str, docs: list[dict[str, Any]],
           timeout: float = 600) -> dict[str, float]:
    cluster.kubectl("create", "namespace", ns)
    t0 = time.monotonic()
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump_all(docs))
    created = time.monotonic() - t0
    deadline = t0 + timeout
    while time.monotonic() < deadline:
        if _count_done(cluster, kind, ns) == len(docs):
            total = time.monotonic() - t0
            return {"n": len(docs), "apply_s": round(created, 2), "all_done_s": round(total, 2),
                    "per_second": round(len(docs) / total, 2)}
        time.sleep(0.5)
    raise TimeoutError(f"{kind}: not all {len(docs)} done in {timeout}s")


def _job(i: int) -> dict[str, Any]:
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": f"job-{i}"},
            "spec": {"backoffLimit": 0, "template": {"spec": {
                "restartPolicy": "Never",
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
                "containers": [{"name": "c", "image": "trainer:1",
                                "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}}}}


def _tj(i: int) -> dict[str, Any]:
    return {"apiVersion": "slipway.dev/v1alpha1", "kind": "TrainingJob",
            "metadata": {"name": f"tj-{i}"},
            "spec": {"image": "trainer:1", "gpusPerWorker": 1, "runPolicy": {"backoffLimit": 0}}}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=50)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        cluster = Cluster(Path(tmp) / "cluster", gpu_nodes=8)
        t0 = time.monotonic()
        cluster.start()
        results["control_plane"] = {"start_s": round(time.monotonic() - t0, 2),
                                    "timings_s": cluster.timings, "rss_mib": cluster.rss_mib()}
        op = OperatorProcess(cluster.kubeconfig, Path(tmp) / "operator.log",
                             resync_seconds=15).start()
        try:
            results["operator_idle_rss_mib"] = _rss_mib(op.pid)
            n = args.jobs
            results["peer_batch_jobs"] = _timed(cluster, "jobs", "bench-jobs",
                                                [_job(i) for i in range(n)])
            results["slipway_trainingjobs"] = _timed(cluster, "trainingjobs", "bench-tj",
                                                     [_tj(i) for i in range(n)])
            results["operator_rss_mib_after"] = _rss_mib(op.pid)
            peer = results["peer_batch_jobs"]["all_done_s"]
            ours = results["slipway_trainingjobs"]["all_done_s"]
            results["overhead_vs_peer_s"] = round(ours - peer, 2)
        finally:
            op.stop()
            cluster.stop()
    report(results, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
