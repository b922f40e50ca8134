"""Traces: the record of everything one run did.

A :class:`Trace` holds one :class:`NodeRecord` per node execution, linked to the
records that fed it, and each record holds the :class:`LMCall` s the node made.
Metrics judge traces and optimizers cut demos from them. The trace being
recorded lives in a private ``ContextVar``, so concurrent runs never mix.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import json
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

from rhizome.engine.client.protocol import Usage

__all__ = (
    "LMCall",
    "NodeRecord",
    "Trace",
    "close_record",
    "current_record",
    "current_trace",
    "jsonable",
    "log_call",
    "node_record",
    "open_record",
    "recent_calls",
    "recording",
    "start_recording",
    "stop_recording",
)


@dataclasses.dataclass(kw_only=True)
class LMCall:
    """One LM call made by a predictor inside a node.

    Attributes:
        predictor: The parameter path of the predictor (``"answer"``, ``"agent.step"``).
        inputs: The predictor's input fields as given.
        outputs: The parsed output fields, empty when parsing failed.
        messages: The rendered chat messages sent.
        reply: The raw reply text (first choice).
        usage: Token usage reported for the call.
        cached: True when served from the response cache.
        latency: Seconds the call took.
        error: A description of the failure, if the call failed.
        attempt: 0 for the first try, then 1, 2 ... for each further request of
            the same predictor call (a longer limit, a repair, another format).
        model: The model that answered (as the server reported it).
        started: Wall-clock time the call was sent (epoch seconds).
        finish_reason: Why the server stopped the (first) reply: ``"stop"``,
            ``"length"`` when the token limit cut it, ``"tool_calls"``.
        repair: True when ``messages`` end with a failed reply and the message
            saying what was wrong with it (a repair attempt).
        note: Why this request was made or how it was changed, when it is not
            the plain first try (``"the reply was cut at max_tokens=200; asked
            again with max_tokens=400"``).
    """

    predictor: str
    inputs: dict[str, Any]
    outputs: dict[str, Any] = dataclasses.field(default_factory=dict)
    messages: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    reply: str = ""
    usage: Usage = dataclasses.field(default_factory=Usage)
    cached: bool = False
    latency: float = 0.0
    cost: float = 0.0
    error: str | None = None
    attempt: int = 0
    model: str = ""
    started: float = 0.0
    finish_reason: str | None = None
    repair: bool = False
    note: str = ""


@dataclasses.dataclass(kw_only=True)
class NodeRecord:
    """One execution of one node.

    Attributes:
        node: The node's path in the graph (``"hop1"``, ``"sub.answer"``).
        kind: The node kind.
        inputs: The input fields it received.
        outputs: The output fields it produced.
        parents: Paths of the nodes whose outputs fed it.
        calls: LM calls it made, in order.
        started: Wall-clock start time (epoch seconds).
        latency: Seconds it ran.
        error: A description of the failure, if it failed.
        iteration: For nodes inside loops, the iteration index.
        details: Node-specific extras (retrieved passage ids and scores, tool steps).
    """

    node: str
    kind: str
    inputs: dict[str, Any] = dataclasses.field(default_factory=dict)
    outputs: dict[str, Any] = dataclasses.field(default_factory=dict)
    parents: list[str] = dataclasses.field(default_factory=list)
    calls: list[LMCall] = dataclasses.field(default_factory=list)
    started: float = 0.0
    latency: float = 0.0
    error: str | None = None
    iteration: int | None = None
    details: dict[str, Any] = dataclasses.field(default_factory=dict)


class Trace:
    """The record of one run: node records in the order they started."""

    def __init__(self) -> None:
        self.records: list[NodeRecord] = []
        self.inputs: dict[str, Any] = {}
        self.outputs: dict[str, Any] = {}
        self.error: str | None = None

    def node(self, name: str) -> NodeRecord:
        """The (last) record of node ``name``; KeyError lists the recorded nodes."""
        for record in reversed(self.records):
            if record.node == name:
                return record
        names = ", ".join(dict.fromkeys(r.node for r in self.records)) or "none"
        raise KeyError(f"no record of node {name!r} in this trace; recorded nodes: {names}")

    def lm_calls(self, predictor: str | None = None) -> list[LMCall]:
        """Every LM call in order, optionally only those of one predictor path."""
        calls = [c for r in self.records for c in r.calls]
        return [c for c in calls if predictor is None or c.predictor == predictor]

    def usage(self) -> dict[str, float]:
        """Totals for the run: calls, cache hits, prompt and completion tokens, cost.

        ``calls`` counts the LM calls sent to a server and ``cache_hits`` those
        served from the response cache (no request sent), as ``lm.usage`` does;
        tokens and cost cover every reply, cached ones included (what the run's
        calls cost without the cache).
        """
        calls = self.lm_calls()
        hits = sum(c.cached for c in calls)
        return {
            "calls": len(calls) - hits,
            "cache_hits": hits,
            "prompt_tokens": sum(c.usage.prompt_tokens for c in calls),
            "completion_tokens": sum(c.usage.completion_tokens for c in calls),
            "cost": sum(c.cost for c in calls),
        }

    def to_dict(self) -> dict[str, Any]:
        """The trace as JSON-ready data."""
        return {
            "inputs": _jsonable(self.inputs),
            "outputs": _jsonable(self.outputs),
            "error": self.error,
            "usage": self.usage(),
            "records": [_jsonable(dataclasses.asdict(r)) for r in self.records],
        }

    def to_json(self, *, indent: int | None = 2) -> str:
        """The trace as a JSON string."""
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    def format(self) -> str:
        """A short readable summary: one line per node, one indented line per LM call."""
        lines = []
        for r in self.records:
            status = f"error: {r.error}" if r.error else _short(r.outputs)
            lines.append(f"{r.node} ({r.kind}, {r.latency * 1000:.0f} ms): {status}")
            for c in r.calls:
                tag = " cached" if c.cached else ""
                if c.finish_reason == "length":
                    tag += " cut-by-length"
                if c.note:
                    lines.append(f"    note: {c.note}")
                lines.append(
                    f"    LM {c.predictor}{tag}: {c.usage.prompt_tokens}+"
                    f"{c.usage.completion_tokens} tokens -> {_short(c.reply)}"
                )
        return "\n".join(lines)


def _short(value: Any, limit: int = 100) -> str:
    text = value if isinstance(value, str) else json.dumps(_jsonable(value), ensure_ascii=False)
    text = text.replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _jsonable(value: Any) -> Any:
    """Make values JSON-ready: pydantic models dumped, enums by value, the rest str()."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if hasattr(value, "model_dump"):
        return _jsonable(value.model_dump(mode="json"))
    if hasattr(value, "value") and hasattr(type(value), "__members__"):
        return _jsonable(value.value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    return str(value)


jsonable = _jsonable

_TRACE: contextvars.ContextVar[Trace | None] = contextvars.ContextVar("rhizome_trace", default=None)
_RECORD: contextvars.ContextVar[NodeRecord | None] = contextvars.ContextVar(
    "rhizome_record", default=None
)


def current_trace() -> Trace | None:
    """The trace being recorded in this task, if any."""
    return _TRACE.get()


def current_record() -> NodeRecord | None:
    """The node record being filled in this task, if any."""
    return _RECORD.get()


def start_recording(trace: Trace) -> contextvars.Token[Trace | None]:
    """Record into ``trace`` until :func:`stop_recording` (``recording`` without the block)."""
    return _TRACE.set(trace)


def stop_recording(token: contextvars.Token[Trace | None]) -> None:
    """End what :func:`start_recording` began."""
    _TRACE.reset(token)


@contextlib.contextmanager
def recording(trace: Trace) -> Iterator[Trace]:
    """Record into ``trace`` for the duration of the block."""
    token = _TRACE.set(trace)
    try:
        yield trace
    finally:
        _TRACE.reset(token)


@contextlib.contextmanager
def node_record(record: NodeRecord) -> Iterator[NodeRecord]:
    """Append ``record`` to the current trace and make it current for the block.

    Times the block into ``record.latency``; exceptions are noted in
    ``record.error`` and re-raised. (The scheduler calls :func:`open_record`
    and :func:`close_record` inline instead: a generator per node costs.)
    """
    opened = open_record(record)
    try:
        yield record
    except BaseException as exc:
        record.error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        close_record(record, opened)


def open_record(record: NodeRecord) -> tuple[contextvars.Token[NodeRecord | None], float]:
    """Append ``record`` to the current trace and make it current; pass the result to close."""
    trace = _TRACE.get()
    if trace is not None:
        trace.records.append(record)
    record.started = time.time()
    return _RECORD.set(record), time.perf_counter()


def close_record(
    record: NodeRecord, opened: tuple[contextvars.Token[NodeRecord | None], float]
) -> None:
    """Time ``record`` and restore the record that was current before :func:`open_record`."""
    token, t0 = opened
    record.latency = time.perf_counter() - t0
    _RECORD.reset(token)


def log_call(call: LMCall) -> None:
    """Attach an LM call to the node record current in this task, and remember it.

    Outside a run there is no record to attach it to; either way the call joins
    the process-wide list of recent calls (:func:`recent_calls`).
    """
    record = _RECORD.get()
    if record is not None:
        record.calls.append(call)
    where = (record.node, record.kind) if record is not None else (call.predictor, "Predictor")
    _RECENT.append((*where, call))


RECENT_CALLS = 100
"""How many LM calls :func:`recent_calls` remembers, process-wide."""

_RECENT: deque[tuple[str, str, LMCall]] = deque(maxlen=RECENT_CALLS)


def recent_calls(n: int = 1) -> list[dict[str, Any]]:
    """The last ``n`` LM calls of every run in this process, oldest first, as JSON data.

    Each is an :class:`LMCall` as a trace file holds it, plus the ``node`` path
    and ``kind`` of the node that made it (the shape ``rhizome inspect`` reads).
    At most :data:`RECENT_CALLS` are kept.
    """
    if n < 1:
        return []
    calls = list(_RECENT)[-n:]
    return [
        {"node": node, "kind": kind, **_jsonable(dataclasses.asdict(call))}
        for node, kind, call in calls
    ]
