"""The Helm chart and manifests/install.yaml: they render, install on a real
apiserver, and their RBAC is enough for the operator (and no more is granted)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from slipway.devcluster import Cluster
from slipway.devcluster.binaries import ensure_binaries
from slipway.devcluster.cluster import free_port
from tests.helpers import Kubectl, OperatorProcess, wait_for

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "slipway"


def helm(*args: str) -> str:
    bin_dir = ensure_binaries(extra=("helm",), serving=False).bin
    return subprocess.run([str(bin_dir / "helm"), *args], check=True, capture_output=True,
                          text=True).stdout


def test_chart_lints_and_renders_hardened_deployment() -> None:
    helm("lint", str(CHART))
    docs = [d for d in yaml.safe_load_all(helm("template", "slipway", str(CHART),
                                               "-n", "slipway-system")) if d]
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["ClusterRole", "ClusterRoleBinding", "Deployment", "Service",
                     "ServiceAccount"]
    deploy = next(d for d in docs if d["kind"] == "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert "SLIPWAY_PEERING" not in env
    assert env["SLIPWAY_LEADER_ELECTION"] == "false" and env["SLIPWAY_NAMESPACE"] == ""
    # No wildcard anywhere in the RBAC rules.
    role = next(d for d in docs if d["kind"] == "ClusterRole")
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]
    assert sorted(p.name for p in (CHART / "crds").glob("*.yaml")) == \
        sorted(p.name for p in (ROOT / "crds").glob("*.yaml"))


def test_install_yaml_is_up_to_date(tmp_path: Path) -> None:
    out = tmp_path / "install.yaml"
    subprocess.run(["bash", str(ROOT / "hack" / "render-manifests.sh"), str(out)], check=True,
                   capture_output=True)
    assert out.read_text() == (ROOT / "manifests" / "install.yaml").read_text(), \
        "run hack/render-manifests.sh"


def _sa_kubeconfig(cluster: Cluster, kubectl: Kubectl, path: Path) -> Path:
    token = kubectl("create", "token", "slipway", "-n", "slipway-system",
                    "--duration=1h").stdout.strip()
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    config: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": admin["clusters"],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": admin["clusters"][0]["name"],
                                                "user": "sa"}}],
    }
    path.write_text(yaml.safe_dump(config))
    return path


def test_operator_works_with_only_the_charts_rbac(cluster: Cluster, kubectl: Kubectl,
                                                  namespace: str, operator: OperatorProcess,
                                                  tmp_path: Path) -> None:
    install = [d for d in yaml.safe_load_all((ROOT / "manifests" / "install.yaml").read_text())
               if d and d["kind"] != "Deployment"]  # kwok cannot run the image; we run it here
    kubectl.apply(install)
    kubeconfig = _sa_kubeconfig(cluster, kubectl, tmp_path / "sa.kubeconfig")
    who = Kubectl(kubectl.binary, kubeconfig)
    assert who("auth", "can-i", "create", "jobs.batch", "-n", namespace).stdout.strip() == "yes"
    # Pods: read only (why a model server is not serving, why a worker is Pending).
    for verb in ("get", "list", "watch"):
        assert who("auth", "can-i", verb, "pods", "-n", namespace).stdout.strip() == "yes", verb
    for verb in ("delete", "patch", "create"):
        assert who("auth", "can-i", verb, "pods", "-n", namespace,
                   check=False).stdout.strip() == "no", verb
    assert who("auth", "can-i", "delete", "namespaces", check=False).stdout.strip() == "no"
    assert who("auth", "can-i", "get", "secrets", "-n", namespace,
               check=False).stdout.strip() == "no"

    operator.stop()  # the restricted operator must do all the work alone
    restricted = OperatorProcess(kubeconfig, tmp_path / "restricted.log", free_port())
    try:
        restricted.start()
        kubectl.apply({"apiVersion": "slipway.dev/v1alpha1", "kind": "TrainingJob",
                       "metadata": {"name": "rbac", "namespace": namespace},
                       "spec": {"image": "t:1", "workers": 2, "distributed": {},
                                "runPolicy": {"ttlSecondsAfterFinished": 600},
                                "output": {"uri": "s3://m/{name}", "format": "sklearn"}}})
        kubectl.apply({"apiVersion": "slipway.dev/v1alpha1", "kind": "ModelDeployment",
                       "metadata": {"name": "rbac-md", "namespace": namespace},
                       "spec": {"fromTrainingJob": "rbac"}})
        wait_for(lambda: (kubectl.get("tj", "rbac", namespace) or {}).get("status", {}).get(
            "phase") == "Succeeded", 90, what="the TrainingJob to succeed")
        wait_for(lambda: kubectl.get("inferenceservice", "rbac-md", namespace), 60,
                 what="the InferenceService")
        events = kubectl.items("events", namespace)
        assert any(e["reason"] == "Succeeded" for e in events)
        log = (tmp_path / "restricted.log").read_text()
        # RBAC denials only: writes into a namespace another test is deleting are refused
        # with "forbidden ... because it is being terminated", which is not about our role.
        denied = [ln for ln in log.splitlines() if "forbidden" in ln.lower()
                  and "being terminated" not in ln]
        assert denied == [], "\n".join(denied[-20:])
        assert "client-certificate" not in kubeconfig.read_text()  # token auth only
    finally:
        restricted.stop()
        operator.start()


def test_servingruntimes_apply_against_kserve_crds(kubectl: Kubectl) -> None:
    proc = kubectl("apply", "--dry-run=server", "-f", str(ROOT / "runtimes" / "servingruntimes"),
                   check=False)
    assert proc.returncode == 0, proc.stderr
    names = set(proc.stdout.split())
    assert {"clusterservingruntime.serving.kserve.io/slipway-sklearn",
            "clusterservingruntime.serving.kserve.io/slipway-xgboost"} <= names, proc.stdout
