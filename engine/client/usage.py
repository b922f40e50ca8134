"""Usage accounting for an LM client: requests, cache hits, tokens, cost.

A :class:`UsageTracker` lives on each client (``lm.usage``) and counts over the
client's whole life; per-run usage comes from traces instead
(:meth:`rhizome.engine.trace.Trace.usage`), and a :class:`SpendMeter` counts
(and limits) every request made inside a scope, whatever LM it goes to — an
optimizer's budget. Counters are guarded by a lock, so
one tracker may be shared by tasks and threads.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import threading
from collections.abc import Iterator, Mapping

from rhizome.engine.client.protocol import Usage
from rhizome.engine.errors import ConfigError, SpendLimitError

__all__ = ("Prices", "SpendMeter", "UsageTracker", "current_meter", "metered")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Prices:
    """Token prices of one model, in any currency per million tokens.

    Attributes:
        prompt_per_million: Price of one million prompt (input) tokens.
        completion_per_million: Price of one million completion (output) tokens.
    """

    prompt_per_million: float
    completion_per_million: float

    def __post_init__(self) -> None:
        if self.prompt_per_million < 0 or self.completion_per_million < 0:
            raise ConfigError(
                "Prices must not be negative; got "
                f"prompt_per_million={self.prompt_per_million}, "
                f"completion_per_million={self.completion_per_million}"
            )

    def cost(self, usage: Usage) -> float:
        """The price of ``usage``."""
        return (
            usage.prompt_tokens * self.prompt_per_million
            + usage.completion_tokens * self.completion_per_million
        ) / 1_000_000


_METER: contextvars.ContextVar[SpendMeter | None] = contextvars.ContextVar(
    "rhizome_spend_meter", default=None
)


_FIELDS = ("calls", "cache_hits", "prompt_tokens", "completion_tokens", "cost", "errors", "retries")


class UsageTracker:
    """Thread-safe running totals of what a client did.

    Counters:
        calls: HTTP requests sent (every attempt, retries included).
        cache_hits: Replies served from the response cache (no request sent).
        prompt_tokens / completion_tokens: Tokens of successful replies.
        cost: Price of those tokens when the client has prices, else 0.
        errors: ``complete`` calls that failed after all attempts.
        retries: Attempts made after a failed one.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls = 0
        self.cache_hits = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cost = 0.0
        self.errors = 0
        self.retries = 0

    def add_request(self) -> None:
        """Count one HTTP request about to be sent (and charge the scope's spend meter).

        Raises:
            SpendLimitError: The spend meter of the scope refused it; nothing is sent.
        """
        meter = _METER.get()
        if meter is not None:
            meter.charge_request()
        with self._lock:
            self.calls += 1

    def add_retry(self) -> None:
        """Count one retry (an attempt after a failed one)."""
        with self._lock:
            self.retries += 1

    def add_cache_hit(self) -> None:
        """Count one reply served from the cache."""
        meter = _METER.get()
        if meter is not None:
            meter.charge_cache_hit()
        with self._lock:
            self.cache_hits += 1

    def add_error(self) -> None:
        """Count one call that failed for good."""
        with self._lock:
            self.errors += 1

    def add_tokens(self, usage: Usage, cost: float = 0.0) -> None:
        """Add the tokens and cost of one successful reply."""
        meter = _METER.get()
        if meter is not None:
            meter.charge_tokens(usage, cost)
        with self._lock:
            self.prompt_tokens += usage.prompt_tokens
            self.completion_tokens += usage.completion_tokens
            self.cost += cost

    def snapshot(self) -> dict[str, float]:
        """The current totals as a plain dict (a copy)."""
        with self._lock:
            return {name: getattr(self, name) for name in _FIELDS}

    def reset(self) -> None:
        """Set every counter back to zero."""
        with self._lock:
            for name in _FIELDS:
                setattr(self, name, 0.0 if name == "cost" else 0)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v}" for k, v in self.snapshot().items())
        return f"UsageTracker({fields})"


