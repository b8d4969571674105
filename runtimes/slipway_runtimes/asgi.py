"""The outermost ASGI layer of the REST server: request metrics and a fast inference path.

Every request goes through :class:`SlipwayApp` before kserve's FastAPI app:

- inference requests (V1 ``:predict``, V2 ``/infer``) are counted in the slipway_model_*
  metrics by the status code actually sent, whichever path answered them;
- a well-formed JSON inference request for a served model is answered here, without FastAPI's
  routing, pydantic validation and response serialisation: the body is parsed with orjson, the
  model is called through kserve's ``Model.__call__`` (same pre/postprocess hooks and kserve
  latency histograms), and the response is written with orjson, byte for byte what kserve's
  endpoint would send. Everything else (malformed or unusual bodies, binary tensors,
  CloudEvents, unknown or unready models) goes to kserve's app unchanged, so errors keep
  kserve's status codes and messages. Errors raised by the model on the fast path are answered
  by the app's own exception handlers;
- in multiprocess mode (``--workers N``), ``GET /metrics`` sums the metrics of every worker.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from kserve.protocol.infer_type import InferInput, InferRequest, InferResponse, RequestedOutput
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .base import SlipwayModel, metric_labels
from .metrics import SlipwayMetrics, exposition, match_inference_route

log = logging.getLogger("slipway.asgi")

_JSON = b"application/json"
_ORJSON_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY
# CloudEvents in binary mode are announced by these headers; kserve handles them.
_CE_HEADERS = (b"ce-specversion", b"ce-source", b"ce-type", b"ce-id")
_V2_REQUEST_KEYS = frozenset(("id", "parameters", "inputs", "outputs"))
_V2_INPUT_KEYS = frozenset(("name", "shape", "datatype", "parameters", "data"))
_V2_INPUT_REQUIRED = frozenset(("name", "shape", "datatype", "data"))
_V2_OUTPUT_KEYS = frozenset(("name", "parameters"))
_CLOUDEVENT_KEYS = ("time", "type", "source", "id", "specversion", "data")


def _parameters_ok(value: Any) -> bool:
    """kserve's V2 ``Parameters``: a map of str to str, number or bool (or absent)."""
    if value is None:
        return True
    if type(value) is not dict:
        return False
    return all(type(v) in (str, int, float, bool) for v in value.values())


def _shape_ok(value: Any) -> bool:
    return type(value) is list and all(type(d) is int for d in value)


def v2_request(payload: Any, model_name: str) -> InferRequest | None:
    """The InferRequest kserve would build from a V2 JSON body, or None when the body is
    anything but a plain JSON request (then kserve's own endpoint must answer it: schema errors,
    FP16 or binary data, binary outputs)."""
    if type(payload) is not dict or not payload.keys() <= _V2_REQUEST_KEYS:
        return None
    request_id = payload.get("id")
    parameters = payload.get("parameters")
    inputs = payload.get("inputs")
    if request_id is not None and type(request_id) is not str:
        return None
    if not _parameters_ok(parameters) or type(inputs) is not list:
        return None
    if parameters and "binary_data_output" in parameters:
        return None
    infer_inputs = []
    for item in inputs:
        if type(item) is not dict or not _V2_INPUT_REQUIRED <= item.keys() <= _V2_INPUT_KEYS:
            return None
        name, shape, datatype, data = (item.get(k) for k in ("name", "shape", "datatype", "data"))
        item_params = item.get("parameters")
        if type(name) is not str or type(datatype) is not str or type(data) is not list:
            return None
        if not _shape_ok(shape) or not _parameters_ok(item_params):
            return None
        if datatype in ("FP16", "BYTES"):
            return None
        infer_inputs.append(
            InferInput(
                name=name,
                shape=shape,
                datatype=datatype,
                data=data,
                parameters={} if item_params is None else item_params,
            )
        )
    requested = None
    outputs = payload.get("outputs")
    if outputs is not None:
        if type(outputs) is not list:
            return None
        requested = []
        for item in outputs:
            if type(item) is not dict or not item.keys() <= _V2_OUTPUT_KEYS:
                return None
            name, out_params = item.get("name"), item.get("parameters")
            if type(name) is not str or not _parameters_ok(out_params):
                return None
            if out_params and "binary_data" in out_params:
                return None
            requested.append(
                RequestedOutput(name=name, parameters={} if out_params is None else out_params)
            )
    return InferRequest(
        model_name=model_name,
        infer_inputs=infer_inputs,
        request_id=request_id,
        parameters=parameters,
        request_outputs=requested or None,
    )


def v2_response_body(response: InferResponse) -> bytes | None:
    """The JSON kserve's V2 endpoint sends for ``response`` (``InferenceResponse`` fields, in
    its order, nulls included), or None when only kserve's own encoder can write it."""
    outputs = []
    for out in response.outputs:
        data = out.data
        if type(data) is not list or out.datatype == "FP16":
            return None
        params = out.parameters
        outputs.append(
            {
                "name": out.name,
                "shape": out.shape,
                "datatype": out.datatype,
                "parameters": dict(params) if params else None,
                "data": data,
            }
        )
    body = {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "id": response.id,
        "parameters": dict(response.parameters) if response.parameters else None,
        "outputs": outputs,
    }
    return orjson.dumps(body, option=_ORJSON_OPTIONS)


