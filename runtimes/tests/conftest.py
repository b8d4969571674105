"""Fixtures that run a real model server process on loopback and talk to it over HTTP."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

STARTUP_DEADLINE_S = 90.0
STOP_DEADLINE_S = 20.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_command(module: str, model_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", f"slipway_runtimes.{module}", f"--model_dir={model_dir}", *extra]


Metrics = dict[tuple[str, frozenset[tuple[str, str]]], float]


def v2_body(rows: list[list[float]], datatype: str = "FP64", **extra: Any) -> dict[str, Any]:
    flat = [v for row in rows for v in row]
    shape = [len(rows), len(rows[0]) if rows else 0]
    inp = {"name": "input-0", "shape": shape, "datatype": datatype, "data": flat}
    return {**extra, "inputs": [inp]}


def parse_metrics(text: str) -> Metrics:
    return {
        (s.name, frozenset((k, v) for k, v in s.labels.items() if v != "")): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    base_url: str
    model_name: str
    log_path: Path
    grpc_port: int = 0

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def post(
        self,
        path: str,
        body: Any = None,
        data: str | bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> requests.Response:
        headers = {"Content-Type": "application/json", **(headers or {})}
        if data is not None:
            return requests.post(self.base_url + path, data=data, headers=headers, timeout=30)
        return requests.post(self.base_url + path, json=body, headers=headers, timeout=30)

    def v1(self, instances: Any) -> requests.Response:
        return self.post(f"/v1/models/{self.model_name}:predict", {"instances": instances})

    def v2(
        self, rows: list[list[float]], datatype: str = "FP64", **extra: Any
    ) -> requests.Response:
        """A V2 request; ``extra`` adds top-level fields (id, outputs, parameters)."""
        return self.post(f"/v2/models/{self.model_name}/infer", v2_body(rows, datatype, **extra))

    def get(self, path: str) -> requests.Response:
        return requests.get(self.base_url + path, timeout=30)

    def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """All samples on /metrics keyed by (sample name, labels). Labels with an empty value
        are left out, as Prometheus stores them (no label at all)."""
        resp = requests.get(self.base_url + "/metrics", timeout=10)
        resp.raise_for_status()
        return parse_metrics(resp.text)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=STOP_DEADLINE_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=STOP_DEADLINE_S)


def start_server(cmd: list[str], model_name: str, log_path: Path, env: dict[str, str]) -> Server:
    port, grpc_port = free_port(), free_port()
    full = [*cmd, f"--model_name={model_name}", f"--http_port={port}", f"--grpc_port={grpc_port}"]
    log = log_path.open("wb")
    proc = subprocess.Popen(full, stdout=log, stderr=subprocess.STDOUT, env=env)
    log.close()
    server = Server(proc, f"http://127.0.0.1:{port}", model_name, log_path, grpc_port)
    deadline = time.monotonic() + STARTUP_DEADLINE_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}:\n{server.log()}")
        try:
            if requests.get(server.base_url + "/v2/health/ready", timeout=1).status_code == 200:
                return server
        except requests.ConnectionError:
            pass
        time.sleep(0.2)  # poll interval, bounded by the deadline above
    server.stop()
    raise AssertionError(f"server not ready within {STARTUP_DEADLINE_S}s:\n{server.log()}")


@pytest.fixture(scope="module")
def run_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Factory starting servers for a test module; every one is stopped at module teardown."""
    servers: list[Server] = []

    def _start(cmd: list[str], model_name: str, env: dict[str, str]) -> Server:
        log_path = tmp_path_factory.mktemp("log") / "server.log"
        server = start_server(cmd, model_name, log_path, env)
        servers.append(server)
        return server

    yield _start
    for server in servers:
        server.stop()
    for server in servers:
        assert server.proc.poll() is not None, "server process still running after teardown"


def sample(
    metrics: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    """Value of one sample (0 when absent, e.g. a counter not yet incremented)."""
    return metrics.get((name, frozenset(labels.items())), 0.0)
