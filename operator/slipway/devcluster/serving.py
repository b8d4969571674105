"""The serving half of the local platform: KServe's controller and webhooks, Prometheus,
and the two stand-ins (the pod runner and the local gateway).

Real: KServe's controller manager (built from its Go module) with its own defaulting,
validating and pod-mutating webhooks registered by URL, and Prometheus.
Stand-ins, because this machine has no container runtime and no gateway data plane:
`podrunner` (runs the project's own images as local processes) and `gateway` (honours
Gateway API HTTPRoute weights on loopback). Started by `Cluster.start()` after the CRDs.
"""

from __future__ import annotations

import base64
import json
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from slipway.devcluster.binaries import Built, repo_root
from slipway.devcluster.certs import write_serving_cert

if TYPE_CHECKING:
    from slipway.devcluster.cluster import Cluster

KSERVE_NAMESPACE = "kserve"
GATEWAY_CLASS = "slipway-local"
GATEWAY_NAME = "kserve-ingress-gateway"
GATEWAY_CONTROLLER = "slipway.dev/local-gateway"
INGRESS_DOMAIN = "example.com"
SCRAPE_INTERVAL = "2s"
# Prefix for the webhook configurations we register, so none collides with KServe's names.
WEBHOOK_PREFIX = "slipway-dev-"


def inferenceservice_config(module_configmap: Path, gateway_api: bool = False
                            ) -> dict[str, Any]:
    """KServe's own `inferenceservice-config`, set up for this platform: Standard mode by
    default, an Ingress (or, with *gateway_api*, HTTPRoutes) of our class per
    InferenceService, and Prometheus scrape annotations.

    Ingress is the default because KServe 0.16 with `enableGatewayApi` writes no status at all
    until the predictor is Ready (its HTTPRoute step requeues before the status update), so a
    model that fails to load would never show why."""
    cm: dict[str, Any] = yaml.safe_load(module_configmap.read_text())
    data = cm["data"]
    data.pop("_example", None)
    deploy = json.loads(data["deploy"])
    deploy["defaultDeploymentMode"] = "Standard"
    ingress = json.loads(data["ingress"])
    ingress.update({
        "enableGatewayApi": gateway_api,
        "kserveIngressGateway": f"{KSERVE_NAMESPACE}/{GATEWAY_NAME}",
        "ingressClassName": GATEWAY_CLASS,
        "ingressDomain": INGRESS_DOMAIN,
        "disableIstioVirtualHost": True,
    })
    aggregator = json.loads(data["metricsAggregator"])
    aggregator["enablePrometheusScraping"] = "true"
    data.update({"deploy": json.dumps(deploy), "ingress": json.dumps(ingress),
                 "metricsAggregator": json.dumps(aggregator)})
    cm["metadata"] = {"name": "inferenceservice-config", "namespace": KSERVE_NAMESPACE}
    return cm


def gateway_objects() -> list[dict[str, Any]]:
    """The IngressClass and GatewayClass our local gateway owns, and the Gateway that KServe's
    (and the Canary's) HTTPRoutes attach to."""
    return [
        {"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
         "metadata": {"name": GATEWAY_CLASS}, "spec": {"controller": GATEWAY_CONTROLLER}},
        {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
         "metadata": {"name": GATEWAY_CLASS},
         "spec": {"controllerName": GATEWAY_CONTROLLER}},
        {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
         "metadata": {"name": GATEWAY_NAME, "namespace": KSERVE_NAMESPACE},
         "spec": {"gatewayClassName": GATEWAY_CLASS, "listeners": [{
             "name": "http", "protocol": "HTTP", "port": 80,
             "allowedRoutes": {"namespaces": {"from": "All"}}}]}},
    ]


def webhook_configurations(manifests: Path, port: int, ca_pem: bytes) -> list[dict[str, Any]]:
    """KServe's own webhook configurations, pointed at the local manager by URL."""
    out = []
    ca_bundle = base64.b64encode(ca_pem).decode()
    for doc in yaml.safe_load_all(manifests.read_text()):
        if not doc or doc.get("kind") not in ("MutatingWebhookConfiguration",
                                              "ValidatingWebhookConfiguration"):
            continue
        doc["metadata"] = {"name": WEBHOOK_PREFIX + doc["metadata"]["name"]}
        for hook in doc.get("webhooks") or []:
            path = hook["clientConfig"]["service"]["path"]
            hook["clientConfig"] = {"url": f"https://127.0.0.1:{port}{path}",
                                    "caBundle": ca_bundle}
        out.append(doc)
    return out


def prometheus_config(targets_dir: Path, self_port: int, kserve_metrics: int) -> dict[str, Any]:
    def file_sd(pattern: str) -> list[dict[str, Any]]:
        # The file watch can miss an atomic rename; the refresh is the backstop.
        return [{"files": [str(targets_dir / pattern)], "refresh_interval": "1s"}]

    return {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "scrape_configs": [
            {"job_name": "prometheus",
             "static_configs": [{"targets": [f"127.0.0.1:{self_port}"]}]},
            {"job_name": "kserve-controller",
             "static_configs": [{"targets": [f"127.0.0.1:{kserve_metrics}"]}]},
            # Written by OperatorProcess when an operator starts.
            {"job_name": "slipway-operator", "file_sd_configs": file_sd("operator*.json")},
            # Written by the pod runner: one target per ready model server.
            {"job_name": "model-servers", "file_sd_configs": file_sd("pods*.json")},
        ],
    }


