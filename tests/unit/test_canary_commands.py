"""`slipway canary`: the patch each verb sends, the parser, and the status text (pure
functions over plain dicts; no cluster)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from slipway import cli
from slipway.api.canary import ACTION_ANNOTATION, ACTIONS
from slipway.canary import commands
from slipway.canary.commands import (
    action_patch,
    canary_events,
    describe_action,
    format_analysis,
    format_bounds,
    format_history,
    format_overview,
    format_schedule,
    format_status,
    format_timeline,
    table,
    when,
)

UID = "0b5f7c1e-0000-4000-8000-000000000001"
CANARY: dict[str, Any] = {
    "apiVersion": "slipway.dev/v1alpha1",
    "kind": "Canary",
    "metadata": {"name": "iris", "namespace": "ml", "uid": UID},
    "spec": {
        "targetRef": {"kind": "ModelDeployment", "name": "iris"},
        "steps": [10, 25, 50], "interval": "30s", "maxWeight": 50,
        "analysis": {"threshold": 3, "metrics": [
            {"name": "error-rate", "max": 1, "compare": "Absolute"},
            {"name": "latency-p99", "max": 500, "compare": "RelativeToStable"},
            {"name": "prediction-drift", "max": 0.2, "compare": "RelativeToStable"},
            {"name": "mean-score", "query": "q", "min": 0.05, "max": 0.4},
        ]},
    },
    "status": {
        "phase": "Progressing", "message": "step 2 of 3 at 25%",
        "stableVersion": "v1", "canaryVersion": "v2", "canaryWeight": 25, "step": 1,
        "failedChecks": 1, "lastAction": "promote",
        "lastAnalysisTime": "2025-01-15T10:02:00Z",
        "stableModel": {"format": "sklearn", "uri": "s3://models/iris/v1", "version": "v1",
                        "runtime": "slipway-sklearn", "source": "spec"},
        "canaryModel": {"format": "sklearn", "uri": "s3://models/iris/v2", "version": "v2",
                        "runtime": "slipway-sklearn", "source": "TrainingJob/iris-train"},
        "lastAnalysis": [
            {"name": "error-rate", "value": 0.4, "samples": 240, "outcome": "Pass"},
            {"name": "latency-p99", "value": 12.5, "stableValue": 210.0, "samples": 240,
             "outcome": "Pass"},
            {"name": "prediction-drift", "value": 0.31234, "samples": 240, "outcome": "Fail",
             "message": "PSI 0.31 above 0.2"},
            {"name": "mean-score", "outcome": "NoData", "samples": 3,
             "message": "3 samples, 20 needed"},
        ],
        "history": [
            {"version": "v1", "outcome": "Succeeded", "reason": "all 3 steps passed",
             "startedAt": "2025-01-14T09:00:00Z", "finishedAt": "2025-01-14T09:01:35Z",
             "source": "spec"},
            {"version": "v0", "outcome": "RolledBack", "reason": "3 failed checks",
             "durationSeconds": 3725.0},
        ],
    },
}


def event(reason: str, last: str | None, message: str = "", **extra: Any) -> dict[str, Any]:
    return {"involvedObject": {"kind": "Canary", "name": "iris", "namespace": "ml",
                               "uid": UID},
            "reason": reason, "message": message or reason.lower(), "type": "Normal",
            "lastTimestamp": last, **extra}


EVENTS = [
    event("StepAdvanced", "2025-01-15T10:02:00Z", "weight 25%"),
    event("RolloutStarted", "2025-01-15T10:00:00Z", "rolling out v2", count=1),
    event("AnalysisFailed", "2025-01-15T10:01:00Z", "prediction-drift 0.31 > 0.2", count=2,
          type="Warning"),
]


# --- the actions -------------------------------------------------------------------------


@pytest.mark.parametrize("action", ACTIONS)
def test_each_verb_patches_only_the_action_annotation(action: str) -> None:
    assert action_patch(action) == {"metadata": {"annotations": {ACTION_ANNOTATION: action}}}


def test_unknown_action_is_no_patch() -> None:
    with pytest.raises(ValueError, match="unknown action 'rollback'"):
        action_patch("rollback")


def test_cli_verbs_are_the_api_actions() -> None:
    assert tuple(cli.CANARY_VERBS) == ACTIONS


@pytest.mark.parametrize("action", ACTIONS)
def test_parser_routes_each_verb(action: str) -> None:
    args = cli.parser().parse_args(["canary", action, "iris", "-n", "ml"])
    assert (args.canary_command, args.name, args.namespace, args.kubeconfig) == (
        action, "iris", "ml", None)
    assert args.func is cli._cmd_canary_action


def test_parser_routes_status() -> None:
    args = cli.parser().parse_args(["canary", "status", "iris", "--kubeconfig", "/k"])
    assert (args.name, args.namespace, args.kubeconfig) == ("iris", None, "/k")
    assert args.func is cli._cmd_canary_status


@pytest.mark.parametrize("argv", [
    ["canary", "rollback", "iris"],
    ["canary", "Promote", "iris"],
    ["canary", "promote"],  # no name
    ["canary"],             # no verb
])
def test_parser_refuses_bad_invocations(argv: list[str],
                                        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.parser().parse_args(argv)
    assert exc.value.code == 2
    assert "slipway canary" in capsys.readouterr().err


def test_act_sends_a_merge_patch(monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    calls: list[tuple[Any, ...]] = []

    def call(*args: Any) -> dict[str, Any]:
        calls.append(args)
        return CANARY

    from slipway import kube

    monkeypatch.setattr(kube, "call", call)
    monkeypatch.setattr(commands, "_connect", lambda kubeconfig, ns: ns or "ctx-ns")
    assert commands.act("iris", None, "abort") == 0
    assert calls == [("PATCH", "/apis/slipway.dev/v1alpha1/namespaces/ctx-ns/canaries/iris",
                      action_patch("abort"), "application/merge-patch+json", None)]
    assert "canary ml/iris: requested abort" in capsys.readouterr().out


def test_a_missing_canary_is_one_line_not_a_traceback(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from slipway import kube

    monkeypatch.setattr(kube, "call", lambda *args: None)  # what a 404 on GET returns
    monkeypatch.setattr(commands, "_connect", lambda kubeconfig, ns: ns or "ctx-ns")
    assert commands.status("nope", "ml", None) == 1
    assert capsys.readouterr().err == "error: canary ml/nope: not found\n"


def test_describe_action_says_what_was_asked_and_where_the_rollout_is() -> None:
    text = describe_action(CANARY, "pause")
    assert text.splitlines()[0] == (
        f"canary ml/iris: requested pause ({ACTION_ANNOTATION}=pause); now phase Progressing, "
        "canary v2 at 25%.")
    assert "slipway canary status iris -n ml" in text
    idle = {"metadata": {"name": "iris", "namespace": "ml"}}
    assert "now phase Idle." in describe_action(idle, "retry")


# --- the status text ---------------------------------------------------------------------


def test_overview() -> None:
    assert format_overview(CANARY) == """\
