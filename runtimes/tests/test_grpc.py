"""V2 gRPC (Open Inference Protocol) with a real gRPC client (grpcio and kserve's generated
stubs): predictions, metadata, errors, and the same slipway_model_* metrics as REST."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import joblib
import numpy as np
import pytest
from conftest import Metrics, Server, sample, server_command
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from slipway_runtimes.faults import FlakyModel

MODEL = "iris"
IDS = {"model_name": MODEL, "model_version": "g1"}
X, Y = load_iris(return_X_y=True)
ROWS = X[::25]


@pytest.fixture(scope="module")
def clf() -> LogisticRegression:
    return LogisticRegression(max_iter=1000).fit(X, Y)


def serve(run_server: Any, tmp_path_factory: Any, model: Any) -> Server:
    model_dir: Path = tmp_path_factory.mktemp("grpc")
    joblib.dump(model, model_dir / "model.joblib")
    env = {**os.environ, "MODEL_VERSION": "g1"}
    srv: Server = run_server(server_command("sklearn_server", model_dir), MODEL, env)
    return srv


@pytest.fixture(scope="module")
def server(run_server: Any, tmp_path_factory: Any, clf: Any) -> Iterator[Server]:
    srv = serve(run_server, tmp_path_factory, clf)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def stub(server: Server) -> Iterator[Any]:
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def request(rows: Any, model: str = MODEL, outputs: tuple[str, ...] = ()) -> Any:
    arr = np.asarray(rows, dtype=np.float64)
    tensor = pb.ModelInferRequest.InferInputTensor(
        name="input-0", datatype="FP64", shape=list(arr.shape),
        contents=pb.InferTensorContents(fp64_contents=arr.ravel().tolist()),
    )  # fmt: skip
    wanted = [pb.ModelInferRequest.InferRequestedOutputTensor(name=n) for n in outputs]
    return pb.ModelInferRequest(model_name=model, id="req-1", inputs=[tensor], outputs=wanted)


def delta(before: Metrics, after: Metrics, name: str, **labels: str) -> float:
    return sample(after, name, **labels) - sample(before, name, **labels)


def test_health_and_metadata(stub: Any) -> None:
    assert stub.ServerLive(pb.ServerLiveRequest()).live
    assert stub.ServerReady(pb.ServerReadyRequest()).ready
    assert stub.ModelReady(pb.ModelReadyRequest(name=MODEL)).ready
    meta = stub.ModelMetadata(pb.ModelMetadataRequest(name=MODEL))
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("input-0", "FP64", [-1, 4])
    ]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [
        ("output-0", "INT64", [-1]),
        ("predict", "INT64", [-1]),
        ("predict_proba", "FP64", [-1, 3]),
    ]


def test_infer_predictions_and_probabilities(server: Server, stub: Any, clf: Any) -> None:
    before = server.metrics()
    resp = stub.ModelInfer(request(ROWS))
    assert resp.model_name == MODEL and resp.id == "req-1"
    (out,) = resp.outputs
    assert (out.name, out.datatype, list(out.shape)) == ("output-0", "INT64", [len(ROWS)])
    assert list(out.contents.int64_contents) == clf.predict(ROWS).tolist()

    resp = stub.ModelInfer(request(ROWS, outputs=("predict_proba",)))
    (out,) = resp.outputs
    assert (out.name, list(out.shape)) == ("predict_proba", [len(ROWS), 3])
    got = np.reshape(out.contents.fp64_contents, (len(ROWS), 3))
    np.testing.assert_allclose(got, clf.predict_proba(ROWS))
    after = server.metrics()
    labels = {**IDS, "protocol": "grpc"}
    assert delta(before, after, "slipway_model_requests_total", **labels, code="2xx") == 2
    assert delta(before, after, "slipway_model_request_duration_seconds_count", **labels) == 2
    assert delta(before, after, "slipway_model_prediction_count", **IDS) == len(ROWS)
    for c in range(3):
        got_c = delta(before, after, "slipway_model_prediction_count", **IDS,
                      output=f"predict_proba:{c}")  # fmt: skip
        assert got_c == len(ROWS)


def test_errors_keep_grpc_codes_and_are_counted(server: Server, stub: Any) -> None:
    before = server.metrics()
    with pytest.raises(grpc.RpcError) as bad:
        stub.ModelInfer(request([[1.0, 2.0]]))
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "expecting 4 features" in bad.value.details()
    with pytest.raises(grpc.RpcError) as missing:
        stub.ModelInfer(request(ROWS, model="nope"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    after = server.metrics()
    labels = {**IDS, "protocol": "grpc"}
    assert delta(before, after, "slipway_model_requests_total", **labels, code="4xx") == 1
    assert delta(before, after, "slipway_model_errors_total", **labels,
                 reason="invalid_input") == 1  # fmt: skip
    unknown = {"model_name": "unknown", "model_version": "unknown", "protocol": "grpc"}
    assert delta(before, after, "slipway_model_errors_total", **unknown,
                 reason="model_not_found") == 1  # fmt: skip


def test_a_failing_model_counts_as_5xx(run_server: Any, tmp_path_factory: Any, clf: Any) -> None:
    srv = serve(run_server, tmp_path_factory, FlakyModel(clf, 1.0))
    try:
        before = srv.metrics()
        with grpc.insecure_channel(f"127.0.0.1:{srv.grpc_port}") as channel:
            flaky = pb_grpc.GRPCInferenceServiceStub(channel)
            with pytest.raises(grpc.RpcError) as failed:
                flaky.ModelInfer(request(ROWS))
        # kserve's gRPC code for a model failure is INVALID_ARGUMENT; the metrics count what
        # REST answers (500), so the Canary's error rate sees gRPC failures too.
        assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "InjectedFault" in failed.value.details()
        after = srv.metrics()
        labels = {**IDS, "protocol": "grpc"}
        assert delta(before, after, "slipway_model_requests_total", **labels, code="5xx") == 1
        assert delta(before, after, "slipway_model_errors_total", **labels,
                     reason="internal_error") == 1  # fmt: skip
    finally:
        srv.stop()


def test_raw_binary_tensors(stub: Any, clf: Any) -> None:
    req = request(ROWS)
    arr = np.asarray(ROWS, dtype=np.float64)
    req.inputs[0].ClearField("contents")
    req.raw_input_contents.append(arr.tobytes())
    resp = stub.ModelInfer(req)
    (raw,) = resp.raw_output_contents
    assert np.frombuffer(raw, dtype=np.int64).tolist() == clf.predict(ROWS).tolist()
