"""Fault-injecting OpenAI-compatible servers for the reliability tests.

Both build on the real HTTP server of :mod:`tests.server`:

- :class:`FaultInjector` is a responder (``server.responder = FaultInjector(...)``)
  that answers a configurable share of requests with a fault drawn from
  :data:`FAULT_KINDS` and counts what it injected:

  ==================  =====================================================
  ``rate_limit``      HTTP 429 with ``Retry-After`` / ``retry-after-ms``
  ``server_error``    HTTP 500
  ``unavailable``     HTTP 503 with ``Retry-After``
  ``drop``            the connection is closed without an answer
  ``slow``            the answer comes after ``slow_delay`` (past the client timeout)
  ``truncated``       HTTP 200 with the first half of a chat-completion body
  ``empty_choices``   HTTP 200, a chat completion with ``"choices": []``
  ``missing_fields``  HTTP 200, a choice without ``message`` (or no ``choices``)
  ``wrong_format``    HTTP 200, a valid completion whose text ignores the format asked for
  ==================  =====================================================

- :class:`CappedServer` admits at most ``cap`` requests at a time and answers
  every request beyond that with 429 and a ``Retry-After``, like a provider's
  concurrency limit; it records how many requests it admitted at once.

Answers that are not faults echo the ``#<n>#`` tag of the question, so a test
can check that every result belongs to its own example.
"""

from __future__ import annotations

import collections
import contextvars
import dataclasses
import json
import random
import re
import threading
import time
from collections.abc import Callable
from typing import Any

from tests.server import OpenAIServer, Reply

FAULT_KINDS = (
    "rate_limit",
    "server_error",
    "unavailable",
    "drop",
    "slow",
    "truncated",
    "empty_choices",
    "missing_fields",
    "wrong_format",
)

_TAG = re.compile(r"#(\d+)#")


def question_tag(body: dict[str, Any]) -> str:
    """The ``#<n>#`` tag of the first message that holds one ('' when none does)."""
    for message in body.get("messages") or ():
        found = _TAG.search(str(message.get("content") or ""))
        if found:
            return found.group(1)
    return ""


def echo_answer(body: dict[str, Any]) -> str:
    """A correct JSON answer naming the question's tag: ``{"answer": "echo <n>"}``."""
    return json.dumps({"answer": f"echo {question_tag(body)}"})


@dataclasses.dataclass(frozen=True, kw_only=True)
class Faults:
    """What to inject.

    Attributes:
        rate: Share of requests answered with a fault.
        kinds: The fault kinds drawn from (uniformly).
        slow_delay: Seconds a ``slow`` answer waits (set it past the client timeout).
        retry_after_ms: The wait a 429 or 503 asks for.
        seed: Seeds the draws.
    """

    rate: float = 0.1
    kinds: tuple[str, ...] = FAULT_KINDS
    slow_delay: float = 1.0
    retry_after_ms: int = 5
    seed: int = 0


