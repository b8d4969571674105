"""The InferenceService builder and model resolution: pure, no cluster."""

from __future__ import annotations

from typing import Any

import pytest

from slipway.api.modeldeployment import ModelDeploymentSpec, ResolvedModel
from slipway.builders.inferenceservice import (
    DEPLOYMENT_MODE_ANNOTATION,
    STOP_ANNOTATION,
    VERSION_KEY,
    ResolutionError,
    build_inference_service,
    default_version,
    resolve_model,
)

MD = {"apiVersion": "slipway.dev/v1alpha1", "kind": "ModelDeployment",
      "metadata": {"name": "iris", "namespace": "ml", "uid": "uid-1", "generation": 2}}


def build(spec: dict[str, Any], tj: dict[str, Any] | None = None,
          mode: str = "Standard") -> dict[str, Any]:
    parsed = ModelDeploymentSpec.model_validate(spec)
    return build_inference_service(parsed, MD, resolve_model(parsed, tj), mode)


def tj_body(phase: str | None, output: dict[str, Any] | None = None,
            message: str | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {}
    if phase:
        status["phase"] = phase
    if output:
        status["output"] = output
    if message:
        status["message"] = message
    return {"apiVersion": "slipway.dev/v1alpha1", "kind": "TrainingJob",
            "metadata": {"name": "train", "namespace": "ml"}, "status": status}


def test_minimal_sklearn() -> None:
    isvc = build({"model": {"format": "sklearn", "uri": "s3://models/iris/v1", "version": "v1"}})
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    assert isvc["kind"] == "InferenceService"
    meta = isvc["metadata"]
    assert meta["name"] == "iris" and meta["namespace"] == "ml"
    assert meta["ownerReferences"] == [{
        "apiVersion": "slipway.dev/v1alpha1", "kind": "ModelDeployment", "name": "iris",
        "uid": "uid-1", "controller": True, "blockOwnerDeletion": True}]
    assert meta["labels"] == {"app.kubernetes.io/managed-by": "slipway",
                              "slipway.dev/modeldeployment": "iris",
                              "slipway.dev/model-format": "sklearn",
                              VERSION_KEY: "v1"}
    assert meta["annotations"] == {DEPLOYMENT_MODE_ANNOTATION: "Standard",
                                   STOP_ANNOTATION: "false", VERSION_KEY: "v1"}
    assert isvc["spec"] == {"predictor": {
        "model": {
            "modelFormat": {"name": "sklearn"},
            "runtime": "slipway-sklearn",
            "storageUri": "s3://models/iris/v1",
            "protocolVersion": "v1",
            "env": [{"name": "MODEL_VERSION", "value": "v1"}],
        },
        "labels": {"slipway.dev/model-format": "sklearn", VERSION_KEY: "v1"},
    }}


def test_full_spec() -> None:
    isvc = build({
        "model": {"format": "xgboost", "uri": "gs://bucket/xgb", "version": "2024.1"},
        "protocol": "v2", "deploymentMode": "Knative",
        "replicas": {"min": 0, "max": 5},
        "autoscaling": {"metric": "concurrency", "target": 10},
        "resources": {"cpu": "2", "memory": "4Gi"},
        "gpus": 2, "stopped": True,
    }, mode="Standard")
    assert isvc["metadata"]["annotations"][DEPLOYMENT_MODE_ANNOTATION] == "Knative"
    assert isvc["metadata"]["annotations"][STOP_ANNOTATION] == "true"
    pred = isvc["spec"]["predictor"]
    assert pred["minReplicas"] == 0 and pred["maxReplicas"] == 5
    assert pred["scaleMetric"] == "concurrency" and pred["scaleTarget"] == 10
    assert pred["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists",
                                    "effect": "NoSchedule"}]
    model = pred["model"]
    assert model["runtime"] == "slipway-xgboost"
    assert model["modelFormat"] == {"name": "xgboost"}
    assert model["protocolVersion"] == "v2"
    assert model["resources"] == {"requests": {"cpu": "2", "memory": "4Gi"},
                                  "limits": {"cpu": "2", "memory": "4Gi", "nvidia.com/gpu": 2}}


def test_gpus_only_and_explicit_runtime() -> None:
    isvc = build({"model": {"format": "sklearn", "uri": "pvc://models/iris"},
                  "runtime": "my-runtime", "gpus": 1})
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == "my-runtime"
    assert model["resources"] == {"limits": {"nvidia.com/gpu": 1}}


def test_no_replicas_or_autoscaling_leaves_kserve_defaults() -> None:
    pred = build({"model": {"format": "sklearn", "uri": "file:///m"}})["spec"]["predictor"]
    for key in ("minReplicas", "maxReplicas", "scaleMetric", "scaleTarget", "tolerations"):
        assert key not in pred
    assert "resources" not in pred["model"]


