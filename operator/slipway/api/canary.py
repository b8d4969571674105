"""Canary: a metric-gated, step-by-step rollout of a new model version of a ModelDeployment.

The anchors are Flagger (interval, threshold, stepWeight/maxWeight, metric templates) and
Argo Rollouts (explicit steps, consecutive-error limit, inconclusive pauses for a human,
promote/abort/retry). What neither has: a prediction-drift gate, comparisons relative to the
stable version, an explicit no-data policy with a minimum sample count.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, model_validator

from slipway.api.common import ApiModel, Condition, CRDInfo, PrinterColumn
from slipway.api.modeldeployment import DNS_1123, ResolvedModel

# At most 6 digits: what CEL's duration() and Python's timedelta parse without overflow
# (999999h is 114 years).
DURATION = r"^[0-9]{1,6}(ms|s|m|h)$"
BUILTIN_METRICS: tuple[str, ...] = ("error-rate", "latency-p99", "request-rate",
                                    "prediction-drift")
MAX_STEPS = 20
# Shorter steps than a few Prometheus scrapes measure nothing.
MIN_INTERVAL_SECONDS = 5
MAX_METRICS = 20
# The annotation a person (or `slipway canary VERB`) sets to act on a rollout.
ACTION_ANNOTATION = "slipway.dev/canary-action"
Action = Literal["promote", "promote-full", "pause", "resume", "abort", "retry"]
ACTIONS: tuple[str, ...] = ("promote", "promote-full", "pause", "resume", "abort", "retry")

NoDataPolicy = Literal["fail", "pause", "ignore"]
Compare = Literal["Absolute", "RelativeToStable"]


def duration_seconds(text: str) -> float:
    """Seconds in a DURATION (500ms, 30s, 1m, 2h)."""
    match = re.fullmatch(r"([0-9]+)(ms|s|m|h)", text)
    if match is None:
        raise ValueError(f"not a duration: {text!r}")
    return int(match[1]) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[match[2]]


class TargetRef(ApiModel):
    """The ModelDeployment whose new model versions this Canary rolls out."""

    kind: Literal["ModelDeployment"] = Field("ModelDeployment",
                                             description="Always ModelDeployment.")
    name: str = Field(min_length=1, max_length=253, pattern=DNS_1123,
                      description="Name of the ModelDeployment, in the Canary's namespace.")


class MetricCheck(ApiModel):
    """One check run at every analysis interval against the canary version."""

    model_config = ApiModel.model_config | {"json_schema_extra": {"x-kubernetes-validations": [
        {"rule": "has(self.query) || self.name in ['error-rate', 'latency-p99', "
                 "'request-rate', 'prediction-drift']",
         "message": "spec.analysis.metrics[].query is required unless name is a built-in "
                    "metric (error-rate, latency-p99, request-rate, prediction-drift)",
         "fieldPath": ".query"},
        {"rule": "has(self.min) || has(self.max)",
         "message": "spec.analysis.metrics[] needs min, max or both", "fieldPath": ".max"},
        {"rule": "!has(self.min) || !has(self.max) || self.min <= self.max",
         "message": "spec.analysis.metrics[].min must be less than or equal to max",
         "fieldPath": ".min"},
    ]}}

    name: str = Field(
        min_length=1, max_length=63, pattern=DNS_1123,
        description="A built-in metric (error-rate: % of requests answered 5xx; latency-p99: "
                    "p99 request latency in ms; request-rate: requests per second; "
                    "prediction-drift: population stability index of the canary's "
                    "predictions against the stable version's) or any name with a query.")
    query: str | None = Field(
        None, min_length=1, max_length=4096,
        description="PromQL returning one number. Templated with {{namespace}}, {{name}} "
                    "(the ModelDeployment), {{model}}, {{version}} (the version being "
                    "measured), {{stableVersion}}, {{canaryVersion}} and {{interval}}.")
    min: float | None = Field(None, description="Fail the check when the value is below.")
    max: float | None = Field(None, description="Fail the check when the value is above.")
    interval: str | None = Field(
        None, pattern=DURATION,
        description="Range of the query's rate windows, e.g. 1m. Defaults to spec.interval.")
    compare: Compare = Field(
        "Absolute",
        description="Absolute: min/max bound the canary's value. RelativeToStable: they bound "
                    "canary minus stable (e.g. max: 1 on error-rate = at most one point worse "
                    "than the stable version). Not for prediction-drift, which always "
                    "compares the two.")


class Analysis(ApiModel):
    """How each step is judged."""

    threshold: int = Field(
        3, ge=1, le=100,
        description="Failed checks (an interval in which some metric is out of bounds) "
                    "before the rollout is rolled back.")
    metrics: list[MetricCheck] = Field(
        default_factory=list, max_length=MAX_METRICS,
        description="The checks, one per name. Empty: the rollout advances on schedule, with "
                    "no analysis.",
        # A map keyed by name: the apiserver itself refuses a duplicate name.
        json_schema_extra={"x-kubernetes-list-type": "map",
                           "x-kubernetes-list-map-keys": ["name"]})

    @model_validator(mode="after")
    def _unique_names(self) -> Analysis:
        names = [m.name for m in self.metrics]
        if len(names) != len(set(names)):
            raise ValueError("spec.analysis.metrics names must be unique")
        return self
    min_samples: int = Field(
        20, ge=0, le=1_000_000,
        description="Canary requests needed in an interval before its checks count; fewer "
                    "makes the interval 'no data'.")
    no_data: NoDataPolicy = Field(
        "pause",
        description="What an interval without enough data does: fail (counts as a failed "
                    "check), pause (waits for a person, as an inconclusive analysis does in "
                    "Argo Rollouts) or ignore (the step does not advance; it is tried again).")
    consecutive_error_limit: int = Field(
        4, ge=1, le=100,
        description="Intervals in a row whose queries fail (Prometheus down, a bad query) "
                    "before the rollout pauses. Kept apart from threshold: a flaky metrics "
                    "backend is not a bad model.")


class CanarySpec(ApiModel):
    """The target, the schedule of traffic weights and the analysis."""

    model_config = ApiModel.model_config | {"json_schema_extra": {"x-kubernetes-validations": [
        {"rule": "has(self.steps) != has(self.stepWeight)",
         "message": "set exactly one of spec.steps and spec.stepWeight", "fieldPath": ".steps"},
        {"rule": "!has(self.stepWeight) || self.stepWeight <= self.maxWeight",
         "message": "spec.stepWeight must be at most spec.maxWeight",
         "fieldPath": ".stepWeight"},
        {"rule": "!has(self.steps) || (self.steps.isSorted() && "
                 "self.steps.all(w, self.steps.filter(x, x == w).size() == 1))",
         "message": "spec.steps must be strictly increasing", "fieldPath": ".steps"},
        # Guarded: duration() of a malformed value is a runtime error, reported on `spec` as
        # "type conversion error ... evaluating rule" next to the pattern's own error.
        {"rule": f"!self.interval.matches('{DURATION}') || "
                 f"duration(self.interval) >= duration('{MIN_INTERVAL_SECONDS}s')",
         "message": f"spec.interval must be at least {MIN_INTERVAL_SECONDS}s",
         "fieldPath": ".interval"},
    ]}}

    target_ref: TargetRef = Field(description="The ModelDeployment this Canary governs.")
    interval: str = Field("1m", pattern=DURATION,
                          description="How long each step runs before it is judged.")
    step_weight: int | None = Field(
        None, ge=1, le=100,
        description="Percent of traffic added to the canary at each step, up to maxWeight.")
    max_weight: int = Field(
        50, ge=1, le=100,
        description="With stepWeight: the last weight tried before promotion.")
    steps: list[int] | None = Field(
        None, min_length=1, max_length=MAX_STEPS,
        description="Explicit canary weights, e.g. [1, 5, 25, 50], strictly increasing; the "
                    "rollout promotes after the last one passes.",
        json_schema_extra={"items": {"type": "integer", "minimum": 1, "maximum": 100}})
    progress_deadline_seconds: int = Field(
        600, ge=30, le=86_400,
        description="How long the canary may take to become Ready before the rollout fails.")
    skip_analysis: bool = Field(
        False, description="Promote without running the steps (an emergency fix).")
    paused: bool = Field(
        False, description="Hold the rollout at its current weight until set back to false "
                           "(the GitOps equivalent of `slipway canary pause`).")
    analysis: Analysis = Field(default_factory=Analysis,
                               description="How each step is judged.")

    @model_validator(mode="after")
    def _schedule(self) -> CanarySpec:
        if (self.steps is None) == (self.step_weight is None):
            raise ValueError("set exactly one of spec.steps and spec.stepWeight")
        if self.step_weight is not None and self.step_weight > self.max_weight:
            raise ValueError("spec.stepWeight must be at most spec.maxWeight")
        if duration_seconds(self.interval) < MIN_INTERVAL_SECONDS:
            raise ValueError(f"spec.interval must be at least {MIN_INTERVAL_SECONDS}s")
        if self.steps is not None:
            if any(not 1 <= w <= 100 for w in self.steps):
                raise ValueError("spec.steps must be between 1 and 100")
            if any(b <= a for a, b in zip(self.steps, self.steps[1:], strict=False)):
                raise ValueError("spec.steps must be strictly increasing")
        return self

    def weights(self) -> list[int]:
        """The canary weight of each step, in order."""
        if self.steps is not None:
            return list(self.steps)
        assert self.step_weight is not None
        out = list(range(self.step_weight, self.max_weight + 1, self.step_weight))
        return out if out and out[-1] == self.max_weight else [*out, self.max_weight]


Phase = Literal["Initializing", "Idle", "Progressing", "Paused", "Promoting", "Succeeded",
                "RolledBack", "Aborted", "Failed"]
Outcome = Literal["Pass", "Fail", "NoData", "Error"]


class MetricResult(ApiModel):
    """What one check measured at the last analysis."""

    name: str = Field(description="The metric.")
    value: float | None = Field(None, description="The canary's value (or canary - stable).")
    stable_value: float | None = Field(None, description="The stable version's value.")
    samples: int | None = Field(None, description="Canary requests in the interval.")
    outcome: Outcome = Field(description="Pass, Fail, NoData or Error.")
    message: str | None = Field(None, description="Why, in words.")


class RolloutRecord(ApiModel):
    """One finished rollout, newest first in status.history."""

    version: str = Field(description="The version that was rolled out.")
    outcome: str = Field(description="Succeeded, RolledBack, Aborted, Failed or Cancelled.")
    reason: str | None = Field(None, description="What decided it.")
    started_at: str | None = Field(None, description="When the rollout began.")
    finished_at: str | None = Field(None, description="When it ended.")
    duration_seconds: float | None = Field(None, description="How long it took.")
    source: str | None = Field(None, description="Where the version came from, e.g. "
                                                 "TrainingJob/<name>.")


class CanaryStatus(ApiModel):
    phase: Phase | None = Field(
        None, description="Initializing, Idle (no rollout), Progressing, Paused, Promoting, "
                          "Succeeded, RolledBack, Aborted or Failed.")
    message: str | None = Field(None, description="What the rollout is doing, in words.")
    stable_version: str | None = Field(None, description="The version serving most traffic.")
    canary_version: str | None = Field(None, description="The version being rolled out.")
    canary_weight: int | None = Field(None, description="Percent of traffic on the canary.")
    step: int | None = Field(None, description="Index of the current step in the schedule.")
    failed_checks: int | None = Field(None, description="Failed checks of this rollout.")
    consecutive_errors: int | None = Field(
        None, description="Analyses in a row whose queries could not run.")
    step_started_at: str | None = Field(None, description="When the current step began.")
    rollout_started_at: str | None = Field(None, description="When this rollout began.")
    last_analysis: list[MetricResult] | None = Field(
        None, description="Each metric's value and outcome at the last analysis.")
    last_analysis_time: str | None = Field(None, description="When the last analysis ran.")
    last_action: str | None = Field(None, description="The last manual action handled.")
    stable_model: ResolvedModel | None = Field(
        None, description="The stable model (URI, format, runtime, source): what the "
                          "ModelDeployment's own InferenceService serves.")
    canary_model: ResolvedModel | None = Field(
        None, description="The model being rolled out, with where it came from.")
    history: list[RolloutRecord] | None = Field(
        None, description="The last rollouts, newest first.")
    conditions: list[Condition] | None = Field(None, description="Promoted, Analysis.")
    observed_generation: int | None = Field(None, description="Generation last reconciled.")


CRD = CRDInfo(
    kind="Canary",
    plural="canaries",
    short_names=("canary",),
    spec_model=CanarySpec,
    status_model=CanaryStatus,
    description="Canary rolls out a new model version of a ModelDeployment step by step, "
                "judged on live metrics: promoted when good, rolled back when not.",
    printer_columns=(
        PrinterColumn("Phase", ".status.phase"),
        PrinterColumn("Stable", ".status.stableVersion"),
        PrinterColumn("Canary", ".status.canaryVersion"),
        PrinterColumn("Weight", ".status.canaryWeight", "integer",
                      description="Percent of traffic on the canary."),
        PrinterColumn("Failed", ".status.failedChecks", "integer",
                      description="Failed checks of this rollout."),
        PrinterColumn("Last Check", ".status.lastAnalysisTime", "date",
                      description="When the last analysis ran."),
        PrinterColumn("Age", ".metadata.creationTimestamp", "date"),
        PrinterColumn("Target", ".spec.targetRef.name", priority=1),
        PrinterColumn("Message", ".status.message", priority=1),
    ),
)
