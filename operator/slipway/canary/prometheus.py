"""The one piece of the canary package that does I/O: Prometheus instant queries, and
`measure`, which runs an interval's queries concurrently into analysis.Measurements."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Awaitable
from typing import Any, Protocol, TypeVar

import aiohttp

from slipway.api.canary import CanarySpec, MetricCheck
from slipway.canary import queries
from slipway.canary.analysis import DRIFT, Measurements, Value
from slipway.canary.psi import psi

T = TypeVar("T")


class QueryError(Exception):
    """A query that could not be answered: Prometheus' own error text, HTTP or timeout."""


class Querier(Protocol):
    async def query(self, promql: str) -> float | None: ...

    async def query_by(self, promql: str, label: str) -> dict[str, float]: ...


def samples(payload: Any) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of each sample in an /api/v1/query response; QueryError on an error."""
    if not isinstance(payload, dict) or payload.get("status") != "success":
        error = payload.get("error") if isinstance(payload, dict) else None
        kind = payload.get("errorType") if isinstance(payload, dict) else None
        raise QueryError(f"{kind or 'error'}: {error or repr(payload)}"[:1000])
    data: dict[str, Any] = payload.get("data") or {}
    kind = data.get("resultType")
    result: Any = data.get("result")
    if kind not in ("scalar", "vector"):
        raise QueryError(f"result type {kind!r}: the query must return an instant vector or "
                         "a scalar")
    try:
        if kind == "scalar":
            return [({}, float(result[1]))]
        return [(s.get("metric") or {}, float(s["value"][1])) for s in result or []]
    except (TypeError, KeyError, IndexError, ValueError) as exc:
        raise QueryError(f"malformed {kind} in the response: {result!r}"[:1000]) from exc


class PrometheusClient:
    """Instant queries against one Prometheus; `async with` closes the session it opens."""

    def __init__(self, url: str, timeout: float = 10.0,
                 session: aiohttp.ClientSession | None = None) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._session = session
        self._owned = session is None

    async def __aenter__(self) -> PrometheusClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owned and self._session is not None:
            await self._session.close()
            self._session = None

    async def _samples(self, promql: str) -> list[tuple[dict[str, str], float]]:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        form = {"query": promql, "timeout": f"{self.timeout:g}s"}
        try:
            async with self._session.post(f"{self.url}/api/v1/query", data=form,
                                          timeout=aiohttp.ClientTimeout(total=self.timeout)
                                          ) as response:
                status, text = response.status, await response.text()
        except TimeoutError as exc:
            raise QueryError(f"Prometheus did not answer in {self.timeout:g}s") from exc
        except aiohttp.ClientError as exc:
            raise QueryError(f"Prometheus unreachable: {exc}") from exc
        try:
            payload = json.loads(text)
        except ValueError as exc:
            raise QueryError(f"HTTP {status}: {text.strip()[:300]}") from exc
        return samples(payload)

    async def query(self, promql: str) -> float | None:
        """The one number *promql* returns; None for an empty result or NaN (0/0, a quantile
        of no observations): no data, never an index error."""
        found = await self._samples(promql)
        if len(found) > 1:
            raise QueryError(f"the query returned {len(found)} series, expected one number "
                             "(aggregate it, e.g. with sum())")
        if not found or math.isnan(found[0][1]):
            return None
        return found[0][1]

    async def query_by(self, promql: str, label: str) -> dict[str, float]:
        """Each series' value keyed by its *label* (e.g. `le` of histogram buckets)."""
        out = {}
        for labels, value in await self._samples(promql):
            if label not in labels:
                raise QueryError(f"a series of the result has no label {label!r}")
            out[labels[label]] = value
        return out


async def _all(*awaitables: Awaitable[T]) -> list[T]:
    """gather() that lets every query finish before re-raising the first failure."""
    out: list[T] = []
    for item in await asyncio.gather(*awaitables, return_exceptions=True):
        if isinstance(item, BaseException):
            raise item
        out.append(item)
    return out


async def _drift(client: Querier, namespace: str, model: str, stable: str, canary: str,
                 window: str) -> float | None:
    ours, theirs = await _all(
        *(client.query_by(queries.prediction_buckets(namespace, model, v, window), "le")
          for v in (canary, stable)))
    if not ours or not theirs:
        return None  # a version without predictions in the window: no data
    return psi(ours, theirs)


def _promql(check: MetricCheck, namespace: str, model: str, version: str, stable: str,
            canary: str, window: str) -> str:
    """The query measuring *version*: the check's own template, else the built-in."""
    if check.query is not None:
        return queries.render(check.query, queries.template_variables(
            namespace, model, version, stable, canary, window))
    builtin = queries.SCALAR_BUILTINS.get(check.name)
    if builtin is None:
        raise ValueError(f"{check.name} is not a built-in metric and has no query")
    return builtin(namespace, model, version, window)


async def _check(client: Querier, check: MetricCheck, namespace: str, model: str,
                 stable: str, canary: str, window: str) -> Value:
    try:
        if check.name == DRIFT and check.query is None:
            return Value(canary=await _drift(client, namespace, model, stable, canary, window))
        versions = [canary]
        if check.compare == "RelativeToStable" and check.name != DRIFT:
            versions.append(stable)
        promql = [_promql(check, namespace, model, v, stable, canary, window) for v in versions]
        values = await _all(*(client.query(q) for q in promql))
    except (QueryError, ValueError) as exc:  # ValueError: a bad template, mismatched buckets
        return Value(error=str(exc))
    return Value(canary=values[0], stable=values[1] if len(values) > 1 else None)


async def _count(client: Querier, namespace: str, model: str, canary: str, window: str,
                 needed: bool) -> tuple[int | None, str | None]:
    """The canary's request count, or why it could not be measured."""
    if not needed:
        return None, None
    try:
        value = await client.query(queries.request_count(namespace, model, canary, window))
    except QueryError as exc:
        return None, str(exc)
    return (round(value) if value is not None else 0), None  # no series yet: no requests


async def measure(client: Querier, spec: CanarySpec, namespace: str, model: str, stable: str,
                  canary: str, interval: str) -> Measurements:
    """Run every check of *spec* over the window *interval* (a check's own interval wins), and
    the canary's request count when minSamples needs it, all at once."""
    checks = spec.analysis.metrics
    values, (count, count_error) = await asyncio.gather(
        asyncio.gather(*(_check(client, c, namespace, model, stable, canary,
                                c.interval or interval) for c in checks)),
        _count(client, namespace, model, canary, interval,
               needed=bool(checks) and spec.analysis.min_samples > 0))
    return Measurements({c.name: v for c, v in zip(checks, values, strict=True)},
                        count, count_error)
