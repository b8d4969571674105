"""Deriving TrainingJob status from its Job (pure)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from slipway.api.trainingjob import RunPolicy, TrainingJobSpec
from slipway.status.trainingjob import (
    Verdict,
    build_failed,
    is_final,
    observe,
    restarting,
    ttl_expired,
)

NOW = "2026-01-01T00:10:00Z"


def tj(status: dict[str, Any] | None = None, generation: int = 1) -> dict[str, Any]:
    return {"metadata": {"name": "t", "namespace": "n", "generation": generation},
            "status": status or {}}


def job(active: int = 0, failed: int = 0, suspend: bool = False,
        conditions: list[dict[str, Any]] | None = None, **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": "t-abcde"}, "spec": {"suspend": suspend},
            "status": {"active": active, "failed": failed, "conditions": conditions or [],
                       **status}}


def pod(index: int = 0, phase: str = "Pending", *, unschedulable: str | None = None,
        waiting: tuple[str, str] | None = None) -> dict[str, Any]:
    """A worker pod as the kubelet and scheduler report it."""
    status: dict[str, Any] = {"phase": phase, "conditions": []}
    if unschedulable:
        status["conditions"].append({"type": "PodScheduled", "status": "False",
                                     "reason": "Unschedulable", "message": unschedulable})
    if waiting:
        status["containerStatuses"] = [{"name": "trainer", "ready": False, "state": {
            "waiting": {"reason": waiting[0], "message": waiting[1]}}}]
    return {"metadata": {"name": f"t-abcde-{index}-xyz12", "annotations": {
        "batch.kubernetes.io/job-completion-index": str(index)}}, "status": status}


SPEC = TrainingJobSpec.model_validate({"image": "i", "workers": 2, "gpusPerWorker": 8,
                                       "distributed": {}})


def cond(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == type_)


def test_no_job_is_pending() -> None:
    obs = observe(SPEC, tj(), None, None, NOW)
    assert obs.status["phase"] == "Pending" and obs.status["gpus"] == 16
    assert obs.status["serviceName"] == "t"
    assert obs.events == []  # a new job's first Pending: the Created event says it
    # Back to Pending from Running (a worker lost): that is news.
    obs = observe(SPEC, tj({"phase": "Running"}), job(active=2), None, NOW)
    assert [e.reason for e in obs.events] == ["Pending"]


def test_running_then_event_only_on_transition() -> None:
    obs = observe(SPEC, tj({"phase": "Pending"}),
                  job(active=2, ready=2, startTime="2026-01-01T00:00:00Z"), None, NOW)
    assert obs.status["phase"] == "Running"
    assert cond(obs.status, "Running")["status"] == "True"
    assert obs.status["workers"] == {"active": 2, "succeeded": 0, "failed": 0}
    assert [e.reason for e in obs.events] == ["Running"]
    # A later observation with a different "now": lastTransitionTime holds while the
    # condition's status stays the same (a condition rewritten on every pass would move).
    later = "2026-01-01T00:20:00Z"
    again = observe(SPEC, tj(obs.status), job(active=2, ready=2), None, later)
    assert again.events == []
    assert cond(again.status, "Running")["lastTransitionTime"] == NOW
    assert cond(again.status, "Created")["lastTransitionTime"] == NOW
    # ...and moves to the new "now" when the status flips.
    latest = "2026-01-01T00:30:00Z"
    done = observe(SPEC, tj(again.status), job(succeeded=2, conditions=[
        {"type": "Complete", "status": "True"}]), None, latest)
    assert cond(done.status, "Running")["status"] == "False"
    assert cond(done.status, "Running")["lastTransitionTime"] == latest
    assert cond(done.status, "Succeeded")["lastTransitionTime"] == latest
    assert cond(done.status, "Created")["lastTransitionTime"] == NOW


def test_active_pods_that_are_not_running_are_pending() -> None:
    # Job.status.active counts Pending pods too: 2 active, 1 ready is not Running.
    obs = observe(SPEC, tj({"phase": "Pending"}), job(active=2, ready=1), None, NOW,
                  pods=[pod(0, "Running"), pod(1)])
    assert obs.status["phase"] == "Pending"
    assert cond(obs.status, "Running")["reason"] == "WaitingForPods"
    assert obs.status["message"] == "1/2 worker(s) running"
    assert obs.events == []
    # Running pods count even before the Job has counted them ready; finished ones too.
    obs = observe(SPEC, tj(), job(active=1, succeeded=1), None, NOW, pods=[pod(0, "Running")])
    assert obs.status["phase"] == "Running"


def test_unschedulable_worker_reports_the_scheduler_message_once() -> None:
    message = "0/6 nodes are available: 4 Insufficient nvidia.com/gpu."
    pods = [pod(0, "Running"), pod(1, unschedulable=message)]
    obs = observe(SPEC, tj({"phase": "Pending"}), job(active=2, ready=1), None, NOW, pods=pods)
    assert obs.status["phase"] == "Pending"
    assert cond(obs.status, "Running")["reason"] == "Unschedulable"
    assert message in obs.status["message"] and "worker 1" in obs.status["message"]
    assert [(e.type, e.reason) for e in obs.events] == [("Warning", "Unschedulable")]
    again = observe(SPEC, tj(obs.status), job(active=2, ready=1), None, NOW, pods=pods)
    assert again.events == []


def test_scheduler_counts_alone_do_not_rewrite_the_message() -> None:
    """As the cluster fills, the scheduler's counts change on every attempt; the status keeps
    the message it has (no write), and takes a new one when the reason's text changes."""
    first = "0/20 nodes are available: 16 Insufficient nvidia.com/gpu, 4 untolerated taint."
    pods = [pod(0, "Running"), pod(1, unschedulable=first)]
    obs = observe(SPEC, tj({"phase": "Pending"}), job(active=2, ready=1), None, NOW, pods=pods)
    counts = "0/24 nodes are available: 20 Insufficient nvidia.com/gpu, 4 untolerated taint."
    pods = [pod(0, "Running"), pod(1, unschedulable=counts)]
    again = observe(SPEC, tj(obs.status), job(active=2, ready=1), None, NOW, pods=pods)
    assert again.status == obs.status and first in again.status["message"]
    other = "0/24 nodes are available: 24 Insufficient cpu."
    pods = [pod(0, "Running"), pod(1, unschedulable=other)]
    changed = observe(SPEC, tj(obs.status), job(active=2, ready=1), None, NOW, pods=pods)
    assert other in changed.status["message"]
    assert other in cond(changed.status, "Running")["message"]
    assert changed.events == []  # the same reason: still one Warning, when it appeared


