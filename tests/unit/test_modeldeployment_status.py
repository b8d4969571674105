"""Mirroring an InferenceService's status into the ModelDeployment, and the Events for it."""

from __future__ import annotations

from typing import Any

from slipway.api.common import get_condition, set_condition
from slipway.builders.inferenceservice import (
    MODEL_LOADED,
    MODEL_RESOLVED,
    READY,
    SPEC_SUPPORTED,
    VERSION_KEY,
)
from slipway.status.modeldeployment import mirror_status, transition_events

NOW = "2025-01-01T00:00:00Z"
LATER = "2025-01-01T00:05:00Z"


def isvc(status: dict[str, Any] | None = None, version: str = "v1") -> dict[str, Any]:
    return {"metadata": {"name": "iris", "annotations": {VERSION_KEY: version}},
            "status": status or {}}


def ready_status(url: str = "http://iris.ml.example.com") -> dict[str, Any]:
    return {"url": url,
            "conditions": [{"type": "Ready", "status": "True"},
                           {"type": "PredictorReady", "status": "True"}],
            "modelStatus": {"states": {"activeModelState": "Loaded",
                                       "targetModelState": "Loaded"},
                            "transitionStatus": "UpToDate"}}


def resolved() -> list[dict[str, Any]]:
    return set_condition([], MODEL_RESOLVED, True, "Resolved", "ok", 1, NOW)


def test_ready() -> None:
    seen = mirror_status(isvc(ready_status()), resolved(), stopped=False, generation=1, now=NOW)
    assert seen.phase == "Ready"
    assert seen.url == "http://iris.ml.example.com"
    assert seen.serving_version == "v1"
    assert "v1" in seen.message
    ready = get_condition(seen.conditions, READY)
    assert ready is not None and ready["status"] == "True" and ready["observedGeneration"] == 1
    loaded = get_condition(seen.conditions, MODEL_LOADED)
    assert loaded is not None and loaded["status"] == "True" and loaded["reason"] == "Loaded"


def test_no_status_yet_is_pending() -> None:
    seen = mirror_status(isvc(), resolved(), stopped=False, now=NOW)
    assert seen.phase == "Pending"
    assert seen.url is None
    ready = get_condition(seen.conditions, READY)
    assert ready is not None and ready["status"] == "Unknown"
    loaded = get_condition(seen.conditions, MODEL_LOADED)
    assert loaded is not None and loaded["status"] == "Unknown"


def test_not_ready_carries_kserve_reason_and_message() -> None:
    status = {"conditions": [{"type": "Ready", "status": "False", "reason": "PredictorNotReady",
                              "message": "0/1 replicas available"}],
              "modelStatus": {"states": {"activeModelState": "Loading"}}}
    seen = mirror_status(isvc(status), resolved(), stopped=False, now=NOW)
    assert seen.phase == "Pending"
    assert seen.message == "0/1 replicas available"
    ready = get_condition(seen.conditions, READY)
    assert ready is not None and ready["reason"] == "PredictorNotReady"
    loaded = get_condition(seen.conditions, MODEL_LOADED)
    assert loaded is not None and loaded["reason"] == "Loading"


def test_model_load_failed() -> None:
    status = {"conditions": [{"type": "Ready", "status": "False", "reason": "ModelLoadFailed"}],
              "modelStatus": {"states": {"activeModelState": "FailedToLoad"},
                              "lastFailureInfo": {"reason": "ModelLoadFailed",
                                                  "message": "pickle: invalid load key"}}}
    seen = mirror_status(isvc(status), resolved(), stopped=False, now=NOW)
    assert seen.phase == "Failed"
    assert "ModelLoadFailed" in seen.message and "pickle" in seen.message
    loaded = get_condition(seen.conditions, MODEL_LOADED)
    assert loaded is not None
    assert (loaded["status"], loaded["reason"]) == ("False", "ModelLoadFailed")
    assert loaded["message"] == "pickle: invalid load key"


