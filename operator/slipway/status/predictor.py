"""Why a model server is not serving, read from its predictor pods (pure, no I/O).

KServe's controller does not watch pods: in Standard mode its `modelStatus` only learns of a
crash-looping model server or a failed storage initializer if something else happens to
trigger a reconcile, so a model that never loads can sit in "not Ready" with no reason. The
ModelDeployment controller reads the predictor pods itself and says why, in the words the
kubelet and the scheduler used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Container waiting reasons that mean "this will not start by itself".
IMAGE_REASONS = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName"})
CONFIG_REASONS = frozenset({"CreateContainerConfigError", "CreateContainerError"})
MODEL_LOAD_FAILED = "ModelLoadFailed"


@dataclass(frozen=True)
class PodProblem:
    """One reason the predictor is not serving. `model_failure` is set when the model (its
    download or its load) failed, as opposed to a scheduling or image problem."""

    reason: str
    message: str
    model_failure: bool


def pod_ready(pod: dict[str, Any]) -> bool:
    status = pod.get("status") or {}
    return status.get("phase") == "Running" and any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or [])


def _container_problem(cs: dict[str, Any], init: bool) -> PodProblem | None:
    name = cs.get("name", "")
    state = cs.get("state") or {}
    waiting = state.get("waiting") or {}
    last = ((cs.get("lastState") or {}).get("terminated")) or {}
    terminated = state.get("terminated") or {}
    reason = waiting.get("reason", "")
    if reason in IMAGE_REASONS or reason in CONFIG_REASONS:
        return PodProblem(reason, f"{name}: {waiting.get('message') or reason}", False)
    failed = last if reason == "CrashLoopBackOff" else (
        terminated if terminated.get("exitCode") not in (None, 0) else {})
    if not failed:
        return None
    detail = (failed.get("message") or "").strip() or failed.get("reason") or "failed"
    what = "the storage initializer" if init else f"container {name}"
    restarts = cs.get("restartCount") or 0
    return PodProblem(MODEL_LOAD_FAILED,
                      f"{what} exited with code {failed.get('exitCode')} "
                      f"({restarts} restarts): {detail}", True)


def predictor_problem(pods: list[dict[str, Any]]) -> PodProblem | None:
    """The most telling problem among *pods*, or None while one of them serves (Ready) or
    none reports anything wrong yet. Model failures win over scheduling and image problems,
    and newer pods over older ones (a rollout's new pod says what is wrong now)."""
    if any(pod_ready(p) for p in pods) or not pods:
        return None
    found: list[PodProblem] = []
    ordered = sorted(pods, key=lambda p: (p.get("metadata") or {}).get("creationTimestamp", ""),
                     reverse=True)
    for pod in ordered:
        status = pod.get("status") or {}
        for init in status.get("initContainerStatuses") or []:
            if (problem := _container_problem(init, init=True)) is not None:
                found.append(problem)
        for cs in status.get("containerStatuses") or []:
            if (problem := _container_problem(cs, init=False)) is not None:
                found.append(problem)
        for cond in status.get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                found.append(PodProblem(cond.get("reason") or "Unschedulable",
                                        cond.get("message") or "the pod cannot be scheduled",
                                        False))
    for problem in found:
        if problem.model_failure:
            return problem
    return found[0] if found else None