def test_image_pull_and_config_errors_come_from_the_container_state() -> None:
    for reason, message in [
            ("ImagePullBackOff", 'Back-off pulling image "trainer:nope"'),
            ("ErrImagePull", "rpc error: manifest unknown"),
            ("CrashLoopBackOff", "back-off 5m0s restarting failed container"),
            ("CreateContainerConfigError", 'secret "hf-token" not found')]:
        pods = [pod(0, waiting=(reason, message)), pod(1, waiting=(reason, message))]
        obs = observe(SPEC, tj(), job(active=2), None, NOW, pods=pods)
        assert obs.status["phase"] == "Pending", reason
        assert cond(obs.status, "Running")["reason"] == reason
        assert message in obs.status["message"] and "worker 0" in obs.status["message"]
        assert [(e.type, e.reason) for e in obs.events] == [("Warning", reason)]
    # Normal progress (ContainerCreating) is not a problem to warn about.
    obs = observe(SPEC, tj(), job(active=2), None, NOW,
                  pods=[pod(0, waiting=("ContainerCreating", "")), pod(1)])
    assert cond(obs.status, "Running")["reason"] == "WaitingForPods"
    assert obs.events == []


def test_suspended_user_vs_kueue() -> None:
    user = TrainingJobSpec.model_validate({"image": "i", "runPolicy": {"suspend": True}})
    obs = observe(user, tj(), job(suspend=True), None, NOW)
    assert obs.status["phase"] == "Queued" and cond(obs.status, "Suspended")["reason"] == \
        "Suspended"
    queued = TrainingJobSpec.model_validate({"image": "i", "queue": "q"})
    obs = observe(queued, tj(), job(suspend=True), None, NOW)
    assert cond(obs.status, "Suspended")["reason"] == "WaitingForAdmission"


def test_succeeded_reports_output_and_duration() -> None:
    done = job(succeeded=2, startTime="2026-01-01T00:00:00Z",
               completionTime="2026-01-01T00:05:07Z",
               conditions=[{"type": "Complete", "status": "True"}])
    out = {"uri": "s3://m/t/v1", "version": "v1"}
    obs = observe(SPEC, tj({"phase": "Running"}), done, out, NOW)
    assert obs.status["phase"] == "Succeeded" and obs.status["output"] == out
    assert obs.status["duration"] == "5m7s"
    assert cond(obs.status, "Succeeded")["status"] == "True"
    assert [(e.type, e.reason) for e in obs.events] == [("Normal", "Succeeded")]


