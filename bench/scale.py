"""Scale: Slipway's TrainingJobs against Kubeflow's training-operator, and the idle cost.

Everything runs on one local control plane (kwok nodes), in one run:

1. Burst: N TrainingJobs and N PyTorchJobs of the same shape (1 worker, then 2), created by
   the same client at the same concurrency, each side in its own namespace, one side at a
   time, after the cluster has gone quiet; which side goes first alternates by shape
   (--order). Time until every one has all its pods, and until every one has Succeeded; the
   ratio Slipway / training-operator (goal <= 1.0). What it cost: the controller's CPU, every
   process's CPU (on 2 shared cores their sum decides the time), the API server's requests.
2. Latency under that burst: create -> Job exists (Slipway), create -> all pods exist (both),
   p50 and p99 (goal for the Job: p99 < 1 s). Times come from watches, not polling.
3. Steady state at M objects (finished and running TrainingJobs, stopped ModelDeployments):
   operator RSS, operator CPU seconds per minute, and API requests per minute at idle, both
   the operator's own (slipway_api_requests_total) and every client's (the API server's
   apiserver_request_total), by verb and resource.
4. Resync: the duration of an idle pass at M objects (slipway_resync_duration_seconds), and
   how long a deleted Job of a running TrainingJob takes to come back.
5. Control plane start.

`--operator-src DIR` runs the operator from another checkout's `operator/` (e.g. a worktree
of an older commit) for a before/after comparison; the figures it cannot give (its own
request counter) are left out. Prints a table and the JSON; asserts nothing.

Usage: python -m bench.scale [--burst 1000] [--shapes 1,2] [--steady 10000]
                             [--peer-threads 8] [--peer-qps 200] [--kcm-qps 200]
                             [--out results.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.run import _rss_mib, report
from slipway.devcluster import Cluster
from slipway.devcluster.operator_process import OperatorProcess
from slipway.watch import Gone, watch_events

CONCURRENCY = 16  # creates in flight, the same for both sides
TJ_LABEL, PEER_LABEL = "slipway.dev/trainingjob", "training.kubeflow.org/job-name"
# The plain Jobs' stand-in for TJ_LABEL, which the operator watches for.
PLAIN_LABEL = "bench.slipway.dev/plain-job"
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists"}


def _tj(name: str, workers: int, annotations: dict[str, str] | None = None,
        gpus: int = 1) -> dict[str, Any]:
    spec: dict[str, Any] = {"image": "trainer:1", "workers": workers, "gpusPerWorker": gpus,
                            "runPolicy": {"backoffLimit": 0}}
    if workers > 1:
        spec["distributed"] = {}
    if annotations:
        spec["podTemplate"] = {"metadata": {"annotations": annotations}}
    return {"apiVersion": "slipway.dev/v1alpha1", "kind": "TrainingJob",
            "metadata": {"name": name}, "spec": spec}


def _pytorchjob(name: str, workers: int) -> dict[str, Any]:
    def replica(n: int) -> dict[str, Any]:
        return {"replicas": n, "restartPolicy": "Never", "template": {"spec": {
            "tolerations": [GPU_TOLERATION],
            "containers": [{"name": "pytorch", "image": "trainer:1",
                            "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}}}

    specs = {"Master": replica(1)}
    if workers > 1:
        specs["Worker"] = replica(workers - 1)
    return {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": {"name": name},
            "spec": {"runPolicy": {"backoffLimit": 0}, "pytorchReplicaSpecs": specs}}


def _plain_job(name: str, workers: int, namespace: str) -> list[dict[str, Any]]:
    """The Job (and headless Service) Slipway makes for `_tj(name, workers)`, without an owner:
    what a Job-based design costs with no operator at all."""
    from slipway.api.trainingjob import TrainingJobSpec
    from slipway.builders.trainingjob import build_job, build_service

    tj = {**_tj(name, workers), "metadata": {"name": name, "namespace": namespace,
                                             "uid": f"00000000-0000-0000-0000-{name[2:]:0>12}",
                                             "generation": 1}}
    spec = TrainingJobSpec.model_validate(tj["spec"])
    docs = [d for d in (build_job(spec, tj, suspend=False, attempt=0), build_service(spec, tj))
            if d]
    for doc in docs:
        doc["metadata"].pop("ownerReferences", None)
    # Under a label of their own (the Service's selector too), so that the operator's watches
    # never see them.
    return list(json.loads(json.dumps(docs).replace(TJ_LABEL, PLAIN_LABEL)))


def _create_all(docs: list[dict[str, Any]], namespace: str) -> dict[str, float]:
    """POST every doc, CONCURRENCY at a time; key -> monotonic time its (last) POST returned,
    the key being a plain Job's (or its Service's) label, else its name."""
    from slipway import kube

    created: dict[str, float] = {}

    async def main() -> None:
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(doc: dict[str, Any]) -> None:
            async with gate:
                await kube.create({**doc, "metadata": {**doc["metadata"],
                                                       "namespace": namespace}})
                meta = doc["metadata"]
                created[(meta.get("labels") or {}).get(PLAIN_LABEL) or meta["name"]] = \
                    time.monotonic()

        await asyncio.gather(*(one(d) for d in docs))

    asyncio.run(main())
    return created


@dataclass
class Watch:
    """A thread that streams watch events of one collection and hands each to *on_event*."""

    path: str
    on_event: Callable[[str, dict[str, Any], float], None]
    selector: str | None = None
    stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Watch:
        threading.Thread(target=self._run, daemon=True).start()
        return self

    def _run(self) -> None:
        rv = ""
        while not self.stop.is_set():
            query: list[tuple[str, Any]] = [("allowWatchBookmarks", "false")]
            if self.selector:
                query.append(("labelSelector", self.selector))
            if rv:
                query.append(("resourceVersion", rv))
            try:
                for event in watch_events(self.path, query, 60, self.stop):
                    obj = event.get("object") or {}
                    if event.get("type") == "ERROR":
                        rv = ""  # expired: start over from a fresh list
                        continue
                    rv = (obj.get("metadata") or {}).get("resourceVersion", rv)
                    self.on_event(event["type"], obj, time.monotonic())
            except Gone:
                rv = ""


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _succeeded(obj: dict[str, Any]) -> bool:
    status = obj.get("status") or {}
    if status.get("phase") == "Succeeded":
        return True
    # A Job: SuccessCriteriaMet comes first (Kubernetes >= 1.31), Complete after its pods'
    # finalizers are gone.
    return any(c.get("type") in ("Succeeded", "SuccessCriteriaMet", "Complete")
               and c.get("status") == "True"
               for c in status.get("conditions") or [])


def _peer_pid() -> int | None:
    out = subprocess.run(["pgrep", "-f", "training-operator"], capture_output=True, text=True)
    pids = [int(p) for p in out.stdout.split()]
    return pids[-1] if pids else None


def burst(cluster: Cluster, op: OperatorProcess, side: str, n: int, workers: int,
          timeout: float) -> dict[str, Any]:
    """Create *n* jobs of one side, wait for all to succeed, and time it from watches. Also
    what it cost: the controller's CPU seconds and the requests the API server served (from
    every client: the controller, kube-controller-manager, the scheduler, kwok, this bench)."""
    namespace = f"burst-{side}-{workers}w"
    cluster.kubectl("create", "namespace", namespace)
    ours, plain = side == "slipway", side == "jobs"
    label = {"slipway": TJ_LABEL, "jobs": PLAIN_LABEL, "training-operator": PEER_LABEL}[side]
    owners = {"slipway": "/apis/slipway.dev/v1alpha1/namespaces/{}/trainingjobs",
              "jobs": "/apis/batch/v1/namespaces/{}/jobs",
              "training-operator": "/apis/kubeflow.org/v1/namespaces/{}/pytorchjobs",
              }[side].format(namespace)
    pods: dict[str, set[str]] = {}
    all_pods: dict[str, float] = {}
    job_seen: dict[str, float] = {}
    done: dict[str, float] = {}
    lock = threading.Lock()

    def on_pod(_: str, pod: dict[str, Any], at: float) -> None:
        owner = (pod["metadata"].get("labels") or {}).get(label)
        if owner:
            with lock:
                seen = pods.setdefault(owner, set())
                seen.add(pod["metadata"]["name"])
                if len(seen) >= workers and owner not in all_pods:
                    all_pods[owner] = at

    def on_job(_: str, job: dict[str, Any], at: float) -> None:
        owner = (job["metadata"].get("labels") or {}).get(TJ_LABEL)
        if owner:
            job_seen.setdefault(owner, at)
        if len(job_seen) >= n:  # every Job seen: the rest would be load the peer's side lacks
            job_watch.stop.set()

    def on_owner(_: str, obj: dict[str, Any], at: float) -> None:
        if _succeeded(obj):
            meta = obj["metadata"]
            done.setdefault((meta.get("labels") or {}).get(PLAIN_LABEL) if plain
                            else meta["name"], at)

    watches = [Watch(f"/api/v1/namespaces/{namespace}/pods", on_pod, label).start(),
               Watch(owners, on_owner, PLAIN_LABEL if plain else None).start()]
    job_watch = Watch(f"/apis/batch/v1/namespaces/{namespace}/jobs", on_job, TJ_LABEL)
    if ours:
        watches.append(job_watch.start())
    time.sleep(1.0)  # the watches are open
    pid = op.pid if ours else None if plain else _peer_pid()
    cpu0, counters0 = (_cpu_seconds(pid) if pid else 0.0), _apiserver_counters(cluster)
    procs0 = _cpu_by_process(cluster, op)
    ops0 = _operator_requests(op)
    if plain:
        docs = [d for i in range(n) for d in _plain_job(f"j-{i:05d}", workers, namespace)]
    else:
        docs = [(_tj if ours else _pytorchjob)(f"j-{i:05d}", workers) for i in range(n)]
    t0 = time.monotonic()
    created = _create_all(docs, namespace)
    created_s = time.monotonic() - t0
    deadline = t0 + timeout
    while len(done) < n and time.monotonic() < deadline:
        time.sleep(0.5)
    for w in watches:
        w.stop.set()
    procs = {k: round(v - procs0.get(k, 0.0), 1) for k, v in _cpu_by_process(cluster, op).items()}
    counters = _apiserver_counters(cluster)
    for kind, values in counters.items():
        values.subtract(counters0[kind])
    api = counters["requests"]
    ops = _operator_requests(op)
    ops.subtract(ops0)
    result: dict[str, Any] = {
        "n": n, "workers": workers, "created_s": round(created_s, 2),
        "all_pods_s": round(max(all_pods.values()) - t0, 2) if len(all_pods) == n else None,
        "all_succeeded_s": round(max(done.values()) - t0, 2) if len(done) == n else None,
        "succeeded": len(done),
        "pods_latency_p50_s": round(_pct([all_pods[k] - created[k] for k in all_pods], .5), 3),
        "pods_latency_p99_s": round(_pct([all_pods[k] - created[k] for k in all_pods], .99), 3),
        "controller_cpu_s": round(_cpu_seconds(pid) - cpu0, 1) if pid else None,
        "cpu_s_all_processes": round(sum(procs.values()), 1),
        "cpu_s_by_process": {k: v for k, v in sorted(procs.items(), key=lambda kv: -kv[1])
                             if v},
        "apiserver_requests": sum(api.values()),
        "apiserver_requests_top": dict(api.most_common(12)),
        "apiserver_ms_total": sum(counters["ms"].values()),
        "apiserver_ms_top": dict(counters["ms"].most_common(12)),
        "apiserver_watch_events_top": dict(counters["watch_events"].most_common(10)),
    }
    if ours:
        result["operator_requests"] = {k: v for k, v in ops.items()
                                       if v and not k.startswith("_")}
        lat = [job_seen[k] - created[k] for k in job_seen]
        result["job_latency_p50_s"] = round(_pct(lat, .5), 3)
        result["job_latency_p99_s"] = round(_pct(lat, .99), 3)
    cluster.kubectl("delete", "namespace", namespace, "--wait=true", "--timeout=600s",
                    check=False)
    return result


def _operator_requests(op: OperatorProcess) -> Counter[str]:
    url = f"http://127.0.0.1:{op.metrics_port}/metrics"
    try:
        text = urllib.request.urlopen(url, timeout=5).read().decode()
    except OSError:
        return Counter()
    out: Counter[str] = Counter()
    for m in re.finditer(r'^slipway_api_requests_total\{resource="([^"]+)",verb="([^"]+)"\} '
                         r'([0-9.e+]+)$', text, re.M):
        out[f"{m.group(2)} {m.group(1)}"] = int(float(m.group(3)))
    resync = re.search(r"^slipway_resync_duration_seconds_sum ([0-9.e+]+)$", text, re.M)
    count = re.search(r"^slipway_resync_duration_seconds_count ([0-9.e+]+)$", text, re.M)
    if resync and count:
        out["_resync_sum_ms"] = int(float(resync.group(1)) * 1000)
        out["_resync_count"] = int(float(count.group(1)))
    return out


def _apiserver_requests(cluster: Cluster) -> Counter[str]:
    return _apiserver_counters(cluster)["requests"]


def _apiserver_counters(cluster: Cluster) -> dict[str, Counter[str]]:
    """From the API server's own metrics, by "VERB resource": the requests it served and the
    milliseconds it spent serving them (WATCH left out: long-lived), and by kind the watch
    events it sent (one change reaches every watcher of its kind: the fan-out)."""
    text = cluster.kubectl("get", "--raw", "/metrics").stdout
    out: dict[str, Counter[str]] = {"requests": Counter(), "ms": Counter(),
                                    "watch_events": Counter()}
    for line in text.splitlines():
        name, _, rest = line.partition("{")
        if name not in ("apiserver_request_total", "apiserver_request_duration_seconds_sum",
                        "apiserver_watch_events_total"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', rest))
        value = float(line.split()[-1])
        if name == "apiserver_watch_events_total":
            kind = labels.get("resource") or labels.get("kind")  # the label's name varies
            out["watch_events"][f"{kind}.{labels.get('group')}".rstrip(".")] += int(value)
            continue
        if labels.get("verb") == "WATCH":
            continue
        key = f"{labels.get('verb')} {labels.get('resource')}"
        if name == "apiserver_request_total":
            out["requests"][key] += int(value)
        else:
            out["ms"][key] += int(value * 1000)
    return out


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of *pid* and every live process under it (a peer runs under unshare)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            total += _cpu_seconds(p)
        except OSError:
            continue
        todo.extend(children.get(p, []))
    return total


def _cpu_by_process(cluster: Cluster, op: OperatorProcess) -> dict[str, float]:
    """CPU seconds so far of every process a burst loads: the control plane, kwok, both
    controllers. On 2 cores they share, the sum is what decides a burst's time."""
    assert cluster.state is not None
    pids = {c.name: c.pid for c in cluster.state.components}
    pids["slipway"] = op.pid
    return {name: _tree_cpu_seconds(pid) for name, pid in pids.items()}


