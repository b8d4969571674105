"""ModelDeployment end to end against the local control plane with a real operator.

KServe's real controller and webhooks run on the local platform, so InferenceService
status (Ready, URL, modelStatus) is KServe's own; no test writes it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from slipway.devcluster.modelstore import upload_example_model
from tests.helpers import Kubectl, OperatorProcess, wait_for

MODEL = {"format": "sklearn", "uri": "s3://models/iris/v1", "version": "v1"}
TIMEOUT = 30


def md(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "slipway.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": name}, "spec": spec}


def apply(kubectl: Kubectl, namespace: str, obj: dict[str, Any]) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(obj))


def patch_spec(kubectl: Kubectl, namespace: str, name: str, spec: dict[str, Any]) -> None:
    kubectl("patch", "modeldeployment", name, "-n", namespace, "--type=merge",
            "-p", json.dumps({"spec": spec}))


def isvc(kubectl: Kubectl, namespace: str, name: str) -> dict[str, Any] | None:
    return kubectl.get("inferenceservice", name, namespace)


def md_status(kubectl: Kubectl, namespace: str, name: str) -> dict[str, Any]:
    obj = kubectl.get("modeldeployment", name, namespace)
    assert obj is not None
    return dict(obj.get("status") or {})


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), {})


def events(kubectl: Kubectl, namespace: str, name: str) -> list[tuple[str, str, str]]:
    items = kubectl.items("events", namespace, None)
    return [(e.get("type", ""), e.get("reason", ""), e.get("message", "")) for e in items
            if e["involvedObject"].get("name") == name
            and e["involvedObject"].get("kind") == "ModelDeployment"]


def run_trainingjob(kubectl: Kubectl, namespace: str, name: str, output: dict[str, Any],
                    check_waiting: Callable[[], object] | None = None) -> None:
    """Create a TrainingJob and wait until it has Succeeded. kwok keeps its training pod
    Running for the fake duration, then completes it."""
    apply(kubectl, namespace, {
        "apiVersion": "slipway.dev/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {"image": "example/train:1", "output": output,
                 "podTemplate": {"metadata": {"annotations": {
                     "slipway.dev/fake-duration": "10s"}}}},
    })
    if check_waiting:
        check_waiting()

    def phase() -> str | None:
        tj = kubectl.get("trainingjob", name, namespace)
        assert tj is not None
        return (tj.get("status") or {}).get("phase")

    # The real TrainingJob controller runs it; kwok plays the training pod.
    wait_for(lambda: phase() == "Succeeded", 60, what=f"TrainingJob {name} Succeeded")


def test_inferenceservice_spec_updates_and_stop(kubectl: Kubectl, namespace: str,
                                                operator: OperatorProcess,
                                                model_store: Path) -> None:
    for version in ("v1", "v2"):
        upload_example_model(model_store, f"s3://models/iris/{version}", "sklearn")
    apply(kubectl, namespace, md("iris", {
        "model": MODEL, "protocol": "v2", "deploymentMode": "Standard",
        "replicas": {"min": 1, "max": 3}, "autoscaling": {"metric": "cpu", "target": 70},
        "resources": {"cpu": "1", "memory": "2Gi"}, "gpus": 1,
    }))
    obj = wait_for(lambda: isvc(kubectl, namespace, "iris"), TIMEOUT, what="InferenceService")
    owner = kubectl.get("modeldeployment", "iris", namespace)
    assert owner is not None
    meta = obj["metadata"]
    assert meta["ownerReferences"] == [{
        "apiVersion": "slipway.dev/v1alpha1", "kind": "ModelDeployment", "name": "iris",
        "uid": owner["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}]
    assert meta["labels"] == {"app.kubernetes.io/managed-by": "slipway",
                              "slipway.dev/modeldeployment": "iris",
                              "slipway.dev/model-format": "sklearn",
                              "slipway.dev/model-version": "v1"}
    assert meta["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"
    assert meta["annotations"]["serving.kserve.io/stop"] == "false"
    assert meta["annotations"]["slipway.dev/model-version"] == "v1"
    # KServe's defaulting webhook adds an empty model name; everything else is ours.
    assert obj["spec"]["predictor"]["model"].pop("name") == ""
    assert obj["spec"] == {"predictor": {
        "minReplicas": 1, "maxReplicas": 3, "scaleMetric": "cpu", "scaleTarget": 70,
        "labels": {"slipway.dev/model-format": "sklearn", "slipway.dev/model-version": "v1"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists",
                         "effect": "NoSchedule"}],
        "model": {
            "modelFormat": {"name": "sklearn"},
            "runtime": "slipway-sklearn",
            "storageUri": "s3://models/iris/v1",
            "protocolVersion": "v2",
            "env": [{"name": "MODEL_VERSION", "value": "v1"}],
            "resources": {"requests": {"cpu": "1", "memory": "2Gi"},
                          # A quantity, as KServe's defaulter writes it back.
                          "limits": {"cpu": "1", "memory": "2Gi", "nvidia.com/gpu": "1"}},
        },
    }}
    status = wait_for(lambda: md_status(kubectl, namespace, "iris").get("servingVersion"),
                      TIMEOUT, what="status.servingVersion")
    assert status == "v1"

    # A spec change propagates: new model version, replicas, protocol; GPUs dropped.
    patch_spec(kubectl, namespace, "iris", {
        "model": {**MODEL, "uri": "s3://models/iris/v2", "version": "v2"},
        "replicas": {"min": 2, "max": 4}, "protocol": "v1", "gpus": 0})

    def updated() -> bool:
        obj = isvc(kubectl, namespace, "iris")
        assert obj is not None
        pred = obj["spec"]["predictor"]
        assert pred["model"]["storageUri"] == "s3://models/iris/v2", pred
        assert (pred["minReplicas"], pred["maxReplicas"]) == (2, 4)
        assert "nvidia.com/gpu" not in pred["model"]["resources"]["limits"]
        assert "tolerations" not in pred
        assert pred["model"]["env"] == [{"name": "MODEL_VERSION", "value": "v2"}]
        assert pred["model"]["protocolVersion"] == "v1"
        assert obj["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"
        assert obj["metadata"]["labels"]["slipway.dev/model-version"] == "v2"
        return True

    wait_for(updated, TIMEOUT, what="InferenceService to follow the spec change")
    wait_for(lambda: md_status(kubectl, namespace, "iris").get("servingVersion") == "v2",
             TIMEOUT, what="servingVersion v2")
    wait_for(lambda: any(r == "VersionChanged" and "v1 -> v2" in m
                         for _, r, m in events(kubectl, namespace, "iris")),
             TIMEOUT, what="VersionChanged event")

    # stopped toggles the stop annotation (and the phase).
    patch_spec(kubectl, namespace, "iris", {"stopped": True})

    def stop_is(value: str) -> bool:
        obj = isvc(kubectl, namespace, "iris")
        assert obj is not None
        return bool(obj["metadata"]["annotations"]["serving.kserve.io/stop"] == value)

    wait_for(lambda: stop_is("true"), TIMEOUT, what="stop annotation true")
    wait_for(lambda: md_status(kubectl, namespace, "iris").get("phase") == "Stopped",
             TIMEOUT, what="phase Stopped")
    patch_spec(kubectl, namespace, "iris", {"stopped": False})
    wait_for(lambda: stop_is("false"), TIMEOUT, what="stop annotation false")
    # KServe brings the predictor back and the v2 model loads again.
    wait_for(lambda: md_status(kubectl, namespace, "iris").get("phase") == "Ready",
             90, what="phase Ready after resuming")


def test_deleted_inferenceservice_comes_back(kubectl: Kubectl, namespace: str,
                                            operator: OperatorProcess) -> None:
    apply(kubectl, namespace, md("iris", {"model": MODEL}))
    first = wait_for(lambda: isvc(kubectl, namespace, "iris"), TIMEOUT, what="InferenceService")
    kubectl("delete", "inferenceservice", "iris", "-n", namespace)

    def recreated() -> bool:
        obj = isvc(kubectl, namespace, "iris")
        return obj is not None and obj["metadata"]["uid"] != first["metadata"]["uid"]

    wait_for(recreated, TIMEOUT, what="the resync loop to recreate the InferenceService")


def test_status_mirrors_inferenceservice(kubectl: Kubectl, namespace: str,
                                         operator: OperatorProcess, model_store: Path) -> None:
    """Ready, URL and ModelLoaded come from the InferenceService status that KServe's real
    controller writes (model load failures: tests/integration/test_serving_platform.py)."""
    uri = f"s3://models/{namespace}/iris/v1"
    apply(kubectl, namespace, md("iris", {"model": {**MODEL, "uri": uri}}))
    wait_for(lambda: isvc(kubectl, namespace, "iris"), TIMEOUT, what="InferenceService")

    def missing() -> dict[str, Any]:
        s = md_status(kubectl, namespace, "iris")
        assert s.get("phase") == "Failed", s
        assert condition(s, "ModelResolved")["status"] == "True", s
        assert "no model at" in condition(s, "ModelLoaded")["message"], s
        return s

    # The storage step fails while the model is not in the store (the predictor pod says so).
    wait_for(missing, 60, what="phase Failed while the model is not in the store")
    upload_example_model(model_store, uri, "sklearn")

    def ready() -> dict[str, Any]:
        s = md_status(kubectl, namespace, "iris")
        assert s.get("phase") == "Ready", s
        return s

    status = wait_for(ready, 90, what="phase Ready through the KServe controller")
    url = f"http://iris-{namespace}.example.com"
    assert status["url"] == url
    assert status["servingVersion"] == "v1"
    assert condition(status, "Ready")["status"] == "True"
    assert condition(status, "ModelLoaded")["status"] == "True"
    owner = kubectl.get("modeldeployment", "iris", namespace)
    assert owner is not None
    assert status["observedGeneration"] == owner["metadata"]["generation"]
    printed = kubectl("get", "md", "iris", "-n", namespace, "--no-headers").stdout.split()
    assert printed[:5] == ["iris", "Ready", "sklearn", "v1", url], printed
    wait_for(lambda: ("Normal", "Ready", "serving version v1")
             in events(kubectl, namespace, "iris"), TIMEOUT, what="Ready event")


def test_delete_garbage_collects_inferenceservice(kubectl: Kubectl, namespace: str,
                                                  operator: OperatorProcess) -> None:
    apply(kubectl, namespace, md("iris", {"model": MODEL}))
    wait_for(lambda: isvc(kubectl, namespace, "iris"), TIMEOUT, what="InferenceService")
    kubectl("delete", "modeldeployment", "iris", "-n", namespace, "--timeout=60s")
    wait_for(lambda: isvc(kubectl, namespace, "iris") is None, 60,
             what="the garbage collector to delete the InferenceService")


def test_recreated_under_the_same_name_never_adopts_the_old_inferenceservice(
        kubectl: Kubectl, namespace: str, operator: OperatorProcess) -> None:
    """Delete and re-create before the old child is gone: the new ModelDeployment must not
    take over (or overwrite) an InferenceService it does not control. `--cascade=orphan`
    leaves the old one behind without an owner, which is the same situation held open."""
    apply(kubectl, namespace, md("iris", {"model": MODEL}))
    old = wait_for(lambda: isvc(kubectl, namespace, "iris"), TIMEOUT, what="InferenceService")
    kubectl("delete", "modeldeployment", "iris", "-n", namespace, "--cascade=orphan")
    apply(kubectl, namespace, md("iris", {"model": {**MODEL, "version": "v2"}}))

    def conflict() -> dict[str, Any]:
        s = md_status(kubectl, namespace, "iris")
        assert s.get("phase") == "Pending" and "not controlled" in s.get("message", ""), s
        assert condition(s, "Ready")["reason"] == "NameConflict", s
        return s

    wait_for(conflict, TIMEOUT, what="a name conflict reported")
    left = isvc(kubectl, namespace, "iris")
    assert left is not None and left["metadata"]["uid"] == old["metadata"]["uid"]
    assert not left["metadata"].get("ownerReferences"), "the orphan was adopted"
    assert left["metadata"]["annotations"]["slipway.dev/model-version"] == "v1"

    kubectl("delete", "inferenceservice", "iris", "-n", namespace)
    owner = kubectl.get("modeldeployment", "iris", namespace)
    assert owner is not None

    def ours() -> dict[str, Any] | None:
        obj = isvc(kubectl, namespace, "iris")
        refs = (obj or {}).get("metadata", {}).get("ownerReferences") or []
        return obj if [r["uid"] for r in refs] == [owner["metadata"]["uid"]] else None

    new = wait_for(ours, TIMEOUT, what="an InferenceService of the new ModelDeployment")
    assert new["metadata"]["annotations"]["slipway.dev/model-version"] == "v2"


def test_from_trainingjob(kubectl: Kubectl, namespace: str, operator: OperatorProcess) -> None:
    apply(kubectl, namespace, md("churn", {"fromTrainingJob": "train", "format": "sklearn",
                                           "protocol": "v2"}))

    def resolved_reason(reason: str) -> bool:
        s = md_status(kubectl, namespace, "churn")
        assert condition(s, "ModelResolved").get("reason") == reason, s
        assert s.get("phase") == "Pending", s
        return True

    wait_for(lambda: resolved_reason("TrainingJobNotFound"), TIMEOUT,
             what="ModelResolved=False TrainingJobNotFound")
    assert isvc(kubectl, namespace, "churn") is None

    run_trainingjob(kubectl, namespace, "train", {"uri": "s3://models/{name}/{version}",
                                                  "version": "v7"},
                    check_waiting=lambda: wait_for(
                        lambda: resolved_reason("WaitingForTrainingJob"), TIMEOUT,
                        what="ModelResolved=False WaitingForTrainingJob"))

    obj = wait_for(lambda: isvc(kubectl, namespace, "churn"), TIMEOUT,
                   what="InferenceService after the TrainingJob succeeded")
    model = obj["spec"]["predictor"]["model"]
    assert model["storageUri"] == "s3://models/train/v7"
    assert model["modelFormat"] == {"name": "sklearn"}
    assert model["protocolVersion"] == "v2"
    assert model["runtime"] == "slipway-sklearn"
    assert obj["metadata"]["annotations"]["slipway.dev/model-version"] == "v7"

    def resolved() -> dict[str, Any]:
        s = md_status(kubectl, namespace, "churn")
        assert condition(s, "ModelResolved").get("status") == "True", s
        assert s.get("servingVersion") == "v7", s
        return s

    status = wait_for(resolved, TIMEOUT, what="ModelResolved=True, servingVersion v7")
    assert status["model"] == {"format": "sklearn", "uri": "s3://models/train/v7",
                               "version": "v7", "runtime": "slipway-sklearn",
                               "source": "TrainingJob/train",
                               "image": "example/train:1"}


def test_trainingjob_without_format_is_a_user_error(kubectl: Kubectl, namespace: str,
                                                    operator: OperatorProcess) -> None:
    apply(kubectl, namespace, md("noformat", {"fromTrainingJob": "train"}))
    # The TrainingJob declares no output format and the ModelDeployment gives none.
    run_trainingjob(kubectl, namespace, "train", {"uri": "s3://models/{name}/{version}",
                                                  "version": "v1"})

    def failed() -> dict[str, Any]:
        s = md_status(kubectl, namespace, "noformat")
        assert s.get("phase") == "Failed", s
        assert condition(s, "ModelResolved").get("reason") == "FormatUnknown", s
        return s

    wait_for(failed, TIMEOUT, what="phase Failed, FormatUnknown")
    assert isvc(kubectl, namespace, "noformat") is None
    wait_for(lambda: any(t == "Warning" and r == "FormatUnknown"
                         for t, r, _ in events(kubectl, namespace, "noformat")),
             TIMEOUT, what="Warning event FormatUnknown")


def test_pass_through_fields_reach_the_inferenceservice(kubectl: Kubectl, namespace: str,
                                                       operator: OperatorProcess) -> None:
    """Every KServe pass-through field lands on the predictor as written, and KServe's own
    defaulting and validating webhooks accept the result."""
    kubectl("create", "serviceaccount", "model-reader", "-n", namespace)
    tolerations = [{"key": "dedicated", "operator": "Equal", "value": "inference",
                    "effect": "NoSchedule"},
                   {"key": "spot", "operator": "Exists", "effect": "NoExecute",
                    "tolerationSeconds": 60}]
    affinity = {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
        "weight": 50, "preference": {"matchExpressions": [
            {"key": "pool", "operator": "In", "values": ["inference"]}]}}]}}
    env = [{"name": "WORKERS", "value": "2"},
           {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]
    logger = {"url": f"http://payload-logger.{namespace}.svc.cluster.local", "mode": "all"}
    apply(kubectl, namespace, md("iris", {
        "model": MODEL,
        "serviceAccountName": "model-reader",
        "nodeSelector": {"pool": "inference"},
        "tolerations": tolerations,
        "affinity": affinity,
        "env": env,
        "labels": {"team": "search"},
        "annotations": {"example.com/owner": "search"},
        "timeout": 45,
        "containerConcurrency": 3,
        "logger": logger,
        "resources": {"cpu": 2, "memory": 1073741824, "requests": {"cpu": "500m"}},
    }))
    obj = wait_for(lambda: isvc(kubectl, namespace, "iris"), TIMEOUT, what="InferenceService")
    assert obj["spec"]["predictor"]["model"].pop("name") == ""
    assert obj["spec"] == {"predictor": {
        "serviceAccountName": "model-reader",
        "nodeSelector": {"pool": "inference"},
        "tolerations": tolerations,
        "affinity": affinity,
        "labels": {"team": "search", "slipway.dev/model-format": "sklearn",
                   "slipway.dev/model-version": "v1"},
        "annotations": {"example.com/owner": "search"},
        "timeout": 45,
        "containerConcurrency": 3,
        "logger": logger,
        "model": {
            "modelFormat": {"name": "sklearn"},
            "runtime": "slipway-sklearn",
            "storageUri": "s3://models/iris/v1",
            "protocolVersion": "v1",
            "env": [{"name": "MODEL_VERSION", "value": "v1"}, *env],
            "resources": {"requests": {"cpu": "500m", "memory": "1073741824"},
                          "limits": {"cpu": "2", "memory": "1073741824"}},
        },
    }}
    status = md_status(kubectl, namespace, "iris")
    assert condition(status, "SpecSupported") == {}, status
    assert status.get("phase") != "Failed", status


def test_knative_metric_in_the_default_standard_mode(kubectl: Kubectl, namespace: str,
                                                     operator: OperatorProcess) -> None:
    """No spec.deploymentMode, and the operator's default (SLIPWAY_KSERVE_DEPLOYMENT_MODE) is
    Standard: rps cannot apply. Condition + Warning Event + Failed; the InferenceService is
    deployed without the metric. Switching to cpu clears it."""
    apply(kubectl, namespace, md("iris", {"model": MODEL, "replicas": {"min": 1, "max": 2},
                                          "autoscaling": {"metric": "rps", "target": 20}}))

    def reported() -> dict[str, Any]:
        s = md_status(kubectl, namespace, "iris")
        assert s.get("phase") == "Failed", s
        cond = condition(s, "SpecSupported")
        assert (cond.get("status"), cond.get("reason")) == ("False", "MetricNeedsKnative"), s
        return s

    status = wait_for(reported, TIMEOUT, what="SpecSupported=False MetricNeedsKnative")
    assert status["message"].startswith("spec.autoscaling.metric rps needs Knative mode")
    assert "SLIPWAY_KSERVE_DEPLOYMENT_MODE" in status["message"]
    obj = wait_for(lambda: isvc(kubectl, namespace, "iris"), TIMEOUT, what="InferenceService")
    pred = obj["spec"]["predictor"]
    assert "scaleMetric" not in pred and "scaleTarget" not in pred
    assert (pred["minReplicas"], pred["maxReplicas"]) == (1, 2)
    assert obj["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"
    wait_for(lambda: [r for t, r, _ in events(kubectl, namespace, "iris") if t == "Warning"]
             == ["MetricNeedsKnative"], TIMEOUT, what="one Warning Event MetricNeedsKnative")

    patch_spec(kubectl, namespace, "iris", {"autoscaling": {"metric": "cpu", "target": 60}})

    def fixed() -> bool:
        s = md_status(kubectl, namespace, "iris")
        assert condition(s, "SpecSupported").get("status") == "True", s
        assert s.get("phase") != "Failed", s
        current = isvc(kubectl, namespace, "iris")
        assert current is not None
        assert current["spec"]["predictor"].get("scaleMetric") == "cpu", current["spec"]
        return True

    wait_for(fixed, TIMEOUT, what="SpecSupported=True after switching to cpu")


def test_knative_cpu_metric_passes_kserves_webhook(kubectl: Kubectl, namespace: str) -> None:
    """KServe's webhook refuses cpu/memory in Knative mode under the default KPA class; the
    builder adds Knative's HPA class, which it accepts (server-side dry run: the admission
    webhooks run, KServe's controller never sees it)."""
    from slipway.api.modeldeployment import ModelDeploymentSpec
    from slipway.builders.inferenceservice import (
        KNATIVE_CLASS_ANNOTATION,
        build_inference_service,
        resolve_model,
    )

    spec = ModelDeploymentSpec.model_validate({
        "model": MODEL, "deploymentMode": "Knative",
        "autoscaling": {"metric": "cpu", "target": 70}})
    parent = {"apiVersion": "slipway.dev/v1alpha1", "kind": "ModelDeployment",
              "metadata": {"name": "iris", "namespace": namespace, "uid": "0"}}
    manifest = build_inference_service(spec, parent, resolve_model(spec), "Standard")
    manifest["metadata"].pop("ownerReferences")
    kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(manifest))
    manifest["metadata"]["annotations"].pop(KNATIVE_CLASS_ANNOTATION)
    proc = kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(manifest),
                   check=False)
    assert proc.returncode != 0 and "not a supported metric" in proc.stderr, proc.stderr
