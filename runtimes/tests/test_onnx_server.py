"""End-to-end tests of the ONNX server: real ONNX models (one converted from scikit-learn with
skl2onnx, one built node by node) served by a real process on loopback."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnx
import pytest
from conftest import Metrics, Server, sample, server_command, v2_body
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
from onnx import TensorProto, helper
from skl2onnx import to_onnx
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

MODEL = "iris-onnx"
VERSION = "onnx-1"
IDS = {"model_name": MODEL, "model_version": VERSION}
X, Y = load_iris(return_X_y=True)
ROWS = X[::10]


@pytest.fixture(scope="module")
def clf() -> LogisticRegression:
    return LogisticRegression(max_iter=1000).fit(X, Y)


@pytest.fixture(scope="module")
def server(run_server: Any, clf: LogisticRegression, tmp_path_factory: Any) -> Iterator[Server]:
    model_dir: Path = tmp_path_factory.mktemp("onnx")
    # zipmap=False: probabilities as a tensor, not a list of dicts.
    graph = to_onnx(clf, X[:1].astype(np.float32), options={"zipmap": False}, target_opset=17)
    (model_dir / "model.onnx").write_bytes(graph.SerializeToString())
    cmd = server_command("onnx_server", model_dir, f"--model_version={VERSION}")
    srv: Server = run_server(cmd, MODEL, dict(os.environ))
    yield srv
    srv.stop()


def delta(before: Metrics, after: Metrics, name: str, **labels: str) -> float:
    return sample(after, name, **labels) - sample(before, name, **labels)


def test_metadata_describes_the_graph(server: Server) -> None:
    meta = server.get(f"/v2/models/{MODEL}").json()
    assert meta["inputs"] == [{"name": "X", "datatype": "FP32", "shape": [-1, 4]}]
    assert meta["outputs"] == [
        {"name": "label", "datatype": "INT64", "shape": [-1]},
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]},
    ]


def test_v1_predicts_the_first_output(server: Server, clf: LogisticRegression) -> None:
    resp = server.v1(ROWS.tolist())
    assert resp.status_code == 200, resp.text
    assert resp.json()["predictions"] == clf.predict(ROWS).tolist()


def test_v2_returns_every_output_and_counts_them(server: Server, clf: Any) -> None:
    before = server.metrics()
    resp = server.v2(ROWS.tolist())  # FP64 data for an FP32 input: cast
    assert resp.status_code == 200, resp.text
    label, proba = resp.json()["outputs"]
    assert (label["name"], label["datatype"], label["shape"]) == ("label", "INT64", [15])
    assert label["data"] == clf.predict(ROWS).tolist()
    assert (proba["name"], proba["datatype"], proba["shape"]) == ("probabilities", "FP32", [15, 3])
    np.testing.assert_allclose(np.reshape(proba["data"], (15, 3)), clf.predict_proba(ROWS),
                               atol=1e-5)  # fmt: skip
    after = server.metrics()
    count = "slipway_model_prediction_count"
    assert delta(before, after, count, **IDS) == 15  # the label: the primary output
    for c in range(3):
        assert delta(before, after, count, **IDS, output=f"probabilities:{c}") == 15
    req = "slipway_model_requests_total"
    assert delta(before, after, req, **IDS, protocol="v2", code="2xx") == 1


def test_v2_requested_output(server: Server, clf: Any) -> None:
    resp = server.v2(ROWS.tolist(), "FP32", outputs=[{"name": "probabilities"}])
    (out,) = resp.json()["outputs"]
    assert out["name"] == "probabilities"
    np.testing.assert_allclose(np.reshape(out["data"], (15, 3)), clf.predict_proba(ROWS),
                               atol=1e-5)  # fmt: skip


def test_bad_inputs_are_client_errors(server: Server) -> None:
    before = server.metrics()
    assert server.v2([[1.0, 2.0, 3.0]]).status_code == 400  # wrong width
    assert server.v1([[1.0, 2.0, 3.0]]).status_code == 400
    strings = {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "BYTES",
                           "data": ["a", "b", "c", "d"]}]}  # fmt: skip
    resp = server.post(f"/v2/models/{MODEL}/infer", strings)
    assert resp.status_code == 400 and "cannot take" in resp.json()["error"], resp.text
    after = server.metrics()
    for protocol, n in (("v1", 1), ("v2", 2)):
        labels = {**IDS, "protocol": protocol}
        assert delta(before, after, "slipway_model_requests_total", **labels, code="4xx") == n
        assert (
            delta(before, after, "slipway_model_errors_total", **labels, reason="invalid_input")
            == n
        )


def test_grpc_infer(server: Server, clf: Any) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        tensor = pb.ModelInferRequest.InferInputTensor(
            name="X", datatype="FP32", shape=[2, 4],
            contents=pb.InferTensorContents(fp32_contents=X[:2].ravel().tolist()),
        )  # fmt: skip
        resp = stub.ModelInfer(pb.ModelInferRequest(model_name=MODEL, inputs=[tensor]))
    assert [o.name for o in resp.outputs] == ["label", "probabilities"]
    assert list(resp.outputs[0].contents.int64_contents) == clf.predict(X[:2]).tolist()


# --- a graph with two inputs, built by hand ---------------------------------------------------


@pytest.fixture(scope="module")
def adder(run_server: Any, tmp_path_factory: Any) -> Iterator[Server]:
    """sum = a + b over float [N, 2] tensors."""
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 2])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 2])
    out = helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["N", 2])
    graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["sum"])], "adder", [a, b],
                              [out])  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    model_dir: Path = tmp_path_factory.mktemp("adder")
    onnx.save(model, str(model_dir / "adder.onnx"))  # the single *.onnx file
    srv: Server = run_server(server_command("onnx_server", model_dir), "adder", dict(os.environ))
    yield srv
    srv.stop()


def test_inputs_are_matched_by_name(adder: Server) -> None:
    inputs = [
        {"name": "b", "shape": [2, 2], "datatype": "FP32", "data": [10, 20, 30, 40]},
        {"name": "a", "shape": [2, 2], "datatype": "INT64", "data": [1, 2, 3, 4]},
    ]
    resp = adder.post("/v2/models/adder/infer", {"inputs": inputs})
    assert resp.status_code == 200, resp.text
    (out,) = resp.json()["outputs"]
    assert (out["name"], out["shape"], out["data"]) == ("sum", [2, 2], [11, 22, 33, 44])
    meta = adder.get("/v2/models/adder").json()
    assert [i["name"] for i in meta["inputs"]] == ["a", "b"]
    assert meta["inputs"][0]["shape"] == [-1, 2]


def test_missing_input_and_v1_are_client_errors(adder: Server) -> None:
    one = adder.post("/v2/models/adder/infer", v2_body([[1.0, 2.0]]))
    assert one.status_code == 400 and "missing input(s) a, b" in one.json()["error"], one.text
    v1 = adder.v1([[1.0, 2.0]])
    assert v1.status_code == 400 and "single-input model" in v1.json()["error"], v1.text
