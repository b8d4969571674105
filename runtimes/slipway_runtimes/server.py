"""kserve's ModelServer, started the Slipway way.

Written against kserve 0.21 (pinned in pyproject.toml). Differences from ``kserve.ModelServer``:

- the event loop is the one uvicorn would pick for kserve's ``--event-loop`` (``auto``: uvloop
  when installed). kserve starts its servers with ``asyncio.run()``, which always makes a
  default asyncio loop, so uvloop was never used; the loop's exception handler and default
  executor are now set on the loop that actually runs (kserve sets them on another one);
- the REST app is wrapped by :class:`slipway_runtimes.asgi.SlipwayApp` (metrics and the fast
  inference path); uvicorn's access log is only on with ``--enable_access_log`` and kserve's
  per-request timing middleware only with kserve's ``--access_log_format``;
- ``--workers N`` > 1 runs N REST worker processes (kserve's multi-process server) whose metrics
  are summed through prometheus_client's multiprocess mode; each worker loads the model itself;
- gRPC (V2 / Open Inference Protocol) requests are counted in the same metrics, protocol "grpc".
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import sys
from collections.abc import Callable, Coroutine, Sequence
from concurrent import futures
from typing import Any

import kserve
import kserve.model_server
from grpc import aio
from grpc_interceptor.server import AsyncServerInterceptor
from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING
from kserve.errors import (
    InferenceError,
    InvalidInput,
    ModelNotFound,
    ModelNotReady,
    ServerNotLive,
    ServerNotReady,
    UnsupportedProtocol,
)
from kserve.logging import logger
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor, LoggingInterceptor
from kserve.protocol.grpc.server import GRPCServer
from kserve.protocol.grpc.servicer import InferenceServicer
from kserve.protocol.rest.multiprocess.server import RESTServerMultiProcess
from kserve.protocol.rest.server import RESTServer
from kserve.utils import utils as kserve_utils

from .asgi import SlipwayApp
from .base import SlipwayModel, metric_labels
from .metrics import SlipwayMetrics, multiprocess_dir

GRPC_PROTOCOL = "grpc"
_INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"


def _serving_app(rest: SlipwayRESTServer, metrics: SlipwayMetrics) -> SlipwayApp:
    """kserve's FastAPI app wrapped in ours; called in the process that serves it, after kserve
    configured its logging there."""
    if not rest.access_log:
        # What uvicorn does for access_log=False when it configures logging itself (kserve has
        # it not to): uvicorn logs a request line whenever this logger has a handler.
        access = logging.getLogger("uvicorn.access")
        access.handlers = []
        access.propagate = False
    registry = rest.dataplane.model_registry
    return SlipwayApp(
        kserve.model_server.app,
        registry.get_model,
        metrics,
        multiprocess=multiprocess_dir() is not None,
    )


class SlipwayRESTServer(RESTServer):  # type: ignore[misc]
    def __init__(
        self,
        *args: Any,
        access_log: bool = False,
        prediction_buckets: Sequence[float] = (),
        metrics: SlipwayMetrics | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.access_log = access_log or bool(self.access_log_format)
        self.config.access_log = self.access_log
        self.prediction_buckets = list(prediction_buckets)
        self._metrics = metrics

    def __getstate__(self) -> dict[str, Any]:
        # Pickled for each worker process (--workers N): the metrics stay here, each worker
        # creates its own (multiprocess values, summed on /metrics).
        state = dict(self.__dict__)
        state["_metrics"] = None
        return state

    def _add_middlewares(self, app: Any) -> None:
        # kserve's request-timing log lines (TimingMiddleware) and, with --access_log_format,
        # asgi-logger's access log: only when that format is asked for, as they cost a share of
        # a small model's request time. They see the requests kserve's app answers.
        if self.access_log_format:
            super()._add_middlewares(app)

    async def start(self) -> None:
        """Serve in this process (--workers 1)."""
        assert self._metrics is not None
        self.config.app = _serving_app(self, self._metrics)
        await super().start()

    def run(self, sockets: Any = None) -> None:
        """Serve in a worker process (--workers N): the models arrived pickled, unloaded of
        their metrics; give them this process's."""
        metrics = SlipwayMetrics.create(prediction_buckets=self.prediction_buckets)
        for model in self.dataplane.model_registry.get_models().values():
            if isinstance(model, SlipwayModel):
                model.metrics = metrics
        self.config.app = _serving_app(self, metrics)
        super().run(sockets)


class SlipwayRESTServerMultiProcess(RESTServerMultiProcess):  # type: ignore[misc]
    def __init__(self, rest_server: SlipwayRESTServer, log_config_file: str | None) -> None:
        super().__init__(
            FASTAPI_APP_IMPORT_STRING,
            rest_server.dataplane,
            rest_server.model_repository_extension,
            rest_server.config.port,
            workers=rest_server.config.workers,
            log_config_file=log_config_file,
        )
        self._rest_server = rest_server  # its run() is what each worker process calls


_STATUS_BY_ERROR: tuple[tuple[type[BaseException], int], ...] = (
    (InvalidInput, 400),
    (ModelNotFound, 404),
    (ModelNotReady, 503),
    (ServerNotReady, 503),
    (ServerNotLive, 503),
    (UnsupportedProtocol, 501),
    (NotImplementedError, 501),
    (InferenceError, 500),
)


def http_status_of(exc: BaseException) -> int:
    """The HTTP status kserve's REST server answers ``exc`` with; a gRPC request that fails
    the same way is counted under it (kserve's gRPC status for an InferenceError is
    INVALID_ARGUMENT, but the model failed: it counts as a 5xx)."""
    for cls, status in _STATUS_BY_ERROR:
        if isinstance(exc, cls):
            return status
    return 500


