"""The rollout state machine, driven through whole sequences as the controller would."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from slipway.api.canary import Analysis, CanarySpec, CanaryStatus, MetricCheck
from slipway.api.common import get_condition
from slipway.canary.analysis import Measurements, Value, evaluate
from slipway.canary.machine import (
    Action,
    Analyzed,
    CanaryReady,
    DeployCanary,
    EmitEvent,
    Event,
    Manual,
    NewVersion,
    PausedField,
    Promote,
    Promoted,
    RemoveCanary,
    RunAnalysis,
    SetWeight,
    Tick,
    duration,
    rfc3339,
    step,
)

T0 = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
CHECKS = [MetricCheck(name="error-rate", max=5), MetricCheck(name="latency-p99", max=100)]


def make_spec(**kw: Any) -> CanarySpec:
    analysis = kw.pop("analysis", {})
    kw.setdefault("steps", [10, 25, 50])
    return CanarySpec(target_ref={"name": "iris"}, interval="1m",
                      analysis=Analysis(**{"metrics": CHECKS, "threshold": 2, **analysis}),
                      **kw)


def analyzed(error_rate: float = 0.1, p99: float = 12.0, samples: int = 500) -> Analyzed:
    """The Analyzed event the controller sends for these measurements."""
    out = evaluate(make_spec().analysis, Measurements(
        {"error-rate": Value(error_rate), "latency-p99": Value(p99)}, samples))
    return Analyzed(out.verdict, out.results, out.message)


PASS, FAIL, NO_DATA = analyzed(), analyzed(error_rate=7.1), analyzed(samples=3)
ERROR = Analyzed("Error", message="error-rate: query failed: Prometheus unreachable")


class Controller:
    """Feeds events to step(), persisting the status through its wire form (as the apiserver
    would, so nothing survives that a restart would lose) and checking the event rule."""

    def __init__(self, spec: CanarySpec | None = None, stable: str = "v1") -> None:
        self.spec = spec or make_spec()
        self.status = CanaryStatus(phase="Idle", stable_version=stable)
        self.now = T0
        self.events: list[EmitEvent] = []

    def __call__(self, event: Event, after: float = 0) -> list[Action]:
        self.now += dt.timedelta(seconds=after)
        before = self.status
        status, actions = step(self.spec, CanaryStatus.model_validate(before.wire()), event,
                               self.now)
        emitted = [a for a in actions if isinstance(a, EmitEvent)]
        assert len(emitted) <= 1, emitted
        if status.phase != before.phase:
            assert len(emitted) == 1, f"{before.phase} -> {status.phase} without one Event"
        self.events += emitted
        self.status = status
        return [a for a in actions if not isinstance(a, EmitEvent)]

    @property
    def event(self) -> EmitEvent:
        return self.events[-1]

    def condition(self, type_: str) -> dict[str, Any]:
        cond = get_condition([c.wire() for c in self.status.conditions or []], type_)
        assert cond is not None, type_
        return cond

    def ready(self) -> None:
        """From Idle to the first step."""
        assert self(NewVersion("v2")) == [DeployCanary("v2")]
        assert self(CanaryReady(True)) == [SetWeight(self.spec.weights()[0])]

    def analyse(self, result: Analyzed) -> list[Action]:
        """Wait out the interval, then feed *result* to the RunAnalysis that asks for it."""
        assert self(Tick(), after=60) == [RunAnalysis(self.status.step or 0)]
        return self(result)


def test_durations_and_timestamps() -> None:
    assert duration("500ms") == dt.timedelta(milliseconds=500)
    assert duration("2h") == dt.timedelta(hours=2)
    with pytest.raises(ValueError):
        duration("1d")
    assert rfc3339(dt.datetime(2025, 1, 1, 12, 0, 0, 1500)) == "2025-01-01T12:00:00.001Z"


def test_a_good_rollout_steps_through_the_weights_then_promotes() -> None:
    c = Controller()
    assert c(NewVersion("v2")) == [DeployCanary("v2")]
    s = c.status
    assert (s.phase, s.canary_version, s.canary_weight, s.step) == ("Initializing", "v2", 0, 0)
    assert s.rollout_started_at == s.step_started_at == "2025-01-01T00:00:00.000Z"
    assert c.event.reason == "RolloutStarted" and "rolling out v2 (stable v1)" in c.event.message
    assert c(CanaryReady(False), after=5) == []
    assert c(Tick(), after=400) == []  # no analysis at weight 0
    assert c(CanaryReady(True), after=5) == [SetWeight(10)]
    assert c.status.phase == "Progressing"
    assert c.event.message == "canary v2 ready: weight 0% -> 10%"
    assert c(Tick(), after=59) == []
    assert c(Tick(), after=1) == [RunAnalysis(0)]
    assert c(PASS) == [SetWeight(25)]
    assert c.event.message == \
        "weight 10% -> 25%: error-rate 0.1% <= max 5%, latency-p99 12 ms <= max 100 ms"
    assert c.status.last_analysis == list(PASS.results)
    assert c.condition("Analysis")["reason"] == "Pass"
    assert c.analyse(PASS) == [SetWeight(50)]
    assert (c.status.step, c.status.canary_weight) == (2, 50)
    assert c.analyse(PASS) == [Promote("v2")]
    assert c.status.phase == "Promoting" and c.status.canary_weight == 50
    assert c(Tick(), after=5) == [Promote("v2")]  # re-issued until done, no Event
    assert c(Promoted("v2")) == []
    s = c.status
    assert (s.phase, s.stable_version, s.canary_version, s.canary_weight) == \
        ("Succeeded", "v2", None, 0)
    assert c.condition("Promoted")["status"] == "True"
    assert [e.reason for e in c.events] == ["RolloutStarted", "WeightIncreased",
                                            "WeightIncreased", "WeightIncreased", "Promoting",
                                            "Promoted"]
    # the next version rolls out from the new stable
    assert c(NewVersion("v3")) == [DeployCanary("v3")]
    assert c.status.stable_version == "v2" and c.status.failed_checks == 0


def test_step_weight_schedule() -> None:
    c = Controller(make_spec(steps=None, step_weight=20, max_weight=50))
    c.ready()
    assert c.status.canary_weight == 20
    assert c.analyse(PASS) == [SetWeight(40)]
    assert c.analyse(PASS) == [SetWeight(50)]
    assert c.analyse(PASS) == [Promote("v2")]


def test_rollback_in_the_call_that_gets_the_threshold_th_failure() -> None:
    c = Controller()
    c.ready()
    assert c.analyse(FAIL) == []
    assert (c.status.phase, c.status.canary_weight, c.status.failed_checks) == \
        ("Progressing", 10, 1)
    assert c.event.type == "Warning"
    assert c.event.message == "check failed at weight 10% (1/2): error-rate 7.1% > max 5%"
    assert c(Tick(), after=59) == []  # a fresh interval before the next analysis
    assert c(Tick(), after=1) == [RunAnalysis(0)]
    assert c(FAIL) == [SetWeight(0), RemoveCanary()]
    s = c.status
    assert (s.phase, s.canary_weight, s.stable_version, s.canary_version) == \
        ("RolledBack", 0, "v1", "v2")
    assert c.event.type == "Warning" and c.event.reason == "RolledBack"
    assert "after 2/2 failed checks: error-rate 7.1% > max 5%" in c.event.message
    assert c.condition("Promoted")["reason"] == "RolledBack"
    assert c.condition("Analysis")["status"] == "False"
    # the judged version is not retried by itself, and nothing runs any more
    assert c(NewVersion("v2"), after=5) == []
    assert c(Tick(), after=600) == []


def test_rollback_after_one_interval_with_threshold_one() -> None:
    c = Controller(make_spec(analysis={"threshold": 1}))
    c.ready()
    ready_at = c.now
    assert c.analyse(FAIL) == [SetWeight(0), RemoveCanary()]
    assert c.now - ready_at == dt.timedelta(minutes=1)


def test_failed_checks_count_over_the_rollout_not_in_a_row() -> None:
    c = Controller()
    c.ready()
    c.analyse(FAIL)
    assert c.analyse(PASS) == [SetWeight(25)]
    assert c.analyse(FAIL) == [SetWeight(0), RemoveCanary()]


def test_no_data_fail_counts_as_a_failed_check() -> None:
    c = Controller(make_spec(analysis={"no_data": "fail"}))
    c.ready()
    assert c.analyse(NO_DATA) == []
    assert c.status.failed_checks == 1
    assert "no data (noData: fail): 3 canary requests < minSamples 20" in c.event.message
    assert c.analyse(NO_DATA) == [SetWeight(0), RemoveCanary()]
    assert c.status.phase == "RolledBack"


def test_no_data_pause_holds_the_weight_until_resumed() -> None:
    c = Controller(make_spec(analysis={"no_data": "pause"}))
    c.ready()
    assert c.analyse(NO_DATA) == []
    s = c.status
    assert (s.phase, s.canary_weight, s.failed_checks) == ("Paused", 10, 0)
    assert "no data: 3 canary requests < minSamples 20" in (s.message or "")
    assert c.condition("Paused")["reason"] == "NoData"
    assert c.condition("Analysis")["status"] == "Unknown"
    assert c(Tick(), after=3600) == []  # no analysis while paused
    assert c(PASS) == []  # a late result does not count
    assert c.status.phase == "Paused"
    assert c(PausedField(False)) == []  # spec.paused was not the reason
    assert c.status.phase == "Paused"
    assert c(Manual("resume")) == []
    assert c.status.phase == "Progressing" and c.status.canary_weight == 10
    assert c.condition("Paused")["status"] == "False"
    assert c(Tick(), after=59) == []
    assert c.analyse(PASS) == [SetWeight(25)]


def test_no_data_ignore_analyses_again_after_another_interval() -> None:
    c = Controller(make_spec(analysis={"no_data": "ignore"}))
    c.ready()
    assert c.analyse(NO_DATA) == []
    s = c.status
    assert (s.phase, s.canary_weight, s.failed_checks) == ("Progressing", 10, 0)
    assert c.event.reason == "NoData" and "analysing again after 1m" in c.event.message
    assert c.analyse(NO_DATA) == []
    assert c.analyse(PASS) == [SetWeight(25)]


def test_consecutive_errors_pause_and_resume_resets_them() -> None:
    c = Controller(make_spec(analysis={"consecutive_error_limit": 3}))
    c.ready()
    assert c.analyse(ERROR) == [] and c.analyse(ERROR) == []
    assert c.status.consecutive_errors == 2 and c.status.failed_checks == 0
    assert c.event.reason == "AnalysisError" and "(2/3)" in c.event.message
    assert c.analyse(PASS) == [SetWeight(25)]  # a real verdict resets the count
    assert c.status.consecutive_errors == 0
    for _ in range(2):
        c.analyse(ERROR)
    assert c.status.phase == "Progressing"
    assert c.analyse(ERROR) == []
    assert (c.status.phase, c.status.canary_weight) == ("Paused", 25)
    assert c.condition("Paused")["reason"] == "AnalysisErrors"
    assert c.event.type == "Warning" and "3 analyses in a row could not run" in c.event.message
    assert c(Tick(), after=600) == []
    assert c(Manual("resume")) == []
    assert c.status.phase == "Progressing" and c.status.consecutive_errors == 0
    assert c.analyse(PASS) == [SetWeight(50)]


def test_pause_then_promote_advances_one_step() -> None:
    c = Controller()
    c.ready()
    assert c(Manual("pause"), after=10) == []
    assert c.status.phase == "Paused" and c.condition("Paused")["reason"] == "Manual"
    assert c(Tick(), after=300) == []
    assert c(Manual("promote")) == [SetWeight(25)]
    assert c.status.phase == "Progressing" and c.status.last_action == "promote"
    assert c.condition("Paused")["status"] == "False"
    assert c(Manual("promote"), after=1) == [SetWeight(50)]
    assert c(Manual("promote"), after=1) == [Promote("v2")]
    assert c.status.phase == "Promoting"


def test_abort_then_retry() -> None:
    c = Controller()
    c.ready()
    c.analyse(FAIL)
    assert c(Manual("abort"), after=5) == [SetWeight(0), RemoveCanary()]
    s = c.status
    assert (s.phase, s.canary_weight, s.stable_version, s.canary_version) == \
        ("Aborted", 0, "v1", "v2")
    assert c.event.type == "Warning" and "v2 is not served" in c.event.message
    assert c(NewVersion("v2")) == []
    assert c(Manual("retry"), after=5) == [DeployCanary("v2")]
    s = c.status
    assert (s.phase, s.failed_checks, s.canary_weight) == ("Initializing", 0, 0)
    assert c.event.reason == "RolloutRetried"
    assert c(CanaryReady(True)) == [SetWeight(10)]


def test_pause_in_initializing_then_promote_resumes_waiting() -> None:
    c = Controller()
    c(NewVersion("v2"))
    assert c(Manual("pause")) == []
    assert (c.status.phase, c.status.canary_weight) == ("Paused", 0)
    assert c(CanaryReady(True)) == []  # paused: the weight stays 0
    assert c(Tick(), after=3600) == []  # and the progress deadline does not run
    assert c(Manual("promote")) == []
    assert c.status.phase == "Initializing"
    assert c(CanaryReady(True)) == [SetWeight(10)]


def test_promote_full_skips_the_rest() -> None:
    c = Controller()
    c.ready()
    assert c(Manual("promote-full")) == [Promote("v2")]
    assert c.status.phase == "Promoting"
    assert c(Manual("abort")) == []  # too late
    assert c.event.reason == "ActionIgnored"
    assert c(Promoted("v2")) == []
    assert c.status.stable_version == "v2"


def test_promote_full_of_a_rolled_back_version() -> None:
    c = Controller(make_spec(analysis={"threshold": 1}))
    c.ready()
    c.analyse(FAIL)
    assert c(Manual("promote-full")) == [Promote("v2")]
    assert c(Promoted("v2")) == []
    assert (c.status.phase, c.status.stable_version) == ("Succeeded", "v2")


@pytest.mark.parametrize("action, phase_setup, words", [
    ("resume", "progressing", "nothing to resume in phase Progressing"),
    ("promote", "initializing", "not ready yet"),
    ("abort", "idle", "nothing to abort in phase Idle"),
    ("retry", "progressing", "nothing to retry"),
    ("pause", "idle", "nothing to pause"),
    ("promote-full", "idle", "nothing to promote-full"),
    ("explode", "progressing", "unknown action"),
])
def test_refused_actions_change_nothing_but_say_why(action: str, phase_setup: str,
                                                    words: str) -> None:
    c = Controller()
    if phase_setup == "initializing":
        c(NewVersion("v2"))
    elif phase_setup == "progressing":
        c.ready()
    before = c.status
    assert c(Manual(action)) == []
    assert c.event.type == "Warning" and c.event.reason == "ActionIgnored"
    assert words in c.event.message
    assert c.status == before.model_copy(update={"last_action": action})


def test_spec_paused_pauses_and_resumes() -> None:
    c = Controller()
    c.ready()
    c.spec = make_spec(paused=True)
    assert c(PausedField(True), after=10) == []
    assert c.status.phase == "Paused" and c.condition("Paused")["reason"] == "SpecPaused"
    assert c(Manual("resume")) == []  # the spec wins
    assert "spec.paused is true" in c.event.message
    assert c(Manual("promote")) == []
    assert c.status.phase == "Paused"
    c.spec = make_spec()
    assert c(PausedField(False), after=10) == []
    assert c.status.phase == "Progressing" and c.status.canary_weight == 10
    assert c.analyse(PASS) == [SetWeight(25)]


def test_spec_paused_is_level_triggered() -> None:
    c = Controller()
    c.ready()
    c.spec = make_spec(paused=True)
    assert c(Tick(), after=60) == []  # no RunAnalysis: it pauses instead
    assert c.status.phase == "Paused"
    c.spec = make_spec()
    assert c(Tick(), after=1) == []
    assert c.status.phase == "Progressing"


def test_spec_paused_takes_over_a_no_data_pause() -> None:
    c = Controller(make_spec(analysis={"no_data": "pause"}))
    c.ready()
    c.analyse(NO_DATA)
    c.spec = make_spec(paused=True, analysis={"no_data": "pause"})
    assert c(PausedField(True)) == []
    assert c.condition("Paused")["reason"] == "SpecPaused"
    c.spec = make_spec(analysis={"no_data": "pause"})
    assert c(PausedField(False)) == []
    assert c.status.phase == "Progressing"


def test_a_new_version_under_spec_paused_waits_at_weight_zero() -> None:
    c = Controller(make_spec(paused=True))
    assert c(NewVersion("v2")) == [DeployCanary("v2")]
    assert (c.status.phase, c.status.canary_weight) == ("Paused", 0)
    assert c(CanaryReady(True)) == []
    c.spec = make_spec()
    assert c(PausedField(False)) == []
    assert c.status.phase == "Initializing"
    assert c(CanaryReady(True)) == [SetWeight(10)]


def test_a_newer_version_mid_rollout_restarts_the_analysis() -> None:
    c = Controller()
    c.ready()
    c.analyse(PASS)
    c.analyse(FAIL)
    assert (c.status.canary_weight, c.status.failed_checks) == (25, 1)
    assert c(NewVersion("v3"), after=5) == [SetWeight(0), DeployCanary("v3")]
    s = c.status
    assert (s.phase, s.canary_version, s.canary_weight, s.step, s.failed_checks) == \
        ("Initializing", "v3", 0, 0, 0)
    assert s.last_analysis is None and s.stable_version == "v1"
    assert c.event.reason == "RolloutRestarted"
    assert "v3 replaces canary v2 at weight 25%" in c.event.message
    assert c(CanaryReady(True)) == [SetWeight(10)]
    assert c.analyse(FAIL) == [] and c.status.failed_checks == 1


def test_back_to_the_stable_version_cancels_the_rollout() -> None:
    c = Controller()
    c.ready()
    assert c(NewVersion("v1")) == [SetWeight(0), RemoveCanary()]
    s = c.status
    assert (s.phase, s.canary_version, s.canary_weight) == ("Idle", None, 0)
    assert c.condition("Promoted")["status"] == "True"
    assert c(NewVersion("v1")) == []


def test_a_new_version_during_promotion_waits_for_it() -> None:
    c = Controller()
    c.ready()
    c(Manual("promote-full"))
    assert c(NewVersion("v3")) == []
    assert c.status.canary_version == "v2"
    c(Promoted("v3"))  # not what is being promoted: ignored
    assert c.status.phase == "Promoting"
    c(Promoted("v2"))
    assert c(NewVersion("v3")) == [DeployCanary("v3")]
    assert c.status.stable_version == "v2"


def test_restart_replays_are_idempotent_and_never_jump_the_weight() -> None:
    c = Controller()
    c.ready()
    c.analyse(PASS)
    stored = CanaryStatus.model_validate(c.status.wire())  # what the apiserver holds
    for at in (30, 60, 600):
        now = c.now + dt.timedelta(seconds=at)
        first = step(c.spec, stored, Tick(), now)
        second = step(c.spec, stored, Tick(), now)
        assert first == second
        assert not any(isinstance(a, SetWeight | Promote | RemoveCanary) for a in first[1])
        assert first[0] == stored  # a Tick changes nothing; it may only ask for analysis
    for replayed in (CanaryReady(True), NewVersion("v2"), Promoted("v2")):
        assert step(c.spec, stored, replayed, c.now) == (stored, [])
    # a stale analysis result (for the previous step) is ignored
    assert step(c.spec, stored, Analyzed("Fail", step=0), c.now) == (stored, [])


def test_progress_deadline_fails_a_canary_that_never_gets_ready() -> None:
    c = Controller()
    c(NewVersion("v2"))
    assert c(CanaryReady(False), after=599) == []
    assert c(Tick(), after=1) == [RemoveCanary()]
    assert c.status.phase == "Failed" and c.event.reason == "ProgressDeadlineExceeded"
    assert c.condition("Promoted")["reason"] == "ProgressDeadlineExceeded"
    assert c(Manual("retry"), after=30) == [DeployCanary("v2")]
    assert c(Tick(), after=599) == []  # a fresh deadline
    assert c(CanaryReady(True)) == [SetWeight(10)]


def test_skip_analysis_promotes_directly() -> None:
    c = Controller(make_spec(skip_analysis=True))
    assert c(NewVersion("v2")) == [Promote("v2")]
    assert c.status.phase == "Promoting" and c.status.canary_weight in (None, 0)
    assert "spec.skipAnalysis" in c.event.message
    assert c(Promoted("v2")) == []
    assert (c.status.phase, c.status.stable_version) == ("Succeeded", "v2")


def test_without_checks_the_schedule_advances_on_time() -> None:
    c = Controller(make_spec(analysis={"metrics": []}))
    c.ready()
    assert c(Tick(), after=59) == []
    assert c(Tick(), after=1) == [SetWeight(25)]
    assert "no checks configured" in c.event.message


def test_a_fresh_canary_adopts_the_first_version_as_stable() -> None:
    c = Controller()
    c.status = CanaryStatus()
    assert c(NewVersion("v1")) == []
    assert (c.status.phase, c.status.stable_version) == ("Idle", "v1")
    assert c.event.reason == "StableVersion"
    assert c(NewVersion("v1")) == []
    assert c(NewVersion("v2")) == [DeployCanary("v2")]
