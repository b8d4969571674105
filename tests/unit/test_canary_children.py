"""canary.children: what a Canary's status means for the serving objects (pure)."""

from __future__ import annotations

from typing import Any

from slipway.api.canary import CanaryStatus
from slipway.api.modeldeployment import ModelDeploymentSpec, ResolvedModel
from slipway.canary import children

V1 = ResolvedModel(format="sklearn", uri="s3://m/v1", version="v1", runtime="slipway-sklearn",
                   source="spec")
V2 = V1.model_copy(update={"uri": "s3://m/v2", "version": "v2"})
MD: dict[str, Any] = {"apiVersion": "slipway.dev/v1alpha1", "kind": "ModelDeployment",
                      "metadata": {"name": "churn", "namespace": "ml", "uid": "md-uid"}}
CANARY: dict[str, Any] = {"apiVersion": "slipway.dev/v1alpha1", "kind": "Canary",
                          "metadata": {"name": "churn", "namespace": "ml", "uid": "c-uid"}}


def status(phase: str | None, weight: int | None = None, canary: bool = True
           ) -> CanaryStatus:
    return CanaryStatus(phase=phase, stable_version="v1", stable_model=V1,
                        canary_version="v2" if canary else None,
                        canary_model=V2 if canary else None, canary_weight=weight)


def test_no_pin_before_a_stable_model_is_adopted() -> None:
    assert children.pinned(CanaryStatus(), "Standard") is None


def test_standard_mode_pins_the_stable_until_promotion() -> None:
    for phase in ("Idle", "Initializing", "Progressing", "Paused", "RolledBack", "Aborted"):
        assert children.pinned(status(phase, 20), "Standard") == children.Pin(V1), phase
    assert children.pinned(status("Promoting", 50), "Standard") == children.Pin(V2)


def test_knative_mode_carries_the_weight_in_canary_traffic_percent() -> None:
    assert children.pinned(status("Initializing", 0), "Knative") == children.Pin(V2, 0)
    assert children.pinned(status("Progressing", 25), "Knative") == children.Pin(V2, 25)
    assert children.pinned(status("Paused", 25), "Knative") == children.Pin(V2, 25)
    # Promote = drop the field; roll back = the stable model, no split left behind.
    assert children.pinned(status("Promoting", 50), "Knative") == children.Pin(V2)
    assert children.pinned(status("RolledBack", 0), "Knative") == children.Pin(V1)


def test_the_canary_isvc_and_route_exist_only_while_the_canary_runs() -> None:
    assert children.wants_canary_isvc(status("Initializing", 0), "Standard")
    assert not children.wants_route(status("Initializing", 0), "Standard")
    assert children.wants_route(status("Progressing", 20), "Standard")
    assert children.wants_route(status("Promoting", 50), "Standard")
    for phase in ("RolledBack", "Aborted", "Failed", "Succeeded", "Idle"):
        assert not children.wants_canary_isvc(status(phase, 0), "Standard"), phase
        assert not children.wants_route(status(phase, 20), "Standard"), phase
    assert not children.wants_canary_isvc(status("Progressing", 20), "Knative")


def test_canary_isvc_answers_to_the_model_name_and_is_owned_by_the_canary() -> None:
    spec = ModelDeploymentSpec.model_validate({"model": {"format": "sklearn",
                                                         "uri": "s3://m/v1"}})
    isvc = children.build_canary_isvc(spec, MD, CANARY, V2, "Standard")
    assert isvc["metadata"]["name"] == "churn-canary"
    assert isvc["metadata"]["ownerReferences"][0]["uid"] == "c-uid"
    assert isvc["metadata"]["labels"][children.ROLE_LABEL] == "canary"
    model = isvc["spec"]["predictor"]["model"]
    assert model["args"] == ["--model_name=churn"] and model["storageUri"] == "s3://m/v2"
    assert {"name": "MODEL_VERSION", "value": "v2"} in model["env"]


def test_route_splits_the_host_between_the_two_predictors() -> None:
    route = children.build_route(CANARY, "churn", "churn-ml.example.com", 30)
    assert route["metadata"]["name"] == "churn-split"
    assert route["spec"]["hostnames"] == ["churn-ml.example.com"]
    assert route["spec"]["parentRefs"][0]["name"] == "kserve-ingress-gateway"
    refs = route["spec"]["rules"][0]["backendRefs"]
    assert [(r["name"], r["weight"]) for r in refs] == [
        ("churn-predictor", 70), ("churn-canary-predictor", 30)]
    assert children.model_host({"url": "http://churn-ml.example.com"}) == \
        "churn-ml.example.com"
    assert children.model_host({}) is None


