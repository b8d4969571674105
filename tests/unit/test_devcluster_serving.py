"""Pure parts of the local serving platform: the model store, the pod runner's plan for a
container, and KServe's configuration as the dev platform installs it."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from slipway.devcluster.modelstore import StoreError, local_path
from slipway.devcluster.podrunner import ours, plan_container, storage_uri
from slipway.devcluster.serving import (
    GATEWAY_CLASS,
    inferenceservice_config,
    prometheus_config,
    webhook_configurations,
)


def test_model_store_maps_each_scheme_to_one_folder(tmp_path: Path) -> None:
    assert local_path(tmp_path, "s3://models/iris/v1") == tmp_path / "s3/models/iris/v1"
    assert local_path(tmp_path, "gs://b/k/") == tmp_path / "gs/b/k"
    assert local_path(tmp_path, "pvc://claim/m", "ns") == tmp_path / "pvc/ns/claim/m"
    assert local_path(tmp_path, "file:///abs/m") == tmp_path / "file/abs/m"
    for bad in ("oci://x/y", "s3://b/../etc", "nope", "s3://"):
        with pytest.raises(StoreError):
            local_path(tmp_path, bad)


def pod(container: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"metadata": {"name": "p", "namespace": "ns", "uid": "u",
                         "annotations": extra.pop("annotations", {})},
            "spec": {"nodeName": "n", "containers": [container], **extra}}


SERVER = {"name": "kserve-container", "image": "slipway/runtimes:0.1.0",
          "command": ["slipway-sklearn-server"],
          "args": ["--model_dir=/mnt/models", "--model_name=iris", "--http_port=8080"],
          "ports": [{"containerPort": 8080, "name": "http1"}],
          "env": [{"name": "MODEL_VERSION", "value": "v1"},
                  {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                  {"name": "SECRET", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}


def test_runner_claims_only_the_projects_images() -> None:
    assert ours(pod(SERVER))
    assert ours(pod({"name": "t", "image": "slipway/example-trainer:0.1.0"}))
    assert not ours(pod({"name": "t", "image": "ghcr.io/example/train:1"}))
    assert not ours(pod({"name": "t", "image": "slipway/runtimes-fake:1"}))


def test_server_plan_maps_model_dir_ports_and_env(tmp_path: Path) -> None:
    p = pod(SERVER, initContainers=[{"name": "storage-initializer",
                                     "args": ["s3://models/iris/v1", "/mnt/models"]}],
            annotations={"prometheus.kserve.io/port": "8080"})
    assert storage_uri(p) == "s3://models/iris/v1"
    plan = plan_container(SERVER, p, venv_bin=tmp_path / "bin", store=tmp_path / "store",
                          pod_ip="10.246.0.2", ports={})
    model_dir = tmp_path / "store/s3/models/iris/v1"
    assert plan.model_dir == model_dir
    assert f"--model_dir={model_dir}" in plan.argv
    http = plan.ports["8080"]
    # The loopback ports are appended last, so they win over the container's own flags.
    assert plan.argv[-2:] == [f"--http_port={http}", f"--grpc_port={plan.ports['8081']}"]
    assert plan.http_port == plan.metrics_port == http
    assert plan.env == {"MODEL_VERSION": "v1", "POD": "p"}  # secrets are not resolved


def test_storage_uri_falls_back_to_kserve_annotation() -> None:
    p = pod(SERVER, annotations={"serving.kserve.io/storage-initializer-sourceuri": "gs://a/b"})
    assert storage_uri(p) == "gs://a/b"
    assert storage_uri(pod(SERVER)) is None


def test_trainer_plan_gets_a_local_output_dir_and_no_ports(tmp_path: Path) -> None:
    trainer = {"name": "trainer", "image": "slipway/example-trainer:0.1.0",
               "env": [{"name": "SLIPWAY_OUTPUT_URI", "value": "s3://models/ns/churn/v1"}]}
    plan = plan_container(trainer, pod(trainer), venv_bin=tmp_path, store=tmp_path / "s",
                          pod_ip="10.246.0.3", ports={})
    assert plan.argv == ["slipway-example-trainer"]  # the image's default command
    out = tmp_path / "s/s3/models/ns/churn/v1"
    assert plan.env["SLIPWAY_OUTPUT_DIR"] == str(out) and out.is_dir()
    assert plan.ports == {} and plan.http_port is None


def test_container_without_command_is_refused(tmp_path: Path) -> None:
    c = {"name": "x", "image": "slipway/runtimes:0.1.0"}
    with pytest.raises(ValueError, match="no command"):
        plan_container(c, pod(c), venv_bin=tmp_path, store=tmp_path, pod_ip="", ports={})


KSERVE_CM = {"apiVersion": "v1", "kind": "ConfigMap",
             "metadata": {"name": "inferenceservice-config", "namespace": "kserve"},
             "data": {"_example": "x", "deploy": '{"defaultDeploymentMode": "Serverless"}',
                      "ingress": '{"enableGatewayApi": false, "ingressDomain": "x.io"}',
                      "metricsAggregator": '{"enablePrometheusScraping": "false"}',
                      "logger": '{"image": "kserve/agent"}'}}


def test_inferenceservice_config_is_standard_with_gateway_api(tmp_path: Path) -> None:
    src = tmp_path / "cm.yaml"
    src.write_text(yaml.safe_dump(KSERVE_CM))
    assert json.loads(inferenceservice_config(src)["data"]["ingress"])["enableGatewayApi"] is False
    cm = inferenceservice_config(src, gateway_api=True)
    data = cm["data"]
    assert "_example" not in data and data["logger"] == '{"image": "kserve/agent"}'
    assert json.loads(data["deploy"])["defaultDeploymentMode"] == "Standard"
    ingress = json.loads(data["ingress"])
    assert ingress["enableGatewayApi"] is True
    assert ingress["kserveIngressGateway"] == "kserve/kserve-ingress-gateway"
    assert ingress["ingressClassName"] == GATEWAY_CLASS
    assert json.loads(data["metricsAggregator"])["enablePrometheusScraping"] == "true"


def test_webhooks_point_at_the_local_manager(tmp_path: Path) -> None:
    src = tmp_path / "hooks.yaml"
    src.write_text(yaml.safe_dump_all([
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
         "metadata": {"name": "inferenceservice.serving.kserve.io",
                      "annotations": {"cert-manager.io/inject-ca-from": "x"}},
         "webhooks": [{"name": "v", "clientConfig": {"service": {
             "name": "$(webhookServiceName)", "namespace": "kserve",
             "path": "/validate-serving-kserve-io-v1beta1-inferenceservice"}}}]},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "svc"}},
    ]))
    hooks = webhook_configurations(src, 9443, b"PEM")
    assert len(hooks) == 1
    assert hooks[0]["metadata"] == {"name": "slipway-dev-inferenceservice.serving.kserve.io"}
    cc = hooks[0]["webhooks"][0]["clientConfig"]
    assert cc["url"] == "https://127.0.0.1:9443/validate-serving-kserve-io-v1beta1-inferenceservice"
    assert base64.b64decode(cc["caBundle"]) == b"PEM"


def test_prometheus_scrapes_operator_and_model_servers_from_files(tmp_path: Path) -> None:
    cfg = prometheus_config(tmp_path, 9090, 8081)
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert set(jobs) == {"prometheus", "kserve-controller", "slipway-operator", "model-servers"}
    assert jobs["model-servers"]["file_sd_configs"][0]["files"] == [str(tmp_path / "pods*.json")]
