"""Per-node call policies: retries, request timeout and cache of the LM calls a node makes.

An LM client has its own retry policy, timeout and cache
(``OpenAILM(retry=..., limits=..., cache=...)``). A node may override them for
the calls made while it runs::

    node = Predict("question -> answer").with_policy(
        retry=RetryPolicy(max_retries=0),   # fail fast: one attempt
        timeout=5,                          # seconds allowed between reply bytes
        cache=False,                        # always ask the server
    )

The scheduler puts the running node's :class:`CallPolicy` in a private
``ContextVar`` (:func:`applying`) and the client reads it on every call
(:func:`current_policy`). Policies nest: a graph node's policy holds for the
nodes inside it, and an inner node's settings win over an outer one's, field
by field. Defaults: every field None, so the LM's own settings hold
(``RetryPolicy()``: 5 retries of every kind of failure that may pass, 0.5 s
first wait, 30 s cap; ``Limits().timeout``: 60 s; the LM's cache).

The policy is read by :class:`~rhizome.engine.client.openai.OpenAILM` (and so
by the embedded model's client); an LM of another kind (``FakeLM``, a backend of
your own) may read :func:`current_policy` too, or ignore it.
"""

from __future__ import annotations

import contextvars
import dataclasses
from typing import TYPE_CHECKING, Literal

from rhizome.engine.client.retry import RetryPolicy
from rhizome.engine.errors import ConfigError

if TYPE_CHECKING:
    from rhizome.engine.client.cache import ResponseCache

__all__ = ("CallPolicy", "applying", "current_policy", "restore")


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class CallPolicy:
    """How the LM calls made inside one node are retried, timed and cached.

    Attributes:
        retry: The retry policy instead of the LM's (``RetryPolicy(max_retries=0)``
            makes one attempt; ``retry_on`` picks which failures are retried).
        timeout: Seconds allowed for connecting and between reply bytes,
            instead of the LM's ``Limits.timeout``.
        cache: ``False``: neither read nor write the response cache; ``True``:
            the LM's cache (even where an enclosing node turned it off);
            ``"refresh"``: ask the server and overwrite the cached reply; a
            :class:`~rhizome.engine.client.cache.ResponseCache`: that cache
            instead of the LM's. None keeps what encloses the node.

    Raises:
        ConfigError: A value has the wrong type or is out of range.
    """

    retry: RetryPolicy | None = None
    timeout: float | None = None
    cache: bool | ResponseCache | Literal["refresh"] | None = None

    def __post_init__(self) -> None:
        from rhizome.engine.client.cache import ResponseCache

        if self.retry is not None and not isinstance(self.retry, RetryPolicy):
            raise ConfigError(
                f"CallPolicy(retry={self.retry!r}) must be a RetryPolicy, "
                "e.g. RetryPolicy(max_retries=0)"
            )
        timeout = self.timeout
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0
        ):
            raise ConfigError(f"CallPolicy(timeout={timeout!r}) must be positive seconds or None")
        cache = self.cache
        if not (cache is None or cache == "refresh" or isinstance(cache, bool | ResponseCache)):
            raise ConfigError(
                f"CallPolicy(cache={cache!r}) must be True, False, 'refresh', a ResponseCache "
                "or None"
            )

    def over(self, outer: CallPolicy | None) -> CallPolicy:
        """This policy inside ``outer``: its set fields win, the rest come from ``outer``."""
        if outer is None:
            return self
        return CallPolicy(
            retry=self.retry if self.retry is not None else outer.retry,
            timeout=self.timeout if self.timeout is not None else outer.timeout,
            cache=self.cache if self.cache is not None else outer.cache,
        )


_POLICY: contextvars.ContextVar[CallPolicy | None] = contextvars.ContextVar(
    "rhizome_call_policy", default=None
)


def current_policy() -> CallPolicy | None:
    """The policy in force for LM calls made in this task, or None (the LM's own settings)."""
    return _POLICY.get()


def applying(policy: CallPolicy) -> contextvars.Token[CallPolicy | None]:
    """Put ``policy`` in force (inside any enclosing one) until :func:`restore`."""
    return _POLICY.set(policy.over(_POLICY.get()))


def restore(token: contextvars.Token[CallPolicy | None]) -> None:
    """End what :func:`applying` began."""
    _POLICY.reset(token)
