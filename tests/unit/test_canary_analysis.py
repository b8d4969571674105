"""Judging one analysis interval, and measuring it through a fake Prometheus."""

from __future__ import annotations

from typing import Any

import pytest

from slipway.api.canary import Analysis, CanarySpec, MetricCheck
from slipway.canary import queries
from slipway.canary.analysis import Measurements, Value, evaluate, judge, number, summary
from slipway.canary.prometheus import QueryError, measure


def check(name: str, **kw: Any) -> MetricCheck:
    return MetricCheck(name=name, **kw)


def analysis(*checks: MetricCheck, **kw: Any) -> Analysis:
    return Analysis(metrics=list(checks), **kw)


ERR = check("error-rate", max=5)
P99 = check("latency-p99", max=100)


def test_number_reads_like_a_person_wrote_it() -> None:
    assert [number(v) for v in (0.1, 7.1, 12.0, 1234.4, 0.000123, -2.5)] == \
        ["0.1", "7.1", "12", "1234", "0.000123", "-2.5"]


def test_all_pass() -> None:
    out = evaluate(analysis(ERR, P99), Measurements(
        {"error-rate": Value(0.1), "latency-p99": Value(12.0)}, samples=500))
    assert out.verdict == "Pass"
    assert [r.outcome for r in out.results] == ["Pass", "Pass"]
    assert out.message == "error-rate 0.1% <= max 5%, latency-p99 12 ms <= max 100 ms"
    assert out.results[0].samples == 500 and out.results[0].value == 0.1


def test_out_of_bounds_fails_with_the_reason_in_words() -> None:
    out = evaluate(analysis(ERR, P99), Measurements(
        {"error-rate": Value(7.1), "latency-p99": Value(12.0)}, samples=500))
    assert out.verdict == "Fail"
    assert out.message == "error-rate 7.1% > max 5%"  # only what did not pass


def test_min_bound() -> None:
    rate = check("request-rate", min=1, max=1000)
    result = judge(rate, Value(0.5), 30)
    assert (result.outcome, result.message) == ("Fail", "request-rate 0.5 req/s < min 1 req/s")
    assert judge(rate, Value(2), 30).message == \
        "request-rate 2 req/s >= min 1 req/s and <= max 1000 req/s"


def test_too_few_samples_is_no_data_whatever_the_values() -> None:
    out = evaluate(analysis(ERR, min_samples=20), Measurements(
        {"error-rate": Value(100.0)}, samples=12))
    assert out.verdict == "NoData"
    assert out.message == "12 canary requests < minSamples 20"
    assert out.results[0].outcome == "NoData" and out.results[0].value == 100.0


def test_min_samples_zero_judges_any_count() -> None:
    out = evaluate(analysis(ERR, min_samples=0), Measurements({"error-rate": Value(1.0)}))
    assert out.verdict == "Pass"


def test_unknown_sample_count_is_an_error() -> None:
    out = evaluate(analysis(ERR), Measurements({"error-rate": Value(1.0)},
                                               samples_error="connection refused"))
    assert out.verdict == "Error"
    assert "request count query failed: connection refused" in out.message


def test_query_error_is_an_error() -> None:
    out = evaluate(analysis(ERR, P99), Measurements(
        {"error-rate": Value(1.0), "latency-p99": Value(error="bad_data: parse error")},
        samples=100))
    assert out.verdict == "Error"
    assert out.message == "latency-p99: query failed: bad_data: parse error"


def test_a_definite_fail_wins_over_an_error() -> None:
    out = evaluate(analysis(ERR, P99), Measurements(
        {"error-rate": Value(50.0), "latency-p99": Value(error="timeout")}, samples=100))
    assert out.verdict == "Fail"
    assert [r.outcome for r in out.results] == ["Fail", "Error"]


def test_error_wins_over_no_value() -> None:
    out = evaluate(analysis(ERR, P99), Measurements(
        {"error-rate": Value(None), "latency-p99": Value(error="timeout")}, samples=100))
    assert out.verdict == "Error"


def test_a_metric_without_value_is_no_data() -> None:
    out = evaluate(analysis(ERR, P99), Measurements(
        {"error-rate": Value(0.0), "latency-p99": Value(None)}, samples=100))
    assert out.verdict == "NoData"
    assert out.message == "latency-p99: no value for the canary"


