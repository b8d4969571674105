"""slipway.devcluster.load against a tiny aiohttp model server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from slipway.devcluster.load import (
    LoadReport,
    check_loopback,
    load_in_background,
    make_payloads,
    run_load,
)

HOST = "churn.team-a.example.com"
FAIL_EVERY = 5  # the server answers 500 to every 5th request


@dataclass
class FakeModelServer:
    """V1/V2 endpoints answering prediction 1 per row, header x-backend: blue, and 500 for every
    FAIL_EVERY-th request; the model "slow" answers after 1 s."""

    url: str = ""
    seen: list[tuple[str, str, Any]] = field(default_factory=list)  # (path, Host, body)
    count: int = 0

    async def _answer(self, request: web.Request, rows: int, v2: bool) -> web.Response:
        self.count += 1
        self.seen.append((request.path, request.headers.get("Host", ""), await request.json()))
        if request.match_info["name"] == "slow":
            await asyncio.sleep(1.0)
        if self.count % FAIL_EVERY == 0:
            return web.json_response({"error": "boom"}, status=500)
        out = [1] * rows
        body: dict[str, Any] = (
            {"outputs": [{"name": "output-0", "shape": [rows], "datatype": "INT64", "data": out}]}
            if v2
            else {"predictions": out}
        )
        return web.json_response(body, headers={"x-backend": "blue"})

    async def v2(self, request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        return await self._answer(request, body["inputs"][0]["shape"][0], v2=True)

    async def v1(self, request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        return await self._answer(request, len(body["instances"]), v2=False)


@pytest.fixture
def server() -> Iterator[FakeModelServer]:
    """The server runs on its own loop in a thread, so sync and async tests can both use it."""
    srv = FakeModelServer()
    app = web.Application()
    app.router.add_post("/v2/models/{name}/infer", srv.v2)
    app.router.add_post("/v1/models/{name}:predict", srv.v1)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    ready = threading.Event()

    async def start() -> None:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        srv.url = f"http://127.0.0.1:{port}"
        ready.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=10)
    assert ready.is_set()
    yield srv
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)
    loop.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_v2_counts_bodies_host_and_tallies(server: FakeModelServer) -> None:
    payloads = make_payloads(n_features=3, n=4, rows_per_payload=2)
    report = await run_load(
        server.url, HOST, "churn", rate=200, requests=20, payloads=payloads,
        tally_header="x-backend",
    )  # fmt: skip
    assert report.sent == 20
    assert report.ok == 16
    assert report.errors == {500: 4}
    assert report.connection_errors == 0
    assert report.failed == 4
    assert report.predictions == Counter({1: 32})  # 2 rows per ok response
    # The 500s carry no x-backend header: counted under "".
    assert report.tally == Counter({"blue": 16, "": 4})
    assert len(report.latencies_ms) == 20
    assert report.p50_ms is not None and report.p99_ms is not None
    assert 0 < report.p50_ms <= report.p99_ms

    assert {path for path, _, _ in server.seen} == {"/v2/models/churn/infer"}
    assert {host for _, host, _ in server.seen} == {HOST}
    first = server.seen[0][2]
    assert first == {"inputs": [{"name": "input-0", "shape": [2, 3], "datatype": "FP32",
                                 "data": [v for row in payloads[0] for v in row]}]}  # fmt: skip
    # Payloads are cycled in order.
    sent_data = [body["inputs"][0]["data"] for _, _, body in server.seen]
    assert sent_data[4] == sent_data[0] and sent_data[1] != sent_data[0]


async def test_v1_body_and_predictions(server: FakeModelServer) -> None:
    rows = [[0.5, 1.5], [2.0, -1.0], [0.0, 0.0]]
    report = await run_load(
        server.url, HOST, "iris", rate=100, requests=4, protocol="v1", payloads=[rows]
    )
    assert (report.sent, report.ok, report.errors) == (4, 4, {})
    assert report.predictions == Counter({1: 12})
    assert report.tally == Counter()  # no tally_header asked
    assert {path for path, _, _ in server.seen} == {"/v1/models/iris:predict"}
    assert all(body == {"instances": rows} for _, _, body in server.seen)
    assert {host for _, host, _ in server.seen} == {HOST}


async def test_rate_bounds_the_run(server: FakeModelServer) -> None:
    report = await run_load(server.url, HOST, "churn", rate=100, requests=200)
    assert report.sent == 200 == report.ok + report.failed
    assert 1.5 < report.duration < 4.0
    assert 50 < report.achieved_rate < 110


async def test_duration_bounds_the_run(server: FakeModelServer) -> None:
    started = time.monotonic()
    report = await run_load(server.url, HOST, "churn", rate=40, duration=0.5)
    assert report.sent == 20  # at 0, 1/40, ..., 19/40 s
    assert time.monotonic() - started < 2.0
    # Both bounds: the count ends it first.
    report = await run_load(server.url, HOST, "churn", rate=40, duration=5, requests=3)
    assert report.sent == 3


async def test_timeouts_and_refused_connections_are_connection_errors(
    server: FakeModelServer,
) -> None:
    slow = await run_load(server.url, HOST, "slow", rate=50, requests=2, timeout=0.2)
    assert (slow.sent, slow.ok, slow.connection_errors, slow.latencies_ms) == (2, 0, 2, [])
    assert slow.p50_ms is None
    refused = await run_load(f"http://127.0.0.1:{closed_port()}", HOST, "m", rate=50, requests=3)
    assert (refused.sent, refused.ok, refused.connection_errors) == (3, 0, 3)
    assert "connection errors 3" in refused.summary()


@pytest.mark.parametrize(
    "url",
    ["http://10.0.0.1:8080", "http://example.com", "http://8.8.8.8", "http://[2001:db8::1]:80",
     "ftp://127.0.0.1", "http://127.0.0.1.example.com", "127.0.0.1:8080"],
)  # fmt: skip
async def test_only_loopback_targets(url: str) -> None:
    with pytest.raises(ValueError):
        check_loopback(url)
    with pytest.raises(ValueError, match="url_base"):
        await run_load(url, HOST, "m", rate=1, requests=1)
    with pytest.raises(ValueError, match="url_base"):
        load_in_background(url, HOST, "m", rate=1, requests=1)


@pytest.mark.parametrize(
    "url", ["http://localhost:1", "http://127.0.0.1:1", "http://127.8.9.10", "https://[::1]:1/"]
)
def test_loopback_targets_accepted(url: str) -> None:
    check_loopback(url)


@pytest.mark.parametrize(
    "kwargs",
    [{"rate": 10}, {"rate": 0, "requests": 1}, {"rate": 10, "duration": 0},
     {"rate": 10, "requests": 1, "protocol": "v3"}, {"rate": 10, "requests": 1, "payloads": []},
     {"rate": 10, "requests": -1}, {"rate": 10, "requests": 1, "concurrency": 0}],
)  # fmt: skip
async def test_invalid_arguments(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        await run_load("http://127.0.0.1:1", HOST, "m", **kwargs)


def test_make_payloads_is_deterministic() -> None:
    a = make_payloads()
    assert a == make_payloads()
    assert a != make_payloads(seed=1)
    assert len(a) == 32 and all(len(p) == 1 and len(p[0]) == 4 for p in a)
    assert len(make_payloads(n_features=6, n=2, rows_per_payload=3)[1]) == 3


def test_background_handle_stops_early(server: FakeModelServer) -> None:
    handle = load_in_background(server.url, HOST, "churn", rate=50, duration=30)
    deadline = time.monotonic() + 5
    while handle.report().sent < 5 and time.monotonic() < deadline:
        time.sleep(0.05)  # poll the live snapshot
    live = handle.report()
    assert live.sent >= 5 and live.duration > 0 and not handle.done
    started = time.monotonic()
    final = handle.stop()
    assert time.monotonic() - started < 2.0
    assert handle.done
    assert 5 <= final.sent < 200
    assert final.sent == final.ok + final.failed
    assert handle.report() == final
    assert handle.stop() == final  # idempotent


def test_background_handle_ends_by_itself(server: FakeModelServer) -> None:
    handle = load_in_background(
        server.url, HOST, "iris", rate=100, requests=10, protocol="v1", tally_header="x-backend"
    )
    report = handle.wait(timeout=10)
    assert isinstance(report, LoadReport)
    assert (report.sent, report.ok, report.errors) == (10, 8, {500: 2})
    assert report.tally["blue"] == 8
    assert handle.done