def test_stopped() -> None:
    status = {"conditions": [{"type": "Ready", "status": "False", "reason": "Stopped"}]}
    seen = mirror_status(isvc(status), resolved(), stopped=True, now=NOW)
    assert seen.phase == "Stopped"


def test_missing_isvc_waiting_for_trainingjob() -> None:
    conds = set_condition([], MODEL_RESOLVED, False, "WaitingForTrainingJob",
                          "waiting for TrainingJob train", 1, NOW)
    seen = mirror_status(None, conds, stopped=False, now=NOW)
    assert seen.phase == "Pending"
    assert seen.message == "waiting for TrainingJob train"
    assert seen.serving_version is None
    ready = get_condition(seen.conditions, READY)
    assert ready is not None and ready["status"] == "False"


def test_missing_isvc_user_error_is_failed() -> None:
    conds = set_condition([], MODEL_RESOLVED, False, "FormatUnknown", "set spec.format", 1, NOW)
    assert mirror_status(None, conds, stopped=False, now=NOW).phase == "Failed"


def test_failed_trainingjob_with_nothing_deployed_is_failed() -> None:
    conds = set_condition([], MODEL_RESOLVED, False, "TrainingJobFailed",
                          "TrainingJob train failed: BackoffLimitExceeded", 1, NOW)
    seen = mirror_status(None, conds, stopped=False, now=NOW)
    assert seen.phase == "Failed"
    assert seen.message == "TrainingJob train failed: BackoffLimitExceeded"
    # With a model already deployed from an earlier run, it keeps serving.
    seen = mirror_status(isvc(ready_status()), conds, stopped=False, now=NOW)
    assert seen.phase == "Ready"


def test_apply_rejected_is_failed() -> None:
    seen = mirror_status(None, resolved(), stopped=False, apply_error="rejected: bad", now=NOW)
    assert seen.phase == "Failed" and seen.message == "rejected: bad"
    ready = get_condition(seen.conditions, READY)
    assert ready is not None and ready["reason"] == "InferenceServiceRejected"


def test_an_inferenceservice_we_do_not_control_is_a_pending_conflict() -> None:
    seen = mirror_status(None, resolved(), stopped=False, now=NOW,
                         conflict="InferenceService m exists and is not controlled by this")
    assert seen.phase == "Pending" and "not controlled" in seen.message
    ready = get_condition(seen.conditions, READY)
    assert ready is not None and ready["reason"] == "NameConflict"


def test_still_serving_while_resolution_waits() -> None:
    conds = set_condition([], MODEL_RESOLVED, False, "WaitingForTrainingJob",
                          "waiting; still serving version v1", 2, NOW)
    seen = mirror_status(isvc(ready_status()), conds, stopped=False, now=NOW)
    assert seen.phase == "Ready" and seen.serving_version == "v1"
    assert "still serving" in seen.message


def test_transition_time_holds_while_status_holds() -> None:
    first = mirror_status(isvc(ready_status()), resolved(), stopped=False, now=NOW)
    again = mirror_status(isvc(ready_status()), first.conditions, stopped=False, now=LATER)
    assert again.conditions == first.conditions


def test_events_on_version_change_and_failure() -> None:
    ready_v1 = mirror_status(isvc(ready_status()), resolved(), stopped=False, now=NOW)
    old = {"phase": ready_v1.phase, "servingVersion": "v1", "conditions": ready_v1.conditions}
    assert transition_events(old, old) == []

    new = dict(old, servingVersion="v2")
    assert transition_events(old, new) == [
        ("Normal", "VersionChanged", "serving model version v1 -> v2")]

    fail_status = {"modelStatus": {"states": {"activeModelState": "FailedToLoad"},
                                   "lastFailureInfo": {"reason": "ModelLoadFailed",
                                                       "message": "boom"}}}
    failed = mirror_status(isvc(fail_status, "v2"), ready_v1.conditions, stopped=False, now=LATER)
    new = {"phase": failed.phase, "message": failed.message, "servingVersion": "v2",
           "conditions": failed.conditions}
    evs = transition_events(old, new)
    assert ("Normal", "VersionChanged", "serving model version v1 -> v2") in evs
    # the phase event repeats the condition's message, so only the condition's is kept
    assert ("Warning", "ModelLoadFailed", "boom") in evs
    assert [e for e in evs if e[1] == "Failed"] == []
    # the same failure seen again emits nothing
    assert transition_events(new, new) == []


