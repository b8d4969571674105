"""PromQL of the built-in canary metrics, query templates, and the Prometheus client."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer as LoopbackServer

from slipway.canary import queries
from slipway.canary.prometheus import PrometheusClient, QueryError, samples

SEL = 'namespace="ml",model_name="iris",model_version="v2"'


def test_render_both_spellings() -> None:
    out = queries.render('x{ns="{{namespace}}",v="{{ version }}"}[{{interval}}] {{version}}',
                         {"namespace": "ml", "version": "v2", "interval": "1m"})
    assert out == 'x{ns="ml",v="v2"}[1m] v2'


def test_render_is_not_recursive() -> None:
    assert queries.render("{{a}}", {"a": "{{b}}"}) == "{{b}}"


def test_render_names_unknown_placeholders() -> None:
    with pytest.raises(ValueError, match=r"unknown placeholder\(s\) modle, verison") as info:
        queries.render("{{modle}} {{ verison }} {{model}}", {"model": "iris"})
    assert "known: model" in str(info.value)


def test_render_leaves_other_braces_alone() -> None:
    assert queries.render("sum(x{a='b'}) {{ }}", {}) == "sum(x{a='b'}) {{ }}"


def test_escape_for_promql_strings() -> None:
    assert queries.escape('a"b\\c\nd') == 'a\\"b\\\\c\\nd'


def test_template_variables_are_escaped() -> None:
    v = queries.template_variables("ml", "iris", 'v"2', "v1", 'v"2', "30s")
    assert v == {"namespace": "ml", "name": "iris", "model": "iris", "version": 'v\\"2',
                 "stableVersion": "v1", "canaryVersion": 'v\\"2', "interval": "30s"}


def test_selector_escapes_label_values() -> None:
    assert queries.selector("ml", "iris", 'a"b\\') == \
        'namespace="ml",model_name="iris",model_version="a\\"b\\\\"'


def test_request_rate() -> None:
    assert queries.request_rate("ml", "iris", "v2", "1m") == \
        f"sum(rate(slipway_model_requests_total{{{SEL}}}[1m]))"


def test_error_rate_counts_5xx_and_is_empty_at_zero_traffic() -> None:
    q = queries.error_rate("ml", "iris", "v2", "1m")
    assert q == (f'100 * (sum(rate(slipway_model_requests_total{{{SEL},code="5xx"}}[1m]))'
                 f" or vector(0))"
                 f" / (sum(rate(slipway_model_requests_total{{{SEL}}}[1m])) > 0)")


def test_latency_p99_in_milliseconds() -> None:
    assert queries.latency_p99("ml", "iris", "v2", "2m") == (
        "1000 * histogram_quantile(0.99, sum by (le) "
        f"(rate(slipway_model_request_duration_seconds_bucket{{{SEL}}}[2m])))")


def test_request_count() -> None:
    series = f"slipway_model_requests_total{{{SEL}}}"
    assert queries.request_count("ml", "iris", "v2", "1m") == \
        f"clamp_min(sum({series}) - (sum({series} offset 1m) or vector(0)), 0)"


def test_prediction_buckets() -> None:
    assert queries.prediction_buckets("ml", "iris", "v2", "1m") == \
        f"sum by (le) (increase(slipway_model_prediction_bucket{{{SEL}}}[1m]))"


def vector(*items: tuple[dict[str, str], str]) -> dict[str, Any]:
    return {"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": m, "value": [1700000000.0, v]} for m, v in items]}}


def test_samples_of_a_vector_and_a_scalar() -> None:
    assert samples(vector(({"le": "1"}, "3"), ({"le": "+Inf"}, "4.5"))) == \
        [({"le": "1"}, 3.0), ({"le": "+Inf"}, 4.5)]
    assert samples({"status": "success",
                    "data": {"resultType": "scalar", "result": [1.0, "2"]}}) == [({}, 2.0)]
    assert samples(vector()) == []


@pytest.mark.parametrize("payload, text", [
    ({"status": "error", "errorType": "bad_data", "error": "parse error at char 5"},
     "bad_data: parse error at char 5"),
    ({"status": "success", "data": {"resultType": "matrix", "result": []}}, "'matrix'"),
    ({"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}}]}},
     "malformed vector"),
    ({"status": "success", "data": {"resultType": "scalar", "result": None}},
     "malformed scalar"),
    ([1, 2], "error"),
])
def test_samples_errors(payload: Any, text: str) -> None:
    with pytest.raises(QueryError, match=text):
        samples(payload)


Handler = Callable[[web.Request], Any]


@pytest.fixture
async def prometheus() -> AsyncIterator[tuple[PrometheusClient, dict[str, Any]]]:
    """A loopback server answering /api/v1/query with what the test puts in `answer`."""
    answer: dict[str, Any] = {"status": 200, "body": vector(), "delay": 0.0}

    async def query(request: web.Request) -> web.Response:
        answer["query"] = (await request.post())["query"]
        await asyncio.sleep(answer["delay"])
        body = answer["body"]
        text = body if isinstance(body, str) else json.dumps(body)
        return web.Response(status=answer["status"], text=text)

    app = web.Application()
    app.router.add_post("/api/v1/query", query)
    server = LoopbackServer(app)
    await server.start_server()
    async with PrometheusClient(str(server.make_url("/")), timeout=0.5) as client:
        yield client, answer
    await server.close()


async def test_client_returns_the_one_number(
        prometheus: tuple[PrometheusClient, dict[str, Any]]) -> None:
    client, answer = prometheus
    answer["body"] = vector(({}, "0.25"))
    assert await client.query("sum(up)") == 0.25
    assert answer["query"] == "sum(up)"


@pytest.mark.parametrize("body", [vector(), vector(({}, "NaN"))])
async def test_client_reads_empty_or_nan_as_no_value(
        prometheus: tuple[PrometheusClient, dict[str, Any]], body: dict[str, Any]) -> None:
    client, answer = prometheus
    answer["body"] = body
    assert await client.query("q") is None


async def test_client_refuses_several_series(
        prometheus: tuple[PrometheusClient, dict[str, Any]]) -> None:
    client, answer = prometheus
    answer["body"] = vector(({"pod": "a"}, "1"), ({"pod": "b"}, "2"))
    with pytest.raises(QueryError, match="2 series"):
        await client.query("q")


async def test_client_query_by_label(
        prometheus: tuple[PrometheusClient, dict[str, Any]]) -> None:
    client, answer = prometheus
    answer["body"] = vector(({"le": "1"}, "3"), ({"le": "+Inf"}, "5"))
    assert await client.query_by("q", "le") == {"1": 3.0, "+Inf": 5.0}
    with pytest.raises(QueryError, match="no label 'pod'"):
        await client.query_by("q", "pod")


async def test_client_passes_prometheus_error_text(
        prometheus: tuple[PrometheusClient, dict[str, Any]]) -> None:
    client, answer = prometheus
    answer["status"] = 400
    answer["body"] = {"status": "error", "errorType": "bad_data",
                      "error": '1:5: parse error: unexpected "}"'}
    with pytest.raises(QueryError, match='bad_data: 1:5: parse error: unexpected "}"'):
        await client.query("q")


async def test_client_reports_a_non_json_answer(
        prometheus: tuple[PrometheusClient, dict[str, Any]]) -> None:
    client, answer = prometheus
    answer["status"], answer["body"] = 502, "Bad Gateway"
    with pytest.raises(QueryError, match="HTTP 502: Bad Gateway"):
        await client.query("q")


async def test_client_times_out(prometheus: tuple[PrometheusClient, dict[str, Any]]) -> None:
    client, answer = prometheus
    answer["delay"] = 2.0
    with pytest.raises(QueryError, match=r"did not answer in 0.5s"):
        await client.query("q")


async def test_client_unreachable() -> None:
    async with PrometheusClient("http://127.0.0.1:9", timeout=2) as client:
        with pytest.raises(QueryError, match="unreachable"):
            await client.query("q")
