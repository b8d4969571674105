"""PromQL for the built-in canary metrics, and rendering of user query templates (pure).

The runtimes (runtimes/slipway_runtimes/metrics.py) label every series with model_name and
model_version; Prometheus adds namespace. Stable and canary serve the same model_name (the
ModelDeployment's name) and differ only in model_version.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

REQUESTS = "slipway_model_requests_total"
DURATION_BUCKET = "slipway_model_request_duration_seconds_bucket"
PREDICTION_BUCKET = "slipway_model_prediction_bucket"

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


def escape(value: str) -> str:
    """*value* as the inside of a double-quoted PromQL string (Go escaping rules)."""
    return (value.replace("\\", "\\\\").replace('"', '\\"')
            .replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t"))


def render(template: str, variables: Mapping[str, str]) -> str:
    """Replace each `{{ name }}` in *template*; a name not in *variables* is a ValueError."""
    unknown = sorted({m.group(1) for m in _PLACEHOLDER.finditer(template)} - variables.keys())
    if unknown:
        raise ValueError(f"unknown placeholder(s) {', '.join(unknown)} in query; "
                         f"known: {', '.join(sorted(variables))}")
    return _PLACEHOLDER.sub(lambda m: variables[m.group(1)], template)


def template_variables(namespace: str, model: str, version: str, stable: str, canary: str,
                       interval: str) -> dict[str, str]:
    """The variables of a user query measuring *version*. Values are escaped, since they
    usually sit inside a quoted label matcher (`model_version="{{version}}"`)."""
    raw = {"namespace": namespace, "name": model, "model": model, "version": version,
           "stableVersion": stable, "canaryVersion": canary, "interval": interval}
    return {k: escape(v) for k, v in raw.items()}


def selector(namespace: str, model: str, version: str, **extra: str) -> str:
    labels = {"namespace": namespace, "model_name": model, "model_version": version, **extra}
    return ",".join(f'{k}="{escape(v)}"' for k, v in labels.items())


def request_rate(namespace: str, model: str, version: str, interval: str) -> str:
    """Requests per second."""
    return f"sum(rate({REQUESTS}{{{selector(namespace, model, version)}}}[{interval}]))"


def error_rate(namespace: str, model: str, version: str, interval: str) -> str:
    """Percent of requests answered 5xx. Empty at zero traffic (the `> 0` filter drops the
    denominator), so no traffic reads as no data rather than 0% or NaN. No 5xx series at all
    (a version that never failed) counts as 0 errors."""
    errors = f"{REQUESTS}{{{selector(namespace, model, version, code='5xx')}}}"
    total = f"{REQUESTS}{{{selector(namespace, model, version)}}}"
    return (f"100 * (sum(rate({errors}[{interval}])) or vector(0))"
            f" / (sum(rate({total}[{interval}])) > 0)")


def latency_p99(namespace: str, model: str, version: str, interval: str) -> str:
    """p99 request latency in milliseconds (NaN, read as no value, at zero traffic)."""
    buckets = f"{DURATION_BUCKET}{{{selector(namespace, model, version)}}}"
    return f"1000 * histogram_quantile(0.99, sum by (le) (rate({buckets}[{interval}])))"


def request_count(namespace: str, model: str, version: str, interval: str) -> str:
    """Requests in the interval: the sample count that minSamples is compared with.

    The difference of the totals now and one interval ago, not increase(): a canary's series
    are born with its first requests, and increase() ignores everything before a series'
    second scrape, which undercounts (or finds nothing in) the first interval at a weight.
    A series absent an interval ago counts from 0; a restarted server is clamped at 0."""
    series = f"{REQUESTS}{{{selector(namespace, model, version)}}}"
    return (f"clamp_min(sum({series}) - (sum({series} offset {interval}) or vector(0)), 0)")


def prediction_buckets(namespace: str, model: str, version: str, interval: str) -> str:
    """Predictions per cumulative `le` bucket in the interval, one series per le (for PSI)."""
    buckets = f"{PREDICTION_BUCKET}{{{selector(namespace, model, version)}}}"
    return f"sum by (le) (increase({buckets}[{interval}]))"


# The built-ins that return one number, by metric name.
SCALAR_BUILTINS = {"error-rate": error_rate, "latency-p99": latency_p99,
                   "request-rate": request_rate}
