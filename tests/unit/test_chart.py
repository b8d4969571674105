"""The Helm chart (lint, what each setting renders, the values schema) and the operator's
packaging (the image installs no dev extra; the operator imports without it).

Renders with the pinned helm that hack/build-control-plane.sh builds (warm: milliseconds)."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable
from importlib.metadata import packages_distributions
from pathlib import Path
from typing import Any, get_args

import pytest
import yaml

from slipway.api.modeldeployment import DeploymentMode
from slipway.devcluster.binaries import repo_root

ROOT = repo_root()
CHART = ROOT / "charts" / "slipway"
RELEASE, NAMESPACE = "slipway", "slipway-system"
SCHEMA_ERROR = "values don't meet the specifications of the schema"
# The kinds the operator touches in the namespaces it watches.
NAMESPACED_KINDS = {"trainingjobs", "modeldeployments", "canaries", "trainingjobs/status",
                    "modeldeployments/status", "canaries/status", "trainingjobs/finalizers",
                    "modeldeployments/finalizers", "canaries/finalizers", "jobs", "services",
                    "pods", "inferenceservices", "httproutes", "events", "workloads"}
WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection"}

Helm = Callable[..., subprocess.CompletedProcess[str]]
Docs = list[dict[str, Any]]


@pytest.fixture(scope="module")
def helm() -> Helm:
    """Run the pinned helm; skip when it is not built and cannot be (no Go)."""
    env = dict(os.environ, SLIPWAY_TOOLS="helm")
    proc = subprocess.run(["bash", str(ROOT / "hack" / "build-control-plane.sh")], env=env,
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        if shutil.which("go") is None:
            pytest.skip("helm is not built and Go is not on PATH to build it "
                        "(run `make control-plane` where Go is installed)")
        pytest.fail(f"building helm failed:\n{proc.stderr[-2000:]}")
    binary = Path(proc.stdout.strip().splitlines()[-1]) / "helm"
    assert binary.exists(), proc.stdout

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(binary), *args], capture_output=True, text=True, check=False)

    return run


def _values_file(tmp_path: Path, values: dict[str, Any]) -> str:
    path = tmp_path / f"values-{len(list(tmp_path.iterdir()))}.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


@pytest.fixture
def render(helm: Helm, tmp_path: Path) -> Callable[..., Docs]:
    """`helm template` with *values* (a values file, so types are exact), parsed."""

    def run(values: dict[str, Any] | None = None) -> Docs:
        proc = helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE,
                    "-f", _values_file(tmp_path, values or {}))
        assert proc.returncode == 0, proc.stderr
        return [d for d in yaml.safe_load_all(proc.stdout) if d]

    return run


@pytest.fixture
def rejected(helm: Helm, tmp_path: Path) -> Callable[[dict[str, Any]], str]:
    """`helm template` with *values* must fail; returns its error output."""

    def run(values: dict[str, Any]) -> str:
        proc = helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE,
                    "-f", _values_file(tmp_path, values))
        assert proc.returncode != 0, f"{values} was accepted"
        return proc.stderr

    return run


def one(docs: Docs, kind: str, namespace: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind
             and (namespace is None or d["metadata"].get("namespace") == namespace)]
    assert len(found) == 1, f"{len(found)} {kind} in {namespace or 'any namespace'}"
    return found[0]


def container(docs: Docs) -> dict[str, Any]:
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert len(pod["containers"]) == 1
    return dict(pod["containers"][0])


def env_of(docs: Docs) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(docs)["env"]}


def grants(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) for every rule without resourceNames."""
    return {(g, r, v) for rule in rules if not rule.get("resourceNames")
            for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}


# --- lint and defaults ------------------------------------------------------------------

