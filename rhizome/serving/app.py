"""Serve a program over HTTP: FastAPI routes, run by uvicorn.

Endpoints (``rhizome serve PROGRAM`` starts them):

- ``POST /v1/predict`` — ``{"inputs": {...}, "trace": false}`` answers
  ``{"outputs": {...}, "usage": {...}, "latency": s}``.
- ``POST /v1/batch`` — ``{"examples": [{...}, ...]}`` streams one NDJSON line per
  example as it finishes: ``{"index", "outputs", "error", "usage", "latency"}``.
- ``POST /v1/runs``, ``POST /v1/runs/{id}/resume``, ``GET /v1/runs/{id}`` — checkpointed
  runs that may wait for a person's answer (see :mod:`rhizome.serving.runs`).
- ``POST /v1/stream`` — the predict body; the run's events (node steps, LM
  calls, tokens, retries, tool calls) as server-sent events, ending with the
  outputs (see :mod:`rhizome.serving.stream`).
- ``GET /healthz`` — liveness, never behind auth.
- ``GET /metrics`` — Prometheus text (requests, latency, runs, LM calls, tokens, errors).
- ``GET /docs`` and ``/openapi.json`` — the API, with request bodies typed by the
  program's signature; ``/docs`` is one self-contained page (no CDN, works
  offline) with a form per endpoint.

Inputs are validated against the graph's inputs (unknown fields too): a bad
body is a 422 whose message names the field. A failed run's error carries a
``request_id``; when the LM endpoint failed (502) the message says what
happened without the endpoint's URL, host or reply, which the ``rhizome.serving.app``
log records under that id. A bearer token, when set, guards
everything but health and docs; bodies over a size limit get 413; at most
``concurrency`` graph runs go at once (predict and batch share the slots) and a
predict finding ``max_queue`` requests already waiting gets 503. On SIGTERM
or Ctrl-C uvicorn stops accepting connections and finishes the requests in
flight (up to ``graceful_timeout`` seconds) before exiting.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import json
import math
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
from anyio.streams.memory import MemoryObjectSendStream
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from rhizome.engine.errors import ConfigError
from rhizome.engine.trace import Trace, jsonable
from rhizome.serving.metrics import CONTENT_TYPE, ServeMetrics
from rhizome.serving.middleware import (
    AuthMiddleware,
    BodyLimitMiddleware,
    MetricsMiddleware,
    busy_response,
    error_response,
    public_error,
    public_trace,
    status_for,
)
from rhizome.serving.runs import add_run_routes, run_store
from rhizome.serving.schema import (
    ERROR_RESPONSES,
    body_type,
    dump_inputs,
    field_errors,
    request_models,
    response_model,
)
from rhizome.serving.stream import add_stream_route
from rhizome.telemetry import Telemetry

if TYPE_CHECKING:
    from rhizome.engine.client.protocol import LM
    from rhizome.engine.graphs.graph import Graph

__all__ = ("Runner", "ServeConfig", "create_app", "run_server")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ServeConfig:
    """How the server guards and paces the program.

    Attributes:
        token: Bearer token required on the API; None serves without auth.
        max_body_bytes: Largest request body accepted (413 above).
        max_batch: Most examples in one ``/v1/batch`` request (422 above).
        concurrency: Graph runs at once, over all requests.
        max_queue: Predict requests allowed to wait for a slot before 503.
        timeout: Seconds one graph run may take (504 after), or None.
        checkpoints: The SQLite file ``/v1/runs`` keeps its checkpoints in, or
            None to keep them in memory (waiting runs are lost on restart).
    """

    token: str | None = None
    max_body_bytes: int = 1_048_576
    max_batch: int = 1000
    concurrency: int = 16
    max_queue: int = 256
    timeout: float | None = None
    checkpoints: str | None = None

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_batch", "concurrency"):
            if getattr(self, name) < 1:
                raise ConfigError(f"ServeConfig({name}={getattr(self, name)}) must be at least 1")
        if self.max_queue < 0 or (self.timeout is not None and self.timeout <= 0):
            raise ConfigError("ServeConfig needs max_queue >= 0 and a positive timeout (or None)")


class Runner:
    """Runs the graph for requests: shared slots, timeout, telemetry, metrics."""

    def __init__(
        self, graph: Graph, lm: LM | None, config: ServeConfig, telemetry: Telemetry
    ) -> None:
        self.graph = graph
        self.lm = lm
        self.config = config
        self.telemetry = telemetry
        self.metrics = ServeMetrics()
        self.slots = anyio.CapacityLimiter(config.concurrency)

    def busy(self) -> bool:
        """True when every slot is taken and the waiting line is full."""
        stats = self.slots.statistics()
        full = stats.borrowed_tokens >= stats.total_tokens
        return full and stats.tasks_waiting >= self.config.max_queue

    async def run(
        self, inputs: Mapping[str, Any], *, with_trace: bool
    ) -> tuple[dict[str, Any], int]:
        """Run once: the result (outputs or an error, usage, latency) and its HTTP status."""
        trace = Trace()
        start = time.perf_counter()
        error: BaseException | None = None
        outputs: dict[str, Any] | None = None
        async with self.slots:
            try:
                with anyio.fail_after(self.config.timeout):
                    prediction = await self.telemetry.run(
                        self.graph, inputs, lm=self.lm, trace=trace
                    )
                outputs = jsonable(dict(prediction))
            except Exception as exc:
                error = exc
        usage = trace.usage()
        self.metrics.run_finished(usage, type(error).__name__ if error is not None else None)
        result = {
            "outputs": outputs,
            "error": public_error(error, uuid.uuid4().hex) if error is not None else None,
            "usage": usage,
            "latency": time.perf_counter() - start,
            **({"trace": public_trace(trace.to_dict(), error)} if with_trace else {}),
        }
        return result, 200 if error is None else status_for(error)


def create_app(
    graph: Graph,
    *,
    lm: LM | None = None,
    config: ServeConfig | None = None,
    telemetry: Telemetry | None = None,
) -> FastAPI:
    """The ASGI app serving ``graph`` (run it with uvicorn, or :func:`run_server`).

    Args:
        graph: The program; validated here, so wiring errors surface at start.
        lm: The default LM for nodes not bound to one.
        config: Auth, limits and pacing.
        telemetry: Where run spans go (default: the global OpenTelemetry provider).
    """
    config = config or ServeConfig()
    graph.validate()
    runner = Runner(graph, lm, config, telemetry or Telemetry())
    predict_model, batch_model = request_models(graph, max_batch=config.max_batch)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        close = getattr(lm, "aclose", None)
        if close is not None:
            await close()

    app = FastAPI(
        title=f"rhizome: {graph.name}",
        description=f"Runs the rhizome program {graph.name!r}.",
        lifespan=lifespan,
        docs_url=None,  # FastAPI's pages load their scripts from a CDN: ours is self-contained
        redoc_url=None,
    )
    app.state.runner = runner
    _add_routes(app, runner, predict_model, batch_model)
    add_run_routes(app, runner, run_store(config.checkpoints))

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(_docs_page())

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        fields = field_errors(exc.errors(), inputs=graph.inputs)
        summary = "; ".join(f"{f['field']}: {f['message']}" for f in fields)
        return error_response(422, "invalid_request", summary, fields=fields)

    app.add_middleware(BodyLimitMiddleware, max_bytes=config.max_body_bytes)
    if config.token:
        app.add_middleware(AuthMiddleware, token=config.token)
    app.add_middleware(MetricsMiddleware, metrics=runner.metrics)
    return app


def _add_routes(app: FastAPI, runner: Runner, predict_model: Any, batch_model: Any) -> None:
    @app.post(
        "/v1/predict",
        summary="Run the program once",
        response_model=response_model(runner.graph),
        responses=ERROR_RESPONSES,
    )
    @body_type(predict_model)
    async def predict(body: Any) -> JSONResponse:
        if runner.busy():
            return busy_response()
        result, status = await runner.run(dump_inputs(body.inputs), with_trace=body.trace)
        error = result.pop("error")
        if error is not None:
            return JSONResponse({"error": error, **result}, status_code=status)
        return JSONResponse(result)

    @app.post(
        "/v1/batch",
        summary="Run the program on many examples, streaming NDJSON lines as they finish",
        response_class=StreamingResponse,
        responses={k: v for k, v in ERROR_RESPONSES.items() if k in (401, 413, 422)},
    )
    @body_type(batch_model)
    async def batch(body: Any) -> StreamingResponse:
        examples = [dump_inputs(e) for e in body.examples]
        return _BatchStream(runner, examples, with_trace=body.trace)

    add_stream_route(app, runner, predict_model, status_for)

    @app.get("/healthz", summary="Liveness")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "program": runner.graph.name}

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(runner.metrics.render(), media_type=CONTENT_TYPE)


class _BatchStream(StreamingResponse):
    """NDJSON lines in the order the runs finish; all runs share the server's slots.

    The runs live in a task group around the response itself (not inside a
    generator), and a watcher cancels them when the client disconnects, so a
    client that goes away stops paying for the examples not yet run.
    """

    def __init__(self, runner: Runner, examples: list[dict[str, Any]], *, with_trace: bool):
        super().__init__(content=(), media_type="application/x-ndjson")
        self.runner = runner
        self.examples = examples
        self.with_trace = with_trace

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        lines_in, lines_out = anyio.create_memory_object_stream[bytes](math.inf)
        async with lines_out, anyio.create_task_group() as tg:
            tg.start_soon(self._drive, lines_in)
            tg.start_soon(self._until_disconnect, receive, tg.cancel_scope)
            self.body_iterator = lines_out
            await self.stream_response(send)
            tg.cancel_scope.cancel()  # every line is sent: stop watching for a disconnect

    async def _drive(self, lines: MemoryObjectSendStream[bytes]) -> None:
        async with lines, anyio.create_task_group() as tg:
            for index, inputs in enumerate(self.examples):
                tg.start_soon(self._one, index, inputs, lines)

    async def _one(
        self, index: int, inputs: dict[str, Any], lines: MemoryObjectSendStream[bytes]
    ) -> None:
        result, _ = await self.runner.run(inputs, with_trace=self.with_trace)
        line = json.dumps({"index": index, **result}, ensure_ascii=False) + "\n"
        await lines.send(line.encode())

    @staticmethod
    async def _until_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        scope.cancel()


def run_server(
    app: ASGIApp,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    graceful_timeout: float = 30.0,
    log_level: str = "info",
) -> None:
    """Serve ``app`` (HTTP API or MCP endpoint) until SIGINT/SIGTERM; requests in flight finish."""
    import uvicorn

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        timeout_graceful_shutdown=math.ceil(graceful_timeout),
        server_header=False,
        lifespan="on",
        ws="none",
    )
    uvicorn.Server(config).run()


@functools.cache
def _docs_page() -> str:
    """The /docs page: the API's own openapi.json as forms, with no script from elsewhere."""
    return importlib.resources.files("rhizome").joinpath("docs.html").read_text("utf-8")
