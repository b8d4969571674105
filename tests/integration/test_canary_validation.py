"""The Canary CRD on the real apiserver: bad specs are rejected at apply time with errors
whose path names the field (and, for the CEL rules, a message that does too); good specs and
the samples are accepted and defaulted. No operator needed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import Kubectl

SAMPLES = sorted((Path(__file__).resolve().parents[2] / "manifests" / "samples")
                 .glob("canary-*.yaml"))
TARGET = {"name": "iris"}
STEPS = {"targetRef": TARGET, "steps": [10, 25, 50]}


def canary(spec: dict[str, Any], name: str = "bad") -> dict[str, Any]:
    return {"apiVersion": "slipway.dev/v1alpha1", "kind": "Canary",
            "metadata": {"name": name}, "spec": spec}


def metrics(*checks: dict[str, Any], **analysis: Any) -> dict[str, Any]:
    """A steps spec whose analysis has *checks* (and the other *analysis* fields)."""
    return {**STEPS, "analysis": {"metrics": list(checks), **analysis}}


ERROR_RATE = {"name": "error-rate", "max": 1}
AT_LEAST_5S = "spec.interval must be at least 5s"
CUSTOM = {"name": "p50", "query": "sum(rate(x[{{interval}}]))", "max": 1}

# (case, spec, path of the field in the error, a fragment of the message or None)
INVALID: list[tuple[str, dict[str, Any], str, str | None]] = [
    # the schedule
    ("neither-steps-nor-stepweight", {"targetRef": TARGET}, "spec.steps",
     "set exactly one of spec.steps and spec.stepWeight"),
    ("both-steps-and-stepweight", {**STEPS, "stepWeight": 10}, "spec.steps",
     "set exactly one of spec.steps and spec.stepWeight"),
    ("steps-not-ascending", {**STEPS, "steps": [50, 25]}, "spec.steps",
     "spec.steps must be strictly increasing"),
    ("steps-repeated", {**STEPS, "steps": [10, 10, 20]}, "spec.steps",
     "spec.steps must be strictly increasing"),
    ("steps-empty", {**STEPS, "steps": []}, "spec.steps", None),
    ("steps-too-many", {**STEPS, "steps": list(range(1, 22))}, "spec.steps", None),
    ("step-zero", {**STEPS, "steps": [0, 50]}, "spec.steps[0]", None),
    ("step-over-100", {**STEPS, "steps": [50, 101]}, "spec.steps[1]", None),
    ("stepweight-zero", {"targetRef": TARGET, "stepWeight": 0}, "spec.stepWeight", None),
    ("stepweight-over-100", {"targetRef": TARGET, "stepWeight": 101, "maxWeight": 100},
     "spec.stepWeight", None),
    ("maxweight-over-100", {"targetRef": TARGET, "stepWeight": 10, "maxWeight": 101},
     "spec.maxWeight", None),
    ("maxweight-zero", {"targetRef": TARGET, "stepWeight": 10, "maxWeight": 0},
     "spec.maxWeight", None),
    ("stepweight-above-maxweight", {"targetRef": TARGET, "stepWeight": 60, "maxWeight": 50},
     "spec.stepWeight", "spec.stepWeight must be at most spec.maxWeight"),
    # the interval: a format, and at least 5 s
    ("interval-no-unit", {**STEPS, "interval": "30"}, "spec.interval", None),
    ("interval-words", {**STEPS, "interval": "one minute"}, "spec.interval", None),
    ("interval-negative", {**STEPS, "interval": "-1m"}, "spec.interval", None),
    ("interval-huge", {**STEPS, "interval": "99999999999h"}, "spec.interval", None),
    ("interval-1s", {**STEPS, "interval": "1s"}, "spec.interval", AT_LEAST_5S),
    ("interval-4s", {**STEPS, "interval": "4s"}, "spec.interval", AT_LEAST_5S),
    ("interval-500ms", {**STEPS, "interval": "500ms"}, "spec.interval", AT_LEAST_5S),
    ("interval-0m", {**STEPS, "interval": "0m"}, "spec.interval", AT_LEAST_5S),
    # the target
    ("no-target", {"steps": [10]}, "spec.targetRef", None),
    ("target-name-uppercase", {**STEPS, "targetRef": {"name": "Iris_1"}},
     "spec.targetRef.name", None),
    ("target-name-empty", {**STEPS, "targetRef": {"name": ""}}, "spec.targetRef.name", None),
    ("target-kind", {**STEPS, "targetRef": {"kind": "Deployment", "name": "iris"}},
     "spec.targetRef.kind", None),
    ("progress-deadline-too-small", {**STEPS, "progressDeadlineSeconds": 10},
     "spec.progressDeadlineSeconds", None),
    ("progress-deadline-too-large", {**STEPS, "progressDeadlineSeconds": 86_401},
     "spec.progressDeadlineSeconds", None),
    # the analysis
    ("threshold-zero", metrics(ERROR_RATE, threshold=0), "spec.analysis.threshold", None),
    ("threshold-over-100", metrics(ERROR_RATE, threshold=101), "spec.analysis.threshold",
     None),
    ("min-samples-negative", metrics(ERROR_RATE, minSamples=-1), "spec.analysis.minSamples",
     None),
    ("bad-no-data", metrics(ERROR_RATE, noData="skip"), "spec.analysis.noData", None),
    ("consecutive-error-limit-zero", metrics(ERROR_RATE, consecutiveErrorLimit=0),
     "spec.analysis.consecutiveErrorLimit", None),
    ("too-many-metrics",
     metrics(*({"name": f"m{i}", "query": "up", "max": 1} for i in range(21))),
     "spec.analysis.metrics", None),
    ("unknown-builtin-without-query", metrics({"name": "error-ratio", "max": 1}),
     "spec.analysis.metrics[0].query", "query is required unless name is a built-in"),
    ("empty-query", metrics({**CUSTOM, "query": ""}), "spec.analysis.metrics[0].query", None),
    ("metric-without-bounds", metrics({"name": "error-rate"}),
     "spec.analysis.metrics[0].max", "needs min, max or both"),
    ("metric-min-above-max", metrics({"name": "latency-p99", "min": 500, "max": 100}),
     "spec.analysis.metrics[0].min", "min must be less than or equal to max"),
    ("bad-compare", metrics({**ERROR_RATE, "compare": "Relative"}),
     "spec.analysis.metrics[0].compare", None),
    ("bad-metric-name", metrics({**CUSTOM, "name": "P50_latency"}),
     "spec.analysis.metrics[0].name", None),
    ("bad-metric-interval", metrics({**ERROR_RATE, "interval": "5 minutes"}),
     "spec.analysis.metrics[0].interval", None),
    ("duplicate-metric-names", metrics(ERROR_RATE, CUSTOM, {**ERROR_RATE, "max": 5}),
     "spec.analysis.metrics[2]", 'Duplicate value: {"name":"error-rate"}'),
]


@pytest.mark.parametrize(("case", "spec", "field", "message"), INVALID,
                         ids=[c[0] for c in INVALID])
def test_invalid_spec_rejected(kubectl: Kubectl, namespace: str, case: str,
                               spec: dict[str, Any], field: str, message: str | None) -> None:
    obj = canary(spec)
    obj["metadata"]["namespace"] = namespace
    proc = kubectl("create", "-f", "-", input=yaml.safe_dump(obj), check=False)
    assert proc.returncode != 0, f"{case} was accepted"
    assert "invalid" in proc.stderr.lower(), proc.stderr
    # The error's path is the field (`spec.x: Invalid value: ...`), not just a mention of it.
    assert f"{field}: " in proc.stderr, f"{case}: {field!r} not the path in:\n{proc.stderr}"
    if message:
        assert message in proc.stderr, f"{case}: {message!r} not in:\n{proc.stderr}"
    # A CEL rule that fails to evaluate reports the wrong path and the wrong reason.
    assert "evaluating rule" not in proc.stderr, f"{case}: a rule erred:\n{proc.stderr}"


def test_invalid_update_rejected(kubectl: Kubectl, namespace: str) -> None:
    kubectl("create", "-n", namespace, "-f", "-", input=yaml.safe_dump(canary(STEPS, "up")))
    proc = kubectl("patch", "canary", "up", "-n", namespace, "--type=merge",
                   "-p", '{"spec": {"stepWeight": 10}}', check=False)
    assert proc.returncode != 0
    assert "set exactly one of spec.steps and spec.stepWeight" in proc.stderr, proc.stderr


VALID: list[tuple[str, dict[str, Any]]] = [
    ("steps", STEPS),
    ("one-step", {"targetRef": TARGET, "steps": [100]}),
    ("steps-bounds", {"targetRef": TARGET, "steps": [1, *range(5, 95, 5), 100]}),
    ("stepweight", {"targetRef": TARGET, "stepWeight": 10}),
    ("stepweight-is-maxweight", {"targetRef": TARGET, "stepWeight": 100, "maxWeight": 100}),
    ("interval-5s", {**STEPS, "interval": "5s"}),
    ("interval-5000ms", {**STEPS, "interval": "5000ms"}),
    ("interval-hours", {**STEPS, "interval": "2h"}),
    ("bounds", {**STEPS, "progressDeadlineSeconds": 30, "skipAnalysis": True,
                "paused": True}),
    ("all-builtins", metrics(
        {"name": "error-rate", "max": 1, "compare": "RelativeToStable"},
        {"name": "latency-p99", "min": 0, "max": 500, "interval": "2m"},
        {"name": "request-rate", "min": 1},
        {"name": "prediction-drift", "max": 0.2},
        threshold=1, minSamples=0, noData="fail", consecutiveErrorLimit=100)),
    ("min-equals-max", metrics({"name": "request-rate", "min": 5, "max": 5})),
    ("custom-query", metrics({**CUSTOM, "name": "error-rate-4xx"}, noData="ignore")),
    ("max-metrics", metrics(*({"name": f"m{i}", "query": "up", "max": 1}
                              for i in range(20)))),
    ("no-metrics", metrics()),
]


@pytest.mark.parametrize(("case", "spec"), VALID, ids=[c[0] for c in VALID])
def test_valid_spec_accepted(kubectl: Kubectl, namespace: str, case: str,
                             spec: dict[str, Any]) -> None:
    proc = kubectl("create", "--dry-run=server", "-n", namespace, "-f", "-",
                   input=yaml.safe_dump(canary(spec, case)), check=False)
    assert proc.returncode == 0, f"{case} was rejected:\n{proc.stderr}"


@pytest.mark.parametrize("sample", SAMPLES, ids=[p.name for p in SAMPLES])
def test_samples_apply(kubectl: Kubectl, namespace: str, sample: Path) -> None:
    kubectl("apply", "--dry-run=server", "-n", namespace, "-f", str(sample))


def test_samples_exist() -> None:
    assert [p.name for p in SAMPLES] == ["canary-steps.yaml", "canary-stepweight.yaml"]


def test_valid_spec_gets_defaults(kubectl: Kubectl, namespace: str) -> None:
    spec = metrics(ERROR_RATE)
    kubectl("create", "-n", namespace, "-f", "-", input=yaml.safe_dump(canary(spec, "ok")))
    obj = kubectl.get("canary", "ok", namespace)  # the short name works
    assert obj is not None
    assert obj["spec"] == {
        "targetRef": {"kind": "ModelDeployment", "name": "iris"},
        "steps": [10, 25, 50], "interval": "1m", "maxWeight": 50,
        "progressDeadlineSeconds": 600, "skipAnalysis": False, "paused": False,
        "analysis": {"threshold": 3, "minSamples": 20, "noData": "pause",
                     "consecutiveErrorLimit": 4,
                     "metrics": [{**ERROR_RATE, "compare": "Absolute"}]},
    }