async def _read_body(receive: Receive) -> tuple[bytes, bool]:
    """The whole request body, and whether the client disconnected before sending it."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks), True
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks), False


def _replay(body: bytes, disconnected: bool, receive: Receive) -> Receive:
    """A ``receive`` giving ``body`` again, then whatever the connection sends next."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        if disconnected:
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


class SlipwayApp:
    """Wraps kserve's FastAPI ``app``; see the module docstring."""

    def __init__(
        self,
        app: Any,
        models: Callable[[str], Any],
        metrics: SlipwayMetrics,
        multiprocess: bool = False,
    ) -> None:
        self.app: ASGIApp = app
        self.fastapi = app
        self.models = models  # model name -> registered model or None (kserve's registry)
        self.metrics = metrics
        self.multiprocess = multiprocess

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        route = match_inference_route(path)
        if route is None:
            if self.multiprocess and path == "/metrics" and scope["method"] == "GET":
                await self._metrics(scope, send)
            else:
                await self.app(scope, receive, send)
            return
        protocol, name = route
        model = self.models(name)
        label, version = metric_labels(model, name)
        start = time.perf_counter()
        status = [500]  # what an exception escaping the app amounts to
        try:
            if (
                isinstance(model, SlipwayModel)
                and model.ready
                and scope["method"] == "POST"
                and "/versions/" not in path  # kserve answers those 501 (no versioning)
                and self._plain_json(scope)
            ):
                await self._fast(protocol, model, scope, receive, send, status)
            else:
                await self._forward(scope, receive, send, status)
        finally:
            self.metrics.record_request(
                label, version, protocol, status[0], time.perf_counter() - start
            )

    @staticmethod
    def _plain_json(scope: Scope) -> bool:
        content_type = None
        for key, value in scope["headers"]:
            if key == b"content-type":
                content_type = value
            elif key in _CE_HEADERS:
                return False
        return content_type == _JSON

    async def _forward(self, scope: Scope, receive: Receive, send: Send, status: list[int]) -> None:
        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        await self.app(scope, receive, send_wrapper)

    async def _fast(
        self,
        protocol: str,
        model: SlipwayModel,
        scope: Scope,
        receive: Receive,
        send: Send,
        status: list[int],
    ) -> None:
        body, disconnected = await _read_body(receive)
        replay = _replay(body, disconnected, receive)
        if disconnected:
            await self._forward(scope, replay, send, status)
            return
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            # kserve answers (V1: orjson's message; V2: FastAPI's, which also takes NaN).
            await self._forward(scope, replay, send, status)
            return
        request: Any
        if protocol == "v2":
            request = v2_request(payload, model.name)
        else:
            plain = type(payload) is dict and not all(k in payload for k in _CLOUDEVENT_KEYS)
            request = payload if plain else None
        if request is None:
            await self._forward(scope, replay, send, status)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            response, response_headers = await model(request, headers=headers)
            if protocol == "v2":
                out = v2_response_body(response) if isinstance(response, InferResponse) else None
                if out is None:
                    raise TypeError(f"unexpected V2 response {type(response).__name__}")
            else:
                out = orjson.dumps(response, option=_ORJSON_OPTIONS)
        except Exception as exc:
            await self._error(exc, scope, replay, send, status)
            return
        raw_headers = [
            (k.lower().encode("latin-1"), str(v).encode("latin-1"))
            for k, v in (response_headers or {}).items()
            if k.lower() not in ("content-length", "content-type")
        ]
        raw_headers += [(b"content-length", str(len(out)).encode()), (b"content-type", _JSON)]
        status[0] = 200
        await send({"type": "http.response.start", "status": 200, "headers": raw_headers})
        await send({"type": "http.response.body", "body": out})

    async def _error(
        self, exc: Exception, scope: Scope, receive: Receive, send: Send, status: list[int]
    ) -> None:
        """Answer ``exc`` with the app's exception handler for it, as kserve's endpoint would."""
        handlers: dict[Any, Callable[..., Awaitable[Any]]] = getattr(
            self.fastapi, "exception_handlers", {}
        )
        handler = next((handlers[c] for c in type(exc).__mro__ if c in handlers), None)
        if handler is None:
            raise exc
        response = await handler(Request(scope, receive), exc)
        status[0] = int(response.status_code)
        await response(scope, receive, send)

    async def _metrics(self, scope: Scope, send: Send) -> None:
        accept = _header(scope, b"accept")
        body, content_type = exposition(accept.decode("latin-1") if accept else None)
        headers = [
            (b"content-type", content_type.encode("latin-1")),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
