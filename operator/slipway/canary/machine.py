"""The rollout state machine, as a pure function: step(spec, status, event, now) -> (status,
actions). The Canary controller turns what it observed into an Event, persists the new status
and executes the actions, which are idempotent, so a step replayed after an operator restart
is harmless. Everything the machine needs is in the status: nothing is kept in memory.

The controller's side of the contract:
- NewVersion whenever the target's resolved version is neither status.stableVersion nor
  status.canaryVersion (or is the stable one while a canary runs: that cancels the rollout);
- while Initializing, CanaryReady(ready) each reconcile; Tick otherwise (also Promoting,
  which re-issues Promote until Promoted reports it done);
- after RunAnalysis(step): measure, evaluate, then Analyzed(verdict, results, message, step);
- Manual(action) for the action annotation; PausedField when spec.paused changes.

spec.paused is level-triggered: Tick, CanaryReady and Analyzed honour it too, so a missed
PausedField is caught at the next tick.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from slipway.api.canary import (
    ACTIONS,
    CanarySpec,
    CanaryStatus,
    MetricResult,
    Phase,
    duration_seconds,
)
from slipway.api.common import Condition, get_condition, set_condition
from slipway.canary.analysis import Verdict, summary

# Phases in which a canary runs (deployed, maybe taking traffic) and may still be judged.
ACTIVE = ("Initializing", "Progressing", "Paused")
# Ends of a rollout that leave a canary version behind to retry or promote by hand.
RETRYABLE = ("RolledBack", "Aborted", "Failed")

PROMOTED, ANALYSIS, PAUSED = "Promoted", "Analysis", "Paused"
# Why a rollout is Paused: the reason of the Paused condition.
BY_SPEC, BY_HAND, NO_DATA, ERRORS = "SpecPaused", "Manual", "NoData", "AnalysisErrors"


@dataclass(frozen=True)
class NewVersion:
    """The target's resolved model version changed."""

    version: str


@dataclass(frozen=True)
class CanaryReady:
    ready: bool


@dataclass(frozen=True)
class Tick:
    """Time passed."""


@dataclass(frozen=True)
class Analyzed:
    """An analysis finished. A result for another step than the current one is stale and
    ignored (step None: the current step)."""

    verdict: Verdict
    results: Sequence[MetricResult] = ()
    message: str = ""
    step: int | None = None


@dataclass(frozen=True)
class Manual:
    """One of api.canary.ACTIONS, from the action annotation."""

    action: str


@dataclass(frozen=True)
class PausedField:
    """spec.paused changed."""

    paused: bool


@dataclass(frozen=True)
class Promoted:
    """The stable InferenceService now serves *version* and the canary is gone."""

    version: str


Event = NewVersion | CanaryReady | Tick | Analyzed | Manual | PausedField | Promoted


@dataclass(frozen=True)
class SetWeight:
    weight: int


@dataclass(frozen=True)
class DeployCanary:
    version: str


@dataclass(frozen=True)
class Promote:
    """Make *version* the stable: the stable serves it, then the canary goes (weight 0)."""

    version: str


@dataclass(frozen=True)
class RemoveCanary:
    pass


@dataclass(frozen=True)
class RunAnalysis:
    step: int


@dataclass(frozen=True)
class EmitEvent:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


Action = SetWeight | DeployCanary | Promote | RemoveCanary | RunAnalysis | EmitEvent


