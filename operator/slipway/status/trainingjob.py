"""Derive a TrainingJob's status from its batch/v1 Job and the Job's pods, and judge a failed
attempt (restart the group, or fail). Pure: no I/O."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from slipway.api.common import get_condition, set_condition
from slipway.api.trainingjob import TrainingJobSpec
from slipway.builders.trainingjob import CONTAINER

FINAL = ("Succeeded", "Failed")
BUILD_FAILED = "BuildFailed"
INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
# Why a worker pod is stuck before running, as the kubelet reports it in
# containerStatuses[].state.waiting.reason. Other waiting reasons (ContainerCreating,
# PodInitializing) are normal progress.
STUCK_REASONS = ("ImagePullBackOff", "ErrImagePull", "InvalidImageName", "CrashLoopBackOff",
                 "CreateContainerConfigError", "CreateContainerError")
# Pending reasons that are a problem to tell the user about (a Warning Event), not progress.
WARN_PENDING = (*STUCK_REASONS, "Unschedulable", "NameConflict")
# The Job controller's message for a FailJob podFailurePolicy rule (pod_failure_policy.go).
_DIGITS = re.compile(r"\d+")
_FAIL_JOB_MESSAGE = re.compile(r"Container (?P<container>\S+) for pod (?P<ns>[^/\s]+)/"
                               r"(?P<pod>\S+) failed with exit code (?P<code>-?\d+)")


@dataclass
class Event:
    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass
class Observation:
    status: dict[str, Any]
    events: list[Event] = field(default_factory=list)


@dataclass(frozen=True)
class WorkerFailure:
    """The worker whose failure ended an attempt, as far as it is known."""

    exit_code: int | None = None
    pod: str | None = None
    index: str | None = None  # the completion index of a distributed job's worker

    def describe(self) -> str:
        who = f"worker {self.index}" if self.index is not None else "the worker"
        if self.pod:
            who += f" (pod {self.pod})"
        if self.exit_code is None:
            return f"{who} failed"
        return f"{who} exited with exit code {self.exit_code}"


@dataclass(frozen=True)
class Verdict:
    """What a failed attempt means: restart the group (retry) or fail with reason/message."""

    retry: bool
    reason: str
    message: str


# The Job conditions that say it succeeded. Since Kubernetes 1.31 the Job controller first
# sets SuccessCriteriaMet, then removes its finalizer from every pod and only then sets
# Complete: at a burst of a thousand jobs, many seconds later. The outcome is decided at
# SuccessCriteriaMet (Kubeflow's training-operator, too, marks a job Succeeded when its pods
# have), so the TrainingJob says so then.
SUCCEEDED = ("Complete", "SuccessCriteriaMet")


def job_condition(job: dict[str, Any], *types: str) -> dict[str, Any] | None:
    """The first True condition of *job* among *types*."""
    for cond in job.get("status", {}).get("conditions", []) or []:
        if cond.get("type") in types and cond.get("status") == "True":
            return dict(cond)
    return None


def _parse(ts: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(ts.replace("Z", "+00:00")) if ts else None


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def _pod_index(pod: dict[str, Any], job_name: str | None) -> str | None:
    meta = pod.get("metadata") or {}
    index = (meta.get("annotations") or {}).get(INDEX_ANNOTATION)
    if index is None and job_name:  # a pod named by the FailJob message: <job>-<index>-<rand>
        found = re.fullmatch(rf"{re.escape(job_name)}-(\d+)-[a-z0-9]+", meta.get("name", ""))
        index = found.group(1) if found else None
    return None if index is None else str(index)


def _worker(pod: dict[str, Any]) -> str:
    index = _pod_index(pod, None)
    return f"worker {index}" if index is not None else f"pod {pod['metadata'].get('name')}"


def _terminated(pod: dict[str, Any]) -> dict[str, Any] | None:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") == CONTAINER:
            return ((cs.get("state") or {}).get("terminated")) or None
    return None


def failure_from_job(job: dict[str, Any]) -> WorkerFailure | None:
    """The failed worker named in the Job's Failed (or FailureTarget) condition, when a
    FailJob rule of its podFailurePolicy ended it."""
    cond = job_condition(job, "Failed", "FailureTarget") or {}
    found = _FAIL_JOB_MESSAGE.search(cond.get("message") or "")
    if not found:
        return None
    pod = found.group("pod")
    index = _pod_index({"metadata": {"name": pod}}, job["metadata"]["name"]) \
        if job.get("spec", {}).get("completionMode") == "Indexed" else None
    return WorkerFailure(int(found.group("code")), pod, index)


def failure_from_pods(pods: Sequence[dict[str, Any]]) -> WorkerFailure | None:
    """The first worker (by finish time) whose trainer container exited non-zero, else the
    first Failed pod (which never ran its container: no exit code)."""
    failed = [p for p in pods if (p.get("status") or {}).get("phase") == "Failed"]
    exited = [(t, p) for p in failed if (t := _terminated(p)) and t.get("exitCode")]
    if exited:
        term, pod = min(exited, key=lambda tp: str(tp[0].get("finishedAt") or ""))
        return WorkerFailure(int(term["exitCode"]), pod["metadata"]["name"],
                             _pod_index(pod, None))
    if failed:
        return WorkerFailure(None, failed[0]["metadata"]["name"], _pod_index(failed[0], None))
    return None


def retriable(restart_policy: str, exit_code: int | None) -> bool:
    """Whether a worker failure may restart the group (runPolicy.restartPolicy)."""
    if restart_policy == "Never":
        return False
    if restart_policy == "OnFailure" or exit_code is None:
        return True  # no exit code: the pod never ran or was lost, not the program's verdict
    return exit_code >= 128  # ExitCode: 128+ are signals (OOM kill, SIGTERM); 1-127 the program


def judge(spec: TrainingJobSpec, job: dict[str, Any], failure: WorkerFailure | None,
          restarts: int) -> Verdict:
    """What the failed Job of an attempt means for the TrainingJob; *restarts* were used."""
    failed = job_condition(job, "Failed") or {}
    if failed.get("reason") == "DeadlineExceeded":  # the deadline is never retried
        return Verdict(False, "DeadlineExceeded",
                       failed.get("message") or "the job ran past activeDeadlineSeconds")
    what = failure.describe() if failure else (failed.get("message") or "a worker failed")
    policy = spec.policy
    code = failure.exit_code if failure else None
    if not retriable(policy.restart_policy, code):
        if policy.restart_policy == "Never":
            return Verdict(False, "WorkerFailed", f"{what}; restartPolicy Never: not retried")
        return Verdict(False, "ExitCode", f"{what}: exit codes 1-127 are permanent failures "
                                          "under restartPolicy ExitCode, not retried")
    if restarts >= policy.backoff_limit:
        return Verdict(False, "BackoffLimitExceeded",
                       f"{what}; {restarts} of backoffLimit {policy.backoff_limit} group "
                       "restart(s) used")
    return Verdict(True, "Restarting",
                   f"{what}; restarting all {spec.workers} worker(s) as attempt {restarts + 1} "
                   f"(restart {restarts + 1} of backoffLimit {policy.backoff_limit})")


def pending_reason(pods: Sequence[dict[str, Any]]) -> tuple[str, str] | None:
    """Why worker pods are not running, from the first (by worker index) that says so: the
    scheduler's verdict, or a container stuck waiting (image pull, config error...)."""
    def order(pod: dict[str, Any]) -> tuple[int, str]:
        index = _pod_index(pod, None)
        return (int(index) if index is not None else 0, pod["metadata"].get("name", ""))

    for pod in sorted(pods, key=order):
        st = pod.get("status") or {}
        for cond in st.get("conditions") or []:
            if (cond.get("type"), cond.get("status"), cond.get("reason")) == \
                    ("PodScheduled", "False", "Unschedulable"):
                return "Unschedulable", f"{_worker(pod)} cannot be scheduled: " \
                                        f"{cond.get('message') or 'no node fits'}"
        for cs in [*(st.get("initContainerStatuses") or []), *(st.get("containerStatuses") or [])]:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in STUCK_REASONS:
                detail = waiting.get("message") or waiting["reason"]
                return waiting["reason"], f"{_worker(pod)}, container {cs.get('name')}: {detail}"
    return None