def test_only_min_replicas() -> None:
    pred = build({"model": {"format": "sklearn", "uri": "file:///m"},
                  "replicas": {"min": 2}})["spec"]["predictor"]
    assert pred["minReplicas"] == 2 and "maxReplicas" not in pred


def test_default_mode_comes_from_settings_argument() -> None:
    isvc = build({"model": {"format": "sklearn", "uri": "file:///m"}}, mode="Knative")
    assert isvc["metadata"]["annotations"][DEPLOYMENT_MODE_ANNOTATION] == "Knative"


def test_version_defaults_to_uri_digest() -> None:
    isvc = build({"model": {"format": "sklearn", "uri": "s3://a/b"}})
    version = default_version("s3://a/b")
    assert version.startswith("uri-") and version != default_version("s3://a/c")
    assert isvc["metadata"]["annotations"][VERSION_KEY] == version
    assert isvc["spec"]["predictor"]["model"]["env"] == [{"name": "MODEL_VERSION",
                                                          "value": version}]


def test_deterministic() -> None:
    spec = {"model": {"format": "sklearn", "uri": "s3://a/b", "version": "v3"}, "gpus": 1}
    assert build(spec) == build(spec)


# --- resolution from a TrainingJob -------------------------------------------------------

def test_resolve_from_succeeded_trainingjob() -> None:
    spec = ModelDeploymentSpec.model_validate({"fromTrainingJob": "train"})
    tj = tj_body("Succeeded", {"uri": "s3://models/train/v7", "version": "v7",
                               "format": "xgboost"})
    assert resolve_model(spec, tj) == ResolvedModel(
        format="xgboost", uri="s3://models/train/v7", version="v7", runtime="slipway-xgboost",
        source="TrainingJob/train")


def test_spec_format_overrides_and_supplies_the_format() -> None:
    spec = ModelDeploymentSpec.model_validate({"fromTrainingJob": "train", "format": "sklearn"})
    no_format = tj_body("Succeeded", {"uri": "s3://m", "version": "v1"})
    assert resolve_model(spec, no_format).format == "sklearn"
    other = tj_body("Succeeded", {"uri": "s3://m", "version": "v1", "format": "xgboost"})
    resolved = resolve_model(spec, other)
    assert resolved.format == "sklearn" and resolved.runtime == "slipway-sklearn"


def test_trainingjob_isvc_build() -> None:
    isvc = build({"fromTrainingJob": "train", "protocol": "v2"},
                 tj_body("Succeeded", {"uri": "s3://models/train/v7", "version": "v7",
                                       "format": "sklearn"}))
    model = isvc["spec"]["predictor"]["model"]
    assert model["storageUri"] == "s3://models/train/v7"
    assert model["env"] == [{"name": "MODEL_VERSION", "value": "v7"}]
    assert isvc["metadata"]["labels"][VERSION_KEY] == "v7"


def test_unsafe_version_is_annotation_only() -> None:
    isvc = build({"fromTrainingJob": "train"},
                 tj_body("Succeeded", {"uri": "s3://m", "version": "v1+build/7",
                                       "format": "sklearn"}))
    assert VERSION_KEY not in isvc["metadata"]["labels"]
    assert isvc["metadata"]["annotations"][VERSION_KEY] == "v1+build/7"


@pytest.mark.parametrize(("tj", "reason", "user_error"), [
    (None, "TrainingJobNotFound", False),
    (tj_body(None), "WaitingForTrainingJob", False),
    (tj_body("Running"), "WaitingForTrainingJob", False),
    (tj_body("Queued"), "WaitingForTrainingJob", False),
    (tj_body("Failed", message="OOMKilled"), "TrainingJobFailed", False),
    (tj_body("Succeeded"), "TrainingJobHasNoOutput", True),
    (tj_body("Succeeded", {"uri": "s3://m", "version": "v1"}), "FormatUnknown", True),
    (tj_body("Succeeded", {"uri": "s3://m", "version": "v1", "format": "onnx"}),
     "UnsupportedFormat", True),
    (tj_body("Succeeded", {"uri": "ftp://m", "version": "v1", "format": "sklearn"}),
     "UnsupportedURI", True),
])
def test_resolution_errors(tj: dict[str, Any] | None, reason: str, user_error: bool) -> None:
    spec = ModelDeploymentSpec.model_validate({"fromTrainingJob": "train"})
    with pytest.raises(ResolutionError) as info:
        resolve_model(spec, tj)
    assert info.value.reason == reason
    assert info.value.user_error is user_error
    assert "train" in info.value.message


def test_failed_trainingjob_message_carries_its_reason() -> None:
    spec = ModelDeploymentSpec.model_validate({"fromTrainingJob": "train"})
    with pytest.raises(ResolutionError, match="OOMKilled"):
        resolve_model(spec, tj_body("Failed", message="OOMKilled"))
