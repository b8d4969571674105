"""The fast inference path (slipway_runtimes.asgi) answers byte for byte as kserve's own
endpoints, hands everything unusual to them, and the server runs on uvloop without per-request
logging unless asked."""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from conftest import Server, sample, server_command, v2_body
from kserve.model_repository import ModelRepository
from prometheus_client import CollectorRegistry
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from slipway_runtimes.asgi import SlipwayApp
from slipway_runtimes.metrics import SlipwayMetrics
from slipway_runtimes.sklearn_server import SKLearnModel

MODEL = "iris"
VERSION = "v7"
# A lone CloudEvents header: not a binary CloudEvent for kserve (that needs four headers), but
# the fast path leaves any request with a ce-* header to kserve: the reference answer.
VIA_KSERVE = {"ce-id": "reference"}

X, Y = load_iris(return_X_y=True)
ROWS = X[::15].tolist()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("iris")
    joblib.dump(LogisticRegression(max_iter=1000).fit(X, Y), path / "model.joblib")
    return path


@pytest.fixture(scope="module")
def server(run_server: Any, model_dir: Path) -> Iterator[Server]:
    cmd = server_command("sklearn_server", model_dir, f"--model_version={VERSION}")
    srv: Server = run_server(cmd, MODEL, dict(os.environ))
    yield srv
    srv.stop()


V1 = f"/v1/models/{MODEL}:predict"
V2 = f"/v2/models/{MODEL}/infer"

# (path, body): each sent twice, through the fast path and through kserve's endpoint.
CASES: list[tuple[str, Any]] = [
    (V1, {"instances": ROWS}),
    (V1, {"instances": [[1.0, 2.0]]}),  # wrong feature count: 400
    (V1, {"instances": [1.0, 2.0, 3.0, 4.0]}),  # 1-D: 400
    (V1, {"instances": "rows"}),  # not a list: 400
    (V1, {"inputs": ROWS}),  # V1 takes "inputs" too
    (V2, v2_body(ROWS, id="a")),
    (V2, v2_body(ROWS, "FP32", id="b")),
    (V2, v2_body(ROWS, id="c", parameters={"x": 1, "y": "z"})),
    (V2, v2_body(ROWS, id="d", outputs=[{"name": "predict_proba"}, {"name": "predict"}])),
    (V2, v2_body(ROWS, id="e", outputs=[{"name": "decision_function"}])),  # unknown: 400
    (V2, v2_body([[1.0, 2.0, 3.0]], id="f")),  # wrong feature count: 400
    (V2, v2_body(ROWS, "FOO", id="g")),  # unknown datatype: 400
    (
        V2,
        {
            "id": "h",
            "inputs": [
                {"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [[5.1, 3.5, 1.4, 0.2]]}
            ],
        },
    ),  # nested data  # fmt: skip
    (V2, {"id": "i", "inputs": [{"name": "x", "shape": [1, 4], "data": [1, 2, 3, 4]}]}),  # 422
    (V2, {"id": "j", "inputs": [], "outputs": []}),  # no input: 400
    (f"/v2/models/{MODEL}/versions/1/infer", v2_body(ROWS, id="l")),  # no versions: 501
    (
        V2,
        {
            "id": "k",
            "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP16", "data": [1, 2, 3, 4]}],
        },
    ),  # FP16 in JSON: 400  # fmt: skip
]


@pytest.mark.parametrize(("path", "body"), CASES, ids=[f"{p[1:3]}-{i}" for i, (p, _) in
                                                       enumerate(CASES)])  # fmt: skip
def test_fast_path_answers_as_kserve_does(server: Server, path: str, body: Any) -> None:
    fast = server.post(path, body)
    reference = server.post(path, body, headers=VIA_KSERVE)
    assert fast.status_code == reference.status_code, (fast.text, reference.text)
    assert fast.content == reference.content
    assert fast.headers["content-type"] == reference.headers["content-type"]
    assert fast.headers["content-length"] == reference.headers["content-length"]


def test_fast_path_v2_response(server: Server) -> None:
    resp = server.v2(ROWS, id="r1")
    assert resp.status_code == 200
    expected = LogisticRegression(max_iter=1000).fit(X, Y).predict(np.array(ROWS)).tolist()
    assert resp.json() == {
        "model_name": MODEL,
        "model_version": None,
        "id": "r1",
        "parameters": None,
        "outputs": [{"name": "output-0", "shape": [len(ROWS)], "datatype": "INT64",
                     "parameters": None, "data": expected}],
    }  # fmt: skip
    # A request without an id gets a fresh one, as from kserve.
    ids = {server.v2(ROWS).json()["id"] for _ in range(3)}
    assert len(ids) == 3 and all(re.fullmatch(r"[0-9a-f-]{36}", i) for i in ids)


def test_both_paths_are_counted_alike(server: Server) -> None:
    before = server.metrics()
    for headers in ({}, VIA_KSERVE):
        assert server.post(V1, {"instances": ROWS}, headers=headers).status_code == 200
        assert server.post(V2, v2_body(ROWS), headers=headers).status_code == 200
        assert server.post(V2, v2_body([[1.0]]), headers=headers).status_code == 400
        assert server.post(V2, data="{oops", headers=headers).status_code == 422
    after = server.metrics()
    ids = {"model_name": MODEL, "model_version": VERSION}

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **ids, **labels) - sample(before, name, **ids, **labels)

    assert delta("slipway_model_requests_total", protocol="v1", code="2xx") == 2
    assert delta("slipway_model_requests_total", protocol="v2", code="2xx") == 2
    assert delta("slipway_model_requests_total", protocol="v2", code="4xx") == 4
    assert delta("slipway_model_errors_total", protocol="v2", reason="invalid_input") == 2
    assert delta("slipway_model_errors_total", protocol="v2", reason="validation_error") == 2
    assert delta("slipway_model_prediction_count") == 4 * len(ROWS)
    assert delta("request_predict_seconds_count") == 0  # labelled by model_name only
    kserve = "request_predict_seconds_count"
    assert sample(after, kserve, model_name=MODEL) - sample(before, kserve, model_name=MODEL) == 6


