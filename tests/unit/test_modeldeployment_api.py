"""The ModelDeployment pydantic models and the CRD generated from them."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from slipway.api.modeldeployment import CRD, ModelDeploymentSpec
from slipway.crdgen import crd_manifest

MODEL = {"format": "sklearn", "uri": "s3://models/iris/v1", "version": "v1"}


def test_defaults() -> None:
    spec = ModelDeploymentSpec.model_validate({"model": MODEL})
    assert spec.protocol == "v1"
    assert spec.gpus == 0 and spec.stopped is False
    assert spec.deployment_mode is None and spec.runtime is None
    assert spec.wire() == {"model": MODEL, "protocol": "v1", "gpus": 0, "stopped": False}


def test_camel_case_fields() -> None:
    spec = ModelDeploymentSpec.model_validate({
        "fromTrainingJob": "train", "format": "xgboost", "deploymentMode": "Knative",
        "replicas": {"min": 1, "max": 3}, "autoscaling": {"metric": "rps", "target": 50}})
    assert spec.from_training_job == "train"
    assert spec.deployment_mode == "Knative"
    assert spec.replicas is not None and spec.replicas.max == 3


@pytest.mark.parametrize(("spec", "fragment"), [
    ({}, "exactly one of spec.model or spec.fromTrainingJob"),
    ({"model": MODEL, "fromTrainingJob": "t"}, "exactly one of"),
    ({"model": MODEL, "format": "sklearn"}, "spec.format only applies"),
    ({"model": {**MODEL, "format": "pmml"}}, "format"),
    ({"model": {**MODEL, "uri": "ftp://x"}}, "uri"),
    ({"model": {**MODEL, "uri": "models/iris"}}, "uri"),
    ({"model": MODEL, "replicas": {"min": 3, "max": 2}}, "spec.replicas.min"),
    ({"model": MODEL, "replicas": {"min": -1}}, "min"),
    ({"model": MODEL, "gpus": 17}, "gpus"),
    ({"model": MODEL, "gpus": -1}, "gpus"),
    ({"model": MODEL, "protocol": "v3"}, "protocol"),
    ({"model": MODEL, "deploymentMode": "Serverless"}, "deploymentMode"),
    ({"model": MODEL, "autoscaling": {"metric": "gpu", "target": 1}}, "metric"),
    ({"model": MODEL, "autoscaling": {"metric": "cpu", "target": 0}}, "target"),
    ({"model": MODEL, "runtime": "Bad_Name"}, "runtime"),
    ({"fromTrainingJob": "Bad_Name"}, "fromTrainingJob"),
    ({"model": {**MODEL, "version": "v1/evil"}}, "version"),
    ({"model": MODEL, "resources": {"cpu": "lots"}}, "cpu"),
    ({"model": MODEL, "resources": {"cpu": True}}, "cpu"),
    ({"model": MODEL, "resources": {"requests": {"cpu": 2}, "limits": {"cpu": "1500m"}}},
     "spec.resources.requests.cpu"),
    ({"model": MODEL, "resources": {"memory": "1Gi", "requests": {"memory": "2Gi"}}},
     "spec.resources.requests.memory"),
    ({"model": MODEL, "resources": {"cpu": "2", "limits": {"cpu": "1"}}},
     "spec.resources.requests.cpu"),
    ({"model": MODEL, "serviceAccountName": "Bad_SA"}, "serviceAccountName"),
    ({"model": MODEL, "timeout": 0}, "timeout"),
    ({"model": MODEL, "containerConcurrency": -1}, "containerConcurrency"),
    ({"model": MODEL, "logger": {"mode": "everything"}}, "mode"),
    ({"model": MODEL, "logger": {"url": "kafka://x"}}, "url"),
    ({"model": MODEL, "tolerations": [{"key": "k", "effect": "Sometimes"}]}, "effect"),
    ({"model": MODEL, "env": [{"value": "x"}]}, "name"),
])
def test_invalid_specs(spec: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValidationError) as info:
        ModelDeploymentSpec.model_validate(spec)
    assert fragment in str(info.value)


def crd_schema() -> dict[str, Any]:
    manifest = crd_manifest(CRD)
    version = manifest["spec"]["versions"][0]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def test_crd_shape() -> None:
    manifest = crd_manifest(CRD)
    assert manifest["metadata"]["name"] == "modeldeployments.slipway.dev"
    names = manifest["spec"]["names"]
    assert names["shortNames"] == ["md"] and names["categories"] == ["slipway"]
    version = manifest["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"] if "priority" not in c]
    assert columns == ["Phase", "Model", "Version", "URL", "Age"]


def test_crd_cel_rules_name_their_fields() -> None:
    schema = crd_schema()
    spec = schema["properties"]["spec"]
    props = spec["properties"]
    rules = spec["x-kubernetes-validations"] + \
        props["replicas"]["x-kubernetes-validations"] + \
        props["resources"]["x-kubernetes-validations"] + \
        props["tolerations"]["items"]["x-kubernetes-validations"] + \
        props["env"]["x-kubernetes-validations"] + \
        props["env"]["items"]["x-kubernetes-validations"] + \
        props["labels"]["x-kubernetes-validations"] + \
        props["annotations"]["x-kubernetes-validations"] + \
        props["nodeSelector"]["x-kubernetes-validations"] + \
        schema["x-kubernetes-validations"]
    for rule in rules:
        assert "spec." in rule["message"] or "metadata.name" in rule["message"], rule
    assert spec["properties"]["gpus"]["maximum"] == 16
    assert spec["properties"]["model"]["properties"]["format"]["enum"] == [
        "sklearn", "xgboost", "onnx"]
    assert schema["properties"]["status"]["x-kubernetes-preserve-unknown-fields"] is True


def test_crd_file_is_current() -> None:
    from pathlib import Path

    from slipway.crdgen import render

    path = Path(__file__).resolve().parents[2] / "crds" / "modeldeployments.slipway.dev.yaml"
    assert path.read_text() == render(CRD), "run `slipway crds`"


def test_samples_parse() -> None:
    from pathlib import Path

    import yaml

    samples = sorted((Path(__file__).resolve().parents[2] / "manifests" / "samples")
                     .glob("modeldeployment-*.yaml"))
    assert len(samples) >= 3
    for path in samples:
        doc = yaml.safe_load(path.read_text())
        assert doc["kind"] == "ModelDeployment"
        ModelDeploymentSpec.model_validate(doc["spec"])


def test_deployment_mode_is_immutable_in_crd() -> None:
    field = crd_schema()["properties"]["spec"]["properties"]["deploymentMode"]
    assert field["x-kubernetes-validations"][0]["rule"] == "self == oldSelf"


FULL = {
    "model": {"format": "onnx", "uri": "hf://org/model", "version": "v1"},
    "serviceAccountName": "model-reader",
    "nodeSelector": {"pool": "inference"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml",
                     "effect": "NoSchedule"}],
    "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [
            {"key": "pool", "operator": "In", "values": ["inference"]}]}]}}},
    "env": [{"name": "WORKERS", "value": "2"}],
    "labels": {"team": "search"},
    "annotations": {"prometheus.io/scrape": "true"},
    "timeout": 60,
    "containerConcurrency": 8,
    "logger": {"url": "http://logger.ml", "mode": "response"},
    "resources": {"cpu": 1, "memory": "1Gi", "limits": {"cpu": "2"}},
}


def test_new_fields_parse_and_round_trip() -> None:
    spec = ModelDeploymentSpec.model_validate(FULL)
    assert spec.service_account_name == "model-reader"
    assert spec.container_concurrency == 8 and spec.timeout == 60
    assert spec.logger is not None and spec.logger.mode == "response"
    assert spec.tolerations is not None and spec.tolerations[0].key == "dedicated"
    assert spec.resources is not None and spec.resources.cpu == "1"
    wire = spec.wire()
    for key in ("serviceAccountName", "nodeSelector", "tolerations", "affinity", "env",
                "labels", "annotations", "timeout", "containerConcurrency", "logger"):
        assert wire[key] == FULL[key], key
    assert wire["resources"] == {"cpu": "1", "memory": "1Gi", "limits": {"cpu": "2"}}


@pytest.mark.parametrize("uri", ["http://host/m", "https://host/m", "hf://org/repo",
                                 "s3://b/k", "gs://b/k", "pvc://claim/p", "file:///m"])
def test_kserve_uri_schemes(uri: str) -> None:
    ModelDeploymentSpec.model_validate({"model": {**MODEL, "uri": uri}})


def test_numeric_quantities_become_strings_for_both_kinds() -> None:
    from slipway.api.trainingjob import TrainingJobSpec

    md = ModelDeploymentSpec.model_validate(
        {"model": MODEL, "resources": {"cpu": 4, "memory": 1073741824,
                                       "requests": {"cpu": 1}}})
    assert md.resources is not None
    assert (md.resources.cpu, md.resources.memory) == ("4", "1073741824")
    assert md.resources.request("cpu") == "1" and md.resources.limit("cpu") == "4"
    tj = TrainingJobSpec.model_validate({"image": "x", "resources": {"cpu": 4,
                                                                      "memory": 1073741824}})
    assert tj.resources is not None
    assert (tj.resources.cpu, tj.resources.memory) == ("4", "1073741824")


@pytest.mark.parametrize(("text", "value"), [
    ("500m", "0.5"), ("2", "2"), ("1.5", "1.5"), ("1Gi", str(2 ** 30)), ("1G", "1000000000"),
    ("1536Mi", str(1536 * 2 ** 20)), ("1073741824", "1073741824"),
])
def test_parse_quantity(text: str, value: str) -> None:
    from decimal import Decimal

    from slipway.api.common import parse_quantity

    assert parse_quantity(text) == Decimal(value)


def test_requests_may_equal_limits() -> None:
    ModelDeploymentSpec.model_validate(
        {"model": MODEL, "resources": {"requests": {"cpu": "1000m", "memory": "1Gi"},
                                       "limits": {"cpu": 1, "memory": "1024Mi"}}})


def test_quantities_are_int_or_string_in_both_crds() -> None:
    from slipway.api import trainingjob

    for crd in (CRD, trainingjob.CRD):
        version = crd_manifest(crd)["spec"]["versions"][0]
        resources = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][
            "resources"]
        for key in ("cpu", "memory"):
            field = resources["properties"][key]
            assert field["x-kubernetes-int-or-string"] is True and "type" not in field
            assert field["pattern"].startswith("^[0-9]")
            assert field["minimum"] == 0
    md_resources = crd_schema()["properties"]["spec"]["properties"]["resources"]
    for side in ("requests", "limits"):
        assert md_resources["properties"][side]["properties"]["cpu"][
            "x-kubernetes-int-or-string"] is True
    rules = [r["rule"] for r in md_resources["x-kubernetes-validations"]]
    assert all("quantity(string(" in r for r in rules) and len(rules) == 4


def test_standard_mode_knative_metric_rule() -> None:
    rules = crd_schema()["properties"]["spec"]["x-kubernetes-validations"]
    rule = next(r for r in rules if r.get("fieldPath") == ".autoscaling.metric")
    assert "spec.autoscaling.metric" in rule["message"]
    assert "'Standard'" in rule["rule"] and "'rps'" in rule["rule"]
