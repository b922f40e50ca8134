"""Run events: what a run reports as it happens, and the one place they are sent from.

While someone listens (:meth:`Graph.events <rhizome.engine.graphs.graph.Graph.events>`,
``rhizome serve``'s ``POST /v1/stream``, ``rhizome run --stream``), every part
of a run reports here: the scheduler (:class:`NodeStarted`,
:class:`NodeFinished`), the predictor call path (:class:`LMCallStarted`,
:class:`Token`, :class:`LMCallFinished`), the LM client (:class:`Retry`, and
the text of a streamed reply as it arrives) and agents (:class:`ToolCall`,
:class:`ToolResult`). A run nobody listens to pays one ``ContextVar`` lookup
per report.

The listener lives in a private ``ContextVar`` (:func:`listening`), so tasks
started inside a run inherit it and two runs listened to side by side never
mix. The call path opens an :func:`lm_call` scope around each LM request: the
LM client feeds the reply's text to it (:func:`delta`) and says when it retries
(:func:`retried`), without knowing which node it serves.

This module imports nothing else of rhizome, so the LM client may use it.

Reading tokens: the :class:`Token` events of one predictor path, taken since
its last :class:`LMCallStarted` or :class:`Retry`, join into the text of each
output field (for text fields, the parsed value; for other types, the value's
JSON text). A retry or a repair starts the fields again from empty.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import time
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, Protocol

__all__ = (
    "Event",
    "LMCallFinished",
    "LMCallStarted",
    "NodeFinished",
    "NodeStarted",
    "Retry",
    "RunFinished",
    "Token",
    "TokenSink",
    "ToolCall",
    "ToolResult",
    "active",
    "delta",
    "emit",
    "listening",
    "lm_call",
    "node_finished",
    "retried",
    "wants_tokens",
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Event:
    """Something a run did. ``path`` says where: ``"answer"``, ``"sub.answer"``, ``"agent.step"``.

    Attributes:
        path: The node (or predictor) path the event belongs to; ``""`` for the run.
        time: Wall-clock time of the event (epoch seconds).
    """

    type: ClassVar[str] = "event"

    path: str = ""
    time: float = dataclasses.field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        """The event as plain data, ``{"type": ..., "path": ..., ...}`` (values as given)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {"type": self.type, **data}


@dataclasses.dataclass(frozen=True, kw_only=True)
class NodeStarted(Event):
    """A node started, with the inputs it was given."""

    type: ClassVar[str] = "node_started"

    kind: str = ""
    inputs: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, kw_only=True)
class NodeFinished(Event):
    """A node finished: its outputs, or the error it failed with."""

    type: ClassVar[str] = "node_finished"

    kind: str = ""
    outputs: dict[str, Any] = dataclasses.field(default_factory=dict)
    error: str | None = None
    latency: float = 0.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class LMCallStarted(Event):
    """A predictor sent a request; ``attempt`` counts the requests of one predictor call."""

    type: ClassVar[str] = "lm_call_started"

    model: str = ""
    attempt: int = 0
    note: str = ""
    streamed: bool = False


@dataclasses.dataclass(frozen=True, kw_only=True)
class Token(Event):
    """A piece of output field ``field`` of the reply being received."""

    type: ClassVar[str] = "token"

    field: str = ""
    text: str = ""
    attempt: int = 0


@dataclasses.dataclass(frozen=True, kw_only=True)
class Retry(Event):
    """The LM client retries a request that failed in a way that may pass.

    Tokens already received for this request are void: the retried reply
    starts the fields again.
    """

    type: ClassVar[str] = "retry"

    retry: int = 1
    reason: str = ""
    wait: float = 0.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class LMCallFinished(Event):
    """A request of a predictor came back: usage, whether it parsed, how long it took."""

    type: ClassVar[str] = "lm_call_finished"

    model: str = ""
    attempt: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: bool = False
    latency: float = 0.0
    error: str | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class ToolCall(Event):
    """An agent calls a tool with these arguments."""

    type: ClassVar[str] = "tool_call"

    tool: str = ""
    args: Any = None
    step: int = 0