def rfc3339(when: dt.datetime) -> str:
    when = when if when.tzinfo else when.replace(tzinfo=dt.UTC)
    # Milliseconds: step windows are timed from these, and seconds would cut them short.
    text = when.astimezone(dt.UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def duration(text: str) -> dt.timedelta:
    """A spec duration (api.canary.DURATION: 500ms, 30s, 1m, 2h)."""
    return dt.timedelta(seconds=duration_seconds(text))


@dataclass
class _Turn:
    """One step() call: the status being rewritten and the actions collected."""

    spec: CanarySpec
    status: CanaryStatus
    now: dt.datetime
    actions: list[Action] = field(default_factory=list)

    @property
    def weight(self) -> int:
        return self.status.canary_weight or 0

    @property
    def canary(self) -> str:
        return self.status.canary_version or "?"

    def emit(self, type_: Literal["Normal", "Warning"], reason: str, message: str) -> None:
        self.actions.append(EmitEvent(type_, reason, message))

    def go(self, phase: Phase, message: str, event_type: Literal["Normal", "Warning"],
           reason: str) -> None:
        """Enter *phase* with the one Event of this transition."""
        self.status.phase = phase
        self.status.message = message
        self.emit(event_type, reason, message)

    def condition(self, type_: str, status: bool | str, reason: str, message: str) -> None:
        wire = [c.wire() for c in self.status.conditions or []]
        self.status.conditions = [Condition.model_validate(c) for c in set_condition(
            wire, type_, status, reason, message, now=rfc3339(self.now))]

    def restart_window(self) -> None:
        self.status.step_started_at = rfc3339(self.now)

    def elapsed(self, limit: dt.timedelta) -> bool:
        """Whether *limit* has passed since step_started_at (repaired to now when missing)."""
        if not self.status.step_started_at:
            self.restart_window()
            return False
        started = dt.datetime.fromisoformat(self.status.step_started_at)
        return self.now >= started + limit

    def pause_reason(self) -> str | None:
        cond = get_condition([c.wire() for c in self.status.conditions or []], PAUSED)
        return cond["reason"] if cond and cond.get("status") == "True" else None


def step(spec: CanarySpec, status: CanaryStatus, event: Event,
         now: dt.datetime) -> tuple[CanaryStatus, list[Action]]:
    """The status after *event* at *now*, and what the controller must do."""
    now = now if now.tzinfo else now.replace(tzinfo=dt.UTC)
    turn = _Turn(spec, status.model_copy(deep=True), now)
    if isinstance(event, PausedField):
        _pause_field(turn, event.paused)
    elif isinstance(event, Tick | CanaryReady | Analyzed) and _pause_field(turn, spec.paused):
        pass  # spec.paused took this turn
    elif isinstance(event, NewVersion):
        _new_version(turn, event.version)
    elif isinstance(event, CanaryReady):
        _canary_ready(turn, event.ready)
    elif isinstance(event, Tick):
        _tick(turn)
    elif isinstance(event, Analyzed):
        _analyzed(turn, event)
    elif isinstance(event, Manual):
        _manual(turn, event.action)
    elif isinstance(event, Promoted):
        _promoted(turn, event.version)
    if turn.status.phase != "Paused" and turn.pause_reason() is not None:
        turn.condition(PAUSED, False, turn.status.phase or "Idle", "")
    return turn.status, turn.actions


def _pause_field(t: _Turn, paused: bool) -> bool:
    """Apply spec.paused; True when it changed something."""
    phase, reason = t.status.phase, t.pause_reason()
    if paused and phase in ("Initializing", "Progressing"):
        _pause(t, BY_SPEC, "spec.paused is true")
    elif paused and phase == "Paused" and reason != BY_SPEC:
        _pause(t, BY_SPEC, f"spec.paused is true (paused before: {reason})")
    elif not paused and phase == "Paused" and reason == BY_SPEC:
        _resume(t, "spec.paused is false")
    else:
        return False
    return True


def _new_version(t: _Turn, version: str) -> None:
    s = t.status
    if s.stable_version is None:
        s.stable_version = version
        t.condition(PROMOTED, True, "Adopted", f"{version} is the stable version")
        t.go("Idle", f"{version} is the stable version; waiting for a new version",
             "Normal", "StableVersion")
        return
    if s.phase == "Promoting":
        return  # the controller sends it again once the promotion is done
    active = s.phase in ACTIVE
    if version == s.stable_version:
        if active:
            _end_canary(t, "Idle", f"rollout of {t.canary} cancelled: the target is back at "
                                   f"the stable version {version}", "Normal", "RolloutCancelled")
            t.condition(PROMOTED, True, "Reverted", f"{version} is the stable version")
        return
    if version == s.canary_version and (active or s.phase in RETRYABLE):
        return  # already rolling out, or already judged: `retry` starts it again
    if t.spec.skip_analysis:
        _promote_now(t, version, "spec.skipAnalysis is true")
    elif active:
        _start(t, version, f"{version} replaces canary {t.canary} at weight {t.weight}%; "
                           "the analysis starts over", "RolloutRestarted")
    else:
        _start(t, version, f"rolling out {version} (stable {s.stable_version})",
               "RolloutStarted")


def _start(t: _Turn, version: str, why: str, reason: str) -> None:
    s = t.status
    if t.weight > 0:
        t.actions.append(SetWeight(0))
    t.actions.append(DeployCanary(version))
    s.canary_version, s.canary_weight, s.step = version, 0, 0
    s.failed_checks, s.consecutive_errors, s.last_analysis = 0, 0, None
    s.rollout_started_at = rfc3339(t.now)
    t.restart_window()
    t.condition(PROMOTED, False, "Progressing", f"rolling out {version}")
    t.condition(ANALYSIS, "Unknown", "Pending", f"no analysis of {version} yet")
    if t.spec.paused:
        t.condition(PAUSED, True, BY_SPEC, "spec.paused is true")
        t.go("Paused", f"{why}; held at weight 0% by spec.paused", "Normal", reason)
    else:
        t.go("Initializing", f"{why}; waiting for the canary to become ready", "Normal", reason)


def _promote_now(t: _Turn, version: str, why: str) -> None:
    s = t.status
    if s.phase not in ACTIVE:
        s.rollout_started_at = rfc3339(t.now)
    s.canary_version = version
    t.actions.append(Promote(version))
    t.condition(PROMOTED, False, "Promoting", f"promoting {version}")
    t.go("Promoting", f"promoting {version} without analysis: {why}", "Normal", "Promoting")


def _promoted(t: _Turn, version: str) -> None:
    s = t.status
    if s.phase != "Promoting" or version != s.canary_version:
        return
    previous = s.stable_version
    s.stable_version, s.canary_version, s.canary_weight, s.step = version, None, 0, None
    t.condition(PROMOTED, True, "Promoted", f"{version} is the stable version")
    t.go("Succeeded", f"{version} promoted: it serves all traffic (was {previous})",
         "Normal", "Promoted")


def _end_canary(t: _Turn, phase: Phase, message: str, event_type: Literal["Normal", "Warning"],
                reason: str) -> None:
    """Take all traffic off the canary and remove it."""
    t.actions += [SetWeight(0), RemoveCanary()]
    t.status.canary_weight, t.status.step = 0, None
    if phase == "Idle":
        t.status.canary_version = None
    t.go(phase, message, event_type, reason)


def _canary_ready(t: _Turn, ready: bool) -> None:
    if t.status.phase != "Initializing":
        return  # a canary that turns unready later shows in its metrics
    if not ready:
        _deadline(t)
        return
    first = t.spec.weights()[0]
    t.actions.append(SetWeight(first))
    t.status.canary_weight, t.status.step = first, 0
    t.restart_window()
    t.go("Progressing", f"canary {t.canary} ready: weight 0% -> {first}%", "Normal",
         "WeightIncreased")


def _deadline(t: _Turn) -> None:
    limit = t.spec.progress_deadline_seconds
    if not t.elapsed(dt.timedelta(seconds=limit)):
        return
    t.actions.append(RemoveCanary())
    t.status.step = None
    t.condition(PROMOTED, False, "ProgressDeadlineExceeded", f"{t.canary} never became ready")
    t.go("Failed", f"canary {t.canary} not ready after {limit}s (progressDeadlineSeconds); "
                   "removed", "Warning", "ProgressDeadlineExceeded")


def _tick(t: _Turn) -> None:
    s = t.status
    if s.phase == "Initializing":
        _deadline(t)
    elif s.phase == "Promoting" and s.canary_version:
        t.actions.append(Promote(s.canary_version))
    elif s.phase == "Progressing" and t.weight > 0 and t.elapsed(duration(t.spec.interval)):
        if t.spec.analysis.metrics:
            t.actions.append(RunAnalysis(s.step or 0))
        else:
            _advance(t, "no checks configured")


def _analyzed(t: _Turn, event: Analyzed) -> None:
    s = t.status
    if s.phase != "Progressing" or t.weight <= 0:
        return  # analysis never counts at weight 0 or while paused
    if event.step is not None and event.step != (s.step or 0):
        return
    why = event.message or summary(event.results)
    s.last_analysis = list(event.results)
    cond_status = {"Pass": "True", "Fail": "False"}.get(event.verdict, "Unknown")
    t.condition(ANALYSIS, cond_status, event.verdict, why)
    analysis = t.spec.analysis
    if event.verdict == "Error":
        s.consecutive_errors = (s.consecutive_errors or 0) + 1
        limit = analysis.consecutive_error_limit
        if s.consecutive_errors >= limit:
            _pause(t, ERRORS, f"{limit} analyses in a row could not run: {why}")
            return
        t.restart_window()
        t.go("Progressing", f"analysis at weight {t.weight}% could not run "
                            f"({s.consecutive_errors}/{limit}): {why}", "Warning",
             "AnalysisError")
        return
    s.consecutive_errors = 0
    if event.verdict == "Pass":
        _advance(t, why)
    elif event.verdict == "Fail" or analysis.no_data == "fail":
        _fail(t, why if event.verdict == "Fail" else f"no data (noData: fail): {why}")
    elif analysis.no_data == "pause":
        _pause(t, NO_DATA, f"no data: {why}; resume or promote to go on")
    else:
        t.restart_window()
        t.go("Progressing", f"no data at weight {t.weight}%: {why}; analysing again after "
                            f"{t.spec.interval}", "Normal", "NoData")


def _advance(t: _Turn, why: str) -> None:
    """The next weight of the schedule, or promotion after the last one."""
    s, weights = t.status, t.spec.weights()
    following = [i for i, w in enumerate(weights) if w > t.weight]
    if not following:
        if s.canary_version:
            t.actions.append(Promote(s.canary_version))
        t.condition(PROMOTED, False, "Promoting", f"promoting {t.canary}")
        t.go("Promoting", f"all steps passed at weight {t.weight}%, promoting {t.canary}: "
                          f"{why}", "Normal", "Promoting")
        return
    index = following[0]
    t.actions.append(SetWeight(weights[index]))
    before = t.weight
    s.canary_weight, s.step = weights[index], index
    t.restart_window()
    t.go("Progressing", f"weight {before}% -> {weights[index]}%: {why}", "Normal",
         "WeightIncreased")


def _fail(t: _Turn, why: str) -> None:
    s = t.status
    s.failed_checks = (s.failed_checks or 0) + 1
    threshold = t.spec.analysis.threshold
    if s.failed_checks < threshold:
        t.restart_window()
        t.go("Progressing", f"check failed at weight {t.weight}% ({s.failed_checks}/"
                            f"{threshold}): {why}", "Warning", "CheckFailed")
        return
    t.condition(PROMOTED, False, "RolledBack", f"{t.canary} failed its analysis")
    _end_canary(t, "RolledBack", f"rolled back {t.canary} at weight {t.weight}% after "
                                 f"{s.failed_checks}/{threshold} failed checks: {why}; "
                                 f"{s.stable_version} serves all traffic", "Warning",
                "RolledBack")


def _pause(t: _Turn, reason: str, why: str) -> None:
    t.condition(PAUSED, True, reason, why)
    t.go("Paused", f"paused at weight {t.weight}%: {why}",
         "Warning" if reason in (NO_DATA, ERRORS) else "Normal", "Paused")


def _resume(t: _Turn, why: str) -> None:
    """Back to the current step, with a fresh interval (or to waiting for readiness, with a
    fresh progress deadline, when paused before the canary took traffic)."""
    t.status.consecutive_errors = 0
    t.restart_window()
    t.condition(PAUSED, False, "Resumed", why)
    if t.weight > 0:
        t.go("Progressing", f"resumed at weight {t.weight}%: {why}", "Normal", "Resumed")
    else:
        t.go("Initializing", f"resumed, waiting for canary {t.canary} to become ready: {why}",
             "Normal", "Resumed")


def _manual(t: _Turn, action: str) -> None:
    s = t.status
    s.last_action = action
    phase, spec_held = s.phase, t.spec.paused and s.phase == "Paused"
    if action not in ACTIONS:
        _refuse(t, action, f"unknown action; use one of {', '.join(ACTIONS)}")
    elif action == "promote-full" and (phase in ACTIVE or (phase in RETRYABLE and
                                                          s.canary_version)):
        _promote_now(t, t.canary, "promote-full by hand")
    elif action in ("promote", "resume") and spec_held:
        _refuse(t, action, "spec.paused is true: set it to false (or use promote-full)")
    elif action == "promote" and phase == "Initializing":
        _refuse(t, action, f"canary {t.canary} is not ready yet (promote-full promotes it "
                           "without analysis)")
    elif action == "promote" and phase == "Paused" and t.weight == 0:
        _resume(t, "promoted by hand")
    elif action == "promote" and phase in ("Progressing", "Paused"):
        _advance(t, "promoted by hand")
    elif action == "pause" and phase in ("Initializing", "Progressing"):
        _pause(t, BY_HAND, "paused by hand")
    elif action == "resume" and phase == "Paused":
        _resume(t, "resumed by hand")
    elif action == "abort" and phase in ACTIVE:
        t.condition(PROMOTED, False, "Aborted", f"{t.canary} aborted by hand")
        _end_canary(t, "Aborted", f"aborted by hand at weight {t.weight}%: {t.canary} is not "
                                  f"served; {s.stable_version} serves all traffic", "Warning",
                    "Aborted")
    elif action == "retry" and phase in RETRYABLE and s.canary_version:
        _start(t, s.canary_version, f"retrying {s.canary_version} (stable "
                                    f"{s.stable_version})", "RolloutRetried")
    else:
        _refuse(t, action, f"nothing to {action} in phase {phase or 'Idle'}")


def _refuse(t: _Turn, action: str, why: str) -> None:
    t.emit("Warning", "ActionIgnored", f"{action} ignored: {why}")
