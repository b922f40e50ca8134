"""Durable runs: checkpoints that let a run resume, and interrupts that wait for a person.

``graph.run(inputs, checkpoint=store, run_id="r1")`` records each finished
node's outputs in ``store`` (:mod:`rhizome.engine.graphs.checkpoint`) under a
key naming where it ran: its path, with the iteration of every enclosing loop,
the step of an agent and the item of a fan-out (``"hops[2].query"``,
``"agent[3]"``, ``"each[7].summary"``). Running again with the same ``run_id``
(after a crash, Ctrl-C, a failed node) restores every recorded node instead of
running it: no LM call is repeated, and only what had not finished runs.

Inside a node, :func:`interrupt` asks for input from outside: the run stops,
its checkpoint holds the question (status ``"waiting"``), and
:class:`RunWaiting` is raised to the caller; ``graph.resume(run_id, answer,
checkpoint=store)`` records the answer and runs again, so everything before the
question is restored and ``interrupt`` now returns the answer. The node that
asked runs again from its start (code before the question runs twice; keep LM
calls in nodes of their own); a ReAct tool that asks repeats its step's LM
call. Node code must let :class:`InterruptSignal` pass (no bare ``except
Exception`` around ``interrupt``). When parallel branches both ask, the first
question stops the run and the other is asked again after the resume.

A checkpoint names the program that wrote it (the fingerprint of its structure
and tuned parameters, as batch journals do): resuming with a changed program is
refused rather than mixing two programs' results.

Durability (``durability=``):

- ``"safe"`` (default): every record is written, in its own transaction,
  before the next node starts; a killed process loses nothing that finished.
  Costs one small write per node (see ``bench/checkpoint.py``).
- ``"batched"``: records are kept in memory and written together every
  100 records or second, and when the run ends, fails, waits or is cancelled.
  A killed process loses up to the last second of work.
"""

from __future__ import annotations

import contextvars
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

from rhizome.engine.errors import ConfigError, describe
from rhizome.engine.graphs import saving
from rhizome.engine.graphs.checkpoint import (
    CheckpointStore,
    Saved,
    check_run_id,
    open_store,
)
from rhizome.engine.graphs.plan import check_inputs
from rhizome.engine.trace import NodeRecord, current_record, current_trace, jsonable

if TYPE_CHECKING:
    import os

    from rhizome.engine.call.signature import Field
    from rhizome.engine.example import Prediction
    from rhizome.engine.graphs.graph import Graph
    from rhizome.engine.trace import Trace

__all__ = (
    "Durability",
    "InterruptSignal",
    "RunWaiting",
    "active_run",
    "checkpointed_step",
    "interrupt",
    "resume_run",
    "run_checkpointed",
    "typed",
)


Durability = Literal["safe", "batched"]
Start = Callable[[Mapping[str, Any], "Trace"], Awaitable["Prediction"]]

FORMAT = 1
_BATCH_RECORDS = 100
_BATCH_SECONDS = 1.0


class RunWaiting(Exception):
    """A checkpointed run stopped to ask a question; resume it with the answer.

    Attributes:
        run_id: The run to resume.
        question: What :func:`interrupt` (or an ``AskHuman`` node) asked, as JSON data.
        node: The path of the node that asked.
        status: Always ``"waiting"``.
    """

    status = "waiting"

    def __init__(self, *, run_id: str, question: Any, node: str) -> None:
        shown = json.dumps(question, ensure_ascii=False)
        shown = shown if len(shown) <= 200 else shown[:199] + "…"
        super().__init__(
            f"run {run_id!r} is waiting for an answer at node {node!r}: {shown}; continue it "
            f"with graph.resume({run_id!r}, answer, checkpoint=...)"
        )
        self.run_id = run_id
        self.question = question
        self.node = node


class InterruptSignal(Exception):
    """Raised by :func:`interrupt` to stop the run; node code must let it pass.

    Attributes:
        key: Where the answer will be recorded.
        question: The question, as JSON data.
        node: The path of the node that asked.
    """

    def __init__(self, *, key: str, question: Any, node: str) -> None:
        super().__init__(f"node {node!r} asks for input: {question!r}")
        self.key = key
        self.question = question
        self.node = node