@dataclasses.dataclass(frozen=True, kw_only=True)
class ToolResult(Event):
    """What a tool returned to an agent (or the error text the agent was shown)."""

    type: ClassVar[str] = "tool_result"

    tool: str = ""
    observation: str = ""
    step: int = 0
    latency: float = 0.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunFinished(Event):
    """The last event of a run: the graph's outputs (``prediction`` holds the trace too)."""

    type: ClassVar[str] = "run_finished"

    outputs: dict[str, Any] = dataclasses.field(default_factory=dict)
    prediction: Any = None

    def to_dict(self) -> dict[str, Any]:
        """The event as plain data, without the prediction object."""
        return {"type": self.type, "path": self.path, "time": self.time, "outputs": self.outputs}


class _Record(Protocol):
    """What :func:`node_finished` reads of a :class:`~rhizome.engine.trace.NodeRecord`."""

    node: str
    kind: str
    outputs: dict[str, Any]
    error: str | None
    latency: float


def node_finished(record: _Record) -> NodeFinished:
    """The :class:`NodeFinished` event of a closed node record."""
    return NodeFinished(
        path=record.node,
        kind=record.kind,
        outputs=dict(record.outputs),
        error=record.error,
        latency=record.latency,
    )


# ---- the listener -----------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class _Listener:
    send: Callable[[Event], None]
    tokens: bool


_LISTENER: contextvars.ContextVar[_Listener | None] = contextvars.ContextVar(
    "rhizome_events", default=None
)


@contextlib.contextmanager
def listening(send: Callable[[Event], None], *, tokens: bool = True) -> Iterator[None]:
    """Send every event of runs inside the block (and tasks they start) to ``send``.

    Args:
        send: Called with each event, in the order they happen; it must not block.
        tokens: Ask LMs that can stream for their replies as they are written,
            and report :class:`Token` events.
    """
    token = _LISTENER.set(_Listener(send, tokens))
    try:
        yield
    finally:
        _LISTENER.reset(token)


def emit(event: Event | Callable[[], Event]) -> None:
    """Report ``event`` to the listener, if any (a callable is only called when one listens)."""
    listener = _LISTENER.get()
    if listener is not None:
        listener.send(event if isinstance(event, Event) else event())


def active() -> bool:
    """True when someone listens to this task's events."""
    return _LISTENER.get() is not None


def wants_tokens() -> bool:
    """True when the listener asked for the tokens of replies as they arrive."""
    listener = _LISTENER.get()
    return listener is not None and listener.tokens


# ---- one LM request -----------------------------------------------------------------


class TokenSink(Protocol):
    """What turns a reply's raw text, as it arrives, into field tokens (the call path's)."""

    def feed(self, text: str) -> None:
        """More reply text arrived."""

    def restart(self) -> None:
        """The request is sent again: forget what arrived so far."""


@dataclasses.dataclass(slots=True)
class _Scope:
    path: str
    sink: TokenSink | None


_SCOPE: contextvars.ContextVar[_Scope | None] = contextvars.ContextVar(
    "rhizome_lm_call", default=None
)


@contextlib.contextmanager
def lm_call(path: str, sink: TokenSink | None) -> Iterator[None]:
    """Mark the LM request made inside the block as ``path``'s, its text going to ``sink``."""
    token = _SCOPE.set(_Scope(path, sink))
    try:
        yield
    finally:
        _SCOPE.reset(token)


def delta(index: int, text: str) -> None:
    """The LM client received ``text`` of choice ``index`` (only choice 0 is followed)."""
    scope = _SCOPE.get()
    if scope is not None and scope.sink is not None and index == 0 and text:
        scope.sink.feed(text)


def retried(retry: int, reason: str, wait: float) -> None:
    """The LM client is about to send its request again (retry number ``retry``)."""
    scope = _SCOPE.get()
    if scope is not None and scope.sink is not None:
        scope.sink.restart()
    path = scope.path if scope is not None else ""
    emit(lambda: Retry(path=path, retry=retry, reason=reason, wait=wait))
