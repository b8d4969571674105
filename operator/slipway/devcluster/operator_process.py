"""`slipway run` as a real subprocess against a local cluster (demo, tests, bench)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from slipway.devcluster.cluster import free_port


class OperatorProcess:
    """Start, health-check and stop one operator process; restartable."""

    def __init__(self, kubeconfig: Path, log_path: Path, liveness_port: int | None = None,
                 resync_seconds: float = 3.0, extra_env: dict[str, str] | None = None,
                 pod_reason_seconds: float | None = 10.0,
                 prometheus_targets: Path | None = None) -> None:
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.liveness_port = liveness_port or free_port()
        self.metrics_port = free_port()
        # The local Prometheus's file-SD folder: the operator is scraped while it runs.
        self.prometheus_targets = prometheus_targets
        self.env = {"SLIPWAY_RESYNC_SECONDS": str(resync_seconds), **(extra_env or {})}
        if pod_reason_seconds is not None:  # None: the operator's default (the benchmarks)
            self.env["SLIPWAY_POD_REASON_SECONDS"] = str(pod_reason_seconds)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> OperatorProcess:
        env = dict(os.environ, KUBECONFIG=str(self.kubeconfig), **self.env)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "slipway.cli", "run",
                 "--metrics-port", str(self.metrics_port),
                 "--liveness-port", str(self.liveness_port)],
                stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.healthy():
                self._register_target()
                return self
            time.sleep(0.3)
        self.stop()
        raise TimeoutError(f"operator not healthy after {timeout:.0f}s; log tail:\n"
                           f"{self.log_tail()}")

    def _register_target(self) -> None:
        if self.prometheus_targets is None:
            return
        self.prometheus_targets.mkdir(parents=True, exist_ok=True)
        target = self.prometheus_targets / f"operator-{self.liveness_port}.json"
        target.write_text(json.dumps([{"targets": [f"127.0.0.1:{self.metrics_port}"],
                                       "labels": {"pod": f"slipway-operator-{self.pid}"}}]))

    def healthy(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            raise RuntimeError(f"operator exited ({code}):\n{self.log_tail()}")
        try:
            url = f"http://127.0.0.1:{self.liveness_port}/healthz"
            with urllib.request.urlopen(url, timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def role(self) -> str | None:
        """"active" or "standby" (from /readyz); None when it does not answer."""
        try:
            url = f"http://127.0.0.1:{self.liveness_port}/readyz"
            with urllib.request.urlopen(url, timeout=2) as resp:
                return resp.read().decode().strip()
        except OSError:
            return None

    def kill(self) -> None:
        """SIGKILL, as a crashed node or an OOM kill would: no clean shutdown."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.prometheus_targets is not None:
            (self.prometheus_targets / f"operator-{self.liveness_port}.json").unlink(
                missing_ok=True)
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
