"""reconcile() against an in-memory fake of slipway.kube: no cluster, no Kopf loop."""

from __future__ import annotations

import copy
import logging
from typing import Any

import pytest

from slipway import kube
from slipway.controllers import modeldeployment as ctl

LOG = logging.getLogger("test")
MD_API = "slipway.dev/v1alpha1"
ISVC_API = "serving.kserve.io/v1beta1"


class FakeKube:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.applied: list[dict[str, Any]] = []
        self.status_patches: list[dict[str, Any]] = []
        self.events: list[tuple[str, str, str]] = []
        self.fail_apply: kube.KubeError | None = None

    def put(self, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        self.objects[(obj["kind"], meta["namespace"], meta["name"])] = obj

    async def get(self, api_version: str, kind: str, namespace: str | None,
                  name: str) -> dict[str, Any] | None:
        obj = self.objects.get((kind, namespace or "", name))
        return copy.deepcopy(obj) if obj else None

    async def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        if self.fail_apply:
            raise self.fail_apply
        self.applied.append(manifest)
        key = (manifest["kind"], manifest["metadata"]["namespace"], manifest["metadata"]["name"])
        current = self.objects.get(key, {})
        obj = {**copy.deepcopy(manifest), "status": current.get("status", {})}
        self.objects[key] = obj
        return copy.deepcopy(obj)

    async def list_objects(self, api_version: str, kind: str, namespace: str | None,
                           label_selector: str | None = None) -> list[dict[str, Any]]:
        key, _, value = (label_selector or "").partition("=")
        return [copy.deepcopy(o) for (k, ns, _), o in self.objects.items()
                if k == kind and ns == namespace
                and (not key or o["metadata"].get("labels", {}).get(key) == value)]

    async def patch(self, api_version: str, kind: str, namespace: str | None, name: str,
                    body: dict[str, Any], subresource: str | None = None) -> dict[str, Any]:
        assert subresource == "status"
        self.status_patches.append(body)
        obj = self.objects[(kind, namespace or "", name)]
        status = obj.setdefault("status", {})
        for k, v in body["status"].items():
            if v is None:
                status.pop(k, None)
            else:
                status[k] = v
        return obj


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeKube:
    fk = FakeKube()
    monkeypatch.setattr(ctl.kube, "get", fk.get)
    monkeypatch.setattr(ctl.kube, "apply", fk.apply)
    monkeypatch.setattr(ctl.kube, "patch", fk.patch)
    monkeypatch.setattr(ctl.kube, "list_objects", fk.list_objects)
    monkeypatch.setattr(ctl.events, "emit",
                        lambda obj, type_, reason, message: fk.events.append(
                            (type_, reason, message)))
    return fk


def md(spec: dict[str, Any], generation: int = 1) -> dict[str, Any]:
    return {"apiVersion": MD_API, "kind": "ModelDeployment",
            "metadata": {"name": "iris", "namespace": "ml", "uid": "u1",
                         "generation": generation},
            "spec": spec}


def tj(phase: str, output: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"apiVersion": MD_API, "kind": "TrainingJob",
            "metadata": {"name": "train", "namespace": "ml"},
            "status": {"phase": phase, **({"output": output} if output else {})}}


def md_status(fake: FakeKube) -> dict[str, Any]:
    status: dict[str, Any] = fake.objects[("ModelDeployment", "ml", "iris")]["status"]
    return status


async def test_deploys_and_mirrors(fake: FakeKube) -> None:
    fake.put(md({"model": {"format": "sklearn", "uri": "s3://m/iris", "version": "v1"}}))
    outcome = await ctl.reconcile("ml", "iris", LOG)
    assert outcome is not None and outcome.phase == "Pending" and not outcome.user_error
    assert len(fake.applied) == 1
    status = md_status(fake)
    assert status["servingVersion"] == "v1" and status["inferenceService"] == "iris"
    assert status["model"]["runtime"] == "slipway-sklearn"
    assert status["observedGeneration"] == 1
    assert ("Normal", "VersionChanged", "serving model version v1") in fake.events

    # KServe reports Ready: the next reconcile mirrors it.
    fake.objects[("InferenceService", "ml", "iris")]["status"] = {
        "url": "http://iris.ml", "conditions": [{"type": "Ready", "status": "True"}],
        "modelStatus": {"states": {"activeModelState": "Loaded"}}}
    await ctl.reconcile("ml", "iris", LOG)
    status = md_status(fake)
    assert status["phase"] == "Ready" and status["url"] == "http://iris.ml"
    assert fake.events[-1][1] == "Ready"

    # Nothing changed: no status write, no event.
    patches, events = len(fake.status_patches), len(fake.events)
    await ctl.reconcile("ml", "iris", LOG)
    assert len(fake.status_patches) == patches and len(fake.events) == events


async def test_waits_for_trainingjob_then_deploys(fake: FakeKube) -> None:
    fake.put(md({"fromTrainingJob": "train"}))
    await ctl.reconcile("ml", "iris", LOG)
    assert fake.applied == []
    status = md_status(fake)
    assert status["phase"] == "Pending"
    resolved = next(c for c in status["conditions"] if c["type"] == "ModelResolved")
    assert resolved["reason"] == "TrainingJobNotFound"

    fake.put(tj("Running"))
    await ctl.reconcile("ml", "iris", LOG)
    resolved = next(c for c in md_status(fake)["conditions"] if c["type"] == "ModelResolved")
    assert resolved["reason"] == "WaitingForTrainingJob"
    assert fake.applied == []

    fake.put(tj("Succeeded", {"uri": "s3://m/train/v2", "version": "v2", "format": "sklearn"}))
    await ctl.reconcile("ml", "iris", LOG)
    assert fake.applied[-1]["spec"]["predictor"]["model"]["storageUri"] == "s3://m/train/v2"
    assert md_status(fake)["servingVersion"] == "v2"

    # The TrainingJob re-runs: the deployed model keeps being served (and spec edits apply).
    fake.put(tj("Running"))
    spec = fake.objects[("ModelDeployment", "ml", "iris")]
    spec["spec"]["stopped"] = True
    await ctl.reconcile("ml", "iris", LOG)
    last = fake.applied[-1]
    assert last["spec"]["predictor"]["model"]["storageUri"] == "s3://m/train/v2"
    assert last["metadata"]["annotations"]["serving.kserve.io/stop"] == "true"
    assert md_status(fake)["phase"] == "Stopped"
    assert "still serving version v2" in md_status(fake)["message"]


async def test_user_error_from_trainingjob(fake: FakeKube) -> None:
    fake.put(md({"fromTrainingJob": "train"}))
    fake.put(tj("Succeeded", {"uri": "s3://m/train/v2", "version": "v2"}))
    outcome = await ctl.reconcile("ml", "iris", LOG)
    assert outcome is not None and outcome.user_error and outcome.phase == "Failed"
    assert fake.applied == []
    assert ("Warning", "FormatUnknown") in [(t, r) for t, r, _ in fake.events]


async def test_rejected_apply_is_a_user_error(fake: FakeKube) -> None:
    fake.put(md({"model": {"format": "sklearn", "uri": "s3://m/iris"}}))
    fake.fail_apply = kube.KubeError("PATCH ...: 422 invalid", 422)
    outcome = await ctl.reconcile("ml", "iris", LOG)
    assert outcome is not None and outcome.user_error
    assert md_status(fake)["phase"] == "Failed"


async def test_transient_apply_error_propagates(fake: FakeKube) -> None:
    fake.put(md({"model": {"format": "sklearn", "uri": "s3://m/iris"}}))
    fake.fail_apply = kube.KubeError("PATCH ...: 503", 503)
    with pytest.raises(kube.KubeError):
        await ctl.reconcile("ml", "iris", LOG)


async def test_gone(fake: FakeKube) -> None:
    assert await ctl.reconcile("ml", "iris", LOG) is None


async def test_handler_raises_permanent_error_on_user_error(fake: FakeKube) -> None:
    import kopf

    fake.put(md({"fromTrainingJob": "train"}))
    fake.put(tj("Succeeded", {"uri": "s3://m/t", "version": "v1", "format": "pmml"}))
    with pytest.raises(kopf.PermanentError, match="pmml"):
        await ctl.reconcile_modeldeployment(namespace="ml", name="iris", logger=LOG)
    fake.fail_apply = kube.KubeError("boom", 500)
    fake.put(tj("Succeeded", {"uri": "s3://m/t", "version": "v1", "format": "sklearn"}))
    with pytest.raises(kopf.TemporaryError):
        await ctl.reconcile_modeldeployment(namespace="ml", name="iris", logger=LOG)


@pytest.fixture
def default_mode(monkeypatch: pytest.MonkeyPatch) -> Any:
    from slipway.config import Settings

    def set_mode(mode: str) -> None:
        monkeypatch.setattr(ctl, "active",
                            lambda: Settings(kserve_default_deployment_mode=mode))
    set_mode("Standard")
    return set_mode


def condition(type_: str, status: dict[str, Any]) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), None)


