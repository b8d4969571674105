"""Judging one analysis interval (pure): measurements in, per-metric results and a verdict out.

Verdict precedence, strongest first:
- Error when the canary's sample count could not be measured (nothing can be trusted);
- NoData when the canary served fewer than minSamples requests, whatever the values say;
- Fail when any metric is out of bounds: a definite failure wins over another metric's
  query error, so a broken query cannot hide a bad model;
- Error when any query failed (counted apart from failures: a flaky backend is not a bad model);
- NoData when any metric has no value;
- Pass otherwise (also with no metrics at all).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from slipway.api.canary import Analysis, MetricCheck, MetricResult, Outcome

Verdict = Literal["Pass", "Fail", "NoData", "Error"]
DRIFT = "prediction-drift"
_PRECEDENCE: tuple[Verdict, ...] = ("Fail", "Error", "NoData")
_UNITS = {"error-rate": "%", "latency-p99": " ms", "request-rate": " req/s"}


@dataclass(frozen=True)
class Value:
    """One metric's measurement: the canary's and the stable version's values, or why they
    could not be measured. For prediction-drift, `canary` is the PSI of canary vs stable."""

    canary: float | None = None
    stable: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class Measurements:
    """What one interval measured. `samples` is the canary's request count (None when not
    measured: minSamples is 0); `samples_error` says why it could not be measured."""

    metrics: Mapping[str, Value] = field(default_factory=dict)
    samples: int | None = None
    samples_error: str | None = None


@dataclass(frozen=True)
class Evaluation:
    verdict: Verdict
    results: list[MetricResult]
    message: str


def number(value: float) -> str:
    """A value as people read it: 0.1, 7.1, 12, 1234."""
    if math.isinf(value) or math.isnan(value):
        return str(value)
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _show(name: str, value: float, signed: bool = False) -> str:
    text = number(value)
    return f"{'+' if signed and value >= 0 else ''}{text}{_UNITS.get(name, '')}"


def _bounds(check: MetricCheck, value: float, signed: bool) -> tuple[Outcome, str]:
    if check.min is not None and value < check.min:
        return "Fail", f"< min {_show(check.name, check.min, signed)}"
    if check.max is not None and value > check.max:
        return "Fail", f"> max {_show(check.name, check.max, signed)}"
    parts = []
    if check.min is not None:
        parts.append(f">= min {_show(check.name, check.min, signed)}")
    if check.max is not None:
        parts.append(f"<= max {_show(check.name, check.max, signed)}")
    return "Pass", " and ".join(parts)


def judge(check: MetricCheck, value: Value, samples: int | None) -> MetricResult:
    """One metric's outcome and message, ignoring minSamples."""
    name = check.name

    def result(outcome: Outcome, message: str, measured: float | None = None) -> MetricResult:
        return MetricResult(name=name, value=measured, stable_value=value.stable,
                            samples=samples, outcome=outcome, message=message)

    if value.error is not None:
        return result("Error", f"{name}: query failed: {value.error}")
    if value.canary is None:
        return result("NoData", f"{name}: no value for the canary")
    if check.compare == "RelativeToStable" and name != DRIFT:
        if value.stable is None:
            return result("NoData", f"{name}: no value for the stable version")
        diff = value.canary - value.stable
        outcome, bound = _bounds(check, diff, signed=True)
        return result(outcome, f"{name} {_show(name, value.canary)} vs stable "
                               f"{_show(name, value.stable)} ({_show(name, diff, True)}) "
                               f"{bound}", diff)
    label = f"{name} PSI" if name == DRIFT else name
    outcome, bound = _bounds(check, value.canary, signed=False)
    return result(outcome, f"{label} {_show(name, value.canary)} {bound}", value.canary)


def evaluate(analysis: Analysis, measured: Measurements) -> Evaluation:
    """The results of every check of *analysis* and the interval's verdict."""
    samples = measured.samples
    results = [judge(check, measured.metrics.get(check.name, Value()), samples)
               for check in analysis.metrics]
    if not results:
        return Evaluation("Pass", [], "no checks")
    if measured.samples_error is not None:
        return Evaluation("Error", results,
                          f"request count query failed: {measured.samples_error}")
    if samples is not None and samples < analysis.min_samples:
        why = f"{samples} canary requests < minSamples {analysis.min_samples}"
        results = [r.model_copy(update={"outcome": "NoData", "message": f"{r.name}: {why}"})
                   for r in results]
        return Evaluation("NoData", results, why)
    for verdict in _PRECEDENCE:
        if any(r.outcome == verdict for r in results):
            return Evaluation(verdict, results, summary(results))
    return Evaluation("Pass", results, summary(results))


def summary(results: Sequence[MetricResult]) -> str:
    """The messages of the results that did not pass, or of all when all passed."""
    worst = [r for r in results if r.outcome != "Pass"] or list(results)
    return ", ".join(r.message or r.name for r in worst) or "no checks"