def test_a_metric_never_measured_is_no_data() -> None:
    out = evaluate(analysis(ERR), Measurements({}, samples=100))
    assert out.verdict == "NoData"


def test_no_checks_pass() -> None:
    out = evaluate(analysis(), Measurements())
    assert (out.verdict, out.results, out.message) == ("Pass", [], "no checks")


def test_relative_to_stable_bounds_the_difference() -> None:
    rel = check("error-rate", max=1, compare="RelativeToStable")
    worse = judge(rel, Value(3.5, 2.0), 100)
    assert worse.outcome == "Fail" and worse.value == 1.5 and worse.stable_value == 2.0
    assert worse.message == "error-rate 3.5% vs stable 2% (+1.5%) > max +1%"
    better = judge(rel, Value(0.5, 2.0), 100)
    assert better.outcome == "Pass" and better.value == -1.5
    assert judge(rel, Value(0.5, None), 100).outcome == "NoData"


def test_relative_latency_with_a_min_bound() -> None:
    rel = check("latency-p99", min=-50, max=20, compare="RelativeToStable")
    assert judge(rel, Value(130, 100), 100).message == \
        "latency-p99 130 ms vs stable 100 ms (+30 ms) > max +20 ms"


def test_prediction_drift_compares_the_psi() -> None:
    drift = check("prediction-drift", max=0.25, compare="RelativeToStable")  # compare ignored
    shifted = judge(drift, Value(0.31), 100)
    assert (shifted.outcome, shifted.message) == ("Fail", "prediction-drift PSI 0.31 > max 0.25")
    assert judge(drift, Value(0.02), 100).outcome == "Pass"
    assert judge(drift, Value(None), 100).outcome == "NoData"


def test_summary_of_nothing() -> None:
    assert summary([]) == "no checks"


# ---- measure(), against a fake Prometheus ----

class FakePrometheus:
    """Answers by the first substring of the query found in `answers`; records queries."""

    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers
        self.seen: list[str] = []

    def _answer(self, promql: str) -> Any:
        self.seen.append(promql)
        for part, answer in self.answers.items():
            if part in promql:
                if isinstance(answer, Exception):
                    raise answer
                return answer
        return None

    async def query(self, promql: str) -> float | None:
        value = self._answer(promql)
        assert value is None or isinstance(value, float)
        return value

    async def query_by(self, promql: str, label: str) -> dict[str, float]:
        assert label == "le"
        return dict(self._answer(promql) or {})


def spec(*checks: MetricCheck, **kw: Any) -> CanarySpec:
    return CanarySpec(target_ref={"name": "iris"}, steps=[10, 50], interval="1m",
                      analysis=Analysis(metrics=list(checks), **kw))


def version(v: str) -> str:
    return f'model_version="{v}"'


async def run(fake: FakePrometheus, s: CanarySpec) -> Measurements:
    return await measure(fake, s, "ml", "iris", "v1", "v2", "1m")


async def test_measure_builtins_and_the_sample_count() -> None:
    fake = FakePrometheus({
        'code="5xx"': 1.5,
        "histogram_quantile": 42.0,
        "clamp_min(sum(slipway_model_requests_total": 120.4,
    })
    m = await run(fake, spec(ERR, P99))
    assert m == Measurements({"error-rate": Value(1.5), "latency-p99": Value(42.0)}, 120)
    assert queries.error_rate("ml", "iris", "v2", "1m") in fake.seen
    assert all(version("v1") not in q for q in fake.seen)  # Absolute: canary only
    assert evaluate(spec(ERR, P99).analysis, m).verdict == "Pass"


async def test_measure_relative_to_stable_queries_both_versions() -> None:
    fake = FakePrometheus({f'{version("v2")},code="5xx"': 3.0,
                           f'{version("v1")},code="5xx"': 1.0})
    m = await run(fake, spec(check("error-rate", max=1, compare="RelativeToStable"),
                             min_samples=0))
    assert m.metrics["error-rate"] == Value(3.0, 1.0)
    assert m.samples is None  # minSamples 0: not queried
    assert not any("clamp_min(sum(slipway_model_requests_total" in q for q in fake.seen)