def _wait_quiet(cluster: Cluster, op: OperatorProcess, below: float = 0.3,
                for_s: float = 5.0, timeout: float = 120.0) -> float:
    """Wait until every process together uses under *below* of a CPU for *for_s* seconds (the
    last side's deletions, compactions and garbage collection done), so that the side that
    runs next does not pay for the one before it. Returns the seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        a = sum(_cpu_by_process(cluster, op).values())
        time.sleep(for_s)
        if (sum(_cpu_by_process(cluster, op).values()) - a) / for_s < below:
            break
    return round(time.monotonic() - t0, 1)


def _count(cluster: Cluster, kind: str, namespace: str, phase: str) -> int:
    out = cluster.kubectl("get", kind, "-n", namespace, "-o",
                          "jsonpath={range .items[*]}{.status.phase}{\"\\n\"}{end}").stdout
    return sum(1 for line in out.splitlines() if line == phase)


def steady(cluster: Cluster, op: OperatorProcess, total: int, idle_s: float,
           timeout: float) -> dict[str, Any]:
    """*total* objects settled, then the cost of doing nothing for *idle_s* seconds."""
    namespace = "steady"
    cluster.kubectl("create", "namespace", namespace)
    running = min(200, total // 20)
    mds = total // 10
    finished = total - running - mds
    docs = [_tj(f"done-{i:05d}", 1, gpus=0) for i in range(finished)]
    docs += [_tj(f"run-{i:04d}", 1, {"slipway.dev/fake-duration": "7200s"}, gpus=0)
             for i in range(running)]
    docs += [{"apiVersion": "slipway.dev/v1alpha1", "kind": "ModelDeployment",
              "metadata": {"name": f"md-{i:05d}"},
              "spec": {"stopped": True, "model": {"format": "sklearn", "version": "v1",
                                                  "uri": f"s3://models/steady/{i}"}}}
             for i in range(mds)]
    t0 = time.monotonic()
    _create_all(docs, namespace)
    created_s = time.monotonic() - t0
    deadline = t0 + timeout
    while time.monotonic() < deadline:
        if (_count(cluster, "trainingjobs", namespace, "Succeeded") == finished
                and _count(cluster, "trainingjobs", namespace, "Running") == running
                and _count(cluster, "modeldeployments", namespace, "Stopped") == mds):
            break
        time.sleep(5)
    settled_s = time.monotonic() - t0
    time.sleep(3 * float(op.env["SLIPWAY_RESYNC_SECONDS"]))  # the last events play out
    ours0, api0, cpu0 = _operator_requests(op), _apiserver_requests(cluster), \
        _cpu_seconds(op.pid)
    time.sleep(idle_s)
    ours1, api1, cpu1 = _operator_requests(op), _apiserver_requests(cluster), \
        _cpu_seconds(op.pid)
    per_min = 60.0 / idle_s
    ours = {k: round(v * per_min, 1) for k, v in (ours1 - ours0).items()
            if not k.startswith("_")}
    api = {k: round(v * per_min, 1) for k, v in (api1 - api0).items()}
    passes = ours1["_resync_count"] - ours0["_resync_count"]
    result: dict[str, Any] = {
        "objects": total, "finished_tjs": finished, "running_tjs": running,
        "stopped_mds": mds, "created_s": round(created_s, 1), "settled_s": round(settled_s, 1),
        "idle_window_s": idle_s, "operator_rss_mib": _rss_mib(op.pid),
        "operator_cpu_s_per_min": round((cpu1 - cpu0) * per_min, 2),
        "operator_requests_per_min": ours or None,
        "operator_requests_per_min_total": round(sum(ours.values()), 1) if ours else None,
        "apiserver_requests_per_min": dict(sorted(api.items(), key=lambda kv: -kv[1])[:12]),
        "apiserver_requests_per_min_total": round(sum(api.values()), 1),
        "idle_resync_pass_ms": round((ours1["_resync_sum_ms"] - ours0["_resync_sum_ms"])
                                     / passes, 1) if passes else None,
    }
    if "SLIPWAY_MEMORY_REPORT" in op.env:  # slipway.memory writes its report on SIGUSR2
        os.kill(op.pid, signal.SIGUSR2)
        time.sleep(30)
    # A deleted Job of a running TrainingJob: how long until it is back.
    job = cluster.kubectl("get", "jobs", "-n", namespace, "-l", f"{TJ_LABEL}=run-0000",
                          "-o", "jsonpath={.items[0].metadata.name}").stdout
    cluster.kubectl("delete", "job", job, "-n", namespace, "--wait=true")
    t1 = time.monotonic()
    back = None
    while time.monotonic() - t1 < 120:
        if cluster.kubectl("get", "job", job, "-n", namespace, check=False).returncode == 0:
            back = round(time.monotonic() - t1, 2)
            break
        time.sleep(0.2)
    result["deleted_job_back_s"] = back
    return result


def table(results: dict[str, Any]) -> str:
    rows = ["| measure | Slipway | training-operator | ratio | plain Jobs, no operator |",
            "|---|---|---|---|---|"]
    for workers, pair in sorted(results.get("burst", {}).items()):
        ours, peer = pair.get("slipway") or {}, pair.get("training-operator") or {}
        plain = pair.get("jobs") or {}
        for key, what in (("all_pods_s", "all pods exist (s)"),
                          ("all_succeeded_s", "all Succeeded (s)"),
                          ("pods_latency_p50_s", "create -> pods p50 (s)"),
                          ("pods_latency_p99_s", "create -> pods p99 (s)"),
                          ("controller_cpu_s", "controller CPU (s)"),
                          ("cpu_s_all_processes", "CPU of every process (s)"),
                          ("apiserver_requests", "API server requests"),
                          ("apiserver_ms_total", "API server time in requests (ms)")):
            a, b = ours.get(key), peer.get(key)
            ratio = f"{a / b:.2f}" if isinstance(a, (int, float)) and isinstance(
                b, (int, float)) and b else ""
            rows.append(f"| {ours.get('n')} jobs x {workers} worker(s): {what} | {a} | {b} "
                        f"| {ratio} | {plain.get(key, '')} |")
        rows.append(f"| {ours.get('n')} x {workers}: create -> Job p50 / p99 (s) | "
                    f"{ours.get('job_latency_p50_s')} / {ours.get('job_latency_p99_s')} | | | |")
    st = results.get("steady")
    if st:
        for key in ("operator_rss_mib", "operator_cpu_s_per_min",
                    "operator_requests_per_min_total", "apiserver_requests_per_min_total",
                    "idle_resync_pass_ms", "deleted_job_back_s"):
            rows.append(f"| steady, {st['objects']} objects: {key} | {st.get(key)} | | | |")
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--burst", type=int, default=1000, help="jobs per side (0: skip)")
    ap.add_argument("--shapes", default="1,2", help="workers per job, comma-separated")
    ap.add_argument("--steady", type=int, default=10000, help="objects at idle (0: skip)")
    ap.add_argument("--idle-seconds", type=float, default=60.0)
    ap.add_argument("--peer-threads", type=int, default=8)
    ap.add_argument("--peer-qps", type=int, default=200)
    ap.add_argument("--kcm-qps", type=int, default=0,
                    help="kube-controller-manager's --kube-api-qps (burst: 1.5x); 0: the "
                         "peer's, so that what creates each side's pods (the Job controller, "
                         "the peer) has the same client budget")
    ap.add_argument("--no-peer", action="store_true", help="Slipway only")
    ap.add_argument("--plain-jobs", action="store_true",
                    help="a third side: the Jobs and Services Slipway would make, created "
                         "directly with no operator (the floor of a Job-based design)")
    ap.add_argument("--order", choices=("alternate", "peer-first", "slipway-first"),
                    default="alternate",
                    help="which side runs first at each shape; alternate: the peer at the "
                         "1st, 3rd... shape, Slipway at the others (the side that runs second "
                         "meets a control plane that has held the first side's burst)")
    ap.add_argument("--operator-src", type=Path, help="run the operator from DIR/operator")
    ap.add_argument("--timeout", type=float, default=1800.0)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--memory-report", action="store_true",
                    help="save where the operator's memory sits at idle next to --out")
    ap.add_argument("--trace-memory", type=int, default=0, metavar="FRAMES",
                    help="with --memory-report, also the lines holding the most Python "
                         "memory (traces every allocation: slows the operator)")
    args = ap.parse_args()
    shapes = [int(s) for s in args.shapes.split(",") if s]
    kcm_qps = args.kcm_qps or args.peer_qps
    results: dict[str, Any] = {"settings": {
        "concurrency": CONCURRENCY, "peer": {"controller_threads": args.peer_threads,
                                             "kube_api_qps": args.peer_qps,
                                             "kube_api_burst": args.peer_qps * 3 // 2},
        "kube_controller_manager": {"kube_api_qps": kcm_qps, "kube_api_burst": kcm_qps * 3 // 2},
        "operator_src": str(args.operator_src) if args.operator_src else "this checkout",
        "machine": {"cpus": os.cpu_count(), "loadavg_start": os.getloadavg()},
        "date": time.strftime("%Y-%m-%d")}}
    with tempfile.TemporaryDirectory() as tmp:
        peer = bool(args.burst) and not args.no_peer
        cluster = Cluster(Path(tmp) / "cluster", gpu_nodes=16, cpu_nodes=4, serving=False,
                          training_operator=peer, training_operator_threads=args.peer_threads,
                          training_operator_qps=args.peer_qps, kcm_qps=kcm_qps,
                          kcm_burst=kcm_qps * 3 // 2)
        t0 = time.monotonic()
        cluster.start()
        results["control_plane"] = {"start_s": round(time.monotonic() - t0, 2),
                                    "timings_s": cluster.timings}
        os.environ["KUBECONFIG"] = str(cluster.kubeconfig)
        extra = {}
        if args.memory_report:
            extra["SLIPWAY_TRACEMALLOC"] = str(args.trace_memory)
            extra["SLIPWAY_MEMORY_REPORT"] = str(
                (args.out or Path("scale.json")).with_suffix(".memory.txt").resolve())
        if args.operator_src:
            extra["PYTHONPATH"] = str(args.operator_src.resolve() / "operator")
        op = OperatorProcess(cluster.kubeconfig, Path(tmp) / "operator.log",
                             resync_seconds=15, pod_reason_seconds=None,
                             extra_env=extra).start()
        try:
            results["burst"] = {}
            for workers in shapes if args.burst else []:
                pair: dict[str, Any] = {}
                sides = (["training-operator"] if peer else []) + ["slipway"] + (
                    ["jobs"] if args.plain_jobs else [])
                if args.order == "slipway-first":
                    sides.remove("slipway")
                    sides.insert(0, "slipway")
                elif args.order == "alternate":  # rotate: each side goes first in turn
                    turn = shapes.index(workers) % len(sides)
                    sides = sides[turn:] + sides[:turn]
                for side in sides:
                    quiet = _wait_quiet(cluster, op)
                    print(f"burst: {args.burst} x {workers} worker(s), {side} (after {quiet} s "
                          f"for the cluster to go quiet)", file=sys.stderr)
                    pair[side] = burst(cluster, op, side, args.burst, workers, args.timeout)
                    pair[side]["quiet_wait_s"] = quiet
                    print(f"  {pair[side]}", file=sys.stderr)
                pair["order"] = sides
                results["burst"][str(workers)] = pair
            if args.steady:
                print(f"steady state: {args.steady} objects", file=sys.stderr)
                results["steady"] = steady(cluster, op, args.steady, args.idle_seconds,
                                           args.timeout)
            results["operator_rss_mib_end"] = _rss_mib(op.pid)
        finally:
            op.stop()
            cluster.stop()
    results["settings"]["machine"]["loadavg_end"] = os.getloadavg()
    report(results, args.out)
    print("\n" + table(results))
    ratios = [p["slipway"]["all_succeeded_s"] / p["training-operator"]["all_succeeded_s"]
              for p in results["burst"].values()
              if "training-operator" in p and p["slipway"].get("all_succeeded_s")
              and p["training-operator"].get("all_succeeded_s")]
    if ratios:
        print(f"\nSlipway / training-operator, time to all Succeeded: "
              f"{', '.join(f'{r:.2f}' for r in ratios)} (median {statistics.median(ratios):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