def query(prometheus_url: str, promql: str, timeout: float = 5.0,
          at: float | None = None) -> list[dict[str, Any]]:
    """An instant PromQL query (now, or at the unix time *at*); the `result` vector (an empty
    list when nothing matches)."""
    params = {"query": promql, **({"time": f"{at:.3f}"} if at is not None else {})}
    url = f"{prometheus_url}/api/v1/query?" + urllib.parse.urlencode(params)
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        body = json.loads(resp.read())
    if body.get("status") != "success":
        raise RuntimeError(f"Prometheus query {promql!r} failed: {body}")
    return list(body["data"]["result"])


class ServingStack:
    """Starts the serving components of one Cluster; the Cluster's state file records their
    pids, so `Cluster.stop()` and `slipway dev down` stop them with the rest."""

    def __init__(self, cluster: Cluster, built: Built, gateway_api: bool = False) -> None:
        self.cluster = cluster
        self.gateway_api = gateway_api
        self.built = built
        self.dir = cluster.dir
        self.targets = self.dir / "prometheus" / "targets"

    def start(self) -> None:
        c = self.cluster
        t0 = time.monotonic()
        c.kubectl("create", "namespace", KSERVE_NAMESPACE)
        c.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(
            [inferenceservice_config(self.built.kserve / "inferenceservice.yaml",
                                     self.gateway_api),
             *gateway_objects()]))
        # The project's model-server runtimes, as a platform team installs them.
        c.kubectl("apply", "-f", str(repo_root() / "runtimes" / "servingruntimes"))
        self.targets.mkdir(parents=True, exist_ok=True)
        kserve_metrics = self._start_kserve_process()
        self._start_prometheus(kserve_metrics)
        self._start_python("gateway", "slipway.devcluster.gateway", [
            "--kubeconfig", str(c.kubeconfig), "--port", str(c.endpoint_port("gateway")),
            "--health-port", str(c.endpoint_port("gateway-health"))],
            f"http://127.0.0.1:{c.endpoint_port('gateway-health')}/healthz")
        c.endpoints["gateway"] = f"http://127.0.0.1:{c.endpoint_port('gateway')}"
        self._start_python("podrunner", "slipway.devcluster.podrunner", [
            "--kubeconfig", str(c.kubeconfig), "--dir", str(self.dir),
            "--venv", str(runtimes_venv())], None)
        self._wait_kserve()
        c.timings["serving"] = round(time.monotonic() - t0, 2)

    def _start_kserve_process(self) -> int:
        c = self.cluster
        tmp = self.dir / "kserve" / "tmp"
        write_serving_cert(self.dir / "pki", tmp / "k8s-webhook-server" / "serving-certs",
                           ["127.0.0.1", "localhost"])
        metrics, probe, webhook = (c.endpoint_port(n) for n in
                                   ("kserve-metrics", "kserve-probe", "kserve-webhook"))
        # Its own TMPDIR: controller-runtime reads the webhook cert from there.
        c.spawn("kserve-manager", [
            f"-metrics-addr=127.0.0.1:{metrics}", f"-health-probe-addr=127.0.0.1:{probe}",
            f"-webhook-port={webhook}", "-zap-log-level=info",
        ], env={"KUBECONFIG": str(c.kubeconfig), "POD_NAMESPACE": KSERVE_NAMESPACE,
                "TMPDIR": str(tmp)})
        return metrics

    def _wait_kserve(self) -> None:
        c = self.cluster
        c.wait_healthy("kserve-manager",
                       lambda: c.http_ok(f"http://127.0.0.1:{c.endpoint_port('kserve-probe')}"
                                         "/readyz"), timeout=90)
        # Registered only once its server answers: every hook is failurePolicy Fail.
        hooks = webhook_configurations(self.built.kserve / "webhooks.yaml",
                                       c.endpoint_port("kserve-webhook"),
                                       (self.dir / "pki" / "ca.crt").read_bytes())
        c.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(hooks))

    def _start_prometheus(self, kserve_metrics: int) -> None:
        c = self.cluster
        port = c.endpoint_port("prometheus")
        cfg = self.dir / "prometheus" / "prometheus.yml"
        cfg.write_text(yaml.safe_dump(prometheus_config(self.targets, port, kserve_metrics)))
        c.spawn("prometheus", [
            f"--config.file={cfg}", f"--storage.tsdb.path={self.dir / 'prometheus' / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1d",
            "--log.level=warn",
        ])
        url = f"http://127.0.0.1:{port}"
        c.endpoints["prometheus"] = url
        # Ready is not enough: wait until a scrape has really landed.
        c.wait_healthy("prometheus", lambda: any(
            r["value"][1] == "1" for r in query(url, 'up{job="prometheus"}', timeout=1)),
            timeout=60)

    def _start_python(self, name: str, module: str, args: list[str],
                      health_url: str | None) -> None:
        c = self.cluster
        c.spawn(name, ["-m", module, *args], binary=sys.executable)
        if health_url:
            c.wait_healthy(name, lambda: c.http_ok(health_url), timeout=30)


def runtimes_venv() -> Path:
    """The virtualenv of `runtimes/` (made by runtimes/setup.sh), whose servers we run."""
    venv = repo_root() / "runtimes" / ".venv"
    if not (venv / "bin" / "slipway-sklearn-server").exists():
        import subprocess

        subprocess.run(["bash", str(repo_root() / "runtimes" / "setup.sh")], check=True)
    return venv