class FaultInjector:
    """A server responder injecting faults into the answers of ``answer``.

    Args:
        faults: What to inject and how often.
        answer: The good answer for a request body (default :func:`echo_answer`).

    Attributes:
        injected: How many faults of each kind were injected.
        answered: How many good answers were given.
    """

    def __init__(
        self, faults: Faults, answer: Callable[[dict[str, Any]], str] = echo_answer
    ) -> None:
        unknown = set(faults.kinds) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {FAULT_KINDS}")
        self.faults = faults
        self.answer = answer
        self.injected: collections.Counter[str] = collections.Counter()
        self.answered = 0
        self._rng = random.Random(faults.seed)
        self._lock = threading.Lock()

    @property
    def total_injected(self) -> int:
        """Faults injected, all kinds together."""
        return sum(self.injected.values())

    def __call__(self, body: dict[str, Any]) -> str | Reply:
        with self._lock:
            fault = None
            if self._rng.random() < self.faults.rate:
                fault = self._rng.choice(self.faults.kinds)
                self.injected[fault] += 1
            else:
                self.answered += 1
            variant = self._rng.random()
        good = self.answer(body)
        return good if fault is None else self._fault(fault, body, good, variant)

    def _fault(self, kind: str, body: dict[str, Any], good: str, variant: float) -> str | Reply:
        wait = {"retry-after-ms": str(self.faults.retry_after_ms), "Retry-After": "1"}
        if kind == "rate_limit":
            return Reply(status=429, text="Rate limit reached for requests", headers=wait)
        if kind == "server_error":
            return Reply(status=500, text="The server had an error while processing your request")
        if kind == "unavailable":
            return Reply(status=503, text="The engine is currently overloaded", headers=wait)
        if kind == "drop":
            return Reply(drop=True)
        if kind == "slow":
            return Reply(text=good, delay=self.faults.slow_delay)
        if kind == "truncated":
            whole = _completion(body, good)
            return Reply(raw_body=whole[: len(whole) // 2])
        if kind == "empty_choices":
            return Reply(raw_body=json.dumps({**_envelope(body), "choices": []}))
        if kind == "missing_fields":
            if variant < 0.5:
                return Reply(raw_body=json.dumps(_envelope(body)))  # no "choices" at all
            choice = {"index": 0, "finish_reason": "stop"}  # no "message"
            return Reply(raw_body=json.dumps({**_envelope(body), "choices": [choice]}))
        return "I am sorry, but I cannot answer in that format."  # wrong_format


def _envelope(body: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fault",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model") or "test-model",
    }


def _completion(body: dict[str, Any], text: str) -> str:
    message = {"role": "assistant", "content": text}
    choice = {"index": 0, "message": message, "finish_reason": "stop"}
    usage = {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}
    return json.dumps({**_envelope(body), "choices": [choice], "usage": usage})


_ADMITTED: contextvars.ContextVar[bool] = contextvars.ContextVar("admitted", default=True)


class CappedServer(OpenAIServer):
    """A server that serves at most ``cap`` requests at once and answers 429 beyond.

    Args:
        cap: Requests served concurrently.
        service_time: Seconds each admitted request takes.
        retry_after_ms: The wait each 429 asks for (sent as ``retry-after-ms``
            and, rounded up, as ``Retry-After`` seconds).

    Attributes:
        admitted: Requests served (200).
        rejected: Requests answered 429.
        peak_active: Most requests served at once.
        arrivals: ``(time.monotonic(), admitted)`` for every request, in order.
    """

    def __init__(self, *, cap: int, service_time: float, retry_after_ms: int) -> None:
        super().__init__()
        self.cap = cap
        self.service_time = service_time
        self.retry_after_ms = retry_after_ms
        self.active = 0
        self.peak_active = 0
        self.admitted = 0
        self.rejected = 0
        self.arrivals: list[tuple[float, bool]] = []
        self._cap_lock = threading.Lock()

    async def _chat(self, raw: bytes, headers: dict[str, str], writer: Any) -> bool:
        with self._cap_lock:
            admitted = self.active < self.cap
            if admitted:
                self.active += 1
                self.admitted += 1
                self.peak_active = max(self.peak_active, self.active)
            else:
                self.rejected += 1
            self.arrivals.append((time.monotonic(), admitted))
        token = _ADMITTED.set(admitted)
        try:
            return await super()._chat(raw, headers, writer)
        finally:
            _ADMITTED.reset(token)
            if admitted:
                with self._cap_lock:
                    self.active -= 1

    def _next(self, body: dict[str, Any]) -> Reply:
        if _ADMITTED.get():
            return Reply(text=echo_answer(body), delay=self.service_time)
        seconds = str(max(1, -(-self.retry_after_ms // 1000)))
        headers = {"retry-after-ms": str(self.retry_after_ms), "Retry-After": seconds}
        return Reply(status=429, text="concurrency limit reached", headers=headers)