def test_succeeded_when_the_job_meets_its_success_criteria() -> None:
    # Kubernetes >= 1.31: SuccessCriteriaMet, and Complete only after every pod's finalizer
    # is removed. The job has succeeded at the first; the second changes nothing.
    met = job(succeeded=2, startTime="2026-01-01T00:00:00Z",
              conditions=[{"type": "SuccessCriteriaMet", "status": "True",
                           "lastTransitionTime": "2026-01-01T00:05:07Z"}])
    obs = observe(SPEC, tj({"phase": "Running"}), met, None, NOW)
    assert obs.status["phase"] == "Succeeded" and obs.status["duration"] == "5m7s"
    assert obs.status["completionTime"] == "2026-01-01T00:05:07Z"
    # Not before: the same Job with the condition False is still running.
    met["status"]["conditions"][0]["status"] = "False"
    met["status"]["ready"] = 2
    assert observe(SPEC, tj({"phase": "Running"}), met, None, NOW).status["phase"] == \
        "Running"


def test_failed_takes_reason_from_job_and_warns() -> None:
    # The Job's own failure time, not the time of this observation, is the completion time.
    failed_at = "2026-01-01T00:07:00Z"
    failed = job(failed=3, conditions=[{"type": "Failed", "status": "True",
                                        "reason": "DeadlineExceeded",
                                        "message": "Job was active longer than specified",
                                        "lastTransitionTime": failed_at}])
    obs = observe(SPEC, tj({"phase": "Running"}), failed, None, NOW)
    assert obs.status["phase"] == "Failed"
    assert cond(obs.status, "Failed")["reason"] == "DeadlineExceeded"
    assert [(e.type, e.reason) for e in obs.events] == [("Warning", "DeadlineExceeded")]
    assert obs.status["completionTime"] == failed_at


def test_failed_with_a_verdict_reports_it() -> None:
    failed = job(conditions=[{"type": "Failed", "status": "True", "reason": "PodFailurePolicy",
                              "lastTransitionTime": NOW}])
    verdict = Verdict(False, "ExitCode", "worker 1 exited with exit code 1")
    obs = observe(SPEC, tj({"phase": "Running", "attempt": 1}), failed, None, NOW,
                  attempt=1, verdict=verdict)
    assert (obs.status["phase"], obs.status["message"]) == ("Failed", verdict.message)
    assert cond(obs.status, "Failed")["reason"] == "ExitCode"
    assert (obs.status["attempt"], obs.status["restarts"]) == (1, 1)


def test_restarting_starts_the_next_attempt_with_one_warning() -> None:
    verdict = Verdict(True, "Restarting", "worker 1 exited with exit code 137; restarting")
    obs = restarting(SPEC, tj({"phase": "Running", "attempt": 0}), verdict, 1, NOW)
    assert (obs.status["attempt"], obs.status["restarts"]) == (1, 1)
    assert obs.status["phase"] == "Pending"
    assert cond(obs.status, "Running")["reason"] == "Restarting"
    assert [(e.type, e.reason, e.message) for e in obs.events] == [
        ("Warning", "Restarting", verdict.message)]


def test_name_conflict_waits_with_one_warning() -> None:
    msg = "waiting for Job t-abcde of a previous TrainingJob with this name to be deleted"
    obs = observe(SPEC, tj(), None, None, NOW, waiting=("NameConflict", msg))
    assert obs.status["phase"] == "Pending" and obs.status["message"] == msg
    assert cond(obs.status, "Running")["reason"] == "NameConflict"
    assert [(e.type, e.reason) for e in obs.events] == [("Warning", "NameConflict")]
    again = observe(SPEC, tj(obs.status), None, None, NOW, waiting=("NameConflict", msg))
    assert again.events == []


def test_build_failed_warns_once_per_generation_and_final_until_edited() -> None:
    first = build_failed(tj(), "bad", NOW)
    assert [e.reason for e in first.events] == ["BuildFailed"]
    again = build_failed(tj(first.status), "bad", NOW)
    assert again.events == []
    assert is_final(tj(first.status)) is True
    assert is_final(tj(first.status, generation=2)) is False  # the user edited the spec
    assert is_final(tj({"phase": "Succeeded"})) is True
    assert is_final(tj({"phase": "Running"})) is False


