"""Bounded open-loop inference load against the local gateway, for tests, the demo and
`slipway dev load`.

Requests leave at a steady rate whatever the server's latency (open loop), so a slow or failing
model shows up as latency and errors instead of silently lowering the offered load. Every run is
bounded by a duration and/or a request count, and only loopback targets are accepted: this
generator is meant for the local dev platform and must never load someone else's server.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import ipaddress
import json
import math
import random
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp

PROTOCOLS = ("v1", "v2")
Payload = list[list[float]]


@dataclass
class LoadReport:
    """What one run sent and got back. ``sent == ok + sum(errors) + connection_errors`` once the
    run is over; latencies are of requests that got an HTTP response, whatever its status."""

    sent: int = 0
    ok: int = 0
    errors: dict[int, int] = field(default_factory=dict)  # non-2xx responses by status code
    connection_errors: int = 0  # refused, reset, timed out: no HTTP response at all
    duration: float = 0.0  # seconds from the first send to the last response
    # Responses per value of the ``tally_header`` response header ("" when absent).
    tally: Counter[str] = field(default_factory=Counter)
    # Predicted values of 2xx responses: V2 ``outputs[0].data``, V1 ``predictions``.
    predictions: Counter[Any] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list, repr=False)

    @property
    def failed(self) -> int:
        return sum(self.errors.values()) + self.connection_errors

    @property
    def achieved_rate(self) -> float:
        return self.sent / self.duration if self.duration > 0 else 0.0

    def percentile_ms(self, q: float) -> float | None:
        """Nearest-rank percentile (0 < q <= 100) of the latencies; None before any response."""
        if not self.latencies_ms:
            return None
        ordered = sorted(self.latencies_ms)
        return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]

    @property
    def p50_ms(self) -> float | None:
        return self.percentile_ms(50)

    @property
    def p99_ms(self) -> float | None:
        return self.percentile_ms(99)

    def summary(self) -> str:
        def ms(v: float | None) -> str:
            return "-" if v is None else f"{v:.1f}ms"

        errors = ", ".join(f"{code}: {n}" for code, n in sorted(self.errors.items())) or "none"
        return (
            f"sent {self.sent} in {self.duration:.2f}s ({self.achieved_rate:.1f}/s), ok {self.ok}, "
            f"errors {{{errors}}}, connection errors {self.connection_errors}, "
            f"p50 {ms(self.p50_ms)}, p99 {ms(self.p99_ms)}"
        )


def make_payloads(
    n_features: int = 4, n: int = 32, seed: int = 0, rows_per_payload: int = 1
) -> list[Payload]:
    """``n`` deterministic payloads of standard-normal rows (the scale of the example models'
    synthetic features)."""
    rng = random.Random(seed)
    per = rows_per_payload
    return [
        [[round(rng.gauss(0.0, 1.0), 4) for _ in range(n_features)] for _ in range(per)]
        for _ in range(n)
    ]


def check_loopback(url_base: str) -> None:
    """Raise ValueError unless ``url_base`` is an http(s) URL of this machine."""
    parts = urlsplit(url_base)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"url_base {url_base!r}: expected an http:// or https:// URL")
    host = parts.hostname or ""
    if host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(
            f"url_base {url_base!r}: load is only sent to this machine "
            "(localhost, 127.0.0.0/8 or ::1)"
        )


def _hashable(value: Any) -> Any:
    # A V1 prediction may be a list (multi-output / probabilities); Counter keys must hash.
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return value


def _predicted_values(protocol: str, body: Any) -> list[Any]:
    try:
        values = body["outputs"][0]["data"] if protocol == "v2" else body["predictions"]
    except (KeyError, IndexError, TypeError):
        return []
    return list(values) if isinstance(values, list) else []


def _encode(protocol: str, rows: Payload) -> bytes:
    if protocol == "v1":
        return json.dumps({"instances": rows}).encode()
    flat = [v for row in rows for v in row]
    shape = [len(rows), len(rows[0]) if rows else 0]
    inputs = [{"name": "input-0", "shape": shape, "datatype": "FP32", "data": flat}]
    return json.dumps({"inputs": inputs}).encode()


class _Recorder:
    """The report being filled by the event loop; the lock lets another thread snapshot it."""

    def __init__(self) -> None:
        self.report = LoadReport()
        self.lock = threading.Lock()
        self.started = 0.0

    def snapshot(self) -> LoadReport:
        with self.lock:
            report = copy.deepcopy(self.report)
        if self.started and not report.duration:  # still running: duration so far
            report.duration = time.monotonic() - self.started
        return report


@dataclass(frozen=True)
class _Plan:
    url: str
    host: str
    protocol: str
    bodies: list[bytes]
    rate: float
    limit: int | None  # number of requests; None = until the duration ends
    duration: float | None
    concurrency: int
    timeout: float
    tally_header: str | None


def _plan(
    url_base: str,
    host: str,
    model: str,
    *,
    rate: float,
    duration: float | None,
    requests: int | None,
    protocol: str,
    payloads: Sequence[Payload] | None,
    concurrency: int,
    timeout: float,
    tally_header: str | None,
) -> _Plan:
    """Validate everything up front so a bad call fails in the caller, not in a thread."""
    check_loopback(url_base)
    if duration is None and requests is None:
        raise ValueError("load must be bounded: give duration and/or requests")
    if not rate > 0:
        raise ValueError(f"rate must be > 0, got {rate}")
    if duration is not None and not duration > 0:
        raise ValueError(f"duration must be > 0, got {duration}")
    if requests is not None and requests < 0:
        raise ValueError(f"requests must be >= 0, got {requests}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if concurrency < 1 or not timeout > 0:
        raise ValueError("concurrency must be >= 1 and timeout > 0")
    rows = list(payloads) if payloads is not None else make_payloads()
    if not rows:
        raise ValueError("payloads is empty")
    path = f"/v2/models/{model}/infer" if protocol == "v2" else f"/v1/models/{model}:predict"
    limit = requests
    if duration is not None:  # request i leaves at i / rate: those before the end
        in_time = math.ceil(duration * rate)
        limit = in_time if limit is None else min(limit, in_time)
    return _Plan(
        url=url_base.rstrip("/") + path,
        host=host,
        protocol=protocol,
        bodies=[_encode(protocol, p) for p in rows],  # encode once, reuse per cycle
        rate=rate,
        limit=limit,
        duration=duration,
        concurrency=concurrency,
        timeout=timeout,
        tally_header=tally_header,
    )


async def _one(session: aiohttp.ClientSession, plan: _Plan, body: bytes, rec: _Recorder) -> None:
    headers = {"Host": plan.host, "Content-Type": "application/json"}
    started = time.monotonic()
    try:
        async with session.post(plan.url, data=body, headers=headers) as resp:
            raw = await resp.read()
            status = resp.status
            tally = resp.headers.get(plan.tally_header, "") if plan.tally_header else None
    except (aiohttp.ClientError, TimeoutError):
        with rec.lock:
            rec.report.connection_errors += 1
        return
    latency = (time.monotonic() - started) * 1000
    values: list[Any] = []
    if 200 <= status < 300:
        # A non-JSON 2xx still counts as ok, just without predictions.
        with contextlib.suppress(ValueError):
            values = _predicted_values(plan.protocol, json.loads(raw))
    with rec.lock:
        report = rec.report
        report.latencies_ms.append(latency)
        if 200 <= status < 300:
            report.ok += 1
            report.predictions.update(_hashable(v) for v in values)
        else:
            report.errors[status] = report.errors.get(status, 0) + 1
        if tally is not None:
            report.tally[tally] += 1


async def _run(plan: _Plan, rec: _Recorder, stop: asyncio.Event | None) -> LoadReport:
    stop = stop or asyncio.Event()
    connector = aiohttp.TCPConnector(limit=plan.concurrency)
    timeout = aiohttp.ClientTimeout(total=plan.timeout)
    in_flight: set[asyncio.Task[None]] = set()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        rec.started = start = time.monotonic()
        i = 0
        while (plan.limit is None or i < plan.limit) and not stop.is_set():
            now = time.monotonic()
            if plan.duration is not None and now - start >= plan.duration:
                break  # a sender that fell behind does not run past the duration
            delay = start + i / plan.rate - now
            # When behind schedule (delay <= 0) send at once: the schedule, not the server's
            # pace, sets the send times (open loop).
            if delay > 0:
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                    break  # stopped while waiting
                except TimeoutError:
                    pass
            task = asyncio.create_task(_one(session, plan, plan.bodies[i % len(plan.bodies)], rec))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            with rec.lock:
                rec.report.sent += 1
            i += 1
        # Each request is bounded by the client timeout, so this wait is too.
        if in_flight:
            await asyncio.gather(*in_flight)
        with rec.lock:
            rec.report.duration = time.monotonic() - start
    return rec.report


async def run_load(
    url_base: str,
    host: str,
    model: str,
    *,
    rate: float,
    duration: float | None = None,
    requests: int | None = None,
    protocol: str = "v2",
    payloads: Sequence[Payload] | None = None,
    concurrency: int = 16,
    timeout: float = 5.0,
    tally_header: str | None = None,
    stop: asyncio.Event | None = None,
) -> LoadReport:
    """Send ``rate`` requests/s to ``model`` behind ``url_base`` (Host header ``host``, which
    KServe routes by) until ``duration`` seconds or ``requests`` requests, whichever comes first,
    then wait for the in-flight ones. Setting ``stop`` ends the sending early."""
    plan = _plan(
        url_base, host, model, rate=rate, duration=duration, requests=requests,
        protocol=protocol, payloads=payloads, concurrency=concurrency, timeout=timeout,
        tally_header=tally_header,
    )  # fmt: skip
    return await _run(plan, _Recorder(), stop)


class LoadHandle:
    """A run in a background thread: ``report()`` snapshots it, ``stop()`` ends it early."""

    def __init__(self, plan: _Plan) -> None:
        self._plan = plan
        self._rec = _Recorder()
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        self._error: BaseException | None = None
        # Daemon: a run the caller forgot cannot keep the process alive; it is bounded anyway.
        self._thread = threading.Thread(target=self._main, name="slipway-load", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        try:
            self._loop.run_until_complete(self._start())
        except BaseException as e:  # surfaced to the caller by wait()/stop()
            self._error = e
        finally:
            self._loop.close()

    async def _start(self) -> None:
        await _run(self._plan, self._rec, self._stop)

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def report(self) -> LoadReport:
        """The counts so far (a copy); the final report once the run is over."""
        return self._rec.snapshot()

    def wait(self, timeout: float | None = None) -> LoadReport:
        """Wait for the run to end by itself; TimeoutError if it has not after ``timeout``."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"load still running after {timeout}s")
        if self._error is not None:
            raise RuntimeError(f"load run failed: {self._error!r}") from self._error
        return self.report()

    def stop(self) -> LoadReport:
        """Stop sending, wait for the requests in flight (bounded by the client timeout) and
        return the final report."""
        if not self.done:
            # RuntimeError: the loop closed in between, the run is over already.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)
        return self.wait(self._plan.timeout + 5.0)


def load_in_background(
    url_base: str,
    host: str,
    model: str,
    *,
    rate: float,
    duration: float | None = None,
    requests: int | None = None,
    protocol: str = "v2",
    payloads: Sequence[Payload] | None = None,
    concurrency: int = 16,
    timeout: float = 5.0,
    tally_header: str | None = None,
) -> LoadHandle:
    """``run_load`` in a daemon thread with its own event loop, for synchronous callers. The
    arguments are checked here, so a bad call raises ValueError before anything starts."""
    plan = _plan(
        url_base, host, model, rate=rate, duration=duration, requests=requests,
        protocol=protocol, payloads=payloads, concurrency=concurrency, timeout=timeout,
        tally_header=tally_header,
    )  # fmt: skip
    return LoadHandle(plan)
