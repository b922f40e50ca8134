"""Durable runs over HTTP: runs that may stop to ask a person, and continue with the answer.

Endpoints (added to the app of :mod:`rhizome.serving.app`):

- ``POST /v1/runs`` — ``{"inputs": {...}, "run_id": "optional"}`` runs the program
  with a checkpoint. It answers ``{"run_id", "status": "finished", "outputs",
  "usage", "latency"}``, or, when a node asked a question (``AskHuman``,
  ``interrupt``), ``{"run_id", "status": "waiting", "question", "node", ...}``.
  Posting an existing ``run_id`` again (same inputs) continues a run that
  failed or was cut off: finished nodes are restored, not run again.
- ``POST /v1/runs/{run_id}/resume`` — ``{"answer": ...}`` answers the question
  the run waits on and continues it; same reply.
- ``GET /v1/runs/{run_id}`` — the run's status (and question or outputs).

Checkpoints live in the SQLite file ``ServeConfig(checkpoints=...)`` names
(``rhizome serve --checkpoints runs.sqlite``), so waiting runs survive a
restart; without one they are kept in memory. One request at a time may drive
a run: another gets 409 until it is done. Failures answer like ``/v1/predict``
(the same statuses and error bodies), with ``"status": "failed"``.
"""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import anyio
import pydantic
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from rhizome.engine.errors import ConfigError
from rhizome.engine.graphs.checkpoint import CheckpointStore, SQLiteCheckpoint, check_run_id
from rhizome.engine.graphs.durable import RunWaiting, resume_run, run_checkpointed
from rhizome.engine.trace import Trace, jsonable
from rhizome.serving.middleware import error_response, public_error, public_trace, status_for
from rhizome.serving.schema import body_type, class_name, dump_inputs, inputs_model

if TYPE_CHECKING:
    from rhizome.engine.example import Prediction
    from rhizome.serving.app import Runner

__all__ = ("add_run_routes", "run_store")


def run_store(path: str | None) -> CheckpointStore:
    """The store ``/v1/runs`` keeps checkpoints in: the SQLite file ``path``, or memory."""
    return SQLiteCheckpoint(path if path else ":memory:")


class _Runs:
    """Runs requests against the checkpoint store, one request per run at a time."""

    def __init__(self, runner: Runner, store: CheckpointStore) -> None:
        self.runner = runner
        self.store = store
        self.busy: set[str] = set()

    async def drive(
        self, run_id: str, *, inputs: Mapping[str, Any] | None, answer: Any, with_trace: bool
    ) -> JSONResponse:
        """Start, continue or resume ``run_id``; the reply for any outcome."""
        if run_id in self.busy:
            return error_response(409, "run_busy", f"run {run_id!r} is running; try again later")
        self.busy.add(run_id)
        try:
            return await self._drive(run_id, inputs, answer, with_trace)
        finally:
            self.busy.discard(run_id)

    async def _drive(
        self, run_id: str, inputs: Mapping[str, Any] | None, answer: Any, with_trace: bool
    ) -> JSONResponse:
        runner, trace, start = self.runner, Trace(), time.perf_counter()
        body: dict[str, Any] = {"run_id": run_id}
        status, error = 200, None
        async with runner.slots:
            try:
                with anyio.fail_after(runner.config.timeout):
                    prediction = await self._once(run_id, inputs, answer, trace)
                body.update(status="finished", outputs=jsonable(dict(prediction)))
            except RunWaiting as waiting:
                body.update(status="waiting", question=waiting.question, node=waiting.node)
            except ConfigError as exc:  # not this program's run, not waiting, other inputs
                return error_response(409, "run_conflict", str(exc), run_id=run_id)
            except Exception as exc:
                error = exc
        usage = trace.usage()
        runner.metrics.run_finished(usage, type(error).__name__ if error is not None else None)
        if error is not None:
            status = status_for(error)
            body.update(status="failed", error=public_error(error, uuid.uuid4().hex))
        body.update(usage=usage, latency=time.perf_counter() - start)
        if with_trace:
            body["trace"] = public_trace(trace.to_dict(), error)
        return JSONResponse(body, status_code=status)

    def _once(
        self, run_id: str, inputs: Mapping[str, Any] | None, answer: Any, trace: Trace
    ) -> Any:
        runner = self.runner
        start = functools.partial(_start, runner)
        if inputs is None:
            return resume_run(
                runner.graph,
                run_id,
                answer,
                store=self.store,
                durability="safe",
                trace=trace,
                start=start,
            )
        return run_checkpointed(
            runner.graph,
            inputs,
            store=self.store,
            run_id=run_id,
            durability="safe",
            trace=trace,
            start=start,
        )

    def status(self, run_id: str) -> JSONResponse:
        """What the store says about ``run_id``."""
        saved = self.store.read(run_id)
        if saved is None:
            return _unknown(run_id)
        meta = saved.meta
        body: dict[str, Any] = {"run_id": run_id, "status": meta.get("status")}
        waiting = meta.get("waiting")
        if isinstance(waiting, dict):
            body.update(question=waiting.get("question"), node=waiting.get("node"))
        for key in ("outputs", "error"):
            if meta.get(key) is not None:
                body[key] = meta[key]
        return JSONResponse(body)