_ACTIVE: contextvars.ContextVar[_RunState | None] = contextvars.ContextVar(
    "rhizome_checkpoint", default=None
)
# (key, path) of the innermost loop iteration, agent step or fan-out item: nodes
# below ``path`` are recorded under ``key`` instead.
_SCOPE: contextvars.ContextVar[tuple[str, str]] = contextvars.ContextVar(
    "rhizome_checkpoint_scope", default=("", "")
)


class _RunState:
    """The checkpoint of the run in progress: what is restored, what is pending."""

    def __init__(
        self,
        store: CheckpointStore,
        run_id: str,
        *,
        durability: Durability,
        entries: dict[str, Any],
        meta: dict[str, Any],
        trace: Trace,
    ) -> None:
        self.store = store
        self.run_id = run_id
        self.durability = durability
        self.entries = entries
        self.meta = meta
        self.trace = trace
        self.pending: list[tuple[str, Any]] = []
        self.flushed = time.monotonic()

    def key(self, path: str) -> str:
        """The record key of the node at ``path`` in the current iteration/step/item."""
        scope_key, scope_path = _SCOPE.get()
        if scope_path and (path == scope_path or path.startswith(scope_path + ".")):
            return scope_key + path[len(scope_path) :]
        return path

    def restore(
        self, path: str, fields: Mapping[str, Field], record: NodeRecord
    ) -> dict[str, Any] | None:
        """The recorded outputs of the node at ``path`` (typed again), or None."""
        entry = self.entries.get(self.key(path))
        if entry is None or "outputs" not in entry:
            return None
        record.details["resumed"] = True
        return typed(fields, entry["outputs"])

    def save(self, path: str, outputs: Mapping[str, Any]) -> None:
        """Record the outputs of the node at ``path``."""
        self.put(self.key(path), {"outputs": jsonable(dict(outputs))})

    def put(self, key: str, value: Any) -> None:
        self.entries[key] = value
        self.pending.append((key, value))
        if (
            self.durability == "safe"
            or len(self.pending) >= _BATCH_RECORDS
            or time.monotonic() - self.flushed >= _BATCH_SECONDS
        ):
            self.flush()

    def flush(self, **meta: Any) -> None:
        """Write the pending records (and, with ``meta``, the updated meta) in one write."""
        if meta:
            self.meta.update(meta, updated=time.time())
        if self.pending or meta:
            pending, self.pending = self.pending, []
            self.store.write(self.run_id, meta=self.meta if meta else None, entries=pending)
        self.flushed = time.monotonic()

    def stopped(self, exc: Exception) -> None:
        """Note a run that raised: waiting when a node asked a question, else failed."""
        signal = _signal_in(exc)
        if signal is None:
            self.flush(status="failed", error=jsonable(describe(exc)), waiting=None)
            return
        waiting = {"key": signal.key, "node": signal.node, "question": signal.question}
        self.flush(status="waiting", waiting=waiting, error=None)
        raise RunWaiting(run_id=self.run_id, question=signal.question, node=signal.node) from None


def _signal_in(exc: BaseException) -> InterruptSignal | None:
    """The interrupt at the root of ``exc`` (node errors wrap it), if any."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, InterruptSignal):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def typed(fields: Mapping[str, Field] | None, values: Mapping[str, Any]) -> dict[str, Any]:
    """Recorded JSON values turned back into their fields' types where they validate."""
    out: dict[str, Any] = {}
    for name, value in values.items():
        field = fields.get(name) if fields is not None else None
        try:
            out[name] = field.validate(value) if field is not None else value
        except Exception:
            out[name] = value
    return out


def active_run() -> _RunState | None:
    """The checkpoint of the run recording in this task, or None (the common case)."""
    state = _ACTIVE.get()
    # A plain run started inside a node of a checkpointed one records into its own
    # trace: it must not write into (or restore from) the outer run's checkpoint.
    if state is None or state.trace is not current_trace():
        return None
    return state


