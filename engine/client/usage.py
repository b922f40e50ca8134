"""Usage accounting for an LM client: requests, cache hits, tokens, cost.

A :class:`UsageTracker` lives on each client (``lm.usage``) and counts over the
client's whole life; per-run usage comes from traces instead
(:meth:`rhizome.engine.trace.Trace.usage`). Counters are guarded by a lock, so
one tracker may be shared by tasks and threads.
"""

from __future__ import annotations

import dataclasses
import threading

from rhizome.engine.client.protocol import Usage
from rhizome.engine.errors import ConfigError

__all__ = ("Prices", "UsageTracker")


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
        """Count one HTTP request sent."""
        with self._lock:
            self.calls += 1

    def add_retry(self) -> None:
        """Count one retry (an attempt after a failed one)."""
        with self._lock:
            self.retries += 1

    def add_cache_hit(self) -> None:
        """Count one reply served from the cache."""
        with self._lock:
            self.cache_hits += 1

    def add_error(self) -> None:
        """Count one call that failed for good."""
        with self._lock:
            self.errors += 1

    def add_tokens(self, usage: Usage, cost: float = 0.0) -> None:
        """Add the tokens and cost of one successful reply."""
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