def test_ttl() -> None:
    s = TrainingJobSpec.model_validate({"image": "i", "runPolicy": {"ttlSecondsAfterFinished": 60}})
    finished = tj({"phase": "Succeeded", "completionTime": "2026-01-01T00:00:00Z"})
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    assert not ttl_expired(s, finished, t0 + dt.timedelta(seconds=59))
    assert ttl_expired(s, finished, t0 + dt.timedelta(seconds=60))
    assert not ttl_expired(s, tj({"phase": "Running"}), t0 + dt.timedelta(days=1))


def test_ttl_beyond_date_range_never_expires_and_never_crashes() -> None:
    # An object stored before the CRD bounded the field must not crash every resync;
    # model_construct skips the (new) bound, as an old stored object would.
    spec = TrainingJobSpec.model_validate({"image": "i"})
    spec.run_policy = RunPolicy.model_construct(ttl_seconds_after_finished=10**15)
    assert spec.policy.ttl_seconds_after_finished == 10**15
    done = tj({"phase": "Succeeded", "completionTime": "2026-01-01T00:00:00Z"})
    assert ttl_expired(spec, done, dt.datetime(2026, 1, 2, tzinfo=dt.UTC)) is False


def test_fixing_a_build_failure_clears_failed_and_success_is_final() -> None:
    spec = TrainingJobSpec.model_validate({"image": "i"})
    broken = build_failed(tj(generation=1), "bad podTemplate", NOW)
    assert not is_final(tj(broken.status, generation=2))  # edited: retried
    # Fixed at generation 2: the Job runs and completes.
    running = observe(spec, tj(broken.status, generation=2), job(active=1, ready=1), None, NOW)
    assert cond(running.status, "Failed")["status"] == "False"
    done = observe(spec, tj(running.status, generation=2), job(
        conditions=[{"type": "Complete", "status": "True"}]), None, NOW)
    assert done.status["phase"] == "Succeeded"
    assert cond(done.status, "Succeeded")["status"] == "True"
    assert cond(done.status, "Failed")["status"] == "False"
    # A later edit (generation 3) must not re-run a finished training.
    assert is_final(tj(done.status, generation=3))


def test_a_worker_that_just_completed_still_counts() -> None:
    # For a moment the Job counts a finished pod neither ready nor succeeded: the pod's own
    # phase says it is done, so a finishing job does not flicker back to Pending.
    obs = observe(SPEC, tj({"phase": "Running"}), job(active=1, ready=1), None, NOW,
                  pods=[pod(0, "Running"), pod(1, "Succeeded")])
    assert obs.status["phase"] == "Running"


def test_kueue_reason_comes_from_the_workload() -> None:
    from slipway.status.trainingjob import kueue_reason

    no_quota = {"spec": {}, "status": {"conditions": [
        {"type": "QuotaReserved", "status": "False", "reason": "Pending",
         "message": "insufficient unused quota for nvidia.com/gpu, 4 more needed"}]}}
    assert kueue_reason(no_quota) == (
        "WaitingForAdmission", "insufficient unused quota for nvidia.com/gpu, 4 more needed")
    preempted = {"spec": {}, "status": {"conditions": [
        {"type": "Evicted", "status": "True", "reason": "Preempted", "message": "by high"}]}}
    assert kueue_reason(preempted) == ("Preempted", "evicted by Kueue: by high")
    held = {"spec": {"active": False}, "status": preempted["status"]}
    assert kueue_reason(held) is not None and kueue_reason(held)[0] == "Deactivated"
    assert kueue_reason({"spec": {}, "status": {}}) is None and kueue_reason(None) is None
    queued = SPEC.model_copy(update={"queue": "team"})
    obs = observe(queued, tj({"phase": "Queued"}), job(suspend=True), None, NOW,
                  kueue=kueue_reason(no_quota))
    assert obs.status["phase"] == "Queued"
    assert obs.status["message"] == ("waiting for Kueue queue team: insufficient unused quota "
                                     "for nvidia.com/gpu, 4 more needed")


def test_a_running_job_has_a_start_time_before_the_job_controller_writes_one() -> None:
    obs = observe(SPEC, tj({"phase": "Pending"}), job(active=2, ready=2), None, NOW)
    assert obs.status["phase"] == "Running" and obs.status["startTime"] == NOW
    later = observe(SPEC, tj(obs.status), job(active=2, ready=2, startTime="2030-01-01T00:00:00Z"),
                    None, "2030-01-01T00:00:05Z")
    assert later.status["startTime"] == NOW  # kept, never moved
