"""Start and stop a real control plane on loopback.

Start order: etcd -> kube-apiserver (wait /readyz) -> controller-manager,
scheduler, kwok -> fake nodes -> CRDs (wait Established). Every process runs in
its own session with its log in the cluster directory; `stop()` ends them by
pid in reverse order. The state file lets `slipway dev down` stop a cluster
that another process started.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from slipway.devcluster.binaries import Built, ensure_binaries, repo_root
from slipway.devcluster.certs import write_pki
from slipway.devcluster.nodes import fake_nodes
from slipway.devcluster.podrunner import IMAGE_PATTERN

SERVICE_CIDR = "10.0.0.0/24"
SERVICE_IP = "10.0.0.1"
STATE_FILE = "cluster.json"


class ClusterError(RuntimeError):
    """A component failed to start; the message carries the tail of its log."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Component:
    name: str
    pid: int
    log: str
    cmdline: list[str]


@dataclass
class ClusterState:
    directory: str
    kubeconfig: str
    apiserver: str
    components: list[Component] = field(default_factory=list)
    # name -> URL of what tests and the CLI talk to (prometheus, gateway) and loopback ports.
    endpoints: dict[str, str] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    bin: str = ""  # the directory of kubectl and the other tools


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _alive(pid: int, binary: str) -> bool:
    """True while *pid* is still the process we started (pids get reused)."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
        stat = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()
    except OSError:
        return False
    return cmd == binary and stat[0] != "Z"


# kube-controller-manager's client limits. Its defaults (20 QPS, burst 30) throttle the Job
# controller that TrainingJobs (and plain Jobs) go through to ~3.6 Jobs a second; production
# control planes raise them. The same for every workload on the cluster, peers included.
KCM_QPS, KCM_BURST = 100, 200

class Cluster:
    """One local cluster in *directory*. Use `start()` / `stop()` or `with Cluster(...)`."""

    def __init__(self, directory: Path, gpu_nodes: int = 4, cpu_nodes: int = 2,
                 gpus_per_node: int = 8, install_crds: bool = True, serving: bool = True,
                 kserve_gateway_api: bool = False, kueue: bool = False,
                 training_operator: bool = False, training_operator_threads: int = 1,
                 training_operator_qps: int = 20, kcm_qps: int = KCM_QPS,
                 kcm_burst: int = KCM_BURST,
                 log: Callable[[str], None] | None = None) -> None:
        self.dir = directory.resolve()
        self.gpu_nodes = gpu_nodes
        self.cpu_nodes = cpu_nodes
        self.gpus_per_node = gpus_per_node
        self.install_crds = install_crds
        # KServe's controller, Prometheus, the pod runner and the local gateway.
        self.serving = serving and install_crds
        # KServe routes through HTTPRoutes instead of Ingresses (see serving.py for the catch).
        self.kserve_gateway_api = kserve_gateway_api
        # On-demand peers (devcluster/peers.py), built on first use; they need the CRDs step.
        self.kueue = kueue and install_crds
        self.training_operator = training_operator and install_crds
        self.training_operator_threads = training_operator_threads
        self.training_operator_qps = training_operator_qps
        self.kcm_qps, self.kcm_burst = kcm_qps, kcm_burst
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.state: ClusterState | None = None
        self.bin = Path()
        self.timings: dict[str, float] = {}
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    # -- paths and helpers ------------------------------------------------------
    @property
    def kubeconfig(self) -> Path:
        return self.dir / "kubeconfig"

    def kubectl(self, *args: str, input: str | None = None,
                check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bin / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args]
        proc = subprocess.run(cmd, input=input, capture_output=True, text=True, check=False)
        if check and proc.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc

    @property
    def endpoints(self) -> dict[str, str]:
        assert self.state is not None
        return self.state.endpoints

    def endpoint_port(self, name: str) -> int:
        """A loopback port reserved for *name* for the life of this cluster."""
        assert self.state is not None
        if name not in self.state.ports:
            self.state.ports[name] = free_port()
        return self.state.ports[name]

    def spawn(self, name: str, args: list[str], binary: str | None = None,
              env: dict[str, str] | None = None) -> Component:
        """Start a component in its own session, logging to logs/<name>.log."""
        binary = binary or str(self.bin / name.split(":")[0])
        log_path = self.dir / "logs" / f"{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as out:
            proc = subprocess.Popen([binary, *args], stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True,
                                    env=dict(os.environ, **env) if env else None)
        comp = Component(name, proc.pid, str(log_path), [binary, *args])
        self._procs[name] = proc
        assert self.state is not None
        self.state.components.append(comp)
        self._save()
        return comp

    def wait_healthy(self, name: str, probe: Callable[[], bool], timeout: float = 60.0) -> None:
        """Wait until *probe* passes for the component *name*; fail fast if it exits."""
        assert self.state is not None
        comp = next(c for c in self.state.components if c.name == name)
        self._wait(comp, probe, timeout)

    def _wait(self, comp: Component, probe: Callable[[], bool], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        start = time.monotonic()
        while time.monotonic() < deadline:
            if self._procs[comp.name].poll() is not None:
                raise ClusterError(f"{comp.name} exited during start-up; tail of {comp.log}:\n"
                                   f"{_tail(Path(comp.log))}")
            try:
                if probe():
                    self.timings[comp.name] = round(time.monotonic() - start, 2)
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise ClusterError(f"{comp.name} not healthy after {timeout:.0f}s; tail of {comp.log}:\n"
                           f"{_tail(Path(comp.log))}")

    def _https_ok(self, url: str, client: bool = True) -> bool:
        ctx = ssl.create_default_context(cafile=str(self.dir / "pki" / "ca.crt"))
        if client:
            ctx.load_cert_chain(self.dir / "pki" / "admin.crt", self.dir / "pki" / "admin.key")
        else:  # components serve self-signed certs on their health ports
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        with urllib.request.urlopen(url, context=ctx, timeout=2) as resp:
            return bool(resp.status == 200)

    @staticmethod
    def http_ok(url: str) -> bool:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)

    def _save(self) -> None:
        assert self.state is not None
        (self.dir / STATE_FILE).write_text(json.dumps(asdict(self.state), indent=2))

    # -- lifecycle --------------------------------------------------------------
    def start(self) -> Cluster:
        t0 = time.monotonic()
        built = ensure_binaries(serving=self.serving)
        self.bin = built.bin
        self.timings["binaries"] = round(time.monotonic() - t0, 2)
        self.dir.mkdir(parents=True, exist_ok=True)
        if (self.dir / STATE_FILE).exists():
            stop_from_state(self.dir)
        # Every start is a fresh cluster: new PKI, empty etcd, fresh logs.
        for stale in ("etcd", "logs"):
            shutil.rmtree(self.dir / stale, ignore_errors=True)
        pki = write_pki(self.dir / "pki", SERVICE_IP)
        api_port = free_port()
        self.state = ClusterState(str(self.dir), str(self.kubeconfig),
                                  f"https://127.0.0.1:{api_port}", bin=str(self.bin))
        self._write_kubeconfig(self.state.apiserver)
        try:
            self._start_processes(pki, api_port)
            self._create_nodes()
            if self.install_crds:
                self.apply_crds(self._crd_files(built))
            if self.serving:
                from slipway.devcluster.serving import ServingStack

                ServingStack(self, built, self.kserve_gateway_api).start()
            if self.training_operator or self.kueue:
                from slipway.devcluster import peers

                # The training-operator first: Kueue then manages PyTorchJobs too.
                if self.training_operator:
                    qps = self.training_operator_qps
                    peers.start_training_operator(
                        self, threads=self.training_operator_threads, qps=qps,
                        burst=max(qps * 3 // 2, 30))
                if self.kueue:
                    peers.start_kueue(self)
        except BaseException:
            self.stop()
            raise
        self.timings["total"] = round(time.monotonic() - t0, 2)
        return self

    def _crd_files(self, built: Built) -> list[Path]:
        files = [*sorted((repo_root() / "crds").glob("*.yaml")),
                 *sorted(built.kserve_crds.glob("*.yaml"))]
        if self.serving:
            # Only the standard channel's kinds (Gateway, GatewayClass, HTTPRoute, GRPCRoute,
            # ReferenceGrant): what KServe and the Canary router use.
            files += sorted(built.gateway_crds.glob("*.yaml"))
        return files

    def _start_processes(self, pki: dict[str, Path], api_port: int) -> None:
        etcd_port, etcd_peer = free_port(), free_port()
        etcd = self.spawn("etcd", [
            "--name=default", f"--data-dir={self.dir / 'etcd'}",
            f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
            f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
            f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}",
            f"--initial-cluster=default=http://127.0.0.1:{etcd_peer}",
            "--unsafe-no-fsync", "--log-level=warn", "--quota-backend-bytes=4294967296",
        ])
        self._wait(etcd, lambda: self.http_ok(f"http://127.0.0.1:{etcd_port}/health"))

        apiserver = self.spawn("kube-apiserver", [
            f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            f"--secure-port={api_port}", f"--cert-dir={self.dir / 'pki'}",
            f"--tls-cert-file={pki['apiserver.crt']}",
            f"--tls-private-key-file={pki['apiserver.key']}",
            f"--client-ca-file={pki['ca.crt']}",
            f"--service-account-key-file={pki['sa.pub']}",
            f"--service-account-signing-key-file={pki['sa.key']}",
            "--service-account-issuer=https://kubernetes.default.svc",
            "--authorization-mode=Node,RBAC",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            # No kubelet mounts tokens here, so skip the admission step that races
            # with the serviceaccount controller in freshly created namespaces.
            "--disable-admission-plugins=ServiceAccount",
            "--allow-privileged=true", "--v=1",
            # /debug/pprof, for finding what a benchmark costs the API server.
            f"--profiling={'true' if os.environ.get('SLIPWAY_DEV_PROFILING') else 'false'}",
        ])
        self._wait(apiserver,
                   lambda: self._https_ok(f"https://127.0.0.1:{api_port}/readyz"), timeout=90)

        kubeconfig = str(self.kubeconfig)
        auth = [f"--kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}", "--leader-elect=false",
                "--bind-address=127.0.0.1"]
        kcm_port, sched_port, kwok_port = free_port(), free_port(), free_port()
        kcm = self.spawn("kube-controller-manager", [
            *auth, f"--secure-port={kcm_port}", f"--cert-dir={self.dir / 'kcm'}",
            f"--service-account-private-key-file={pki['sa.key']}",
            f"--root-ca-file={pki['ca.crt']}", "--use-service-account-credentials=false",
            "--controllers=*", f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--concurrent-job-syncs=10", f"--kube-api-qps={self.kcm_qps}",
            f"--kube-api-burst={self.kcm_burst}", "--v=1",
        ])
        sched = self.spawn("kube-scheduler", [
            *auth, f"--secure-port={sched_port}", f"--cert-dir={self.dir / 'sched'}", "--v=1",
        ])
        stages = resources.files("slipway.devcluster").joinpath("stages.yaml").read_text()
        # kwok leaves the pods of the project's own images to the pod runner; with no runner,
        # a pattern that matches no image keeps kwok playing every pod.
        pattern = IMAGE_PATTERN if self.serving else "^$no-image"
        stages = stages.replace("__RUNNER_IMAGES__", pattern.replace("\\", "\\\\"))
        stage_file = self.dir / "kwok-stages.yaml"
        stage_file.write_text(stages)
        kwok = self.spawn("kwok", [
            f"--kubeconfig={kubeconfig}", f"--config={stage_file}",
            "--manage-all-nodes=false",
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            f"--server-address=127.0.0.1:{kwok_port}", "--node-lease-duration-seconds=40",
            "--cidr=10.244.0.1/16", "--node-ip=10.240.0.1",
        ])
        self._wait(kcm, lambda: self._https_ok(f"https://127.0.0.1:{kcm_port}/healthz", False))
        self._wait(sched,
                   lambda: self._https_ok(f"https://127.0.0.1:{sched_port}/healthz", False))
        self._wait(kwok, lambda: self.http_ok(f"http://127.0.0.1:{kwok_port}/healthz"))

    def _write_kubeconfig(self, server: str) -> None:
        pki = self.dir / "pki"
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "slipway-dev",
            "clusters": [{"name": "slipway-dev", "cluster": {
                "server": server, "certificate-authority": str(pki / "ca.crt")}}],
            "users": [{"name": "admin", "user": {
                "client-certificate": str(pki / "admin.crt"),
                "client-key": str(pki / "admin.key")}}],
            "contexts": [{"name": "slipway-dev",
                          "context": {"cluster": "slipway-dev", "user": "admin"}}],
        }
        self.kubeconfig.write_text(yaml.safe_dump(config))

    def _create_nodes(self) -> None:
        t0 = time.monotonic()
        nodes = fake_nodes(self.gpu_nodes, self.cpu_nodes, self.gpus_per_node)
        if not nodes:
            return
        self.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(nodes))
        self.kubectl("wait", "--for=condition=Ready", "node", "--all", "--timeout=60s")
        self.timings["nodes"] = round(time.monotonic() - t0, 2)

    def apply_crds(self, files: list[Path]) -> None:
        """Server-side apply (KServe's CRDs are too big for client-side apply)."""
        t0 = time.monotonic()
        args = ["apply", "--server-side", "--force-conflicts"]
        for f in files:
            args += ["-f", str(f)]
        if files:
            self.kubectl(*args)
            self._wait_established(timeout=60)
        self.timings["crds"] = round(time.monotonic() - t0, 2)

    def _wait_established(self, timeout: float) -> None:
        # `kubectl wait` errors out on a CRD whose status has no conditions yet.
        deadline = time.monotonic() + timeout
        pending: list[str] = []
        while time.monotonic() < deadline:
            crds = json.loads(self.kubectl("get", "crd", "-o", "json").stdout)["items"]
            pending = [c["metadata"]["name"] for c in crds if not any(
                cond.get("type") == "Established" and cond.get("status") == "True"
                for cond in (c.get("status") or {}).get("conditions") or [])]
            if not pending:
                return
            time.sleep(0.3)
        raise ClusterError(f"CRDs not Established after {timeout:.0f}s: {pending}")

    def restart(self, name: str, probe: Callable[[], bool], timeout: float = 90.0) -> float:
        """Stop component *name* (SIGTERM) and start it again with the same command line, as
        a control-plane upgrade or crash-restart would; returns the seconds it was away."""
        assert self.state is not None
        comp = next(c for c in self.state.components if c.name == name)
        start = time.monotonic()
        proc = self._procs[name]
        proc.terminate()
        try:
            # kube-apiserver stops listening at once but its process can linger for 30 s.
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        self.state.components.remove(comp)
        again = self.spawn(name, comp.cmdline[1:], binary=comp.cmdline[0])
        self._wait(again, probe, timeout)
        return time.monotonic() - start

    def restart_apiserver(self) -> float:
        """Restart kube-apiserver; returns the seconds until it was ready again."""
        server = yaml.safe_load(self.kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
        return self.restart("kube-apiserver", lambda: self._https_ok(f"{server}/readyz"))

    def stop(self) -> None:
        stop_from_state(self.dir)
        self.state = None

    def rss_mib(self) -> dict[str, float]:
        """Resident memory of each component, in MiB."""
        out = {}
        for comp in self.state.components if self.state else []:
            try:
                for line in Path(f"/proc/{comp.pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        out[comp.name] = round(int(line.split()[1]) / 1024, 1)
            except OSError:
                continue
        return out

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def read_state(directory: Path) -> ClusterState:
    """The state of the cluster running in *directory* (for CLI verbs that talk to it)."""
    state_path = directory / STATE_FILE
    if not state_path.exists():
        raise ClusterError(f"no cluster is running in {directory} (no {STATE_FILE})")
    raw = json.loads(state_path.read_text())
    raw["components"] = [Component(**c) for c in raw.get("components", [])]
    return ClusterState(**raw)


def stop_from_state(directory: Path, timeout: float = 15.0) -> list[str]:
    """Stop every component recorded in *directory*'s state file, in reverse order."""
    state_path = directory / STATE_FILE
    if not state_path.exists():
        return []
    raw = json.loads(state_path.read_text())
    stopped = []
    for comp in reversed([Component(**c) for c in raw.get("components", [])]):
        if not _alive(comp.pid, comp.cmdline[0]):
            continue
        try:
            os.killpg(comp.pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _alive(comp.pid, comp.cmdline[0]):
            _reap(comp.pid)
            time.sleep(0.1)
        if _alive(comp.pid, comp.cmdline[0]):
            os.killpg(comp.pid, signal.SIGKILL)
        _reap(comp.pid)
        stopped.append(comp.name)
    state_path.unlink()
    return stopped


def _reap(pid: int) -> None:
    """Collect our own exited children so they do not linger as zombies."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