async def test_measure_uses_a_checks_own_interval() -> None:
    fake = FakePrometheus({})
    await run(fake, spec(check("request-rate", min=1, interval="5m"), min_samples=0))
    assert fake.seen == [queries.request_rate("ml", "iris", "v2", "5m")]


async def test_measure_renders_templates_per_version() -> None:
    q = 'my_metric{ns="{{namespace}}",v="{{version}}",other="{{stableVersion}}"}[{{interval}}]'
    fake = FakePrometheus({'v="v2"': 0.9, 'v="v1"': 0.95})
    m = await run(fake, spec(check("accuracy", query=q, min=-0.1, compare="RelativeToStable"),
                             min_samples=0))
    assert sorted(fake.seen) == ['my_metric{ns="ml",v="v1",other="v1"}[1m]',
                                 'my_metric{ns="ml",v="v2",other="v1"}[1m]']
    assert m.metrics["accuracy"] == Value(0.9, 0.95)
    assert evaluate(spec().analysis.model_copy(update={"min_samples": 0}), m).verdict == "Pass"


async def test_measure_a_bad_template_is_an_error_not_a_crash() -> None:
    m = await run(FakePrometheus({}), spec(check("x", query="up{v='{{vers}}'}", max=1),
                                           min_samples=0))
    assert m.metrics["x"].error is not None and "vers" in m.metrics["x"].error


async def test_measure_a_custom_name_without_query_is_an_error() -> None:
    m = await run(FakePrometheus({}), spec(check("accuracy", min=0.9), min_samples=0))
    assert m.metrics["accuracy"] == Value(error="accuracy is not a built-in metric and has "
                                                "no query")


async def test_measure_query_errors_are_kept_per_metric() -> None:
    fake = FakePrometheus({"histogram_quantile": QueryError("bad_data: boom"),
                           'code="5xx"': 0.0, "clamp_min(": 100.0})
    m = await run(fake, spec(ERR, P99))
    assert m.metrics["latency-p99"] == Value(error="bad_data: boom")
    assert m.metrics["error-rate"] == Value(0.0)
    out = evaluate(spec(ERR, P99).analysis, m)
    assert out.verdict == "Error"


async def test_measure_sample_count_failure() -> None:
    fake = FakePrometheus({"clamp_min(": QueryError("timeout"), 'code="5xx"': 0.0})
    m = await run(fake, spec(ERR))
    assert (m.samples, m.samples_error) == (None, "timeout")


async def test_measure_no_request_series_means_zero_samples() -> None:
    m = await run(FakePrometheus({}), spec(ERR))
    assert m.samples == 0
    assert evaluate(spec(ERR).analysis, m).verdict == "NoData"


async def test_measure_no_checks_queries_nothing() -> None:
    fake = FakePrometheus({})
    assert await run(fake, spec()) == Measurements()
    assert fake.seen == []


def histogram(counts: list[float]) -> dict[str, float]:
    out, running = {}, 0.0
    for le, c in zip(("0.5", "1", "+Inf"), counts, strict=True):
        running += c
        out[le] = running
    return out


@pytest.mark.parametrize("canary, stable, expected", [
    (histogram([50, 30, 20]), histogram([50, 30, 20]), Value(0.0)),
    ({}, histogram([50, 30, 20]), Value(None)),              # no canary predictions: no data
    (histogram([0, 0, 0]), histogram([50, 30, 20]), Value(None)),
])
async def test_measure_prediction_drift(canary: dict[str, float], stable: dict[str, float],
                                        expected: Value) -> None:
    fake = FakePrometheus({"requests_total": 100.0, version("v2"): canary,
                           version("v1"): stable})
    m = await run(fake, spec(check("prediction-drift", max=0.25)))
    assert m.metrics["prediction-drift"] == expected


async def test_measure_prediction_drift_with_different_buckets_is_an_error() -> None:
    fake = FakePrometheus({"requests_total": 100.0, version("v2"): {"1": 1.0, "+Inf": 2.0},
                           version("v1"): histogram([1, 2, 3])})
    m = await run(fake, spec(check("prediction-drift", max=0.25)))
    error = m.metrics["prediction-drift"].error
    assert error is not None and "different buckets" in error
