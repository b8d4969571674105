"""Test helpers: polling with deadlines and kubectl. (OperatorProcess lives in
slipway.devcluster, shared with the demo and the benchmarks.)"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from slipway.devcluster.operator_process import OperatorProcess

__all__ = ["Kubectl", "OperatorProcess", "wait_for"]

T = TypeVar("T")


def wait_for(fn: Callable[[], T | None], timeout: float = 60.0, interval: float = 0.5,
             what: str = "condition") -> T:
    """Poll *fn* until it returns something truthy; fail with *what* at the deadline."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = fn()
        except AssertionError as exc:  # let fn use asserts to describe what it waits for
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


class Kubectl:
    """kubectl bound to one kubeconfig."""

    def __init__(self, binary: Path, kubeconfig: Path) -> None:
        self.binary = binary
        self.kubeconfig = kubeconfig

    def __call__(self, *args: str, input: str | None = None,
                 check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(self.binary), "--kubeconfig", str(self.kubeconfig), *args],
                              input=input, capture_output=True, text=True, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed:\n{proc.stderr}")
        return proc

    def apply(self, obj: dict[str, Any] | list[dict[str, Any]] | str,
              check: bool = True) -> subprocess.CompletedProcess[str]:
        text = obj if isinstance(obj, str) else yaml.safe_dump_all(
            obj if isinstance(obj, list) else [obj])
        return self("apply", "-f", "-", input=text, check=check)

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        args = ["get", kind, name, "-o", "json"]
        if namespace:
            args += ["-n", namespace]
        proc = self(*args, check=False)
        if proc.returncode != 0:
            if "NotFound" in proc.stderr:
                return None
            raise AssertionError(proc.stderr)
        return dict(json.loads(proc.stdout))

    def items(self, kind: str, namespace: str, selector: str | None = None) -> list[dict[str, Any]]:
        args = ["get", kind, "-n", namespace, "-o", "json"]
        if selector:
            args += ["-l", selector]
        return list(json.loads(self(*args).stdout)["items"])
