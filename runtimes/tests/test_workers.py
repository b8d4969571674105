"""--workers 2: two REST worker processes whose metrics add up on /metrics (prometheus_client's
multiprocess mode), with gRPC served and counted by the parent process."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import joblib
import pytest
import requests
from conftest import Server, sample, server_command
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

MODEL = "iris"
IDS = {"model_name": MODEL, "model_version": "w2"}
X, Y = load_iris(return_X_y=True)
ROWS = X[:3].tolist()


def worker_pids(directory: Path) -> set[int]:
    """Processes that wrote metrics: counter_<pid>.db files."""
    return {
        int(m.group(1)) for p in directory.iterdir() if (m := re.match(r"counter_(\d+)", p.name))
    }


@pytest.fixture(scope="module")
def multiproc_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("prom")
    (path / "counter_1.db").write_bytes(b"left over from an earlier run")
    return path


@pytest.fixture(scope="module")
def server(run_server: Any, tmp_path_factory: Any, multiproc_dir: Path) -> Iterator[Server]:
    model_dir: Path = tmp_path_factory.mktemp("iris")
    joblib.dump(LogisticRegression(max_iter=1000).fit(X, Y), model_dir / "model.joblib")
    env = {**os.environ, "MODEL_VERSION": "w2", "PROMETHEUS_MULTIPROC_DIR": str(multiproc_dir)}
    cmd = server_command("sklearn_server", model_dir, "--workers=2")
    srv: Server = run_server(cmd, MODEL, env)
    yield srv
    srv.stop()


def fresh_connection_post(server: Server, path: str, body: Any) -> int:
    # No session: a new connection each time, so the kernel spreads them over the workers.
    headers = {"Content-Type": "application/json", "Connection": "close"}
    return requests.post(server.base_url + path, json=body, headers=headers, timeout=30).status_code


def test_request_counts_of_both_workers_add_up(server: Server, multiproc_dir: Path) -> None:
    assert not (multiproc_dir / "counter_1.db").exists()  # stale files are removed at start
    before = server.metrics()
    good = bad = 0
    for i in range(200):
        if i % 10 == 9:
            bad += fresh_connection_post(server, f"/v1/models/{MODEL}:predict",
                                         {"instances": [[1.0]]}) == 400  # fmt: skip
        else:
            good += fresh_connection_post(server, f"/v1/models/{MODEL}:predict",
                                          {"instances": ROWS}) == 200  # fmt: skip
    assert (good, bad) == (180, 20)
    after = server.metrics()
    req = "slipway_model_requests_total"
    assert (
        sample(after, req, **IDS, protocol="v1", code="2xx")
        - sample(before, req, **IDS, protocol="v1", code="2xx")
        == 180
    )
    assert (
        sample(after, req, **IDS, protocol="v1", code="4xx")
        - sample(before, req, **IDS, protocol="v1", code="4xx")
        == 20
    )
    dur = "slipway_model_request_duration_seconds_count"
    assert (
        sample(after, dur, **IDS, protocol="v1") - sample(before, dur, **IDS, protocol="v1") == 200
    )
    pred = "slipway_model_prediction_count"
    assert sample(after, pred, **IDS) - sample(before, pred, **IDS) == 180 * len(ROWS)
    kserve = "request_predict_seconds_count"
    assert sample(after, kserve, model_name=MODEL) - sample(before, kserve, model_name=MODEL) == 200
    # Both workers answered some of them.
    assert len(worker_pids(multiproc_dir)) == 2, sorted(p.name for p in multiproc_dir.iterdir())


def test_grpc_is_served_and_counted_next_to_the_workers(server: Server) -> None:
    before = server.metrics()
    tensor = pb.ModelInferRequest.InferInputTensor(
        name="input-0", datatype="FP64", shape=[1, 4],
        contents=pb.InferTensorContents(fp64_contents=ROWS[0]),
    )  # fmt: skip
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for _ in range(3):
            stub.ModelInfer(pb.ModelInferRequest(model_name=MODEL, inputs=[tensor]))
    after = server.metrics()
    labels = {**IDS, "protocol": "grpc", "code": "2xx"}
    req = "slipway_model_requests_total"
    assert sample(after, req, **labels) - sample(before, req, **labels) == 3


def test_a_killed_worker_is_replaced_and_its_counts_kept(
    server: Server, multiproc_dir: Path
) -> None:
    before = server.metrics()
    req = "slipway_model_requests_total"
    total_before = sum(v for (n, _), v in before.items() if n == req)
    victim = min(worker_pids(multiproc_dir) - {server.proc.pid})
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while "Started new child process" not in server.log():
        assert time.monotonic() < deadline, server.log()[-3000:]
        time.sleep(0.2)  # poll: kserve checks its workers every 0.5 s
    for _ in range(20):
        assert fresh_connection_post(server, f"/v1/models/{MODEL}:predict",
                                     {"instances": ROWS}) == 200  # fmt: skip
    after = server.metrics()
    total_after = sum(v for (n, _), v in after.items() if n == req)
    assert total_after == total_before + 20