@pytest.mark.parametrize("values", [
    {}, {"replicaCount": 2}, {"watchNamespace": "team-a"},
    {"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}}},
], ids=["defaults", "replicas-2", "watch-namespace", "service-monitor"])
def test_helm_lint_strict_passes(helm: Helm, tmp_path: Path, values: dict[str, Any]) -> None:
    proc = helm("lint", "--strict", str(CHART), "-f", _values_file(tmp_path, values))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in proc.stdout
    assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout, proc.stdout


def test_defaults_render_one_hardened_operator_without_leader_election(
        render: Callable[..., Docs]) -> None:
    docs = render()
    assert sorted(d["kind"] for d in docs) == ["ClusterRole", "ClusterRoleBinding", "Deployment",
                                               "Service", "ServiceAccount"]
    deploy = one(docs, "Deployment")
    assert deploy["spec"]["replicas"] == 1
    assert deploy["spec"]["strategy"] == {"type": "Recreate"}
    pod = deploy["spec"]["template"]["spec"]
    c = container(docs)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts == {"tmp": "/tmp"}
    assert {v["name"] for v in pod["volumes"] if "emptyDir" in v} == {"tmp"}

    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"healthz": 8080, "metrics": 9100}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "healthz"}

    env = env_of(docs)
    assert "SLIPWAY_PEERING" not in env
    assert env["SLIPWAY_NAMESPACE"] == ""
    assert env["SLIPWAY_LEADER_ELECTION"] == "false"
    assert env["SLIPWAY_LEASE_NAME"] == "slipway-operator"
    assert env["SLIPWAY_LIVENESS_PORT"] == "8080" and env["SLIPWAY_METRICS_PORT"] == "9100"
    assert env["SLIPWAY_KSERVE_DEPLOYMENT_MODE"] == "Standard"
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["POD_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}

    service = one(docs, "Service")
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 9100,
                                         "targetPort": "metrics"}]


def test_cluster_role_is_least_privilege(render: Callable[..., Docs]) -> None:
    docs = render()
    rules = one(docs, "ClusterRole")["rules"]
    for rule in rules:
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], rule
    granted = grants(rules)
    assert not any(g == "kopf.dev" for g, _, _ in granted)  # no Kopf peering any more
    assert not any(r in {"secrets", "configmaps", "leases"} for _, r, _ in granted)
    # Pods: read-only.
    assert {v for g, r, v in granted if (g, r) == ("", "pods")} == {"get", "list", "watch"}
    # Children carry blockOwnerDeletion: update on the owners' finalizers.
    for kind in ("trainingjobs", "modeldeployments", "canaries"):
        assert ("slipway.dev", f"{kind}/finalizers", "update") in granted, kind
        assert {v for g, r, v in granted if r == f"{kind}/status"} == {"patch"}, kind
    # Deletes only where the operator deletes.
    deletable = {(g, r) for g, r, v in granted if v == "delete"}
    assert deletable == {("slipway.dev", "trainingjobs"), ("batch", "jobs"),
                         ("serving.kserve.io", "inferenceservices"),
                         ("gateway.networking.k8s.io", "httproutes")}
    assert {v for g, r, v in granted if r == "events"} == {"create"}
    # Namespaces: only a namespaced operator (Kopf) lists them.
    assert not any(r == "namespaces" for _, r, _ in granted)
    binding = one(docs, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == one(docs, "ClusterRole")["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "slipway",
                                    "namespace": NAMESPACE}]


# --- replicas and leader election -------------------------------------------------------