Name:          ml/iris (rolls out ModelDeployment iris)
Phase:         Progressing
Message:       step 2 of 3 at 25%
Stable:        v1  s3://models/iris/v1  (from spec)
Canary:        v2  s3://models/iris/v2  (from TrainingJob/iris-train)
Weight:        25% of traffic on the canary
Step:          2 of 3
Schedule:      10% -> [25%] -> 50%, 30s each
Failed checks: 1/3 (rolls back at 3)
Last action:   promote"""


def test_overview_of_a_fresh_canary_with_step_weight_and_a_pending_action() -> None:
    fresh = {"metadata": {"name": "churn", "namespace": "ml",
                          "annotations": {ACTION_ANNOTATION: "pause"}},
             "spec": {"targetRef": {"name": "churn"}, "stepWeight": 20, "maxWeight": 50,
                      "paused": True}}
    lines = format_overview(fresh).splitlines()
    assert "Phase:          Unknown (not reconciled yet)" in lines
    assert "Stable:         none" in lines
    assert "Step:           -" in lines
    assert "Schedule:       20% -> 40% -> 50%, 1m each" in lines
    assert "Failed checks:  0/3 (rolls back at 3)" in lines
    assert "Held:           spec.paused is true" in lines
    assert "Pending action: pause" in lines


def test_overview_survives_a_spec_the_models_refuse() -> None:
    bad = copy.deepcopy(CANARY)
    bad["spec"]["steps"] = [50, 10]
    assert "Schedule:      invalid spec" in format_overview(bad).splitlines()


def test_overview_shows_query_errors_only_when_there_are_some() -> None:
    erring = copy.deepcopy(CANARY)
    erring["status"]["consecutiveErrors"] = 2
    assert "Query errors:  2/4 in a row" in format_overview(erring).splitlines()
    assert "Query errors" not in format_overview(CANARY)


def test_schedule_marks_the_current_step() -> None:
    assert format_schedule([10, 25, 50], 0) == "[10%] -> 25% -> 50%"
    assert format_schedule([10, 25, 50], None) == "10% -> 25% -> 50%"


def test_analysis_table_has_values_bounds_samples_and_outcomes() -> None:
    assert format_analysis(CANARY) == """\