def isvc(version: str, ready: bool = True, generation: int = 2, observed: int = 2
         ) -> dict[str, Any]:
    return {"metadata": {"generation": generation,
                         "annotations": {"slipway.dev/model-version": version}},
            "status": {"observedGeneration": observed, "conditions": [
                {"type": "Ready", "status": "True" if ready else "False"}]}}


def pod(version: str, ready: bool = True, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": f"p-{version}"}
    if deleting:
        meta["deletionTimestamp"] = "2025-01-01T00:00:00Z"
    return {"metadata": meta,
            "spec": {"containers": [{"env": [{"name": "MODEL_VERSION", "value": version}]}]},
            "status": {"phase": "Running", "conditions": [
                {"type": "Ready", "status": "True" if ready else "False"}]}}


def test_canary_ready_needs_kserve_to_have_seen_the_current_spec() -> None:
    assert children.canary_ready("Standard", "v2", isvc("v2"), None)
    assert not children.canary_ready("Standard", "v2", isvc("v2", observed=1), None)
    assert not children.canary_ready("Standard", "v2", isvc("v2", ready=False), None)
    assert not children.canary_ready("Standard", "v3", isvc("v2"), None)
    assert not children.canary_ready("Standard", "v2", None, None)


def test_promotion_ends_when_every_live_pod_runs_the_new_version() -> None:
    md = isvc("v2")
    assert children.stable_serves("v2", md, [pod("v2")], "Standard")
    assert not children.stable_serves("v2", md, [pod("v2"), pod("v1")], "Standard")
    assert children.stable_serves("v2", md, [pod("v2"), pod("v1", deleting=True)], "Standard")
    assert not children.stable_serves("v2", md, [pod("v2", ready=False)], "Standard")
    assert not children.stable_serves("v2", isvc("v1"), [pod("v2")], "Standard")


def test_knative_readiness_reads_the_revisions() -> None:
    md = isvc("v2")
    md["status"]["components"] = {"predictor": {"latestCreatedRevision": "r2",
                                                "latestReadyRevision": "r1"}}
    assert not children.canary_ready("Knative", "v2", None, md)
    md["status"]["components"]["predictor"]["latestReadyRevision"] = "r2"
    assert children.canary_ready("Knative", "v2", None, md)
    assert children.stable_serves("v2", md, [], "Knative")


def test_mode_follows_the_modeldeployment_then_the_operator_default() -> None:
    spec = ModelDeploymentSpec.model_validate({"model": {"format": "sklearn",
                                                         "uri": "s3://m/v1"}})
    assert children.mode_of(spec, "Standard") == "Standard"
    assert children.mode_of(spec, "Knative") == "Knative"
    knative = spec.model_copy(update={"deployment_mode": "Knative"})
    assert children.mode_of(knative, "Standard") == "Knative"


def test_the_oldest_live_canary_governs_a_modeldeployment() -> None:
    from slipway.controllers.modeldeployment import governing_canary

    def canary(name: str, target: str, created: str, deleting: bool = False) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": name, "creationTimestamp": created}
        if deleting:
            meta["deletionTimestamp"] = created
        return {"metadata": meta, "spec": {"targetRef": {"name": target}}}

    items = [canary("b", "churn", "2025-01-02T00:00:00Z"),
             canary("a", "churn", "2025-01-01T00:00:00Z", deleting=True),
             canary("c", "iris", "2024-01-01T00:00:00Z"),
             canary("d", "churn", "2025-01-03T00:00:00Z")]
    assert governing_canary(items, "churn")["metadata"]["name"] == "b"  # type: ignore[index]
    assert governing_canary(items, "fraud") is None


def test_knative_split_goes_onto_the_inferenceservice() -> None:
    from slipway.builders.inferenceservice import build_inference_service

    spec = ModelDeploymentSpec.model_validate({"model": {"format": "sklearn",
                                                         "uri": "s3://m/v1"}})
    isvc = build_inference_service(spec, MD, V2, "Knative", canary_traffic_percent=25)
    assert isvc["spec"]["predictor"]["canaryTrafficPercent"] == 25
    assert "canaryTrafficPercent" not in build_inference_service(
        spec, MD, V2, "Knative")["spec"]["predictor"]
