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
    ({"model": {**MODEL, "format": "onnx"}}, "format"),
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
    rules = spec["x-kubernetes-validations"] + \
        spec["properties"]["replicas"]["x-kubernetes-validations"] + \
        schema["x-kubernetes-validations"]
    for rule in rules:
        assert "spec." in rule["message"] or "metadata.name" in rule["message"], rule
    assert spec["properties"]["gpus"]["maximum"] == 16
    assert spec["properties"]["model"]["properties"]["format"]["enum"] == ["sklearn", "xgboost"]
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
