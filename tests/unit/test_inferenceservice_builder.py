"""The InferenceService builder and model resolution: pure, no cluster."""

from __future__ import annotations

from typing import Any

import pytest

from slipway.api.modeldeployment import ModelDeploymentSpec, ResolvedModel
from slipway.builders.inferenceservice import (
    DEPLOYMENT_MODE_ANNOTATION,
    KNATIVE_CLASS_ANNOTATION,
    KNATIVE_HPA_CLASS,
    METRIC_NEEDS_KNATIVE,
    STOP_ANNOTATION,
    VERSION_KEY,
    ResolutionError,
    build_inference_service,
    default_version,
    resolve_model,
    unsupported,
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
    (tj_body("Succeeded", {"uri": "s3://m", "version": "v1", "format": "pmml"}),
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


def test_onnx_runs_on_slipway_onnx() -> None:
    isvc = build({"model": {"format": "onnx", "uri": "hf://org/model", "version": "v1"}})
    model = isvc["spec"]["predictor"]["model"]
    assert model["modelFormat"] == {"name": "onnx"} and model["runtime"] == "slipway-onnx"
    assert model["storageUri"] == "hf://org/model"
    spec = ModelDeploymentSpec.model_validate({"fromTrainingJob": "train"})
    resolved = resolve_model(spec, tj_body("Succeeded", {"uri": "s3://m", "version": "v1",
                                                         "format": "onnx"}))
    assert resolved.runtime == "slipway-onnx"


@pytest.mark.parametrize("uri", ["http://host/m.joblib", "https://host/m.joblib",
                                 "hf://org/repo", "s3://b/k", "gs://b/k", "pvc://c/p",
                                 "file:///m"])
def test_every_kserve_scheme_is_passed_through(uri: str) -> None:
    isvc = build({"model": {"format": "sklearn", "uri": uri}})
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == uri
    spec = ModelDeploymentSpec.model_validate({"fromTrainingJob": "train"})
    assert resolve_model(spec, tj_body("Succeeded", {"uri": uri, "version": "v1",
                                                     "format": "sklearn"})).uri == uri


def test_unsupported_uri_message_lists_the_schemes() -> None:
    spec = ModelDeploymentSpec.model_validate({"fromTrainingJob": "train"})
    with pytest.raises(ResolutionError) as info:
        resolve_model(spec, tj_body("Succeeded", {"uri": "ftp://m", "version": "v1",
                                                  "format": "sklearn"}))
    assert "hf://" in info.value.message and "http://" in info.value.message


# --- pass-through fields ------------------------------------------------------------------

MODEL = {"format": "sklearn", "uri": "s3://models/iris/v1", "version": "v1"}


def predictor(extra: dict[str, Any], mode: str = "Standard") -> dict[str, Any]:
    out: dict[str, Any] = build({"model": MODEL, **extra}, mode=mode)["spec"]["predictor"]
    return out


def test_service_account_name() -> None:
    assert predictor({"serviceAccountName": "s3-reader"})["serviceAccountName"] == "s3-reader"
    assert "serviceAccountName" not in predictor({})


def test_node_selector() -> None:
    pred = predictor({"nodeSelector": {"pool": "inference", "zone": "a"}})
    assert pred["nodeSelector"] == {"pool": "inference", "zone": "a"}


def test_tolerations_follow_the_gpu_toleration() -> None:
    mine = {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}
    assert predictor({"tolerations": [mine]})["tolerations"] == [mine]
    gpu = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    # the user's copy of the GPU toleration is not repeated
    assert predictor({"gpus": 1, "tolerations": [gpu, mine]})["tolerations"] == [gpu, mine]
    noexec = {"key": "spot", "operator": "Exists", "effect": "NoExecute",
              "tolerationSeconds": 30}
    assert predictor({"tolerations": [noexec]})["tolerations"] == [noexec]


def test_affinity() -> None:
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [
            {"key": "pool", "operator": "In", "values": ["inference"]}]}]}},
        "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
            "weight": 100, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname"}}]}}
    assert predictor({"affinity": affinity})["affinity"] == affinity
    assert "affinity" not in predictor({"affinity": {}})


def test_env_follows_model_version() -> None:
    env = [{"name": "WORKERS", "value": "4"},
           {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "token"}}}]
    assert predictor({"env": env})["model"]["env"] == [
        {"name": "MODEL_VERSION", "value": "v1"}, *env]


def test_env_cannot_override_model_version() -> None:
    pred = predictor({"env": [{"name": "MODEL_VERSION", "value": "evil"}]})
    assert pred["model"]["env"] == [{"name": "MODEL_VERSION", "value": "v1"}]


def test_labels_and_annotations_slipway_wins() -> None:
    pred = predictor({
        "labels": {"team": "search", "slipway.dev/model-version": "evil",
                   "app.kubernetes.io/managed-by": "me"},
        "annotations": {"prometheus.io/scrape": "true", "slipway.dev/x": "y",
                        "serving.kserve.io/storage-initializer-sourceuri": "s3://evil"}})
    assert pred["labels"] == {"team": "search", "slipway.dev/model-format": "sklearn",
                              VERSION_KEY: "v1"}
    assert pred["annotations"] == {"prometheus.io/scrape": "true"}
    assert "annotations" not in predictor({})