@dataclasses.dataclass(kw_only=True)
class SpendMeter:
    """Counts every LM request made in a scope and refuses those past its call limit.

    An optimizer opens one with :func:`metered` around everything it runs —
    set-up, proposals, trials, full evaluations, an LLM judge — and every
    client's :class:`UsageTracker` charges the meter of the scope it is called
    in: a request just before it is sent (every HTTP attempt, retries
    included), a reply served from the response cache, the tokens of a
    reply. A request that would pass ``max_calls`` is refused with
    :class:`~rhizome.engine.errors.SpendLimitError` before it is sent, so a
    call limit is never exceeded at the server, and a cache hit is never
    refused. Token and cost limits cannot be kept per request (a reply's size
    is known only once it came), so they refuse nothing: :meth:`full` reports
    them reached and the optimizer starts no further work. Meters nest: a
    request is charged to the meter of its scope and to every meter around it.

    Counters:
        calls: Requests sent to a server (failed ones and retries included).
        cache_hits: Replies served from the response cache (not counted as calls).
        prompt_tokens / completion_tokens / cost: Of the replies servers sent.
        refused: Requests refused by a call limit.
    """

    max_calls: int | None = None
    max_tokens: int | None = None
    max_cost: float | None = None
    parent: SpendMeter | None = None
    calls: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    refused: int = 0

    @property
    def tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens

    def room(self) -> int | None:
        """Requests that may still be sent under the call limits (None: no call limit)."""
        rooms = [m.max_calls - m.calls for m in self._chain() if m.max_calls is not None]
        return max(0, min(rooms)) if rooms else None

    def full(self) -> bool:
        """Whether a limit of this meter or of one around it is reached."""
        return any(
            (m.max_calls is not None and m.calls >= m.max_calls)
            or (m.max_tokens is not None and m.tokens >= m.max_tokens)
            or (m.max_cost is not None and m.cost >= m.max_cost)
            for m in self._chain()
        )

    def _chain(self) -> list[SpendMeter]:
        chain: list[SpendMeter] = []
        meter: SpendMeter | None = self
        while meter is not None:
            chain.append(meter)
            meter = meter.parent
        return chain

    def charge_request(self) -> None:
        """Count one request about to be sent, or refuse it when a call limit is reached.

        Raises:
            SpendLimitError: This meter or one around it has no call left.
        """
        chain = self._chain()
        for meter in chain:
            if meter.max_calls is not None and meter.calls >= meter.max_calls:
                for m in chain:
                    m.refused += 1
                raise SpendLimitError(
                    f"the optimizer's budget is spent ({meter.describe()}); "
                    "no further LM request is sent"
                )
        for meter in chain:
            meter.calls += 1

    def charge_cache_hit(self) -> None:
        """Count one reply served from the response cache."""
        for meter in self._chain():
            meter.cache_hits += 1

    def charge_tokens(self, usage: Usage, cost: float = 0.0) -> None:
        """Count the tokens and cost of one reply a server sent."""
        for meter in self._chain():
            meter.prompt_tokens += usage.prompt_tokens
            meter.completion_tokens += usage.completion_tokens
            meter.cost += cost

    def preload(self, spent: Mapping[str, float]) -> None:
        """Count what an earlier, interrupted run of the same work spent (a resume)."""
        for meter in self._chain():
            meter.calls += int(spent.get("calls", 0))
            meter.cache_hits += int(spent.get("cache_hits", 0))
            meter.prompt_tokens += int(spent.get("prompt_tokens", 0))
            meter.completion_tokens += int(spent.get("completion_tokens", 0))
            meter.cost += float(spent.get("cost", 0.0))

    def snapshot(self) -> dict[str, float]:
        """The counters as a plain dict: :meth:`Trace.usage`'s keys, ``tokens`` and ``refused``."""
        return {
            "calls": self.calls,
            "cache_hits": self.cache_hits,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "tokens": self.tokens,
            "cost": self.cost,
            "refused": self.refused,
        }

    def describe(self) -> str:
        """The limits and what was spent against them, in words."""
        parts = []
        if self.max_calls is not None:
            parts.append(f"{self.calls} of {self.max_calls} calls")
        if self.max_tokens is not None:
            parts.append(f"{self.tokens} of {self.max_tokens} tokens")
        if self.max_cost is not None:
            parts.append(f"{self.cost:.4g} of {self.max_cost:.4g} cost")
        return ", ".join(parts) or "no limits"


def current_meter() -> SpendMeter | None:
    """The spend meter of the current scope, if any."""
    return _METER.get()


@contextlib.contextmanager
def metered(
    *,
    max_calls: int | None = None,
    max_tokens: int | None = None,
    max_cost: float | None = None,
) -> Iterator[SpendMeter]:
    """Count (and limit) every LM request made in the block, nested in any meter around it."""
    meter = SpendMeter(
        max_calls=max_calls, max_tokens=max_tokens, max_cost=max_cost, parent=_METER.get()
    )
    token = _METER.set(meter)
    try:
        yield meter
    finally:
        _METER.reset(token)
