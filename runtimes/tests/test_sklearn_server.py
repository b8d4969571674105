"""End-to-end tests of the scikit-learn server: a real process on loopback."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from conftest import Server, sample, server_command
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

MODEL = "iris"
VERSION = "v1-canary"


@pytest.fixture(scope="module")
def iris() -> tuple[LogisticRegression, np.ndarray]:
    X, y = load_iris(return_X_y=True)
    return LogisticRegression(max_iter=1000).fit(X, y), X


@pytest.fixture(scope="module")
def server(
    run_server: Any, iris: tuple[LogisticRegression, np.ndarray], tmp_path_factory: Any
) -> Iterator[Server]:
    model_dir: Path = tmp_path_factory.mktemp("sk-model")
    joblib.dump(iris[0], model_dir / "model.joblib")
    env = {**os.environ, "MODEL_VERSION": VERSION}  # version label comes from the env here
    srv: Server = run_server(server_command("sklearn_server", model_dir), MODEL, env)
    yield srv
    srv.stop()  # stop now, not at module end (parametrized fixtures would overlap)


def test_v1_predictions_match_in_process_model(server: Server, iris: Any) -> None:
    model, X = iris
    rows = X[::10]
    resp = server.v1(rows.tolist())
    assert resp.status_code == 200, resp.text
    assert resp.json()["predictions"] == model.predict(rows).tolist()


def test_v2_predictions_match_in_process_model(server: Server, iris: Any) -> None:
    model, X = iris
    rows = X[5::10]
    resp = server.v2(rows.tolist())
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["model_name"] == MODEL
    (out,) = body["outputs"]
    assert out["shape"] == [len(rows)]
    assert out["data"] == model.predict(rows).tolist()


def test_v2_health_and_model_metadata(server: Server) -> None:
    import requests

    assert requests.get(server.base_url + "/v2/health/ready", timeout=5).json() == {"ready": True}
    ready = requests.get(f"{server.base_url}/v2/models/{MODEL}/ready", timeout=5)
    assert ready.status_code == 200
    assert requests.get(f"{server.base_url}/v1/models/{MODEL}", timeout=5).json()["ready"]


def test_metrics_count_good_and_bad_requests(server: Server, iris: Any) -> None:
    model, X = iris
    before = server.metrics()

    good = [server.v1(X[:3].tolist()), server.v1(X[50:52].tolist()), server.v2(X[100:104].tolist())]
    assert [r.status_code for r in good] == [200, 200, 200]
    bad_v1 = [
        server.v1([[1.0, 2.0]]),  # wrong feature count
        server.post(f"/v1/models/{MODEL}:predict", data="{not json"),  # malformed JSON
        server.post(f"/v1/models/{MODEL}:predict", {"rows": [[1, 2, 3, 4]]}),  # no "instances"
        server.v1([1.0, 2.0, 3.0, 4.0]),  # wrong shape: 1-D
    ]
    assert [r.status_code for r in bad_v1] == [400, 400, 400, 400]
    bad_v2 = server.v2([[1.0, 2.0, 3.0]])  # wrong feature count
    assert bad_v2.status_code == 400, bad_v2.text
    unknown = server.post("/v1/models/nope:predict", {"instances": [[1, 2, 3, 4]]})
    assert unknown.status_code == 404

    after = server.metrics()

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    ids = {"model_name": MODEL, "model_version": VERSION}
    req = "slipway_model_requests_total"
    assert delta(req, **ids, protocol="v1", code="2xx") == 2
    assert delta(req, **ids, protocol="v2", code="2xx") == 1
    assert delta(req, **ids, protocol="v1", code="4xx") == 4
    assert delta(req, **ids, protocol="v2", code="4xx") == 1
    assert delta(req, **ids, protocol="v1", code="5xx") == 0
    # Unknown model names collapse into one label value instead of growing cardinality.
    unk = {"model_name": "unknown", "model_version": "unknown"}
    assert delta(req, **unk, protocol="v1", code="4xx") == 1

    err = "slipway_model_errors_total"
    assert delta(err, **ids, protocol="v1", reason="invalid_input") == 4
    assert delta(err, **ids, protocol="v2", reason="invalid_input") == 1
    assert delta(err, **unk, protocol="v1", reason="model_not_found") == 1

    dur = "slipway_model_request_duration_seconds_count"
    assert delta(dur, **ids, protocol="v1") == 6
    assert delta(dur, **ids, protocol="v2") == 2

    # One observation per predicted row (3 + 2 + 4), bucketed by predicted class.
    assert delta("slipway_model_prediction_count", **ids) == 9
    expected = np.concatenate(
        [model.predict(X[:3]), model.predict(X[50:52]), model.predict(X[100:104])]
    )
    assert delta("slipway_model_prediction_sum", **ids) == pytest.approx(float(expected.sum()))
    assert delta("slipway_model_prediction_bucket", **ids, le="0.0") == float((expected == 0).sum())

    # kserve's own latency histogram is served on the same endpoint.
    assert delta("request_predict_seconds_count", model_name=MODEL) >= 3
