"""Group restarts: a worker failure fails the attempt's Job at once (podFailurePolicy), and the
operator decides from the exit code and runPolicy.restartPolicy whether the whole group starts
again as a new attempt. kwok plays the workers; the fake-exit annotations pick which one fails,
with what code, in which attempt."""

from __future__ import annotations

from typing import Any

from tests.helpers import Kubectl, OperatorProcess, wait_for
from tests.integration.test_trainingjob import events, tj, wait_phase


def _fail(code: int, *, index: str | None = None, attempt: str | None = None,
          after: str = "1s", duration: str = "3s") -> dict[str, str]:
    """Pod annotations: exit with *code* after *after* (only worker *index*, only in
    *attempt*, when given); every other pod succeeds after *duration*."""
    out = {"slipway.dev/fake-exit": str(code), "slipway.dev/fake-exit-after": after,
           "slipway.dev/fake-duration": duration}
    if index is not None:
        out["slipway.dev/fake-exit-index"] = index
    if attempt is not None:
        out["slipway.dev/fake-exit-attempt"] = attempt
    return out


def _created(kubectl: Kubectl, name: str, ns: str) -> list[str]:
    """The Jobs the operator created, one Normal Created Event each."""
    return [m.removeprefix("created Job ") for t, r, m in events(kubectl, name, ns)
            if r == "Created" and t == "Normal"]


def _failed_reason(st: dict[str, Any]) -> str:
    return str(next(c for c in st["conditions"] if c["type"] == "Failed")["reason"])


def test_one_worker_fails_the_group_restarts_and_succeeds(
        kubectl: Kubectl, namespace: str, operator: OperatorProcess) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=tj(
        "group", workers=2, distributed={},
        pod_annotations=_fail(137, index="1", attempt="0", duration="4s")))
    st = wait_phase(kubectl, "group", namespace, "Succeeded", timeout=120)
    assert (st["restarts"], st["attempt"]) == (1, 1), st
    first, second = sorted(_created(kubectl, "group", namespace))
    assert second == f"{first}-a1" and st["jobName"] == second
    restarting = [m for t, r, m in events(kubectl, "group", namespace)
                  if (t, r) == ("Warning", "Restarting")]
    assert len(restarting) == 1 and "worker 1" in restarting[0] and "137" in restarting[0]
    jobs = {j["metadata"]["name"]: j for j in
            kubectl.items("jobs", namespace, "slipway.dev/trainingjob=group")}
    assert set(jobs) <= {first, second} and second in jobs
    assert jobs[second]["metadata"]["labels"]["slipway.dev/attempt"] == "1"
    assert jobs[second]["spec"]["completions"] == 2  # the whole group, not one replacement
    env = {e["name"]: e.get("value") for e in
           jobs[second]["spec"]["template"]["spec"]["containers"][0]["env"]}
    uid = (kubectl.get("tj", "group", namespace) or {})["metadata"]["uid"]
    assert env["PET_RDZV_ID"] == f"{uid}-1" and env["PET_MAX_RESTARTS"] == "0"
    assert env["PET_RDZV_ENDPOINT"] == f"{second}-0.group.{namespace}.svc:29500"


def test_permanent_exit_code_is_not_retried(kubectl: Kubectl, namespace: str,
                                            operator: OperatorProcess) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=tj(
        "fatal", workers=2, distributed={}, pod_annotations=_fail(1, index="1")))
    st = wait_phase(kubectl, "fatal", namespace, "Failed", timeout=60)
    assert _failed_reason(st) == "ExitCode" and "exit code 1" in st["message"], st
    assert st["restarts"] == 0 and len(_created(kubectl, "fatal", namespace)) == 1


def test_retriable_failures_stop_at_backoff_limit(kubectl: Kubectl, namespace: str,
                                                  operator: OperatorProcess) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=tj(
        "oom", runPolicy={"backoffLimit": 1}, pod_annotations=_fail(137)))
    st = wait_phase(kubectl, "oom", namespace, "Failed", timeout=90)
    assert _failed_reason(st) == "BackoffLimitExceeded", st
    assert "137" in st["message"] and st["restarts"] == 1 and st["attempt"] == 1
    assert len(_created(kubectl, "oom", namespace)) == 2


def test_on_failure_policy_retries_any_exit_code(kubectl: Kubectl, namespace: str,
                                                 operator: OperatorProcess) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=tj(
        "retry", runPolicy={"restartPolicy": "OnFailure"},
        pod_annotations=_fail(1, attempt="0")))
    st = wait_phase(kubectl, "retry", namespace, "Succeeded", timeout=90)
    assert st["restarts"] == 1 and st["attempt"] == 1
    wait_for(lambda: any(r == "Restarting" for _, r, _ in events(kubectl, "retry", namespace)),
             10, what="the Restarting event")