def running_workers(job: dict[str, Any], pods: Sequence[dict[str, Any]]) -> int:
    """Workers running or done. Job.status.active also counts Pending pods, so it is not used:
    ready pods, or the pods' own phase when the caller looked at them."""
    js = job.get("status") or {}
    # A pod that just completed counts as succeeded in neither `ready` nor (for a moment) the
    # Job's `succeeded`: its own phase says it is done.
    live = [(p.get("status") or {}).get("phase") for p in pods
            if not p["metadata"].get("deletionTimestamp")]
    running, done = live.count("Running"), live.count("Succeeded")
    # Pods that completed but that the Job controller has yet to add to `succeeded` (it
    # tracks them by finalizer first): without them a finishing job would flicker to
    # Pending for a moment, a status write and an Event each.
    finishing = len(((js.get("uncountedTerminatedPods") or {}).get("succeeded")) or [])
    return max(max(js.get("ready") or 0, running) + (js.get("succeeded") or 0) + finishing,
               running + done)


def kueue_reason(workload: dict[str, Any] | None) -> tuple[str, str] | None:
    """Why Kueue holds a job back (reason, message), from its Workload; None when it does
    not (or there is no Workload)."""
    if not workload:
        return None
    conds = {c.get("type"): c for c in (workload.get("status") or {}).get("conditions") or []}
    if (workload.get("spec") or {}).get("active") is False:
        return "Deactivated", "its Kueue Workload is deactivated (spec.active: false)"
    evicted = conds.get("Evicted") or {}
    if evicted.get("status") == "True":
        return evicted.get("reason") or "Evicted", f"evicted by Kueue: {evicted.get('message')}"
    reserved = conds.get("QuotaReserved") or {}
    if reserved.get("status") == "False" and reserved.get("message"):
        return "WaitingForAdmission", str(reserved["message"])
    return None


