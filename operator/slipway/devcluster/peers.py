"""Peers on demand: Kueue and Kubeflow's training-operator, built from their Go modules
(hack/tools/kueue, hack/tools/training-operator) into the same cache as the platform's
binaries, and started against a running Cluster.

Neither is part of the default platform: `slipway dev up --kueue --training-operator`, the
Cluster flags of the same names, or a test fixture calling `start_kueue(cluster)` build them
(cold: about 135 s and 110 s on 2 cores; warm: milliseconds) and start them. Both are
controller-runtime managers that write their webhook certificates to the hard-coded
/tmp/k8s-webhook-server/serving-certs, so each runs in a private mount namespace whose /tmp
is a directory of the cluster's own (see `spawn_private_tmp`): nothing is written to the
host's shared /tmp. Both generate their own certificates (internal cert management) into an
empty Secret we create; in a real cluster the kubelet mounts that Secret at the certificate
directory, here `mount_secret` copies it there (the rotator waits for the files to appear
before it reports ready and starts the controllers).

Their webhooks are not registered with the apiserver. The certificates their rotators issue
name only the in-cluster Service (kueue-webhook-service.kueue-system.svc,
training-operator.<ns>.svc), so an apiserver calling https://127.0.0.1:<port> could not
verify them; and Kueue's Job webhook is failurePolicy Fail on every batch/v1 Job, which
would make every Job in the cluster depend on the Kueue process. What that webhook does
(create a queued Job suspended) Slipway already does for TrainingJobs with spec.queue; a
Job created unsuspended with a queue label runs until Kueue's reconciler suspends it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from slipway.devcluster.binaries import BuildError, repo_root

if TYPE_CHECKING:
    from slipway.devcluster.cluster import Cluster, Component

KUEUE = "kueue"
KUEUE_NAMESPACE = "kueue-system"
KUEUE_SECRET = "kueue-webhook-server-cert"
KUEUE_SERVICE = "kueue-webhook-service"
TRAINING_OPERATOR = "training-operator"
TRAINING_OPERATOR_NAMESPACE = "kubeflow"
TRAINING_OPERATOR_SECRET = "training-operator-webhook-cert"
# Feature gates: the visibility API server needs an APIService and a Service we do not have.
KUEUE_FEATURE_GATES = "VisibilityOnDemand=false"
# With a namespace selector, Kueue leaves even queue-labelled Jobs elsewhere alone (alpha gate).
KUEUE_SELECTOR_GATE = "ManagedJobsNamespaceSelectorAlwaysRespected=true"

# Runs inside the new mount namespace: $1 is the private /tmp, $2 how many paths follow that
# must stay visible under their own names (the cluster directory: kubeconfig, PKI, config);
# then the command. Paths under /tmp are bound back into the private /tmp before it goes over
# /tmp (rbind keeps those binds).
_LAUNCHER = r"""
set -eu
priv=$1; n=$2; shift 2
while [ "$n" -gt 0 ]; do
  p=$1; shift; n=$((n - 1))
  case $p in
    /tmp/*) mkdir -p "$priv/${p#/tmp/}"; mount --bind "$p" "$priv/${p#/tmp/}" ;;
  esac
done
mount --rbind "$priv" /tmp
exec "$@"
"""


@dataclass(frozen=True)
class PeerBuild:
    """A built peer: its binary and the directory of its CRDs (from its Go module)."""

    binary: Path
    crds: Path


def build_peer(tool: str) -> PeerBuild:
    """Build *tool* (kueue or training-operator) when missing, fetch its CRDs; where they are.
    Cold builds take minutes (their output streams to stderr); warm runs take milliseconds."""
    script = repo_root() / "hack" / "build-control-plane.sh"
    env = dict(os.environ, SLIPWAY_TOOLS=tool)
    proc = subprocess.run(["bash", str(script)], env=env, stdout=subprocess.PIPE, text=True,
                          check=False)
    if proc.returncode != 0:
        raise BuildError(f"{script} failed building {tool} with exit code {proc.returncode} "
                         "(see its output above)")
    lines = proc.stdout.strip().splitlines()
    found = dict(ln.split("=", 1) for ln in lines if "=" in ln)
    try:
        return PeerBuild(Path(lines[-1]) / tool, Path(found[f"{tool}-crds"]))
    except (KeyError, IndexError) as e:
        raise BuildError(f"{script} did not report {e}: {proc.stdout[-500:]}") from e


def running(cluster: Cluster, name: str) -> bool:
    """Whether the cluster already runs component *name* (so starting it again is a no-op)."""
    assert cluster.state is not None
    for comp in cluster.state.components:
        if comp.name == name:
            with contextlib.suppress(OSError):
                os.kill(comp.pid, 0)
                return True
    return False


def spawn_private_tmp(cluster: Cluster, name: str, binary: Path, args: list[str],
                      env: dict[str, str]) -> Component:
    """Start *binary* as component *name* in a private mount namespace whose /tmp is
    <cluster>/<name>/tmp (emptied first); TMPDIR points there too. `unshare --fork` stays as
    the parent, so the pid the cluster records (and `dev down` signals, with its process
    group) lives exactly as long as the binary; --kill-child takes the binary along if
    unshare itself is killed."""
    unshare = shutil.which("unshare")
    if not unshare:
        raise BuildError("unshare (util-linux) is needed to run peers in a private /tmp")
    priv = cluster.dir / name / "tmp"
    shutil.rmtree(priv, ignore_errors=True)
    priv.mkdir(parents=True)
    keep = [str(cluster.dir)]
    return cluster.spawn(name, [
        "--mount", "--fork", "--kill-child", "--propagation", "private", "--",
        "/bin/sh", "-c", _LAUNCHER, "launcher", str(priv), str(len(keep)), *keep,
        str(binary), *args,
    ], binary=unshare, env={**env, "TMPDIR": "/tmp"})


CERT_DIR = Path("k8s-webhook-server") / "serving-certs"  # under /tmp, as the peers hard-code


def mount_secret(cluster: Cluster, name: str, namespace: str, secret: str,
                 timeout: float = 60.0) -> None:
    """Play the kubelet's Secret volume: once the peer's certificate rotator has filled in
    *secret*, write its files into the peer's private /tmp/k8s-webhook-server/serving-certs
    (the rotator polls for tls.crt with a backoff, then the peer goes ready)."""
    target = cluster.dir / name / "tmp" / CERT_DIR

    def copied() -> bool:
        got = cluster.kubectl("get", "secret", secret, "-n", namespace, "-o", "json",
                              check=False)
        if got.returncode != 0:
            return False
        data = json.loads(got.stdout).get("data") or {}
        if not {"tls.crt", "tls.key"} <= data.keys():
            return False
        target.mkdir(parents=True, exist_ok=True)
        for key, value in data.items():
            path = target / key
            path.write_bytes(base64.b64decode(value))
            path.chmod(0o600)
        return True

    cluster.wait_healthy(name, copied, timeout=timeout)


def _namespace_and_secret(cluster: Cluster, namespace: str, secret: str) -> None:
    """The namespace and the empty Secret the peer's certificate rotator fills in."""
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all([
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
        {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
         "metadata": {"name": secret, "namespace": namespace}},
    ]))


def _install_crds(cluster: Cluster, name: str, crds: Path) -> None:
    """Apply the peer's CRDs, waiting until Established; timed as "<name>-crds"."""
    before = cluster.timings.get("crds")
    cluster.apply_crds(sorted(crds.glob("*.yaml")))
    cluster.timings[f"{name}-crds"] = cluster.timings.pop("crds")
    if before is not None:
        cluster.timings["crds"] = before


def _crd_installed(cluster: Cluster, name: str) -> bool:
    return cluster.kubectl("get", "crd", name, check=False).returncode == 0


def kueue_config(health: int, metrics: int, webhook: int, *, qps: float = 50, burst: int = 100,
                 frameworks: tuple[str, ...] = ("batch/job",),
                 namespace_selector: dict[str, Any] | None = None) -> dict[str, Any]:
    """Kueue's Configuration: loopback ports, no leader election, internal certificates in
    KUEUE_SECRET, and only the integrations asked for (batch/job by default). With
    *namespace_selector*, only Jobs in the namespaces it selects are managed."""
    cfg: dict[str, Any] = {
        "apiVersion": "config.kueue.x-k8s.io/v1beta1",
        "kind": "Configuration",
        "namespace": KUEUE_NAMESPACE,
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health}"},
        "metrics": {"bindAddress": f"127.0.0.1:{metrics}"},
        "webhook": {"host": "127.0.0.1", "port": webhook},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": True, "webhookServiceName": KUEUE_SERVICE,
                                   "webhookSecretName": KUEUE_SECRET},
        "manageJobsWithoutQueueName": False,
        "clientConnection": {"qps": qps, "burst": burst},
        "controller": {"groupKindConcurrency": {
            "Job.batch": 5, "Workload.kueue.x-k8s.io": 5, "LocalQueue.kueue.x-k8s.io": 1,
            "ClusterQueue.kueue.x-k8s.io": 1, "ResourceFlavor.kueue.x-k8s.io": 1}},
        "integrations": {"frameworks": list(frameworks)},
    }
    if namespace_selector is not None:
        cfg["managedJobsNamespaceSelector"] = namespace_selector
    return cfg


def start_kueue(cluster: Cluster, *, qps: float = 50, burst: int = 100,
                namespace_selector: dict[str, Any] | None = None,
                timeout: float = 120.0) -> None:
    """Build (when missing) and start Kueue on *cluster*; returns once its /readyz answers
    (its certificates are written and its controllers are being set up). A no-op when the
    cluster already runs it. Manages batch/v1 Jobs with a queue-name label, and PyTorchJobs
    when their CRD is installed (start the training-operator first); with
    *namespace_selector* (a LabelSelector), only those in the namespaces it selects, so
    that a shared cluster's other queue-labelled Jobs stay as they are."""
    if running(cluster, KUEUE):
        return
    t0 = time.monotonic()
    built = build_peer(KUEUE)
    cluster.timings["kueue-build"] = round(time.monotonic() - t0, 2)
    _install_crds(cluster, KUEUE, built.crds)
    _namespace_and_secret(cluster, KUEUE_NAMESPACE, KUEUE_SECRET)
    frameworks: tuple[str, ...] = ("batch/job",)
    if _crd_installed(cluster, "pytorchjobs.kubeflow.org"):
        frameworks += ("kubeflow.org/pytorchjob",)
    health, metrics, webhook = (cluster.endpoint_port(f"kueue-{n}")
                                for n in ("health", "metrics", "webhook"))
    cfg = cluster.dir / KUEUE / "config.yaml"
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text(yaml.safe_dump(kueue_config(
        health, metrics, webhook, qps=qps, burst=burst, frameworks=frameworks,
        namespace_selector=namespace_selector)))
    gates = KUEUE_FEATURE_GATES + (f",{KUEUE_SELECTOR_GATE}" if namespace_selector else "")
    spawn_private_tmp(cluster, KUEUE, built.binary, [
        f"--config={cfg}", f"--feature-gates={gates}", "--zap-log-level=2",
    ], env={"KUBECONFIG": str(cluster.kubeconfig)})
    mount_secret(cluster, KUEUE, KUEUE_NAMESPACE, KUEUE_SECRET)
    cluster.wait_healthy(KUEUE, lambda: cluster.http_ok(f"http://127.0.0.1:{health}/readyz"),
                         timeout=timeout)
    cluster.endpoints["kueue-metrics"] = f"https://127.0.0.1:{metrics}/metrics"
    cluster.timings[KUEUE] = round(time.monotonic() - t0, 2)


def start_training_operator(cluster: Cluster, *, threads: int = 1, qps: int = 20,
                            burst: int = 30, namespace: str = TRAINING_OPERATOR_NAMESPACE,
                            schemes: tuple[str, ...] = ("pytorchjob",),
                            timeout: float = 120.0) -> None:
    """Build (when missing) and start Kubeflow's training-operator on *cluster*, for the
    *schemes* given (PyTorchJob by default); returns once its /readyz answers. *threads*,
    *qps* and *burst* are its --controller-threads, --kube-api-qps and --kube-api-burst
    (its defaults 1, 20 and 30 are slow for hundreds of jobs). A no-op when running.

    Its webhook server listens on all interfaces: the binary has no flag for its host."""
    if running(cluster, TRAINING_OPERATOR):
        return
    t0 = time.monotonic()
    built = build_peer(TRAINING_OPERATOR)
    cluster.timings["training-operator-build"] = round(time.monotonic() - t0, 2)
    # All six kinds' CRDs (small); only the enabled schemes get a controller.
    _install_crds(cluster, TRAINING_OPERATOR, built.crds)
    _namespace_and_secret(cluster, namespace, TRAINING_OPERATOR_SECRET)
    health, metrics, webhook = (cluster.endpoint_port(f"training-operator-{n}")
                                for n in ("health", "metrics", "webhook"))
    spawn_private_tmp(cluster, TRAINING_OPERATOR, built.binary, [
        f"--kubeconfig={cluster.kubeconfig}",
        *(f"--enable-scheme={s}" for s in schemes),
        f"--metrics-bind-address=127.0.0.1:{metrics}",
        f"--health-probe-bind-address=127.0.0.1:{health}",
        f"--webhook-server-port={webhook}",
        f"--controller-threads={threads}", f"--kube-api-qps={qps}",
        f"--kube-api-burst={burst}",
    ], env={"KUBECONFIG": str(cluster.kubeconfig), "MY_POD_NAMESPACE": namespace})
    mount_secret(cluster, TRAINING_OPERATOR, namespace, TRAINING_OPERATOR_SECRET)
    cluster.wait_healthy(TRAINING_OPERATOR,
                         lambda: cluster.http_ok(f"http://127.0.0.1:{health}/readyz"),
                         timeout=timeout)
    cluster.timings[TRAINING_OPERATOR] = round(time.monotonic() - t0, 2)