class GRPCMetricsInterceptor(AsyncServerInterceptor):
    """Counts ModelInfer calls in the slipway_model_* metrics (innermost interceptor: it sees
    the model's own exceptions, before kserve turns them into gRPC status codes)."""

    def __init__(self, models: Callable[[str], Any], metrics: SlipwayMetrics) -> None:
        self.models = models
        self.metrics = metrics

    async def intercept(
        self, method: Callable[..., Any], request: Any, context: Any, method_name: str
    ) -> Any:
        if method_name != _INFER_METHOD:
            return await method(request, context)
        name = getattr(request, "model_name", "")
        model = self.models(name)
        label, version = metric_labels(model, name)
        loop = asyncio.get_running_loop()
        start = loop.time()
        status = 500
        try:
            response = await method(request, context)
            status = 200
            return response
        except Exception as exc:
            status = http_status_of(exc)
            raise
        finally:
            self.metrics.record_request(label, version, GRPC_PROTOCOL, status, loop.time() - start)


class SlipwayGRPCServer(GRPCServer):  # type: ignore[misc]
    def __init__(self, *args: Any, metrics: SlipwayMetrics, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._metrics = metrics

    async def start(self, max_workers: int) -> None:
        # kserve's GRPCServer.start with our interceptor added last (innermost).
        servicer = InferenceServicer(self._data_plane, self._model_repository_extension)
        self._server = aio.server(
            futures.ThreadPoolExecutor(max_workers=max_workers),
            interceptors=(
                LoggingInterceptor(),
                ExceptionToStatusInterceptor(),
                GRPCMetricsInterceptor(self._data_plane.model_registry.get_model, self._metrics),
            ),
            options=[
                ("grpc.max_send_message_length", self._kwargs["grpc_max_send_message_length"]),
                (
                    "grpc.max_receive_message_length",
                    self._kwargs["grpc_max_receive_message_length"],
                ),
            ],
        )
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, self._server)
        listen_addr = f"[::]:{self._port}"
        self._server.add_insecure_port(listen_addr)
        logger.info("Starting gRPC server with %s workers on %s", max_workers, listen_addr)
        await self._server.start()
        await self._server.wait_for_termination()


def run_loop(
    main: Coroutine[Any, Any, None], loop_factory: Callable[[], asyncio.AbstractEventLoop] | None
) -> None:
    """``asyncio.run(main)`` on a loop from ``loop_factory`` (None: asyncio's default)."""
    if sys.version_info >= (3, 11):
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(main)
        return
    loop = loop_factory() if loop_factory else asyncio.new_event_loop()  # pragma: no cover
    asyncio.set_event_loop(loop)  # pragma: no cover
    try:  # pragma: no cover
        loop.run_until_complete(main)
    finally:  # pragma: no cover
        asyncio.set_event_loop(None)
        loop.close()


class SlipwayModelServer(kserve.ModelServer):  # type: ignore[misc]
    """See the module docstring."""

    max_asyncio_workers: int | None  # set by kserve's __init__

    def __init__(
        self,
        *,
        metrics: SlipwayMetrics,
        access_log: bool = False,
        prediction_buckets: Sequence[float] = (),
        grpc_max_send_message_length: int | None = None,
        grpc_max_receive_message_length: int | None = None,
        log_config_file: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.metrics = metrics
        self.access_log = access_log
        self.prediction_buckets = list(prediction_buckets)
        defaults = vars(kserve.model_server.args)
        self.grpc_options = {
            "grpc_max_send_message_length": grpc_max_send_message_length
            or defaults["grpc_max_send_message_length"],
            "grpc_max_receive_message_length": grpc_max_receive_message_length
            or defaults["grpc_max_receive_message_length"],
        }
        self.log_config_file = log_config_file
        self.loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None

    def start(self, models: list[Any]) -> None:
        """kserve's ModelServer.start with the REST/gRPC servers above and the chosen loop."""
        self._register_and_check_atleast_one_model_is_ready(models)
        rest = SlipwayRESTServer(
            FASTAPI_APP_IMPORT_STRING,
            self.dataplane,
            self.model_repository_extension,
            self.http_port,
            access_log_format=self.access_log_format,
            workers=self.workers,
            grace_period=self.grace_period,
            event_loop=self.event_loop,
            timeout_keep_alive=self.timeout_keep_alive,
            ssl_certfile=self.ssl_certfile,
            ssl_keyfile=self.ssl_keyfile,
            access_log=self.access_log,
            prediction_buckets=self.prediction_buckets,
            metrics=self.metrics,
        )
        if self.workers > 1:
            self._rest_multiprocess_server = SlipwayRESTServerMultiProcess(
                rest, self.log_config_file
            )
            self.servers.append(self._rest_multiprocess_server.start())
        else:
            self._rest_server = rest
            self.servers.append(rest.start())
        if self.enable_grpc:
            self._grpc_server = SlipwayGRPCServer(
                self.grpc_port,
                self.dataplane,
                self.model_repository_extension,
                kwargs=self.grpc_options,
                grace_period=self.grace_period,
                metrics=self.metrics,
            )
            self.servers.append(self._grpc_server.start(self.max_threads))
        self.register_signal_handler()
        # The loop uvicorn itself would run for --event-loop (auto: uvloop when installed).
        self.loop_factory = rest.config.get_loop_factory()
        run_loop(self._serve(), self.loop_factory)

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(self._custom_exception_handler or self.default_exception_handler)
        workers: int | None = self.max_asyncio_workers
        if workers is None:
            workers = self.max_asyncio_workers = min(32, kserve_utils.cpu_count() + 4)
        loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(max_workers=workers))
        logger.info("Serving on %s.%s", type(loop).__module__, type(loop).__name__)
        await asyncio.gather(*self.servers)