def test_timeout_container_concurrency_and_logger() -> None:
    pred = predictor({"timeout": 120, "containerConcurrency": 4,
                      "logger": {"url": "http://logger.ml/", "mode": "request"}})
    assert pred["timeout"] == 120 and pred["containerConcurrency"] == 4
    assert pred["logger"] == {"url": "http://logger.ml/", "mode": "request"}
    # mode defaults to all; url defaults to KServe's configured logger
    assert predictor({"logger": {}})["logger"] == {"mode": "all"}
    assert predictor({"containerConcurrency": 0})["containerConcurrency"] == 0
    for key in ("timeout", "containerConcurrency", "logger"):
        assert key not in predictor({})


@pytest.mark.parametrize(("resources", "expected"), [
    ({"cpu": "1", "memory": "2Gi"},
     {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"cpu": "1", "memory": "2Gi"}}),
    ({"cpu": 2, "memory": 1073741824},
     {"requests": {"cpu": "2", "memory": "1073741824"},
      "limits": {"cpu": "2", "memory": "1073741824"}}),
    ({"cpu": "1", "memory": "2Gi", "limits": {"cpu": "4", "memory": "8Gi"}},
     {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"cpu": "4", "memory": "8Gi"}}),
    ({"cpu": "4", "requests": {"cpu": "500m"}},
     {"requests": {"cpu": "500m"}, "limits": {"cpu": "4"}}),
    ({"requests": {"cpu": 1, "memory": "1Gi"}},
     {"requests": {"cpu": "1", "memory": "1Gi"}}),
    ({"limits": {"memory": "4Gi"}}, {"limits": {"memory": "4Gi"}}),
    ({"requests": {"cpu": "250m"}, "limits": {"cpu": 1}, "memory": "1Gi"},
     {"requests": {"cpu": "250m", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "1Gi"}}),
])
def test_requests_and_limits(resources: dict[str, Any], expected: dict[str, Any]) -> None:
    assert predictor({"resources": resources})["model"]["resources"] == expected


def test_gpu_limit_joins_the_limits() -> None:
    res = predictor({"resources": {"requests": {"cpu": "1"}}, "gpus": 2})["model"]["resources"]
    assert res == {"requests": {"cpu": "1"}, "limits": {"nvidia.com/gpu": 2}}


# --- autoscaling metrics and the deployment mode ------------------------------------------

@pytest.mark.parametrize("metric", ["concurrency", "rps"])
def test_knative_metric_in_default_standard_mode_is_left_out(metric: str) -> None:
    spec = {"model": MODEL, "autoscaling": {"metric": metric, "target": 10},
            "replicas": {"min": 1, "max": 3}}
    parsed = ModelDeploymentSpec.model_validate(spec)
    problem = unsupported(parsed, "Standard")
    assert problem is not None and problem[0] == METRIC_NEEDS_KNATIVE
    assert f"spec.autoscaling.metric {metric}" in problem[1]
    assert "SLIPWAY_KSERVE_DEPLOYMENT_MODE" in problem[1]
    pred = build(spec, mode="Standard")["spec"]["predictor"]
    assert "scaleMetric" not in pred and "scaleTarget" not in pred
    assert pred["maxReplicas"] == 3
    # The operator's default is Knative, or the spec says Knative: kept.
    assert unsupported(parsed, "Knative") is None
    assert build(spec, mode="Knative")["spec"]["predictor"]["scaleMetric"] == metric
    knative = {**spec, "deploymentMode": "Knative"}
    assert unsupported(ModelDeploymentSpec.model_validate(knative), "Standard") is None
    isvc = build(knative, mode="Standard")
    assert isvc["spec"]["predictor"]["scaleMetric"] == metric
    assert KNATIVE_CLASS_ANNOTATION not in isvc["metadata"]["annotations"]


def test_explicit_standard_with_knative_metric_names_the_spec() -> None:
    # The CRD refuses this; an object stored before that rule gets the same condition.
    parsed = ModelDeploymentSpec.model_validate(
        {"model": MODEL, "deploymentMode": "Standard",
         "autoscaling": {"metric": "rps", "target": 5}})
    problem = unsupported(parsed, "Knative")
    assert problem is not None and "(spec.deploymentMode)" in problem[1]


@pytest.mark.parametrize("metric", ["cpu", "memory"])
def test_cpu_and_memory_in_knative_mode_use_knatives_hpa_class(metric: str) -> None:
    spec = {"model": MODEL, "autoscaling": {"metric": metric, "target": 70}}
    isvc = build(spec, mode="Knative")
    assert isvc["metadata"]["annotations"][KNATIVE_CLASS_ANNOTATION] == KNATIVE_HPA_CLASS
    assert isvc["spec"]["predictor"]["scaleMetric"] == metric
    standard = build(spec, mode="Standard")
    assert KNATIVE_CLASS_ANNOTATION not in standard["metadata"]["annotations"]
    assert standard["spec"]["predictor"]["scaleMetric"] == metric
    assert unsupported(ModelDeploymentSpec.model_validate(spec), "Standard") is None