def test_two_replicas_elect_a_leader_roll_and_keep_one_through_disruptions(
        render: Callable[..., Docs]) -> None:
    docs = render({"replicaCount": 2})
    deploy = one(docs, "Deployment")
    assert deploy["spec"]["replicas"] == 2
    strategy = deploy["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0
    assert env_of(docs)["SLIPWAY_LEADER_ELECTION"] == "true"

    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == \
        deploy["spec"]["template"]["metadata"]["labels"]

    role = one(docs, "Role", NAMESPACE)
    by_names = {(tuple(r.get("resourceNames") or ()), tuple(r["verbs"])) for r in role["rules"]
                if r["apiGroups"] == ["coordination.k8s.io"] and r["resources"] == ["leases"]}
    assert by_names == {((), ("create",)), (("slipway-operator",), ("get", "update"))}
    assert len(role["rules"]) == 2
    binding = one(docs, "RoleBinding", NAMESPACE)
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"][0]["name"] == "slipway"


def test_leader_election_explicit_settings(render: Callable[..., Docs],
                                           rejected: Callable[[dict[str, Any]], str]) -> None:
    docs = render({"leaderElection": {"enabled": True, "leaseName": "ops-lease"}})
    assert env_of(docs)["SLIPWAY_LEADER_ELECTION"] == "true"
    assert env_of(docs)["SLIPWAY_LEASE_NAME"] == "ops-lease"
    assert one(docs, "Deployment")["spec"]["strategy"]["type"] == "RollingUpdate"
    assert not [d for d in docs if d["kind"] == "PodDisruptionBudget"]  # one replica
    lease_rules = one(docs, "Role", NAMESPACE)["rules"]
    assert any(r.get("resourceNames") == ["ops-lease"] for r in lease_rules)
    # Two replicas without leader election would reconcile the same objects twice.
    assert "needs leaderElection" in rejected({"replicaCount": 2,
                                               "leaderElection": {"enabled": False}})


# --- one watched namespace --------------------------------------------------------------

def test_watch_namespace_gets_a_role_there_and_no_cluster_wide_rights_on_namespaced_kinds(
        render: Callable[..., Docs]) -> None:
    cluster_wide = grants(one(render(), "ClusterRole")["rules"])
    docs = render({"watchNamespace": "team-a"})
    assert env_of(docs)["SLIPWAY_NAMESPACE"] == "team-a"

    role = one(docs, "Role", "team-a")
    in_team_a = grants(role["rules"])
    assert {r for _, r, _ in in_team_a} == NAMESPACED_KINDS
    # The same rights as the cluster-wide install has on those kinds, no more.
    assert in_team_a == {g for g in cluster_wide if g[1] in NAMESPACED_KINDS}
    binding = one(docs, "RoleBinding", "team-a")
    assert binding["roleRef"]["kind"] == "Role"
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "slipway",
                                    "namespace": NAMESPACE}]

    cluster_role = one(docs, "ClusterRole")
    resources = {r for _, r, _ in grants(cluster_role["rules"])}
    assert resources == {"customresourcedefinitions", "namespaces"}
    assert not {v for _, _, v in grants(cluster_role["rules"])} & WRITE_VERBS
    # One release per team: cluster-scoped names carry the release namespace.
    assert cluster_role["metadata"]["name"] == f"{RELEASE}-{NAMESPACE}"
    assert one(docs, "ClusterRoleBinding")["roleRef"]["name"] == f"{RELEASE}-{NAMESPACE}"
    assert not [d for d in docs if d["kind"] == "Role" and
                d["metadata"]["namespace"] != "team-a"]  # no Lease role: one replica


# --- metrics ----------------------------------------------------------------------------