def test_runs_on_uvloop_without_request_logs(server: Server) -> None:
    for _ in range(3):
        assert server.v2(ROWS).status_code == 200
    log = server.log()
    assert "Serving on uvloop.Loop" in log
    assert "POST /v2/models" not in log  # uvicorn's access log
    assert "kserve.io.v2" not in log  # kserve's per-request timing log
    assert "requestId:" not in log  # kserve's latency log


def test_access_log_on_request(run_server: Any, model_dir: Path) -> None:
    cmd = server_command("sklearn_server", model_dir, "--enable_access_log=true")
    srv: Server = run_server(cmd, MODEL, dict(os.environ))
    try:
        assert srv.v1(ROWS).status_code == 200
        assert srv.v2(ROWS).status_code == 200
    finally:
        srv.stop()
    log = srv.log()
    # uvicorn's access log: one line per request, the fast path's included.
    assert re.search(rf'"POST /v1/models/{MODEL}(:|%3A)predict HTTP/1.1" 200', log), log
    assert f'"POST /v2/models/{MODEL}/infer HTTP/1.1" 200' in log


# --- in process: what takes the fast path ---------------------------------------------------


class Recorder:
    """An ASGI app standing for kserve's: records that it was called."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        message = await receive()
        self.calls.append(scope["path"])
        assert message["type"] == "http.request"  # the body, replayed when already read
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": message.get("body", b"")})


def asgi_call(app: SlipwayApp, path: str, body: bytes, headers: dict[str, str]) -> list[Any]:
    scope = {"type": "http", "method": "POST", "path": path,
             "headers": [(k.encode(), v.encode()) for k, v in headers.items()]}  # fmt: skip
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


@pytest.fixture
def inproc(model_dir: Path) -> tuple[SlipwayApp, Recorder]:
    model = SKLearnModel(MODEL, str(model_dir), "v", SlipwayMetrics.create(CollectorRegistry()))
    model.load()
    registry = ModelRepository()
    registry.update(model)
    kserve_app = Recorder()
    return SlipwayApp(kserve_app, registry.get_model, model.metrics), kserve_app


JSON = {"content-type": "application/json"}


@pytest.mark.parametrize(
    ("path", "body", "headers"),
    [
        (V1, {"instances": ROWS}, JSON),
        (V2, v2_body(ROWS), JSON),
        (V2, v2_body(ROWS, outputs=[{"name": "predict_proba"}]), JSON),
        (V2, v2_body(ROWS, parameters={"content_type": "np"}), JSON),
    ],
)
def test_plain_requests_take_the_fast_path(inproc: Any, path: str, body: Any, headers: Any) -> None:
    app, kserve_app = inproc
    sent = asgi_call(app, path, json.dumps(body).encode(), headers)
    assert sent[0]["status"] == 200 and kserve_app.calls == []


@pytest.mark.parametrize(
    ("path", "body", "headers"),
    [
        (V2, json.dumps(v2_body(ROWS)), {}),  # no content type
        (V2, json.dumps(v2_body(ROWS)), {"content-type": "application/json; charset=utf-8"}),
        (V2, json.dumps(v2_body(ROWS)), {**JSON, "ce-specversion": "1.0"}),
        (V2, '{"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [NaN]}]}', JSON),
        (V2, json.dumps(v2_body(ROWS, parameters={"binary_data_output": True})), JSON),
        (V2, json.dumps(v2_body(ROWS, outputs=[{"name": "predict",
                                                "parameters": {"binary_data": True}}])), JSON),
        (V2, json.dumps({**v2_body(ROWS), "extra": 1}), JSON),
        (V2, json.dumps({"inputs": [{"name": 1, "shape": [1], "datatype": "FP64",
                                     "data": [1.0]}]}), JSON),
        (V2, json.dumps({"inputs": [{"name": "x", "shape": [1.0], "datatype": "FP64",
                                     "data": [1.0]}]}), JSON),
        (V2, json.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES",
                                     "data": ["a"]}]}), JSON),
        (V2, json.dumps({"parameters": {"nested": {"a": 1}}, **v2_body(ROWS)}), JSON),
        (V1, json.dumps({"instances": ROWS, "specversion": "1.0", "time": "t", "type": "t",
                         "source": "s", "id": "i", "data": {}}), JSON),  # a CloudEvent
        (V1, json.dumps([ROWS]), JSON),
        (V1, "{not json", JSON),
        ("/v1/models/other:predict", json.dumps({"instances": ROWS}), JSON),
    ],
)  # fmt: skip
def test_unusual_requests_go_to_kserve(inproc: Any, path: str, body: str, headers: Any) -> None:
    app, kserve_app = inproc
    sent = asgi_call(app, path, body.encode(), headers)
    assert kserve_app.calls == [path]
    assert sent[0]["status"] == 299 and sent[1]["body"] == body.encode()
