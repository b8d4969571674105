"""Deriving TrainingJob status from its Job (pure)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from slipway.api.trainingjob import RunPolicy, TrainingJobSpec
from slipway.status.trainingjob import build_failed, is_final, observe, ttl_expired

NOW = "2026-01-01T00:10:00Z"


def tj(status: dict[str, Any] | None = None, generation: int = 1) -> dict[str, Any]:
    return {"metadata": {"name": "t", "namespace": "n", "generation": generation},
            "status": status or {}}


def job(active: int = 0, failed: int = 0, suspend: bool = False,
        conditions: list[dict[str, Any]] | None = None, **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": "t-abcde"}, "spec": {"suspend": suspend},
            "status": {"active": active, "failed": failed, "conditions": conditions or [],
                       **status}}


SPEC = TrainingJobSpec.model_validate({"image": "i", "workers": 2, "gpusPerWorker": 8,
                                       "distributed": {}})


def cond(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == type_)


def test_no_job_is_pending() -> None:
    obs = observe(SPEC, tj(), None, None, NOW)
    assert obs.status["phase"] == "Pending" and obs.status["gpus"] == 16
    assert obs.status["serviceName"] == "t"
    assert [e.reason for e in obs.events] == ["Pending"]


def test_running_then_event_only_on_transition() -> None:
    obs = observe(SPEC, tj({"phase": "Pending"}), job(active=2, startTime="2026-01-01T00:00:00Z"),
                  None, NOW)
    assert obs.status["phase"] == "Running"
    assert cond(obs.status, "Running")["status"] == "True"
    assert obs.status["workers"] == {"active": 2, "succeeded": 0, "failed": 0}
    assert [e.reason for e in obs.events] == ["Running"]
    # A later observation: lastTransitionTime does not move while the status stays the same
    # (a different "now", so a condition rewritten on every pass would show it).
    later = "2026-01-01T00:20:00Z"
    again = observe(SPEC, tj(obs.status), job(active=2), None, later)
    assert again.events == []
    assert cond(again.status, "Running")["lastTransitionTime"] == NOW


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


def test_failed_takes_reason_from_job_and_warns() -> None:
    failed = job(failed=3, conditions=[{"type": "Failed", "status": "True",
                                        "reason": "BackoffLimitExceeded",
                                        "message": "Job has reached the specified backoff limit",
                                        "lastTransitionTime": NOW}])
    obs = observe(SPEC, tj({"phase": "Running", "restarts": 3}), failed, None, NOW)
    assert obs.status["phase"] == "Failed"
    assert cond(obs.status, "Failed")["reason"] == "BackoffLimitExceeded"
    assert [(e.type, e.reason) for e in obs.events] == [("Warning", "BackoffLimitExceeded")]
    assert obs.status["completionTime"] == NOW


def test_restart_event_when_failures_grow() -> None:
    obs = observe(SPEC, tj({"phase": "Running", "restarts": 0}), job(active=2, failed=1), None,
                  NOW)
    assert [e.reason for e in obs.events] == ["Restarting"]
    assert obs.status["restarts"] == 1


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
    running = observe(spec, tj(broken.status, generation=2), job(active=1), None, NOW)
    assert cond(running.status, "Failed")["status"] == "False"
    done = observe(spec, tj(running.status, generation=2), job(
        conditions=[{"type": "Complete", "status": "True"}]), None, NOW)
    assert done.status["phase"] == "Succeeded"
    assert cond(done.status, "Succeeded")["status"] == "True"
    assert cond(done.status, "Failed")["status"] == "False"
    # A later edit (generation 3) must not re-run a finished training.
    assert is_final(tj(done.status, generation=3))
