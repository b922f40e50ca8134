"""``POST /v1/stream``: one run of the program, its events sent as server-sent events.

The body is the one ``/v1/predict`` takes (``{"inputs": {...}}``). The reply is
``text/event-stream``: one ``event: <type>`` / ``data: <JSON>`` pair per event
of :meth:`Graph.events <rhizome.engine.graphs.graph.Graph.events>`, in order
(``node_started``, ``lm_call_started``, ``token``, ``retry``, ``tool_call``,
``tool_result``, ``lm_call_finished``, ``node_finished``), ending with
``run_finished`` (the outputs, the run's usage and latency) or ``error`` (the
error as ``/v1/predict`` gives it, with the HTTP status the run would have had)::

    event: token
    data: {"type": "token", "path": "answer", "field": "answer", "text": "Par", ...}

The run takes one of the server's slots and its timeout like a predict; a
client that disconnects cancels it. LM server addresses never reach the
client: URLs in retry reasons and errors are masked, as in ``/v1/predict``.
"""

from __future__ import annotations

import functools
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import anyio
from fastapi import FastAPI
from fastapi.responses import JSONResponse, StreamingResponse

from rhizome.engine.events import Event, RunFinished
from rhizome.engine.graphs.streaming import EventStream
from rhizome.engine.trace import Trace, jsonable
from rhizome.serving.middleware import busy_response, public_error
from rhizome.serving.schema import ERROR_RESPONSES

if TYPE_CHECKING:
    from rhizome.engine.example import Prediction
    from rhizome.serving.app import Runner

__all__ = ("add_stream_route", "sse_frame")


_URL = re.compile(r"https?://\S+")


def add_stream_route(
    app: FastAPI, runner: Runner, body_model: Any, status_for: Callable[[BaseException], int]
) -> None:
    """Add ``POST /v1/stream`` to ``app``, taking ``body_model`` (the predict body).

    Args:
        app: The app ``rhizome serve`` runs.
        runner: Its runner (graph, LM, slots, timeout, telemetry, metrics).
        body_model: The request body model, the one ``/v1/predict`` takes.
        status_for: The HTTP status a failed run would get, for the error event.
    """

    async def stream(body: Any) -> StreamingResponse | JSONResponse:
        if runner.busy():
            return busy_response()
        inputs = body.inputs.model_dump(by_alias=True, exclude_unset=True)
        frames = _frames(runner, inputs, status_for)
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(frames, media_type="text/event-stream", headers=headers)

    stream.__annotations__["body"] = body_model  # a model built at run time (see app.py)
    app.post(
        "/v1/stream",
        summary="Run the program once, streaming its events as server-sent events",
        response_class=StreamingResponse,
        response_model=None,
        responses={k: v for k, v in ERROR_RESPONSES.items() if k in (401, 413, 422, 503)},
    )(stream)


def sse_frame(name: str, data: dict[str, Any]) -> bytes:
    """One server-sent event: ``event: name`` and ``data:`` holding ``data`` as JSON."""
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


async def _frames(
    runner: Runner, inputs: dict[str, Any], status_for: Callable[[BaseException], int]
) -> AsyncIterator[bytes]:
    trace = Trace()
    start = time.perf_counter()
    events = EventStream(functools.partial(_run, runner, inputs, trace))
    try:
        async for event in events:
            data = _public(event)
            if isinstance(event, RunFinished):
                data.update(usage=trace.usage(), latency=time.perf_counter() - start)
            yield sse_frame(event.type, data)
    except Exception as exc:
        error = public_error(exc, uuid.uuid4().hex)
        latency = time.perf_counter() - start
        data = {"error": error, "status": status_for(exc), "usage": trace.usage()}
        yield sse_frame("error", {**data, "latency": latency})
    finally:
        await events.aclose()


async def _run(runner: Runner, inputs: dict[str, Any], trace: Trace) -> Prediction:
    """The run behind the stream: a slot, the timeout, telemetry and metrics, as a predict."""
    failure: str | None = None
    async with runner.slots:
        try:
            with anyio.fail_after(runner.config.timeout):
                return await runner.telemetry.run(runner.graph, inputs, lm=runner.lm, trace=trace)
        except BaseException as exc:
            failure = type(exc).__name__
            raise
        finally:
            runner.metrics.run_finished(trace.usage(), failure)


def _public(event: Event) -> dict[str, Any]:
    """The event as JSON-ready data, LM server addresses masked."""
    data: dict[str, Any] = jsonable(event.to_dict())
    for key in ("reason", "error"):
        if isinstance(data.get(key), str):
            data[key] = _URL.sub("<the LM server>", data[key])
    return data
