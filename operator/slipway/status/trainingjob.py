"""Derive a TrainingJob's status from its batch/v1 Job. Pure: no I/O."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from slipway.api.common import get_condition, set_condition
from slipway.api.trainingjob import TrainingJobSpec

FINAL = ("Succeeded", "Failed")
BUILD_FAILED = "BuildFailed"


@dataclass
class Event:
    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass
class Observation:
    status: dict[str, Any]
    events: list[Event] = field(default_factory=list)


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


def observe(spec: TrainingJobSpec, tj: dict[str, Any], job: dict[str, Any] | None,
            output: dict[str, str] | None, now: str, note: str | None = None) -> Observation:
    """The new status of *tj* given its current Job (None when not created yet)."""
    old = dict(tj.get("status") or {})
    generation = tj["metadata"].get("generation")
    conds: list[dict[str, Any]] = list(old.get("conditions") or [])
    events: list[Event] = []
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "gpus": spec.workers * spec.gpus_per_worker,
    }
    if spec.distributed:
        status["serviceName"] = tj["metadata"]["name"]

    def cond(type_: str, value: bool, reason: str, message: str = "") -> None:
        nonlocal conds
        conds = set_condition(conds, type_, value, reason, message, generation, now)

    if job is None:
        phase, reason, message = "Pending", "Creating", "creating the Job"
    else:
        js = job.get("status") or {}
        status.update(
            jobName=job["metadata"]["name"],
            workers={"active": js.get("active", 0), "succeeded": js.get("succeeded", 0),
                     "failed": js.get("failed", 0)},
            restarts=js.get("failed", 0),
            startTime=js.get("startTime") or old.get("startTime"),
        )
        cond("Created", True, "JobCreated", f"Job {job['metadata']['name']} created")
        done = job_condition(job, "Complete")
        failed = job_condition(job, "Failed")
        suspended = bool(job.get("spec", {}).get("suspend"))
        if done:
            phase, reason = "Succeeded", "JobSucceeded"
            message = f"all {spec.workers} worker(s) completed"
            status["completionTime"] = js.get("completionTime") or done.get(
                "lastTransitionTime") or now
        elif failed:
            phase, reason = "Failed", failed.get("reason") or "JobFailed"
            message = failed.get("message") or "the Job failed"
            status["completionTime"] = failed.get("lastTransitionTime") or now
        elif suspended:
            phase = "Queued"
            if spec.policy.suspend:
                reason, message = "Suspended", "suspended by spec.runPolicy.suspend"
            else:
                reason, message = "WaitingForAdmission", f"waiting for Kueue queue {spec.queue}"
        elif js.get("active", 0) > 0:
            phase, reason = "Running", "JobRunning"
            message = f"{js.get('active', 0)}/{spec.workers} worker(s) active"
        else:
            phase, reason, message = "Pending", "WaitingForPods", "waiting for worker pods"

        restarts, before = js.get("failed", 0), old.get("restarts") or 0
        if restarts > before and phase not in FINAL:
            events.append(Event("Warning", "Restarting",
                                f"{restarts} worker failure(s) of backoffLimit "
                                f"{spec.policy.backoff_limit}; retrying"))
        cond("Suspended", phase == "Queued", reason if phase == "Queued" else "NotSuspended",
             message if phase == "Queued" else "")

    if note:
        message = f"{message}; {note}"
    if phase == "Running":
        cond("Running", True, reason, message)
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

    start, end = _parse(status.get("startTime")), _parse(status.get("completionTime"))
    if start and end:
        status["duration"] = format_duration((end - start).total_seconds())
    status.update(phase=phase, message=message, conditions=conds)

    if phase != old.get("phase"):
        kind = "Warning" if phase == "Failed" else "Normal"
        events.append(Event(kind, reason if phase == "Failed" else phase, message))
    return Observation(status, events)


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
    ttl = spec.policy.ttl_seconds_after_finished
    status = tj.get("status") or {}
    done = _parse(status.get("completionTime"))
    if ttl is None or status.get("phase") not in FINAL or done is None:
        return False
    try:
        return now >= done + dt.timedelta(seconds=ttl)
    except OverflowError:  # an object stored before the CRD bounded the field
        return False