Last analysis (2025-01-15 10:02:00 UTC):
  METRIC            VALUE   STABLE  BOUNDS            SAMPLES  OUTCOME  MESSAGE
  error-rate        0.4     -       <= 1              240      Pass
  latency-p99       +12.5   210     <= 500 vs stable  240      Pass
  prediction-drift  0.3123  -       <= 0.2            240      Fail     PSI 0.31 above 0.2
  mean-score        -       -       0.05..0.4         3        NoData   3 samples, 20 needed"""


def test_analysis_before_the_first_one() -> None:
    assert format_analysis({"spec": {}, "status": {}}) == "Last analysis: none yet"


@pytest.mark.parametrize(("check", "text"), [
    ({"name": "error-rate", "max": 1}, "<= 1"),
    ({"name": "request-rate", "min": 5}, ">= 5"),
    ({"name": "x", "min": 0.05, "max": 0.4}, "0.05..0.4"),
    ({"name": "error-rate", "max": 1, "compare": "RelativeToStable"}, "<= 1 vs stable"),
    # prediction-drift always compares the two versions; its bound is on the PSI itself
    ({"name": "prediction-drift", "max": 0.2, "compare": "RelativeToStable"}, "<= 0.2"),
    ({"name": "x"}, "-"),
    (None, "-"),  # a metric no longer in the spec
])
def test_bounds(check: dict[str, Any] | None, text: str) -> None:
    assert format_bounds(check) == text


def test_history_has_version_outcome_duration_and_reason() -> None:
    assert format_history(CANARY) == """\
History (newest first):
  VERSION  OUTCOME     FINISHED (UTC)       DURATION  SOURCE  REASON
  v1       Succeeded   2025-01-14 09:01:35  1m35s     spec    all 3 steps passed
  v0       RolledBack  -                    1h2m5s    -       3 failed checks"""
    assert format_history({"status": {}}) == "History: no finished rollouts"


def test_timeline_is_sorted_by_time_with_counts() -> None:
    assert format_timeline(CANARY, EVENTS) == """\
Timeline:
  TIME (UTC)           REASON          MESSAGE
  2025-01-15 10:00:00  RolloutStarted  rolling out v2
  2025-01-15 10:01:00  AnalysisFailed  prediction-drift 0.31 > 0.2 (x2)
  2025-01-15 10:02:00  StepAdvanced    weight 25%"""


def test_timeline_keeps_only_this_canarys_events() -> None:
    other_kind = event("Ready", "2025-01-15T10:00:00Z")
    other_kind["involvedObject"]["kind"] = "ModelDeployment"
    other_name = event("StepAdvanced", "2025-01-15T10:00:00Z")
    other_name["involvedObject"]["name"] = "churn"
    earlier_uid = event("RolloutStarted", "2025-01-14T10:00:00Z")
    earlier_uid["involvedObject"]["uid"] = "an-older-canary-named-iris"
    no_uid = event("Promoted", "2025-01-15T10:05:00Z")
    del no_uid["involvedObject"]["uid"]
    mine = canary_events(CANARY, [other_kind, other_name, earlier_uid, no_uid, *EVENTS])
    assert [e["reason"] for e in mine] == [
        "RolloutStarted", "AnalysisFailed", "StepAdvanced", "Promoted"]


def test_timeline_falls_back_to_event_time_and_creation_time() -> None:
    events = [
        event("B", None, eventTime="2025-01-15T10:00:02.123456Z"),
        event("C", None, metadata={"creationTimestamp": "2025-01-15T10:00:03Z"}),
        event("A", None, firstTimestamp="2025-01-15T11:00:01+01:00"),
        event("Z", None),  # no time at all: first, shown as -
    ]
    assert [e["reason"] for e in canary_events(CANARY, events)] == ["Z", "A", "B", "C"]
    assert "  -                    Z" in format_timeline(CANARY, events)


def test_timeline_without_events() -> None:
    assert format_timeline(CANARY, []).startswith("Timeline: no events")


def test_status_is_the_four_sections() -> None:
    text = format_status(CANARY, EVENTS)
    sections = text.rstrip("\n").split("\n\n")
    assert [s.split(":")[0].split(" (")[0] for s in sections] == [
        "Name", "Last analysis", "History", "Timeline"]
    assert text.endswith("weight 25%\n")


def test_status_of_a_bare_canary_does_not_fail() -> None:
    text = format_status({"metadata": {"name": "x"}}, [])
    assert "Phase:" in text and "Schedule:" in text


def test_times_are_shown_in_utc() -> None:
    assert when("2025-01-15T11:00:00+01:00") == "2025-01-15 10:00:00"
    assert when("2025-01-15T10:00:00Z") == "2025-01-15 10:00:00"
    assert when(None) == when("not a time") == "-"


def test_table_aligns_columns_and_flattens_newlines() -> None:
    assert table(("A", "BB"), [("xyz", "1\n2")], indent="") == "A    BB\nxyz  1 2"
