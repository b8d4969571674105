"""End-to-end tests of the XGBoost server: a real process on loopback."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xgboost as xgb
from conftest import Server, sample, server_command

MODEL = "churn"
VERSION = "2024-06-01"
FEATURES = 5


@pytest.fixture(scope="module")
def booster() -> tuple[xgb.Booster, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, FEATURES)).astype(np.float32)
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(int)
    params = {"objective": "binary:logistic", "max_depth": 3, "nthread": 1}
    return xgb.train(params, xgb.DMatrix(X, label=y), num_boost_round=10), X


@pytest.fixture(scope="module", params=["model.ubj", "model.json"])
def server(request: Any, run_server: Any, booster: Any, tmp_path_factory: Any) -> Iterator[Server]:
    model_dir: Path = tmp_path_factory.mktemp("xgb-model")
    booster[0].save_model(str(model_dir / request.param))
    cmd = server_command("xgboost_server", model_dir, f"--model_version={VERSION}")
    srv: Server = run_server(cmd, MODEL, dict(os.environ))
    yield srv
    srv.stop()  # stop now, not at module end (parametrized fixtures would overlap)


def test_v1_predictions_match_in_process_booster(server: Server, booster: Any) -> None:
    model, X = booster
    rows = X[:8]
    resp = server.v1(rows.tolist())
    assert resp.status_code == 200, resp.text
    expected = model.predict(xgb.DMatrix(rows))
    np.testing.assert_allclose(resp.json()["predictions"], expected, rtol=1e-6)


def test_v2_predictions_match_in_process_booster(server: Server, booster: Any) -> None:
    model, X = booster
    rows = X[8:20]
    resp = server.v2(rows.tolist(), datatype="FP32")
    assert resp.status_code == 200, resp.text
    (out,) = resp.json()["outputs"]
    assert out["shape"] == [len(rows)]
    assert out["datatype"] == "FP32"
    np.testing.assert_allclose(out["data"], model.predict(xgb.DMatrix(rows)), rtol=1e-6)


def test_feature_count_mismatch_is_a_client_error_and_counted(server: Server) -> None:
    before = server.metrics()
    # XGBoost itself would silently pad a short row with missing values; the server refuses.
    short = server.v1([[0.1] * (FEATURES - 1)])
    assert short.status_code == 400
    assert f"{FEATURES} features" in short.json()["error"]
    assert server.v2([[0.1] * (FEATURES + 1)]).status_code == 400
    assert server.v1([["a"] * FEATURES]).status_code == 400
    after = server.metrics()
    ids = {"model_name": MODEL, "model_version": VERSION}
    for protocol, n in (("v1", 2), ("v2", 1)):
        for name, extra in (
            ("slipway_model_requests_total", {"code": "4xx"}),
            ("slipway_model_errors_total", {"reason": "invalid_input"}),
        ):
            labels = {**ids, "protocol": protocol, **extra}
            assert sample(after, name, **labels) - sample(before, name, **labels) == n


def test_prediction_histogram_tracks_scores(server: Server, booster: Any) -> None:
    model, X = booster
    ids = {"model_name": MODEL, "model_version": VERSION}
    before = server.metrics()
    rows = X[20:50]
    assert server.v1(rows.tolist()).status_code == 200
    after = server.metrics()
    scores = model.predict(xgb.DMatrix(rows))
    count = "slipway_model_prediction_count"
    assert sample(after, count, **ids) - sample(before, count, **ids) == len(rows)
    bucket = "slipway_model_prediction_bucket"
    below_half = sample(after, bucket, **ids, le="0.5") - sample(before, bucket, **ids, le="0.5")
    assert below_half == float((scores <= 0.5).sum())
    total = "slipway_model_prediction_sum"
    got = sample(after, total, **ids) - sample(before, total, **ids)
    assert got == pytest.approx(float(scores.sum()), rel=1e-5)
