"""Judging a failed attempt (pure): which worker failed, with what exit code, and whether
runPolicy.restartPolicy and backoffLimit restart the group or fail the job."""

from __future__ import annotations

from typing import Any

import pytest

from slipway.api.trainingjob import TrainingJobSpec
from slipway.status.trainingjob import (
    WorkerFailure,
    failure_from_job,
    failure_from_pods,
    judge,
    retriable,
)


def spec(restart_policy: str = "ExitCode", backoff_limit: int = 3) -> TrainingJobSpec:
    return TrainingJobSpec.model_validate({
        "image": "i", "workers": 2, "distributed": {},
        "runPolicy": {"restartPolicy": restart_policy, "backoffLimit": backoff_limit}})


def failed_job(reason: str = "PodFailurePolicy", message: str = "") -> dict[str, Any]:
    return {"metadata": {"name": "t-abcde-a1"}, "spec": {"completionMode": "Indexed"},
            "status": {"conditions": [{"type": "Failed", "status": "True", "reason": reason,
                                       "message": message}]}}


FAIL_JOB = ("Container trainer for pod ns/t-abcde-a1-1-x7k2p failed with exit code 137 "
            "matching FailJob rule at index 1")


def test_failure_from_the_fail_job_message() -> None:
    assert failure_from_job(failed_job(message=FAIL_JOB)) == \
        WorkerFailure(137, "t-abcde-a1-1-x7k2p", "1")
    assert failure_from_job(failed_job("BackoffLimitExceeded", "Job has reached the "
                                       "specified backoff limit")) is None
    described = WorkerFailure(137, "p", "1").describe()
    assert "worker 1" in described and "exit code 137" in described


def _pod(name: str, phase: str, code: int | None = None, index: str | None = None,
         finished: str = "2026-01-01T00:00:00Z") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if index is not None:
        meta["annotations"] = {"batch.kubernetes.io/job-completion-index": index}
    status: dict[str, Any] = {"phase": phase}
    if code is not None:
        status["containerStatuses"] = [{"name": "trainer", "state": {"terminated": {
            "exitCode": code, "finishedAt": finished}}}]
    return {"metadata": meta, "status": status}


def test_failure_from_pods_takes_the_first_to_exit() -> None:
    pods = [_pod("a", "Running"), _pod("b", "Failed", 1, "1", "2026-01-01T00:00:09Z"),
            _pod("c", "Failed", 143, "0", "2026-01-01T00:00:05Z"), _pod("d", "Succeeded", 0)]
    assert failure_from_pods(pods) == WorkerFailure(143, "c", "0")
    assert failure_from_pods([_pod("e", "Failed")]) == WorkerFailure(None, "e", None)
    assert failure_from_pods([_pod("f", "Running")]) is None


@pytest.mark.parametrize(("policy", "code", "retry"), [
    ("ExitCode", 1, False), ("ExitCode", 127, False), ("ExitCode", 128, True),
    ("ExitCode", 137, True), ("ExitCode", None, True),
    ("OnFailure", 1, True), ("OnFailure", 137, True),
    ("Never", 137, False), ("Never", None, False),
])
def test_retriable_by_restart_policy(policy: str, code: int | None, retry: bool) -> None:
    assert retriable(policy, code) is retry


def test_judge_permanent_exit_code_fails_with_the_code() -> None:
    v = judge(spec(), failed_job(message=FAIL_JOB), WorkerFailure(1, "p", "1"), restarts=0)
    assert (v.retry, v.reason) == (False, "ExitCode")
    assert "exit code 1" in v.message and "worker 1" in v.message


def test_judge_retriable_restarts_until_backoff_limit() -> None:
    oom = WorkerFailure(137, "p", "1")
    v = judge(spec(backoff_limit=1), failed_job(), oom, restarts=0)
    assert (v.retry, v.reason) == (True, "Restarting")
    assert "attempt 1" in v.message and "137" in v.message
    v = judge(spec(backoff_limit=1), failed_job(), oom, restarts=1)
    assert (v.retry, v.reason) == (False, "BackoffLimitExceeded")
    assert "137" in v.message
    assert judge(spec(backoff_limit=0), failed_job(), oom, restarts=0).retry is False


def test_judge_policies_and_deadline() -> None:
    crash = WorkerFailure(1, "p", "0")
    assert judge(spec("OnFailure"), failed_job(), crash, restarts=0).retry is True
    never = judge(spec("Never"), failed_job(), WorkerFailure(137), restarts=0)
    assert (never.retry, never.reason) == (False, "WorkerFailed")
    deadline = judge(spec("OnFailure"), failed_job("DeadlineExceeded", "too long"), None, 0)
    assert (deadline.retry, deadline.reason, deadline.message) == \
        (False, "DeadlineExceeded", "too long")
    # No worker to blame (the pod never ran): retried under ExitCode, with the Job's message.
    lost = judge(spec(), failed_job("BackoffLimitExceeded", "Job has reached the specified "
                                    "backoff limit"), None, restarts=0)
    assert lost.retry is True and "backoff limit" in lost.message
