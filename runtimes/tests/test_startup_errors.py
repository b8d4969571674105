"""A missing or corrupt model must stop the server at start-up with a clear message."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import free_port, server_command

from slipway_runtimes.base import ModelLoadError, find_model_file

SERVERS = [
    ("sklearn_server", "model.joblib"),
    ("xgboost_server", "model.ubj"),
    ("onnx_server", "model.onnx"),
]


def run_to_exit(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    cmd = [*cmd, f"--http_port={free_port()}", f"--grpc_port={free_port()}"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(("module", "filename"), SERVERS)
def test_corrupt_model_file_fails_fast(tmp_path: Path, module: str, filename: str) -> None:
    bad = tmp_path / filename
    bad.write_bytes(b"\x00this is not a model\xff")
    result = run_to_exit(server_command(module, tmp_path))
    assert result.returncode != 0
    assert f"cannot load model file {bad}" in result.stderr


@pytest.mark.parametrize(("module", "filename"), SERVERS)
def test_missing_model_dir_fails_fast(tmp_path: Path, module: str, filename: str) -> None:
    missing = tmp_path / "no-such-dir"
    result = run_to_exit(server_command(module, missing))
    assert result.returncode != 0
    assert f"model directory {missing} does not exist" in result.stderr


def test_empty_model_dir_fails_fast(tmp_path: Path) -> None:
    result = run_to_exit(server_command("sklearn_server", tmp_path))
    assert result.returncode != 0
    assert f"no model file (model.joblib, model.pkl) found in {tmp_path}" in result.stderr


def test_find_model_file_prefers_canonical_name_then_single_match(tmp_path: Path) -> None:
    names = ("model.joblib", "model.pkl")
    (tmp_path / "iris.pkl").write_bytes(b"x")
    assert find_model_file(tmp_path, names) == tmp_path / "iris.pkl"
    (tmp_path / "other.joblib").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="several model files"):
        find_model_file(tmp_path, names)
    (tmp_path / "model.pkl").write_bytes(b"x")
    assert find_model_file(tmp_path, names) == tmp_path / "model.pkl"


def test_workers_must_be_positive(tmp_path: Path) -> None:
    result = run_to_exit([*server_command("sklearn_server", tmp_path), "--workers=0"])
    assert result.returncode == 2
    assert "--workers must be at least 1" in result.stderr
