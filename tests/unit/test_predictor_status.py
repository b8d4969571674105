"""Reading why a model server does not serve from its predictor pods, and what the
ModelDeployment's status makes of it."""

from __future__ import annotations

from typing import Any

from slipway.status.modeldeployment import mirror_status
from slipway.status.predictor import predictor_problem


def pod(created: str = "2026-01-01T00:00:00Z", phase: str = "Pending", ready: bool = False,
        init: list[dict[str, Any]] | None = None, containers: list[dict[str, Any]] | None = None,
        conditions: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    conds = list(conditions or [])
    conds.append({"type": "Ready", "status": "True" if ready else "False"})
    return {"metadata": {"creationTimestamp": created},
            "status": {"phase": phase, "conditions": conds,
                       "initContainerStatuses": init or [],
                       "containerStatuses": containers or []}}


CRASH = {"name": "kserve-container", "restartCount": 3,
         "state": {"waiting": {"reason": "CrashLoopBackOff"}},
         "lastState": {"terminated": {"exitCode": 1, "reason": "Error",
                                      "message": "error: cannot load model file x"}}}
INIT_FAIL = {"name": "storage-initializer", "restartCount": 2,
             "state": {"waiting": {"reason": "CrashLoopBackOff"}},
             "lastState": {"terminated": {"exitCode": 1, "message": "no model at s3://m/x"}}}
UNSCHEDULABLE = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                 "message": "0/6 nodes are available: 6 Insufficient nvidia.com/gpu."}


def test_no_pods_or_a_serving_pod_is_no_problem() -> None:
    assert predictor_problem([]) is None
    assert predictor_problem([pod(phase="Running", ready=True), pod(containers=[CRASH])]) is None
    assert predictor_problem([pod(phase="Running")]) is None  # starting, nothing wrong yet


def test_crash_loop_and_failed_storage_initializer_are_model_failures() -> None:
    p = predictor_problem([pod(phase="Running", containers=[CRASH])])
    assert p is not None and p.model_failure and p.reason == "ModelLoadFailed"
    assert p.message == ("container kserve-container exited with code 1 (3 restarts): "
                         "error: cannot load model file x")
    p = predictor_problem([pod(init=[INIT_FAIL])])
    assert p is not None and p.model_failure
    assert p.message.startswith("the storage initializer exited with code 1 (2 restarts)")
    assert "no model at s3://m/x" in p.message


def test_unschedulable_and_image_problems_are_not_model_failures() -> None:
    p = predictor_problem([pod(conditions=[UNSCHEDULABLE])])
    assert p is not None and not p.model_failure and p.reason == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in p.message
    pull = {"name": "kserve-container",
            "state": {"waiting": {"reason": "ImagePullBackOff", "message": "not found"}}}
    p = predictor_problem([pod(containers=[pull])])
    assert p is not None and (p.reason, p.message) == ("ImagePullBackOff",
                                                       "kserve-container: not found")


def test_model_failure_wins_and_newest_pod_first() -> None:
    old = pod("2026-01-01T00:00:00Z", conditions=[UNSCHEDULABLE])
    new = pod("2026-01-02T00:00:00Z", phase="Running", containers=[CRASH])
    assert predictor_problem([old, new]).reason == "ModelLoadFailed"  # type: ignore[union-attr]
    a = pod("2026-01-01T00:00:00Z", conditions=[UNSCHEDULABLE])
    b = pod("2026-01-02T00:00:00Z", containers=[{
        "name": "c", "state": {"waiting": {"reason": "ErrImagePull", "message": "m"}}}])
    assert predictor_problem([a, b]).reason == "ErrImagePull"  # type: ignore[union-attr]


ISVC_NOT_READY = {"metadata": {"annotations": {"slipway.dev/model-version": "v1"}},
                  "status": {"conditions": [{"type": "Ready", "status": "False",
                                             "reason": "MinimumReplicasUnavailable"}]}}


def test_status_fails_on_a_pod_model_failure_kserve_did_not_report() -> None:
    problem = predictor_problem([pod(phase="Running", containers=[CRASH])])
    seen = mirror_status(ISVC_NOT_READY, [], stopped=False, generation=1, pod_problem=problem)
    loaded = next(c for c in seen.conditions if c["type"] == "ModelLoaded")
    assert (seen.phase, loaded["status"], loaded["reason"]) == ("Failed", "False",
                                                                 "ModelLoadFailed")
    assert "cannot load model file x" in loaded["message"] and "cannot load" in seen.message


def test_status_says_why_it_is_pending() -> None:
    problem = predictor_problem([pod(conditions=[UNSCHEDULABLE])])
    seen = mirror_status(ISVC_NOT_READY, [], stopped=False, generation=1, pod_problem=problem)
    ready = next(c for c in seen.conditions if c["type"] == "Ready")
    assert (seen.phase, ready["reason"]) == ("Pending", "Unschedulable")
    assert "Insufficient nvidia.com/gpu" in seen.message


def test_kserve_ready_wins_over_a_pod_problem() -> None:
    isvc = {"metadata": {}, "status": {"conditions": [{"type": "Ready", "status": "True"}],
                                       "modelStatus": {"states": {"activeModelState": "Loaded"}}}}
    problem = predictor_problem([pod(phase="Running", containers=[CRASH])])
    seen = mirror_status(isvc, [], stopped=False, generation=1, pod_problem=problem)
    assert seen.phase == "Ready"


def test_a_current_pod_failure_replaces_a_stale_kserve_failure() -> None:
    isvc = {"metadata": {}, "status": {
        "conditions": [{"type": "Ready", "status": "False"}],
        "modelStatus": {"states": {"activeModelState": "FailedToLoad"},
                        "lastFailureInfo": {"reason": "ModelLoadFailed",
                                            "message": "no model at s3://m/x"}}}}
    seen = mirror_status(isvc, [], stopped=False, generation=1)
    assert "no model at" in seen.message
    problem = predictor_problem([pod(phase="Running", containers=[CRASH])])
    seen = mirror_status(isvc, [], stopped=False, generation=1, pod_problem=problem)
    assert "cannot load model file x" in seen.message and "no model at" not in seen.message


def test_kserve_keeps_lastfailureinfo_after_a_successful_load() -> None:
    isvc = {"metadata": {}, "status": {
        "conditions": [{"type": "Ready", "status": "True"}],
        "modelStatus": {"transitionStatus": "UpToDate",
                        "states": {"activeModelState": "Loaded", "targetModelState": "Loaded"},
                        "lastFailureInfo": {"reason": "ModelLoadFailed", "message": "old"}}}}
    seen = mirror_status(isvc, [], stopped=False, generation=1)
    assert seen.phase == "Ready"
    assert next(c for c in seen.conditions if c["type"] == "ModelLoaded")["status"] == "True"