async def test_knative_metric_in_default_standard_mode(fake: FakeKube, default_mode: Any) -> None:
    """No deploymentMode in the spec and the operator's default is Standard: concurrency
    cannot apply. Condition, Warning Event, phase Failed; the InferenceService is deployed
    without the metric; fixing the spec clears it."""
    model = {"format": "sklearn", "uri": "s3://m/iris", "version": "v1"}
    fake.put(md({"model": model, "autoscaling": {"metric": "concurrency", "target": 4}}))
    outcome = await ctl.reconcile("ml", "iris", LOG)
    assert outcome is not None and outcome.user_error and outcome.phase == "Failed"
    pred = fake.applied[-1]["spec"]["predictor"]
    assert "scaleMetric" not in pred and "scaleTarget" not in pred
    status = md_status(fake)
    assert status["phase"] == "Failed"
    assert status["message"].startswith("spec.autoscaling.metric concurrency needs Knative")
    cond = condition("SpecSupported", status)
    assert cond is not None and (cond["status"], cond["reason"]) == ("False",
                                                                      "MetricNeedsKnative")
    warnings = [(r, m) for t, r, m in fake.events if t == "Warning"]
    assert [r for r, _ in warnings] == ["MetricNeedsKnative"]
    assert "SLIPWAY_KSERVE_DEPLOYMENT_MODE" in warnings[0][1]

    # Seen again: no new Event.
    await ctl.reconcile("ml", "iris", LOG)
    assert [r for t, r, _ in fake.events if t == "Warning"] == ["MetricNeedsKnative"]

    # The handler stops retrying (PermanentError); the resync keeps watching.
    import kopf
    with pytest.raises(kopf.PermanentError, match="needs Knative"):
        await ctl.reconcile_modeldeployment(namespace="ml", name="iris", logger=LOG)

    # Fixed: cpu applies in Standard mode.
    fake.objects[("ModelDeployment", "ml", "iris")]["spec"]["autoscaling"] = {
        "metric": "cpu", "target": 70}
    outcome = await ctl.reconcile("ml", "iris", LOG)
    assert outcome is not None and not outcome.user_error and outcome.phase == "Pending"
    assert fake.applied[-1]["spec"]["predictor"]["scaleMetric"] == "cpu"
    cond = condition("SpecSupported", md_status(fake))
    assert cond is not None and (cond["status"], cond["reason"]) == ("True", "Supported")