def restarting(spec: TrainingJobSpec, tj: dict[str, Any], verdict: Verdict, attempt: int,
               now: str) -> Observation:
    """The status that starts attempt *attempt* (written before its Job is created, so a crash
    in between resumes the same attempt instead of skipping or repeating one)."""
    generation = tj["metadata"].get("generation")
    conds = set_condition(list((tj.get("status") or {}).get("conditions") or []), "Running",
                          False, "Restarting", verdict.message, generation, now)
    status = {"phase": "Pending", "message": verdict.message, "conditions": conds,
              "attempt": attempt, "restarts": attempt, "observedGeneration": generation}
    return Observation(status, [Event("Warning", "Restarting", verdict.message)])


def observe(spec: TrainingJobSpec, tj: dict[str, Any], job: dict[str, Any] | None,
            output: dict[str, str] | None, now: str, note: str | None = None, *,
            pods: Sequence[dict[str, Any]] = (), attempt: int = 0,
            verdict: Verdict | None = None,
            waiting: tuple[str, str] | None = None,
            kueue: tuple[str, str] | None = None) -> Observation:
    """The new status of *tj* given its current attempt's Job (None when not created yet),
    that Job's pods (only needed while it waits for workers), the verdict on a failed Job,
    and, with no Job, why it is waiting (reason, message)."""
    old = dict(tj.get("status") or {})
    generation = tj["metadata"].get("generation")
    conds: list[dict[str, Any]] = list(old.get("conditions") or [])
    events: list[Event] = []
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "gpus": spec.workers * spec.gpus_per_worker,
        "attempt": attempt,
        "restarts": attempt,  # each attempt after the first is one group restart
    }
    if spec.distributed:
        status["serviceName"] = tj["metadata"]["name"]

    def cond(type_: str, value: bool, reason: str, message: str = "") -> None:
        nonlocal conds
        conds = set_condition(conds, type_, value, reason, message, generation, now)

    if job is None:
        phase = "Pending"
        reason, message = waiting or ("Creating", "creating the Job")
    else:
        js = job.get("status") or {}
        status.update(
            jobName=job["metadata"]["name"],
            workers={"active": js.get("active", 0), "succeeded": js.get("succeeded", 0),
                     "failed": js.get("failed", 0)},
            startTime=old.get("startTime") or js.get("startTime"),
        )
        cond("Created", True, "JobCreated", f"Job {job['metadata']['name']} created")
        done = job_condition(job, *SUCCEEDED)
        failed = job_condition(job, "Failed")
        suspended = bool(job.get("spec", {}).get("suspend"))
        if done:
            phase, reason = "Succeeded", "JobSucceeded"
            message = f"all {spec.workers} worker(s) completed"
            status["completionTime"] = js.get("completionTime") or done.get(
                "lastTransitionTime") or now
        elif failed:
            phase = "Failed"
            verdict = verdict or Verdict(False, failed.get("reason") or "JobFailed",
                                         failed.get("message") or "the Job failed")
            reason, message = verdict.reason, verdict.message
            status["completionTime"] = failed.get("lastTransitionTime") or now
        elif suspended:
            phase = "Queued"
            if spec.policy.suspend:
                reason, message = "Suspended", "suspended by spec.runPolicy.suspend"
            else:
                reason, message = "WaitingForAdmission", f"waiting for Kueue queue {spec.queue}"
                if kueue:  # Kueue's own word: no quota, preempted, deactivated, ...
                    reason, message = kueue[0], f"{message}: {kueue[1]}"
        elif (running := running_workers(job, pods)) >= spec.workers:
            phase, reason = "Running", "JobRunning"
            message = f"{spec.workers}/{spec.workers} worker(s) running"
        else:
            phase = "Pending"
            reason, message = pending_reason(pods) or (
                "WaitingForPods", f"{running}/{spec.workers} worker(s) running")
        cond("Suspended", phase == "Queued", reason if phase == "Queued" else "NotSuspended",
             message if phase == "Queued" else "")

    if note:
        message = f"{message}; {note}"
    if phase == "Pending" and reason == "Unschedulable" and old.get("phase") == "Pending" \
            and _counts_only_differ(old.get("message"), message):
        # The scheduler's counts ("0/20 nodes are available: 12 Insufficient ...") change as
        # the cluster fills: at a burst, a status write per change with nothing new in it.
        message = old["message"]
    before = (get_condition(conds, "Running") or {}).get("reason")
    if phase == "Running":
        cond("Running", True, reason, message)
    elif phase == "Pending":
        cond("Running", False, reason, message)  # why it is not running yet, for machines
    else:
        cond("Running", False, phase, "")
    if phase == "Succeeded":
        cond("Succeeded", True, reason, message)
        if output:
            status["output"] = output
    if phase == "Failed":
        cond("Failed", True, reason, message)
    elif (get_condition(conds, "Failed") or {}).get("status") == "True":
        # A BuildFailed spec was fixed and the job runs (or ran) after all: the conditions must
        # agree with the phase, never say Failed and Succeeded at once.
        cond("Failed", False, phase, "")

    if phase == "Running" and not status.get("startTime"):
        # Workers run before the Job controller has written its own startTime (it lags under
        # load): a Running job always has one, and the first one seen is kept.
        status["startTime"] = now
    start, end = _parse(status.get("startTime")), _parse(status.get("completionTime"))
    if start and end:
        status["duration"] = format_duration((end - start).total_seconds())
    status.update(phase=phase, message=message, conditions=conds)

    if phase == "Pending" and reason in WARN_PENDING:
        if reason != before:  # one Warning when the problem appears, not one per pass
            events.append(Event("Warning", reason, message))
    elif phase != old.get("phase") and (phase != "Pending" or old.get("phase")):
        # Not for a new job's first Pending: the Created event says as much, and at a burst
        # every Event is a POST the API server pays for.
        kind = "Warning" if phase == "Failed" else "Normal"
        events.append(Event(kind, reason if phase == "Failed" else phase, message))
    return Observation(status, events)


