"""A scripted in-process LM for logic tests and examples.

It implements the :class:`~rhizome.engine.client.protocol.LM` protocol without a network, so
tests about graph logic, parsing and optimizers stay fast and exact. Tests that
claim an integration works use the real HTTP client against a real server.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence

import anyio

from rhizome.engine.client.protocol import (
    Capabilities,
    Choice,
    HistoryEntry,
    LMRequest,
    LMResponse,
    Usage,
)
from rhizome.engine.client.usage import UsageTracker

__all__ = ("FakeLM", "Responder")


Responder = Callable[[LMRequest, int], str]


class FakeLM:
    """An LM whose replies come from a list or a function.

    Args:
        replies: Reply texts handed out in order (cycled when exhausted), or a
            function ``(request, sample) -> text``.
        name: The model name to report.
        capabilities: What this fake claims to support.
        delay: Seconds to sleep per call, to exercise concurrency.

    Attributes:
        calls: Calls made so far.
        requests: Every request received, in order.
        usage: Running totals like :class:`~rhizome.engine.client.openai.OpenAILM`'s:
            each call is one request, its words count as tokens, and a
            responder that raises counts as an error.
    """

    def __init__(
        self,
        replies: Iterable[str] | Responder,
        *,
        name: str = "fake",
        capabilities: Capabilities | None = None,
        delay: float = 0.0,
    ) -> None:
        if callable(replies):
            self._responder: Responder | None = replies
            self._queue: deque[str] = deque()
        else:
            self._responder = None
            self._queue = deque(replies)
        self._name = name
        self._caps = capabilities or Capabilities()
        self._delay = delay
        self.calls = 0
        self.requests: list[LMRequest] = []
        self.usage = UsageTracker()
        self._history: deque[HistoryEntry] = deque(maxlen=1000)

    @property
    def name(self) -> str:
        """The model name reported."""
        return self._name

    @property
    def capabilities(self) -> Capabilities:
        """The capabilities this fake claims."""
        return self._caps

    def _next(self, request: LMRequest, sample: int) -> str:
        if self._responder is not None:
            return self._responder(request, sample)
        if not self._queue:
            raise RuntimeError("FakeLM has no replies left")
        reply = self._queue.popleft()
        self._queue.append(reply)
        return reply

    async def complete(self, request: LMRequest, *, sample: int = 0) -> LMResponse:
        """Return the next scripted reply(ies) for ``request``."""
        if self._delay:
            await anyio.sleep(self._delay)
        self.usage.add_request()  # first: a spend meter may refuse the request
        self.calls += 1
        self.requests.append(request)
        try:
            texts = [self._next(request, sample * request.n + i) for i in range(request.n)]
        except Exception:
            self.usage.add_error()
            raise
        prompt_tokens = sum(len(str(m.get("content") or "").split()) for m in request.messages)
        response = LMResponse(
            choices=tuple(Choice(text=t, finish_reason="stop") for t in texts),
            usage=Usage(
                prompt_tokens=prompt_tokens,
                completion_tokens=sum(len(t.split()) for t in texts),
            ),
            model=self._name,
        )
        self.usage.add_tokens(response.usage)
        self._history.append(
            HistoryEntry(request=request, response=response, timestamp=time.time())
        )
        return response

    def inspect_history(self, n: int = 1) -> Sequence[HistoryEntry]:
        """The last ``n`` calls, oldest first."""
        return list(self._history)[-n:]