async def test_knative_metric_with_knative_default(fake: FakeKube, default_mode: Any) -> None:
    default_mode("Knative")
    fake.put(md({"model": {"format": "sklearn", "uri": "s3://m/iris", "version": "v1"},
                 "autoscaling": {"metric": "rps", "target": 50}}))
    outcome = await ctl.reconcile("ml", "iris", LOG)
    assert outcome is not None and not outcome.user_error
    isvc = fake.applied[-1]
    assert isvc["spec"]["predictor"]["scaleMetric"] == "rps"
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Knative"
    assert condition("SpecSupported", md_status(fake)) is None


async def test_pass_through_fields_reach_the_inferenceservice(fake: FakeKube) -> None:
    fake.put(md({"model": {"format": "sklearn", "uri": "s3://m/iris", "version": "v1"},
                 "serviceAccountName": "reader", "timeout": 30, "containerConcurrency": 2,
                 "logger": {"url": "http://log.ml", "mode": "all"},
                 "env": [{"name": "A", "value": "1"}], "labels": {"team": "x"}}))
    await ctl.reconcile("ml", "iris", LOG)
    pred = fake.applied[-1]["spec"]["predictor"]
    assert pred["serviceAccountName"] == "reader"
    assert (pred["timeout"], pred["containerConcurrency"]) == (30, 2)
    assert pred["logger"] == {"url": "http://log.ml", "mode": "all"}
    assert pred["model"]["env"][1:] == [{"name": "A", "value": "1"}]
    assert pred["labels"]["team"] == "x"