async def checkpointed_step(
    index: int,
    run: Callable[[], Awaitable[dict[str, Any]]],
    *,
    fields: Mapping[str, Field] | None = None,
) -> dict[str, Any]:
    """Run one iteration, step or item of the node running now, recorded as ``<node>[index]``.

    In a checkpointed run, a recorded step is restored (typed by ``fields``)
    instead of run, and the nodes run inside the step are recorded under its
    key; otherwise this is ``await run()``.
    """
    state, record = active_run(), current_record()
    if state is None or record is None:
        return await run()
    key = f"{state.key(record.node)}[{index}]"
    entry = state.entries.get(key)
    if entry is not None and "outputs" in entry:
        return typed(fields, entry["outputs"])
    token = _SCOPE.set((key, record.node))
    try:
        outputs = await run()
    finally:
        _SCOPE.reset(token)
    state.put(key, {"outputs": jsonable(outputs)})
    return outputs


def interrupt(question: Any) -> Any:
    """Ask for input from outside the run; returns the answer once the run is resumed.

    Call it inside a node (a ``FunctionNode``'s function, a custom node's
    ``forward``) of a checkpointed run. The first time, the run stops with
    status ``"waiting"`` and the caller gets :class:`RunWaiting` holding
    ``question`` (JSON data: text, or a dict/list of them);
    ``graph.resume(run_id, answer, checkpoint=...)`` runs the node again, and
    this call then returns ``answer``. A node may ask several questions in turn.

    Raises:
        InterruptSignal: To stop the run (do not catch it in node code).
        ConfigError: Called outside a running node, or in a run without a checkpoint.
    """
    record = current_record()
    if record is None:
        raise ConfigError(
            "interrupt() asks from inside a running node: call it in a FunctionNode's "
            "function or a node's forward() while a graph runs"
        )
    state = active_run()
    if state is None:
        raise ConfigError(
            f"node {record.node!r} called interrupt(), which needs a checkpointed run to wait "
            "in: graph.run(..., checkpoint='runs.sqlite', run_id='some-id'), then "
            "graph.resume('some-id', answer, checkpoint='runs.sqlite')"
        )
    at = state.key(record.node)
    asked: list[dict[str, Any]] = record.details.setdefault("interrupts", [])
    key = f"{at}?{sum(1 for a in asked if a.get('at') == at)}"
    question = jsonable(question)
    entry = state.entries.get(key)
    if entry is not None and "answer" in entry:
        asked.append({"at": at, "question": question, "answer": entry["answer"]})
        return entry["answer"]
    asked.append({"at": at, "question": question})
    raise InterruptSignal(key=key, question=question, node=record.node)


# -- runs ---------------------------------------------------------------------------


def _check_durability(durability: Any) -> Durability:
    if durability not in ("safe", "batched"):
        raise ConfigError(f"durability must be 'safe' or 'batched', got {durability!r}")
    return durability  # type: ignore[no-any-return]


def _program(graph: Graph) -> dict[str, str]:
    """The fingerprints a checkpoint is checked against: the whole program, its structure."""
    summary = saving.structure(graph)
    return {
        "program": saving.program_fingerprint(graph, summary),
        "structure": saving.fingerprint(summary),
    }


def _check_program(
    graph: Graph, run_id: str, store: CheckpointStore, saved: Saved, now: dict[str, str]
) -> None:
    meta = saved.meta
    if meta.get("program") == now["program"]:
        return
    what = (
        "its structure"
        if meta.get("structure") != now["structure"]
        else "its tuned parameters (instructions, demos, LM choices ...)"
    )
    raise ConfigError(
        f"the checkpoint of run {run_id!r} in {store!r} was written by a different program "
        f"than graph {graph.name!r}: {what} changed since; resuming would mix the results of "
        "two programs. Resume with the program that started the run, or start a new run_id "
        f"(or forget this one: store.delete({run_id!r}))"
    )


def _inputs(
    graph: Graph, run_id: str, saved: Saved | None, values: Mapping[str, Any]
) -> dict[str, Any]:
    """The run's inputs: those given, checked against a saved run's, else the saved ones."""
    if saved is not None and not values:
        return typed(graph.inputs, saved.meta.get("inputs") or {})
    inputs = check_inputs(graph.plan(), values)
    if saved is not None and _canonical(jsonable(inputs)) != _canonical(saved.meta.get("inputs")):
        raise ConfigError(
            f"run {run_id!r} was started with other inputs; pass the same inputs, none at all "
            "(to continue with the recorded ones), or start a new run_id"
        )
    return inputs


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


