"""Retry policy of the chat client: which failures may pass, and how long to wait.

A failed attempt becomes a :class:`Failure` first, so the retry loop can
decide on it before it is raised as a typed
:class:`~rhizome.engine.errors.LMError`. HTTP 408/409/429/5xx, connection
errors, timeouts and a 200 whose body is not a chat completion may pass on
retry; other statuses fail at once, with a hint saying what to fix. Waits grow
exponentially with jitter, and a server's ``Retry-After`` is honoured, both
capped at ``max_wait``.
"""

from __future__ import annotations

import dataclasses
import email.utils
import random
import time

import httpx

from rhizome.engine.client.wire_format import error_detail
from rhizome.engine.errors import (
    ConfigError,
    LMConnectionError,
    LMError,
    LMReplyError,
    LMStatusError,
    LMTimeoutError,
)

__all__ = (
    "FAILURE_KINDS",
    "HINTS",
    "RETRY_STATUS",
    "Failure",
    "RetryPolicy",
    "backoff_wait",
    "retry_after",
    "status_failure",
)

RETRY_STATUS = frozenset({408, 409, 429})
HINTS = {
    400: "the server rejected the request; check that the model supports the options used "
    "(response_format, tools, n, stop, seed)",
    403: "the API key may not use this model or endpoint",
    404: "check base_url (it usually ends in /v1) and the model name",
    422: "the server could not process the request body; check the options used",
    429: "rate limited; lower max_concurrency or raise max_retries",
}


FAILURE_KINDS: dict[str, type[LMError]] = {
    "status": LMStatusError,
    "connection": LMConnectionError,
    "timeout": LMTimeoutError,
    "reply": LMReplyError,
}
"""The kinds of failure a :class:`RetryPolicy` may retry, by the name ``retry_on`` uses."""


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class RetryPolicy:
    """How a client retries failures that may pass: ``OpenAILM(retry=RetryPolicy(...))``.

    Attributes:
        max_retries: Retries after a failed attempt that may pass on retry (0: none,
            one attempt in all).
        backoff: Seconds of the first retry wait (doubling, with jitter).
        max_wait: Cap in seconds on any retry wait, ``Retry-After`` included.
        retry_on: Which failures are retried: ``"status"`` (HTTP 408, 409, 429
            and 5xx), ``"connection"`` (the server could not be reached, or cut
            the connection), ``"timeout"``, ``"reply"`` (a body that is not a
            chat completion, a stream that broke off). Default: all four.

    Raises:
        ConfigError: A value is negative or not a number, or ``retry_on`` names
            an unknown kind.
    """

    max_retries: int = 5
    backoff: float = 0.5
    max_wait: float = 30.0
    retry_on: frozenset[str] = frozenset(FAILURE_KINDS)

    @property
    def attempts(self) -> int:
        """Attempts in all: the first one and ``max_retries`` more."""
        return self.max_retries + 1

    def retries(self, failure: Failure) -> bool:
        """True when ``failure`` is of a kind this policy retries (and may pass at all)."""
        if not failure.retryable:
            return False
        if len(self.retry_on) == len(FAILURE_KINDS):
            return True
        return any(FAILURE_KINDS[name] is failure.kind for name in self.retry_on)

    def __post_init__(self) -> None:
        if isinstance(self.retry_on, str) or not isinstance(
            self.retry_on, frozenset | set | tuple | list
        ):
            raise ConfigError(
                f"RetryPolicy(retry_on={self.retry_on!r}) must be a set of kinds, e.g. "
                f"{{'status', 'timeout'}}; the kinds are: {', '.join(FAILURE_KINDS)}"
            )
        unknown = sorted(str(k) for k in self.retry_on if k not in FAILURE_KINDS)
        if unknown:
            raise ConfigError(
                f"RetryPolicy(retry_on=...) names unknown kind(s) {', '.join(unknown)}; "
                f"the kinds are: {', '.join(FAILURE_KINDS)}"
            )
        object.__setattr__(self, "retry_on", frozenset(self.retry_on))
        for name in ("max_retries", "backoff", "max_wait"):
            value = getattr(self, name)
            number = int if name == "max_retries" else (int, float)
            if isinstance(value, bool) or not isinstance(value, number):
                kind = "an int" if name == "max_retries" else "a number of seconds"
                raise ConfigError(f"RetryPolicy({name}={value!r}) must be {kind}")
        if self.max_retries < 0 or self.backoff < 0 or self.max_wait < 0:
            raise ConfigError(
                "max_retries, backoff and max_wait must not be negative; got "
                f"max_retries={self.max_retries}, backoff={self.backoff}, "
                f"max_wait={self.max_wait}"
            )


@dataclasses.dataclass(slots=True)
class Failure:
    """A failed attempt, before deciding whether to retry it."""

    kind: type[LMError]
    message: str
    retryable: bool = True
    retry_after: float | None = None
    status: int = 0
    body: str = ""

    def error(self, attempts: int) -> LMError:
        """The error to raise once no more attempts will be made."""
        message = self.message
        if attempts > 1:
            message += f" (gave up after {attempts} attempts)"
        if self.kind is LMStatusError:
            return LMStatusError(message, status=self.status, body=self.body, attempts=attempts)
        return self.kind(message, attempts=attempts)


def status_failure(
    url: str, status: int, text: str, headers: httpx.Headers, api_key_env: str
) -> Failure:
    """The failure of an HTTP error ``status`` whose (redacted) body starts ``text``."""
    message = f"{url} answered HTTP {status}: {error_detail(text)}"
    hint = HINTS.get(status)
    if status == 401:
        hint = (
            f"the API key was rejected or missing; set the {api_key_env} "
            "environment variable (or pass api_key=...) to a valid key"
        )
    elif status >= 500:
        hint = "the server failed"
    if hint:
        message += f" — {hint}"
    retryable = status in RETRY_STATUS or status >= 500
    after = retry_after(headers) if retryable else None
    return Failure(LMStatusError, message, retryable, after, status, text[:500])


def backoff_wait(
    attempts: int, retry_after: float | None, *, backoff: float, max_wait: float
) -> float:
    """Seconds to wait before retry number ``attempts``: ``Retry-After``, else jittered backoff."""
    if retry_after is not None:
        return min(retry_after, max_wait)
    base = min(max_wait, backoff * 2.0 ** (attempts - 1))
    return base * (0.5 + 0.5 * random.random())


def retry_after(headers: httpx.Headers) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or HTTP date)."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
