"""Class probabilities on request, V2 model metadata derived from the model, and the prediction
histogram's one series per output column (the single-output series unchanged)."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
import requests
import xgboost as xgb
from conftest import Metrics, Server, parse_metrics, sample, server_command
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from sklearn.datasets import load_iris
from sklearn.linear_model import LinearRegression, LogisticRegression

from slipway_runtimes.metrics import (
    DEFAULT_PREDICTION_BUCKETS,
    MAX_COLUMNS,
    SlipwayMetrics,
    prediction_series,
)
from slipway_runtimes.sklearn_server import SKLearnModel
from slipway_runtimes.xgboost_server import XGBoostModel

X, Y = load_iris(return_X_y=True)
ROWS = X[::10]
IDS = {"model_name": "iris", "model_version": "v1"}


@pytest.fixture(scope="module")
def clf() -> LogisticRegression:
    return LogisticRegression(max_iter=1000).fit(X, Y)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, clf: LogisticRegression) -> Path:
    path = tmp_path_factory.mktemp("iris")
    joblib.dump(clf, path / "model.joblib")
    return path


def start(run_server: Any, model_dir: Path, **env: str) -> Server:
    cmd = server_command("sklearn_server", model_dir, "--model_version=v1")
    srv: Server = run_server(cmd, "iris", {**os.environ, **env})
    return srv


@pytest.fixture(scope="module")
def server(run_server: Any, model_dir: Path) -> Iterator[Server]:
    srv = start(run_server, model_dir)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def proba_server(run_server: Any, model_dir: Path) -> Iterator[Server]:
    srv = start(run_server, model_dir, PREDICT_PROBA="true")
    yield srv
    srv.stop()


def delta(before: Metrics, after: Metrics, name: str, **labels: str) -> float:
    return sample(after, name, **labels) - sample(before, name, **labels)


def class_series_deltas(before: Metrics, after: Metrics, method: str) -> dict[str, float]:
    return {
        str(c): delta(
            before, after, "slipway_model_prediction_count", **IDS, output=f"{method}:{c}"
        )
        for c in range(3)
    }


# --- probabilities ----------------------------------------------------------------------------


def test_v2_request_names_predict_proba(server: Server, clf: LogisticRegression) -> None:
    before = server.metrics()
    resp = server.v2(ROWS.tolist(), outputs=[{"name": "predict_proba"}, {"name": "predict"}])
    assert resp.status_code == 200, resp.text
    proba, labels = resp.json()["outputs"]
    assert (proba["name"], proba["datatype"], proba["shape"]) == ("predict_proba", "FP64", [15, 3])
    np.testing.assert_allclose(np.reshape(proba["data"], (15, 3)), clf.predict_proba(ROWS))
    assert (labels["name"], labels["data"]) == ("predict", clf.predict(ROWS).tolist())
    after = server.metrics()
    # One series per class for the probabilities; the labels in the unlabelled series.
    assert class_series_deltas(before, after, "predict_proba") == {"0": 15, "1": 15, "2": 15}
    assert delta(before, after, "slipway_model_prediction_count", **IDS) == 15
    got = delta(before, after, "slipway_model_prediction_sum", **IDS, output="predict_proba:2")
    assert got == pytest.approx(clf.predict_proba(ROWS)[:, 2].sum())


def test_unknown_output_is_a_client_error(server: Server) -> None:
    resp = server.v2(ROWS.tolist(), outputs=[{"name": "decision_function"}])
    assert resp.status_code == 400
    assert "has no output 'decision_function'" in resp.json()["error"]


def test_predict_proba_env_serves_probabilities(proba_server: Server, clf: Any) -> None:
    before = proba_server.metrics()
    v1 = proba_server.v1(ROWS.tolist())
    assert v1.status_code == 200
    np.testing.assert_allclose(v1.json()["predictions"], clf.predict_proba(ROWS))
    v2 = proba_server.v2(ROWS.tolist())
    (out,) = v2.json()["outputs"]
    assert (out["name"], out["datatype"], out["shape"]) == ("output-0", "FP64", [15, 3])
    # Labels are still one request away.
    labels = proba_server.v2(ROWS.tolist(), outputs=[{"name": "predict"}]).json()["outputs"]
    assert labels[0]["data"] == clf.predict(ROWS).tolist()
    after = proba_server.metrics()
    assert class_series_deltas(before, after, "predict_proba") == {"0": 30, "1": 30, "2": 30}
    assert delta(before, after, "slipway_model_prediction_count", **IDS) == 15


def test_single_output_series_are_unchanged(server: Server) -> None:
    """A plain prediction keeps the series the operator's Canary queries read: model_name and
    model_version only, once Prometheus drops the empty output label."""
    assert server.v1(ROWS.tolist()).status_code == 200
    text = requests.get(server.base_url + "/metrics", timeout=10).text
    line = (
        'slipway_model_prediction_bucket{le="0.0",model_name="iris",model_version="v1",output=""}'
    )
    assert any(x.startswith(line + " ") for x in text.splitlines())
    series = {
        frozenset(k for k in lbls if k[0] != "le")
        for (name, lbls) in parse_metrics(text)
        if name == "slipway_model_prediction_bucket"
    }
    assert frozenset(IDS.items()) in series


# --- metadata ---------------------------------------------------------------------------------


def test_v2_model_metadata_over_http(server: Server, proba_server: Server) -> None:
    meta = server.get("/v2/models/iris").json()
    assert meta["name"] == "iris"
    assert meta["inputs"] == [{"name": "input-0", "datatype": "FP64", "shape": [-1, 4]}]
    assert meta["outputs"] == [
        {"name": "output-0", "datatype": "INT64", "shape": [-1]},
        {"name": "predict", "datatype": "INT64", "shape": [-1]},
        {"name": "predict_proba", "datatype": "FP64", "shape": [-1, 3]},
    ]
    meta = proba_server.get("/v2/models/iris").json()
    assert meta["outputs"][0] == {"name": "output-0", "datatype": "FP64", "shape": [-1, 3]}
    assert server.get("/v2/models/nope").status_code == 404


def load(
    model: Any, tmp_path: Path, cls: Any = SKLearnModel, filename: str = "model.joblib"
) -> Any:
    tmp_path.mkdir(parents=True, exist_ok=True)
    if cls is XGBoostModel:
        model.save_model(str(tmp_path / filename))
    else:
        joblib.dump(model, tmp_path / filename)
    served = cls("m", str(tmp_path), "v", SlipwayMetrics.create(CollectorRegistry()))
    served.load()
    return served


def exposition_of(served: Any) -> Metrics:
    registry = CollectorRegistry()
    registry.register(served.metrics.prediction)
    return parse_metrics(generate_latest(registry).decode())


def test_metadata_of_other_estimators(tmp_path: Path) -> None:
    names = np.array(["setosa", "versicolor", "virginica"])[Y]
    strings = load(LogisticRegression(max_iter=1000).fit(X, names), tmp_path / "s")
    assert strings.get_output_types()[:2] == [
        {"name": "output-0", "datatype": "BYTES", "shape": [-1]},
        {"name": "predict", "datatype": "BYTES", "shape": [-1]},
    ]
    regressor = load(LinearRegression().fit(X[:, :3], X[:, 3]), tmp_path / "r")
    assert regressor.get_input_types() == [
        {"name": "input-0", "datatype": "FP64", "shape": [-1, 3]}
    ]
    assert regressor.get_output_types() == [
        {"name": "output-0", "datatype": "FP64", "shape": [-1]},
        {"name": "predict", "datatype": "FP64", "shape": [-1]},
    ]
    two = load(LinearRegression().fit(X[:, :2], X[:, 2:]), tmp_path / "r2")
    assert two.get_output_types()[0] == {"name": "output-0", "datatype": "FP64", "shape": [-1, 2]}


def test_string_class_labels_over_v2(tmp_path: Path) -> None:
    names = np.array(["setosa", "versicolor", "virginica"])[Y]
    served = load(LogisticRegression(max_iter=1000).fit(X, names), tmp_path)
    from kserve.protocol.infer_type import InferInput, InferRequest

    request = InferRequest("m", [InferInput("x", [2, 4], "FP64", X[[0, 100]].ravel().tolist())])
    out, _ = served._response(request, ["predict"], [served.compute(X[[0, 100]], ["predict"])[0]],
                              False).to_rest()  # fmt: skip
    assert out["outputs"][0]["datatype"] == "BYTES"
    assert out["outputs"][0]["data"] == ["setosa", "virginica"]


@pytest.fixture(scope="module")
def softprob() -> xgb.Booster:
    params = {"objective": "multi:softprob", "num_class": 3, "max_depth": 2, "nthread": 1}
    return xgb.train(params, xgb.DMatrix(X.astype(np.float32), label=Y), num_boost_round=5)


def test_xgboost_metadata_and_multiclass_series(tmp_path: Path, softprob: xgb.Booster) -> None:
    served = load(softprob, tmp_path, XGBoostModel, "model.json")
    assert served.get_input_types() == [{"name": "input-0", "datatype": "FP32", "shape": [-1, 4]}]
    assert served.get_output_types() == [
        {"name": "output-0", "datatype": "FP32", "shape": [-1, 3]},
        {"name": "predict", "datatype": "FP32", "shape": [-1, 3]},
    ]
    np.testing.assert_allclose(
        served.predict({"instances": ROWS.tolist()})["predictions"],
        softprob.predict(xgb.DMatrix(ROWS.astype(np.float32))),
    )
    counts = {
        dict(lbls).get("output"): v
        for (name, lbls), v in exposition_of(served).items()
        if name == "slipway_model_prediction_count"
    }
    assert counts == {"predict:0": 15, "predict:1": 15, "predict:2": 15}


# --- the histogram, in process ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("arr", "primary", "columns", "expected"),
    [
        (np.array([0, 1, 1]), True, None, {"": [0, 1, 1]}),
        (np.array([[0.5], [0.7]]), True, None, {"": [0.5, 0.7]}),
        (np.array([0.5, 0.7]), False, None, {"score": [0.5, 0.7]}),
        (np.array([[0.1, 0.9], [0.8, 0.2]]), True, ["no", "yes"],
         {"score:no": [0.1, 0.8], "score:yes": [0.9, 0.2]}),
        (np.array([[0.1, 0.9], [0.8, 0.2]]), True, None,
         {"score:0": [0.1, 0.8], "score:1": [0.9, 0.2]}),
        (np.array(["a", "b"]), True, None, {}),
        (np.zeros((2, MAX_COLUMNS + 1)), True, None, {}),
        (np.zeros((2, 2, 2)), True, None, {}),
    ],
)  # fmt: skip
def test_prediction_series(arr: Any, primary: bool, columns: Any, expected: Any) -> None:
    got = {s.output: s.values.tolist() for s in prediction_series("score", arr, primary, columns)}
    assert got == expected


def test_batched_observations_equal_one_observe_per_value() -> None:
    registry = CollectorRegistry()
    metrics = SlipwayMetrics.create(registry)
    labels = ["model_name", "model_version", "output"]
    reference = Histogram(
        "ref", "one observe() per value", labels, buckets=DEFAULT_PREDICTION_BUCKETS,
        registry=registry,
    )  # fmt: skip
    rng = np.random.default_rng(1)
    edges = [0, 0.1, 0.1 + 1e-12, 1, 100, 100.5, -1, math.inf, math.nan, 3, 5]
    for batch in (np.array(edges), rng.normal(2, 3, 257), rng.integers(0, 3, 64)):
        for s in prediction_series("predict", batch, True):
            metrics.observe_series("m", "v", [s])
        for v in batch.tolist():
            reference.labels("m", "v", "").observe(v)
    got = parse_metrics(generate_latest(registry).decode())

    def family(prefix: str) -> dict[Any, float]:
        return {
            (name[len(prefix) :], lbls): v
            for (name, lbls), v in got.items()
            if name.startswith(prefix) and not name.endswith("_created") and "_sum" not in name
        }

    assert family("slipway_model_prediction") == family("ref")
    ours = sample(got, "slipway_model_prediction_sum", model_name="m", model_version="v")
    assert math.isnan(ours)  # a NaN prediction poisons _sum, as observe() does


def test_nthread_reaches_xgboost_and_onnxruntime(tmp_path: Path, softprob: xgb.Booster) -> None:
    import json

    from skl2onnx import to_onnx

    from slipway_runtimes.base import build_parser
    from slipway_runtimes.onnx_server import ONNXModel

    assert build_parser("x").parse_args([]).nthread == 1  # KServe's xgbserver default
    softprob.save_model(str(tmp_path / "model.json"))
    graph = to_onnx(LogisticRegression(max_iter=1000).fit(X, Y), X[:1].astype(np.float32),
                    options={"zipmap": False}, target_opset=17)  # fmt: skip
    (tmp_path / "model.onnx").write_bytes(graph.SerializeToString())
    for nthread in (1, 3):
        booster = XGBoostModel("m", str(tmp_path), "v", None, nthread)
        booster.load()
        config = json.loads(booster.impl.save_config())
        assert config["learner"]["generic_param"]["nthread"] == str(nthread)
        onnx_model = ONNXModel("m", str(tmp_path), "v", None, nthread)
        onnx_model.load()
        assert onnx_model.impl.get_session_options().intra_op_num_threads == nthread