async def _start(runner: Runner, inputs: Mapping[str, Any], trace: Trace) -> Prediction:
    return await runner.telemetry.run(runner.graph, inputs, lm=runner.lm, trace=trace)


def _unknown(run_id: str) -> JSONResponse:
    return error_response(
        404, "unknown_run", f"no run {run_id!r}; start one with POST /v1/runs", run_id=run_id
    )


def _models(runner: Runner) -> tuple[Any, Any]:
    graph = runner.graph
    config = pydantic.ConfigDict(extra="forbid")
    start = pydantic.create_model(
        class_name(graph.name, "RunRequest"),
        __config__=config,
        inputs=(inputs_model(graph), pydantic.Field(description="The program's input fields.")),
        run_id=(
            str | None,
            pydantic.Field(None, description="Names the run (generated when left out)."),
        ),
        trace=(bool, pydantic.Field(False, description="Include the run's trace.")),
    )
    resume = pydantic.create_model(
        class_name(graph.name, "ResumeRequest"),
        __config__=config,
        answer=(Any, pydantic.Field(description="The answer to the question the run asked.")),
        trace=(bool, pydantic.Field(False, description="Include the run's trace.")),
    )
    return start, resume


def add_run_routes(app: FastAPI, runner: Runner, store: CheckpointStore) -> None:
    """Add ``/v1/runs`` (start), ``/v1/runs/{run_id}/resume`` and ``GET /v1/runs/{run_id}``."""
    runs = _Runs(runner, store)
    start_model, resume_model = _models(runner)

    @app.post("/v1/runs", summary="Run the program with a checkpoint; it may wait for an answer")
    @body_type(start_model)
    async def start(body: Any) -> JSONResponse:
        run_id = body.run_id or uuid.uuid4().hex
        try:
            check_run_id(run_id)
        except ConfigError as exc:
            return error_response(422, "invalid_request", str(exc))
        inputs = dump_inputs(body.inputs)
        return await runs.drive(run_id, inputs=inputs, answer=None, with_trace=body.trace)

    @app.post("/v1/runs/{run_id}/resume", summary="Answer a waiting run's question; continue it")
    @body_type(resume_model)
    async def resume(run_id: str, body: Any) -> JSONResponse:
        if not _known(store, run_id):
            return _unknown(run_id)
        return await runs.drive(run_id, inputs=None, answer=body.answer, with_trace=body.trace)

    @app.get("/v1/runs/{run_id}", summary="A run's status, question or outputs")
    async def status(run_id: str) -> JSONResponse:
        if not _known(store, run_id):
            return _unknown(run_id)
        return runs.status(run_id)


def _known(store: CheckpointStore, run_id: str) -> bool:
    try:
        return store.read(check_run_id(run_id)) is not None
    except ConfigError:
        return False