async def run_checkpointed(
    graph: Graph,
    values: Mapping[str, Any],
    *,
    store: CheckpointStore | str | os.PathLike[str],
    run_id: str | None,
    durability: Durability,
    trace: Trace,
    start: Start,
) -> Prediction:
    """Run ``graph`` (through ``start``) with its checkpoint in ``store``, resuming ``run_id``.

    Args:
        graph: The program.
        values: The inputs; empty to continue a recorded run with its own.
        store: The checkpoint store, or the path of an SQLite file.
        run_id: Names the run; the same id continues it.
        durability: ``"safe"`` or ``"batched"`` (see the module docs).
        trace: The run's trace.
        start: Runs the graph on (inputs, trace): the plain run.

    Raises:
        RunWaiting: A node asked a question; resume with the answer.
        ConfigError: The checkpoint was written by another program, or with
            other inputs; bad ``run_id`` or ``durability``.
    """
    if run_id is None:
        raise ConfigError(
            "a checkpointed run needs run_id=...: a name for this run (an order number, a "
            "request id) that you pass again to resume it"
        )
    run_id, durability = check_run_id(run_id), _check_durability(durability)
    stores, program = open_store(store), _program(graph)
    saved = stores.read(run_id)
    if saved is not None:
        _check_program(graph, run_id, stores, saved, program)
    inputs = _inputs(graph, run_id, saved, values)
    meta = dict(saved.meta) if saved is not None else _new_meta(graph, inputs, program)
    entries = dict(saved.entries) if saved is not None else {}
    state = _RunState(
        stores, run_id, durability=durability, entries=entries, meta=meta, trace=trace
    )
    state.flush(status="running")
    token = _ACTIVE.set(state)
    try:
        prediction = await start(inputs, trace)
    except Exception as exc:
        state.stopped(exc)
        raise
    except BaseException:  # Ctrl-C, cancellation: keep what finished; still "running"
        state.flush()
        raise
    finally:
        _ACTIVE.reset(token)
    state.flush(status="finished", outputs=jsonable(dict(prediction)), waiting=None, error=None)
    return prediction


def _new_meta(graph: Graph, inputs: Mapping[str, Any], program: dict[str, str]) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "kind": "rhizome-run",
        "graph": graph.name,
        **program,
        "rhizome_version": saving.rhizome_version(),
        "inputs": jsonable(dict(inputs)),
        "started": time.time(),
    }


async def resume_run(
    graph: Graph,
    run_id: str,
    answer: Any,
    *,
    store: CheckpointStore | str | os.PathLike[str],
    durability: Durability,
    trace: Trace,
    start: Start,
) -> Prediction:
    """Record ``answer`` to the question run ``run_id`` waits on, and continue the run.

    Raises:
        ConfigError: The store has no such run, it is not waiting, or it was
            written by another program.
        RunWaiting: The run asked another question.
    """
    stores = open_store(store)
    saved = stores.read(check_run_id(run_id))
    if saved is None:
        raise ConfigError(
            f"{stores!r} holds no run {run_id!r}; start it with graph.run(..., "
            f"checkpoint=..., run_id={run_id!r})"
        )
    _check_program(graph, run_id, stores, saved, _program(graph))
    waiting, status = saved.meta.get("waiting"), saved.meta.get("status")
    if status != "waiting" or not isinstance(waiting, dict):
        hint = (
            "run it again with graph.run(..., run_id=...) to continue after a crash"
            if status in ("running", "failed")
            else "it needs no answer"
        )
        raise ConfigError(
            f"run {run_id!r} is not waiting for an answer (status {status!r}); {hint}"
        )
    stores.write(run_id, entries=[(str(waiting["key"]), {"answer": jsonable(answer)})])
    return await run_checkpointed(
        graph, {}, store=stores, run_id=run_id, durability=durability, trace=trace, start=start
    )