def test_service_monitor_scrapes_the_metrics_service(render: Callable[..., Docs]) -> None:
    assert not [d for d in render() if d["kind"] == "ServiceMonitor"]  # off by default
    docs = render({"metrics": {"port": 9200, "serviceMonitor": {
        "enabled": True, "interval": "15s", "labels": {"release": "prom"}}}})
    monitor = one(docs, "ServiceMonitor")
    service = one(docs, "Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["namespace"] == NAMESPACE
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["interval"] == "15s" and endpoint["path"] == "/metrics"
    [port] = service["spec"]["ports"]
    assert endpoint["port"] == port["name"] and port["port"] == 9200
    assert {"name": "metrics", "containerPort": 9200} in container(docs)["ports"]


# --- the values schema ------------------------------------------------------------------

@pytest.mark.parametrize(("values", "where"), [
    ({"kserveDeploymentMode": "Knativ"}, "/kserveDeploymentMode"),
    ({"replicaCnt": 2}, "replicaCnt"),
    ({"livenessPort": "abc"}, "/livenessPort"),
    ({"replicaCount": 0}, "/replicaCount"),
    ({"resyncSeconds": 0}, "/resyncSeconds"),
    ({"podReasonSeconds": 0}, "/podReasonSeconds"),
    ({"metrics": {"port": 70000}}, "/metrics/port"),
    ({"metrics": {"serviceMonitor": {"enabeld": True}}}, "enabeld"),
    ({"leaderElection": {"enabled": "yes"}}, "/leaderElection/enabled"),
    ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    ({"watchNamespace": "Team_A"}, "/watchNamespace"),
], ids=lambda v: json.dumps(v) if isinstance(v, dict) else None)
def test_schema_rejects_bad_values(rejected: Callable[[dict[str, Any]], str],
                                   values: dict[str, Any], where: str) -> None:
    error = rejected(values)
    assert SCHEMA_ERROR in error, error
    assert where in error, error


@pytest.mark.parametrize("mode", get_args(DeploymentMode))
def test_schema_accepts_every_deployment_mode_the_api_does(render: Callable[..., Docs],
                                                           mode: str) -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["properties"]["kserveDeploymentMode"]["enum"] == list(get_args(DeploymentMode))
    assert env_of(render({"kserveDeploymentMode": mode}))["SLIPWAY_KSERVE_DEPLOYMENT_MODE"] == mode


def test_crds_stay_outside_templates() -> None:
    # Helm installs crds/ once and never upgrades it (docs/install.md, "Upgrading").
    assert sorted(p.name for p in (CHART / "crds").glob("*.yaml")) == \
        sorted(p.name for p in (ROOT / "crds").glob("*.yaml"))
    for template in (CHART / "templates").iterdir():
        assert "CustomResourceDefinition" not in template.read_text(), template.name


# --- packaging --------------------------------------------------------------------------

def _project() -> dict[str, Any]:
    return dict(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"])


def _requirement_names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\s<>=!~\[;]", r, maxsplit=1)[0].lower().replace("_", "-")
            for r in requirements}


def test_dev_platform_dependencies_are_an_extra() -> None:
    project = _project()
    runtime = _requirement_names(project["dependencies"])
    dev = _requirement_names(project["optional-dependencies"]["dev"])
    assert "cryptography" not in runtime and "cryptography" in dev
    # Every third-party module the operator (not the dev platform) imports is declared.
    dists = packages_distributions()
    missing = set()
    for path in (ROOT / "operator" / "slipway").rglob("*.py"):
        if "devcluster" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top in sys.stdlib_module_names or top == "slipway":
                    continue
                names = {d.lower().replace("_", "-") for d in dists.get(top, [top])}
                if not names & runtime:
                    missing.add(f"{top} ({path.relative_to(ROOT)})")
    assert not missing, f"imported but not in [project] dependencies: {sorted(missing)}"


# Imports fail for the dev platform and its dependencies, as in the operator image.
_WITHOUT_DEV = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "cryptography" or name.startswith("slipway.devcluster"):
            raise ModuleNotFoundError(f"blocked: {name}")
sys.meta_path.insert(0, Block())
import slipway.cli, slipway.runner, slipway.controllers
assert not [m for m in sys.modules if m.startswith(("cryptography", "slipway.devcluster"))]
slipway.cli.main(["run", "--help"])
"""


def test_the_operator_runs_without_the_dev_platform() -> None:
    proc = subprocess.run([sys.executable, "-c", _WITHOUT_DEV], capture_output=True, text=True,
                          check=False, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr  # argparse exits 0 after --help
    assert "usage: slipway run" in proc.stdout and "--leader-election" in proc.stdout


def test_the_image_installs_no_dev_extra_and_ships_no_dev_platform() -> None:
    lines = [ln.split("#")[0] for ln in (ROOT / "Dockerfile").read_text().splitlines()]
    text = "\n".join(lines)
    installs = re.findall(r"pip install[^\n&]*", text)
    assert installs, "the Dockerfile installs nothing"
    assert all("[" not in i for i in installs), installs  # no extras
    assert re.search(r"rm -rf \S*slipway/devcluster", text)
    assert re.search(r"^USER 10001", text, re.M)
    assert "PYTHONDONTWRITEBYTECODE=1" in text
