"""STAND-IN for a kubelet's container runtime, for the images this project ships.

kwok plays the kubelet for every other pod: it marks pods Running and completes Job
pods without running any code. This machine has no container runtime, so for pods whose
containers use one of the project's own images (the model servers of `runtimes/` and the
example trainer) this process runs the container's real program as a local process:

- the same command, arguments and environment as the container (from the runtimes venv);
- `/mnt/models` resolved to the local model store folder of the pod's storage URI (what
  KServe's storage initializer would have downloaded), and a trainer's
  `SLIPWAY_OUTPUT_URI` given a local folder as `SLIPWAY_OUTPUT_DIR`;
- each declared container port served on a free loopback port, published on the pod as
  the annotation `slipway.dev/loopback-ports` (there is no pod network: the local
  gateway and Prometheus use this map instead of the fake pod IP);
- the pod's status written as a kubelet would: Running, Ready once the port answers,
  Succeeded/Failed with the real exit code for run-once pods, CrashLoopBackOff with the
  exit code, restart count and the tail of the log for restarted ones, plus an Event;
- every started model server listed as a Prometheus file-SD target with `namespace`,
  `inferenceservice` and `pod` labels.

Run it as `python -m slipway.devcluster.podrunner --kubeconfig K --dir D --venv V`.
It stays as small as that interface; nothing here is used outside the dev platform.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import os
import queue
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from slipway.devcluster.modelstore import StoreError, local_path

log = logging.getLogger("slipway.podrunner")

# The images this runner plays the container runtime for, and their default commands.
IMAGE_PATTERN = r"^slipway/(runtimes|example-trainer)(:|@|$)"
DEFAULT_COMMANDS = {"example-trainer": ["slipway-example-trainer"]}
LOOPBACK_PORTS = "slipway.dev/loopback-ports"
MODEL_MOUNT = "/mnt/models"
STORAGE_URI_ANNOTATION = "serving.kserve.io/storage-initializer-sourceuri"
ISVC_LABEL = "serving.kserve.io/inferenceservice"
METRICS_PORT_ANNOTATIONS = ("prometheus.kserve.io/port", "prometheus.io/port")
# Model servers of this project take their ports as flags; later flags win (argparse).
PORT_FLAGS = {"--http_port": 8080, "--grpc_port": 8081}
MAX_BACKOFF = 10.0

_image_re = re.compile(IMAGE_PATTERN)


def ours(pod: dict[str, Any]) -> bool:
    """True when some container of *pod* uses an image this runner can run."""
    return any(_image_re.match(c.get("image") or "")
               for c in (pod.get("spec") or {}).get("containers") or [])


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def storage_uri(pod: dict[str, Any]) -> str | None:
    """The model URI KServe's storage initializer would download: its init container's first
    argument (set by KServe's pod mutator), else the pod annotation it reads."""
    for init in (pod.get("spec") or {}).get("initContainers") or []:
        if init.get("name") == "storage-initializer" and init.get("args"):
            return str(init["args"][0])
    uri = ((pod.get("metadata") or {}).get("annotations") or {}).get(STORAGE_URI_ANNOTATION)
    return str(uri) if uri else None


def container_env(container: dict[str, Any], pod: dict[str, Any], pod_ip: str) -> dict[str, str]:
    """The container's env with literal values and the common downward-API fields."""
    meta = pod.get("metadata") or {}
    fields = {"metadata.name": meta.get("name", ""),
              "metadata.namespace": meta.get("namespace", ""), "status.podIP": pod_ip,
              "spec.nodeName": (pod.get("spec") or {}).get("nodeName", "")}
    env: dict[str, str] = {}
    for item in container.get("env") or []:
        if "value" in item:
            env[item["name"]] = str(item["value"])
        elif (path := ((item.get("valueFrom") or {}).get("fieldRef") or {}).get(
                "fieldPath")) in fields:
            env[item["name"]] = str(fields[path])
    return env


@dataclass
class Plan:
    """How to run one container locally."""

    argv: list[str]
    env: dict[str, str]
    ports: dict[str, int]          # containerPort -> loopback port
    http_port: int | None          # the loopback port to probe and scrape, if any
    metrics_port: int | None
    model_dir: Path | None = None  # the local store folder of the pod's storage URI
    storage_uri: str | None = None


def plan_container(container: dict[str, Any], pod: dict[str, Any], *, venv_bin: Path,
                   store: Path, pod_ip: str, ports: dict[str, int]) -> Plan:
    """Pure: the local command line and environment that stand for *container*.
    Raises StoreError (bad storage URI) or ValueError (no command)."""
    image = container.get("image") or ""
    m = _image_re.match(image)
    command = list(container.get("command") or DEFAULT_COMMANDS.get(m.group(1) if m else "", []))
    if not command:
        raise ValueError(f"container {container.get('name')} ({image}) has no command")
    args = [str(a) for a in container.get("args") or []]
    namespace = (pod.get("metadata") or {}).get("namespace")
    env = container_env(container, pod, pod_ip)

    uri = storage_uri(pod)
    model_dir = None
    if uri:
        model_dir = local_path(store, uri, namespace)
        args = [a.replace(MODEL_MOUNT, str(model_dir)) for a in args]
        env = {k: v.replace(MODEL_MOUNT, str(model_dir)) for k, v in env.items()}
    if out := env.get("SLIPWAY_OUTPUT_URI"):
        out_dir = local_path(store, out, namespace)
        out_dir.mkdir(parents=True, exist_ok=True)
        env["SLIPWAY_OUTPUT_DIR"] = str(out_dir)

    # A server (it declares ports or sets --http_port) gets a loopback port for each of its
    # port flags; the flag appended last wins. A trainer gets none and is not probed.
    server = bool(container.get("ports")) or any(a.startswith("--http_port=") for a in args)
    http_port = None
    if server:
        for flag, default in PORT_FLAGS.items():
            given = next((a.split("=", 1)[1] for a in args if a.startswith(flag + "=")), None)
            local = ports.setdefault(str(given or default), free_port())
            args.append(f"{flag}={local}")
            if flag == "--http_port":
                http_port = local
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    metrics_port = http_port
    for key in METRICS_PORT_ANNOTATIONS:
        if key in annotations and str(annotations[key]) in ports:
            metrics_port = ports[str(annotations[key])]
            break
    exe = venv_bin / command[0]
    argv = [str(exe) if exe.exists() else command[0], *command[1:], *args]
    return Plan(argv=argv, env=env, ports=ports, http_port=http_port, metrics_port=metrics_port,
                model_dir=model_dir, storage_uri=uri)


@dataclass
class Running:
    """One pod this runner plays: its process, restarts and what it last reported."""

    namespace: str
    name: str
    uid: str
    container: str
    restart_policy: str
    plan: Plan
    log_path: Path
    pod_ip: str
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    ready: bool = False
    started_at: str = ""
    next_start: float = 0.0
    done: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    init_containers: list[str] = field(default_factory=list)
    model_dir: Path | None = None     # what the storage initializer must find first
    init_error: str | None = None     # set while the model is missing from the store


class PodRunner:
    def __init__(self, directory: Path, venv: Path) -> None:
        self.dir = directory
        self.venv_bin = venv / "bin"
        self.store = directory / "models"
        self.targets = directory / "prometheus" / "targets" / "pods.json"
        # One client for the API calls and for turning watch objects into plain dicts.
        self.api = client.ApiClient()
        self.core = client.CoreV1Api(self.api)
        self.pods: dict[str, Running] = {}
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.stopping = threading.Event()
        self._ip_counter = 0
        self._targets_written: str | None = None

    # -- watching ----------------------------------------------------------------
    def watch_pods(self) -> None:
        """Feed pod events into the queue forever; re-list after any watch failure."""
        while not self.stopping.is_set():
            try:
                listed = self.core.list_pod_for_all_namespaces()
                for pod in listed.items:
                    self.events.put(self.api.sanitize_for_serialization(pod))
                stream = watch.Watch().stream(
                    self.core.list_pod_for_all_namespaces,
                    resource_version=listed.metadata.resource_version  # type: ignore[union-attr]
                    , timeout_seconds=240)
                for event in stream:
                    if self.stopping.is_set():
                        return
                    pod = self.api.sanitize_for_serialization(event["object"])
                    if event["type"] == "DELETED":
                        pod.setdefault("metadata", {})["deletionTimestamp"] = _now()
                    self.events.put(pod)
            except Exception as e:  # the apiserver went away or the watch expired
                if not self.stopping.is_set():
                    log.warning("pod watch failed (%s); re-listing", e)
                    time.sleep(1)

    # -- the loop ------------------------------------------------------------------
    def run(self) -> None:
        threading.Thread(target=self.watch_pods, daemon=True).start()
        while not self.stopping.is_set():
            try:
                pod = self.events.get(timeout=0.2)
                self.handle(pod)
            except queue.Empty:
                pass
            except Exception:
                log.exception("handling a pod event failed")
            for running in list(self.pods.values()):
                try:
                    self.tick(running)
                except Exception:
                    log.exception("supervising pod %s/%s failed", running.namespace, running.name)
            self.write_targets()
        self.shutdown()

    def handle(self, pod: dict[str, Any]) -> None:
        if not ours(pod):
            return
        meta = pod["metadata"]
        key = meta["uid"]
        if meta.get("deletionTimestamp"):
            if running := self.pods.pop(key, None):
                self.kill(running)
                log.info("pod %s/%s deleted: stopped its process", running.namespace, running.name)
            return
        scheduled = (pod.get("spec") or {}).get("nodeName")
        phase = (pod.get("status") or {}).get("phase")
        if key in self.pods or not scheduled or phase not in (None, "Pending"):
            return
        self.start_pod(pod)

    def start_pod(self, pod: dict[str, Any]) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        container = next(c for c in spec["containers"] if _image_re.match(c.get("image") or ""))
        self._ip_counter += 1
        pod_ip = f"10.246.{self._ip_counter // 250}.{self._ip_counter % 250 + 1}"
        log_path = self.dir / "pods" / f"{meta['namespace']}_{meta['name']}_{container['name']}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            plan = plan_container(container, pod, venv_bin=self.venv_bin, store=self.store,
                                  pod_ip=pod_ip, ports={})
        except (StoreError, ValueError) as e:
            self.report_unrunnable(pod, container["name"], str(e))
            return
        running = Running(meta["namespace"], meta["name"], meta["uid"], container["name"],
                          spec.get("restartPolicy") or "Always", plan, log_path, pod_ip,
                          labels=dict(meta.get("labels") or {}),
                          init_containers=[c["name"] for c in spec.get("initContainers") or []])
        self.pods[meta["uid"]] = running
        if plan.ports:
            self.patch_pod(running, {"metadata": {"annotations": {
                LOOPBACK_PORTS: json.dumps(plan.ports, sort_keys=True)}}})
        self.initialize(running)

    def initialize(self, running: Running) -> None:
        """Play KServe's storage initializer: the model must be in the local store before the
        server starts. A missing model fails the init container, retried with back-off."""
        model_dir = running.plan.model_dir
        if model_dir is None or model_dir.is_dir():
            running.init_error = None
            self.spawn(running)
            return
        first = running.init_error is None
        running.init_error = (f"no model at {running.plan.storage_uri} (the local model store "
                              f"has no folder {model_dir})")
        delay = min(MAX_BACKOFF, 2.0 ** running.restarts)
        running.restarts += 1
        running.next_start = time.monotonic() + delay
        self.write_status(running, phase="Pending", state={"waiting": {
            "reason": "PodInitializing"}})
        if first:
            log.warning("pod %s/%s: %s", running.namespace, running.name, running.init_error)
            self.event(running, "Warning", "BackOff",
                       f"Back-off restarting failed container storage-initializer: "
                       f"{running.init_error}")

    def spawn(self, running: Running) -> None:
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TZ")}
        env["PATH"] = f"{self.venv_bin}:{env.get('PATH', '/usr/bin:/bin')}"
        env.update(running.plan.env)
        workdir = self.dir / "pods" / running.uid
        workdir.mkdir(parents=True, exist_ok=True)
        with running.log_path.open("ab") as out:
            out.write(f"--- {_now()} start: {shlex.join(running.plan.argv)}\n".encode())
            out.flush()
            try:
                running.proc = subprocess.Popen(running.plan.argv, stdout=out,
                                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                env=env, cwd=workdir)
            except OSError as e:
                out.write(f"cannot start: {e}\n".encode())
                running.proc = None
        running.started_at = _now()
        running.ready = False
        log.info("pod %s/%s: started %s (pid %s, ports %s)", running.namespace, running.name,
                 running.plan.argv[0], running.proc.pid if running.proc else "-",
                 running.plan.ports)
        self.write_status(running, state={"running": {"startedAt": running.started_at}},
                          phase="Running")

    def tick(self, running: Running) -> None:
        """Check one pod's process: readiness, exit, restart after back-off."""
        if running.done:
            return
        if running.init_error is not None:
            if time.monotonic() >= running.next_start:
                self.initialize(running)
            return
        if running.proc is None:
            if running.next_start and time.monotonic() >= running.next_start:
                running.next_start = 0.0
                self.spawn(running)
                return
            if not running.next_start:
                self.exited(running, 127)
            return
        code = running.proc.poll()
        if code is not None:
            self.exited(running, code)
            return
        if not running.ready and self.probe(running):
            running.ready = True
            log.info("pod %s/%s ready", running.namespace, running.name)
            self.write_status(running, state={"running": {"startedAt": running.started_at}},
                              phase="Running")

    def probe(self, running: Running) -> bool:
        if running.plan.http_port is None:
            return True  # nothing to probe: ready as soon as it runs
        try:
            with socket.create_connection(("127.0.0.1", running.plan.http_port), timeout=0.2):
                pass
        except OSError:
            return False
        with contextlib.suppress(OSError):  # a kserve server answers once its model loaded
            url = f"http://127.0.0.1:{running.plan.http_port}/v2/health/ready"
            with urllib.request.urlopen(url, timeout=1) as resp:
                return bool(resp.status == 200)
        return True

    def exited(self, running: Running, code: int) -> None:
        tail = self.log_tail(running.log_path)
        running.proc = None
        running.ready = False
        terminated = {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                      "startedAt": running.started_at, "finishedAt": _now()}
        if code != 0 and tail:
            terminated["message"] = tail
        restart = running.restart_policy == "Always" or (
            running.restart_policy == "OnFailure" and code != 0)
        log.info("pod %s/%s: process exited with %s%s", running.namespace, running.name, code,
                 " (restarting)" if restart else "")
        if not restart:
            running.done = True
            self.write_status(running, state={"terminated": terminated},
                              phase="Succeeded" if code == 0 else "Failed")
            return
        delay = min(MAX_BACKOFF, 2.0 ** running.restarts)
        running.restarts += 1
        running.next_start = time.monotonic() + delay
        self.write_status(running, phase="Running", last={"terminated": terminated},
                          state={"waiting": {"reason": "CrashLoopBackOff", "message":
                                             f"back-off {delay:.0f}s restarting failed container "
                                             f"{running.container}"}})
        self.event(running, "Warning", "BackOff",
                   f"Back-off restarting failed container {running.container}: exit code "
                   f"{code}" + (f": {tail.splitlines()[-1]}" if tail else ""))

    @staticmethod
    def log_tail(path: Path, lines: int = 5) -> str:
        with contextlib.suppress(OSError):
            text = path.read_text(errors="replace").splitlines()
            body = [ln for ln in text if not ln.startswith("--- ")]
            return "\n".join(body[-lines:])[-1024:]
        return ""

    # -- writing to the API server -----------------------------------------------------
    def write_status(self, running: Running, *, state: dict[str, Any], phase: str,
                     last: dict[str, Any] | None = None) -> None:
        now = _now()
        ready = "True" if running.ready else "False"
        container_status: dict[str, Any] = {
            "name": running.container, "image": "", "imageID": "", "ready": running.ready,
            "restartCount": running.restarts, "started": "running" in state, "state": state}
        if last:
            container_status["lastState"] = last
        init_statuses = []
        for name in running.init_containers:
            init: dict[str, Any] = {"name": name, "image": "", "imageID": "", "ready": True,
                                    "restartCount": 0, "state": {"terminated": {
                                        "exitCode": 0, "reason": "Completed"}}}
            if running.init_error and name == "storage-initializer":
                failed = {"exitCode": 1, "reason": "Error", "message": running.init_error}
                init.update(ready=False, restartCount=running.restarts, lastState={
                    "terminated": failed}, state={"waiting": {"reason": "CrashLoopBackOff",
                                                              "message": running.init_error}})
            init_statuses.append(init)
        status: dict[str, Any] = {
            "phase": phase, "hostIP": "10.240.0.1", "startTime": running.started_at or now,
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                {"type": "ContainersReady", "status": ready, "lastTransitionTime": now},
                {"type": "Ready", "status": ready, "lastTransitionTime": now}],
            "containerStatuses": [container_status],
        }
        if running.pod_ip:
            status.update(podIP=running.pod_ip, podIPs=[{"ip": running.pod_ip}])
        if init_statuses:
            status["initContainerStatuses"] = init_statuses
            if running.init_error:
                status["conditions"][1]["status"] = "False"  # Initialized
        self.patch_pod(running, {"status": status}, status_subresource=True)

    def patch_pod(self, running: Running, body: dict[str, Any],
                  status_subresource: bool = False) -> None:
        try:
            if status_subresource:
                # Strategic merge would keep stale conditions; a JSON merge on status is what
                # we want, but containerStatuses must be replaced whole (it is a list anyway).
                self.core.patch_namespaced_pod_status(running.name, running.namespace, body)
            else:
                self.core.patch_namespaced_pod(running.name, running.namespace, body)
        except ApiException as e:
            if e.status != 404:
                log.warning("patching pod %s/%s failed: %s", running.namespace, running.name,
                            e.reason)

    def report_unrunnable(self, pod: dict[str, Any], container: str, message: str) -> None:
        meta = pod["metadata"]
        log.warning("pod %s/%s cannot run: %s", meta["namespace"], meta["name"], message)
        running = Running(meta["namespace"], meta["name"], meta["uid"], container, "Never",
                          Plan([], {}, {}, None, None), Path("/dev/null"), "",
                          done=True)
        self.pods[meta["uid"]] = running
        self.write_status(running, phase="Pending", state={"waiting": {
            "reason": "CreateContainerConfigError", "message": message}})
        self.event(running, "Warning", "Failed", message)

    def event(self, running: Running, type_: str, reason: str, message: str) -> None:
        now = dt.datetime.now(dt.UTC)
        body: Any = {
            "metadata": {"generateName": f"{running.name}.", "namespace": running.namespace},
            "involvedObject": {"kind": "Pod", "name": running.name,
                               "namespace": running.namespace, "uid": running.uid,
                               "apiVersion": "v1", "fieldPath": f"spec.containers{{"
                                                                f"{running.container}}}"},
            "type": type_, "reason": reason, "message": message[:1024],
            "source": {"component": "slipway-podrunner"},
            "firstTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "lastTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"), "count": 1,
        }
        try:
            self.core.create_namespaced_event(running.namespace, body)
        except ApiException as e:
            log.warning("posting an event failed: %s", e.reason)

    # -- Prometheus targets --------------------------------------------------------------
    def write_targets(self) -> None:
        targets = [
            {"targets": [f"127.0.0.1:{r.plan.metrics_port}"],
             "labels": {"namespace": r.namespace, "pod": r.name,
                        "inferenceservice": r.labels.get(ISVC_LABEL, "")}}
            for r in sorted(self.pods.values(), key=lambda r: (r.namespace, r.name))
            # Listed from start, not from Ready: Prometheus then scrapes a new version from
            # its first request on (a canary's first interval is otherwise thin).
            if r.proc is not None and r.plan.metrics_port and ISVC_LABEL in r.labels]
        text = json.dumps(targets, indent=1)
        if text != self._targets_written:
            self.targets.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.targets.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.replace(self.targets)  # atomic, so Prometheus never reads half a file
            self._targets_written = text

    # -- shutdown --------------------------------------------------------------------------
    @staticmethod
    def kill(running: Running) -> None:
        running.done = True
        proc, running.proc = running.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def shutdown(self) -> None:
        for running in list(self.pods.values()):
            self.kill(running)
        log.info("stopped %d pod processes", len(self.pods))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--dir", required=True, type=Path, help="the cluster directory")
    parser.add_argument("--venv", required=True, type=Path, help="the runtimes virtualenv")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    config.load_kube_config(args.kubeconfig)
    runner = PodRunner(args.dir, args.venv)
    signal.signal(signal.SIGTERM, lambda *_: runner.stopping.set())
    signal.signal(signal.SIGINT, lambda *_: runner.stopping.set())
    runner.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