def _counts_only_differ(old: str | None, new: str) -> bool:
    return old is not None and _DIGITS.sub("#", old) == _DIGITS.sub("#", new)


def build_failed(tj: dict[str, Any], message: str, now: str) -> Observation:
    """Status for a spec that passed the schema but cannot become a Job."""
    generation = tj["metadata"].get("generation")
    conds = set_condition(list((tj.get("status") or {}).get("conditions") or []), "Failed", True,
                          BUILD_FAILED, message, generation, now)
    old = tj.get("status") or {}
    status = {"phase": "Failed", "message": message, "conditions": conds,
              "observedGeneration": generation}
    already = old.get("observedGeneration") == generation and (
        get_condition(old.get("conditions"), "Failed") or {}).get("reason") == BUILD_FAILED
    events = [] if already else [Event("Warning", BUILD_FAILED, message)]
    return Observation(status, events)


def is_final(tj: dict[str, Any]) -> bool:
    """Finished jobs are never re-run; a BuildFailed job is retried once its spec changes."""
    status = tj.get("status") or {}
    if status.get("phase") == "Succeeded":
        return True
    if status.get("phase") != "Failed":
        return False
    failed = get_condition(status.get("conditions"), "Failed") or {}
    if failed.get("reason") == BUILD_FAILED:
        return bool(status.get("observedGeneration") == tj["metadata"].get("generation"))
    return True


def ttl_expired(spec: TrainingJobSpec, tj: dict[str, Any], now: dt.datetime) -> bool:
    return ttl_due(spec.policy.ttl_seconds_after_finished, tj, now)


def ttl_due(ttl: int | None, tj: dict[str, Any], now: dt.datetime) -> bool:
    """Whether a finished *tj* has outlived *ttl* seconds (never without a TTL)."""
    status = tj.get("status") or {}
    done = _parse(status.get("completionTime"))
    if ttl is None or status.get("phase") not in FINAL or done is None:
        return False
    try:
        return now >= done + dt.timedelta(seconds=ttl)
    except OverflowError:  # an object stored before the CRD bounded the field
        return False