def test_first_version_event() -> None:
    evs = transition_events({}, {"servingVersion": "v1", "phase": "Pending"})
    assert evs == [("Normal", "VersionChanged", "serving model version v1")]


def test_warning_when_trainingjob_fails() -> None:
    conds = set_condition([], MODEL_RESOLVED, False, "TrainingJobFailed", "train failed", 1, NOW)
    evs = transition_events({"phase": "Pending"}, {"phase": "Pending", "conditions": conds})
    assert evs == [("Warning", "TrainingJobFailed", "train failed")]


def test_waiting_is_a_normal_event() -> None:
    conds = set_condition([], MODEL_RESOLVED, False, "WaitingForTrainingJob", "waiting", 1, NOW)
    evs = transition_events({}, {"phase": "Pending", "conditions": conds})
    assert evs == [("Normal", "WaitingForTrainingJob", "waiting")]


def test_failed_phase_event_without_a_matching_condition() -> None:
    evs = transition_events({"phase": "Pending"},
                            {"phase": "Failed", "message": "the InferenceService was rejected"})
    assert evs == [("Warning", "Failed", "the InferenceService was rejected")]


def test_unsupported_field_is_failed_even_when_serving() -> None:
    message = "spec.autoscaling.metric rps needs Knative mode"
    conds = set_condition(resolved(), SPEC_SUPPORTED, False, "MetricNeedsKnative", message,
                          1, NOW)
    seen = mirror_status(isvc(ready_status()), conds, stopped=False, now=NOW,
                         unsupported=message)
    assert seen.phase == "Failed" and seen.message == message
    # Ready still mirrors KServe's: the model does serve.
    ready = get_condition(seen.conditions, READY)
    assert ready is not None and ready["status"] == "True"
    # A rejected InferenceService says so first.
    seen = mirror_status(None, conds, stopped=False, now=NOW, unsupported=message,
                         apply_error="rejected")
    assert seen.message == "rejected"


def test_one_warning_event_for_an_unsupported_field() -> None:
    message = "spec.autoscaling.metric rps needs Knative mode"
    conds = set_condition(resolved(), SPEC_SUPPORTED, False, "MetricNeedsKnative", message,
                          1, NOW)
    evs = transition_events({"phase": "Pending", "conditions": resolved()},
                            {"phase": "Failed", "message": message, "conditions": conds})
    assert evs == [("Warning", "MetricNeedsKnative", message)]


def test_ready_in_standard_mode_is_loaded_before_kserve_says_so() -> None:
    """KServe writes Ready=True one reconcile before it sets activeModelState Loaded (its own
    rule in Standard mode: Ready means Loaded). The ModelDeployment applies that rule at once;
    in Knative mode, or with no mode known, it waits for KServe's word."""
    status = ready_status()
    status["modelStatus"] = {"states": {"targetModelState": "Pending"},
                             "transitionStatus": "InProgress"}
    for mode, expected in (("Standard", "True"), ("RawDeployment", "True"),
                           ("Serverless", "Unknown"), (None, "Unknown")):
        obj = isvc(status)
        if mode:
            obj["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] = mode
        seen = mirror_status(obj, resolved(), stopped=False, now=NOW)
        assert seen.phase == "Ready"
        loaded = get_condition(seen.conditions, MODEL_LOADED)
        assert loaded is not None and loaded["status"] == expected, (mode, loaded)
    # Not Ready in Standard mode: still not loaded.
    status["conditions"] = [{"type": "Ready", "status": "False", "reason": "PredictorNotReady"}]
    obj = isvc(status)
    obj["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] = "Standard"
    loaded = get_condition(mirror_status(obj, resolved(), stopped=False, now=NOW).conditions,
                           MODEL_LOADED)
    assert loaded is not None and loaded["status"] == "Unknown"
