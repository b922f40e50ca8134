"""The OpenAI-compatible chat client: httpx, retries, a shared concurrency cap, cache, usage.

:class:`OpenAILM` implements the :class:`~rhizome.engine.client.protocol.LM` protocol for any
server speaking ``POST {base_url}/chat/completions`` (OpenAI, vLLM, llama.cpp,
Ollama, LiteLLM ...).

Each attempt holds a slot of the endpoint's limiter, one per client for every
event loop and thread, so everything sharing one client shares its
``max_concurrency``. The limit adapts to the server: each 429 lowers it by one
(down to 1) and a run of successes raises it again, so a provider allowing fewer
requests at once than ``max_concurrency`` is learnt from rather than hammered
with retries. Failures that may pass (HTTP 408/409/429/5xx, connection errors,
timeouts, a 200 whose body is not a chat completion) are retried up to
``max_retries`` times with exponential backoff and jitter, honouring
``Retry-After``; then, or at once for other statuses, a typed
:class:`~rhizome.engine.errors.LMError` is raised.

Requests go through rhizome's lean HTTP/1.1 pool (:mod:`rhizome.engine.client.http_pool`),
whose cost per request does not grow with the number of connections, unlike
one big httpx pool; the request head is rendered once per client. A
``transport=`` (e.g. ``httpx.MockTransport``), or a proxy set in the
environment, sends through an ``httpx.AsyncClient`` instead.

The client may serve several event loops over its life (each sync
``graph(...)`` call runs a fresh one), so the connections are made per running
loop; the limiter is shared by all of them. A loop's connections are closed when
that loop shuts down (through the loop's async-generator shutdown hook) or by
:meth:`OpenAILM.aclose`. The API key is sent in the ``Authorization`` header
only: it never appears in ``repr``, history, logs or error messages.

A request with ``stream=True`` (the predictor call path sets it while a run
is listened to, see :mod:`rhizome.engine.events`) is sent with ``"stream":
true`` and ``stream_options.include_usage``; the server-sent events are read
as they arrive (:mod:`rhizome.engine.client.sse`), their text reported, and
the reply returned is the same as a whole one. A stream that breaks off is a
failure like any other that may pass: retried, then raised, never returned
cut. The cache key leaves ``stream`` out, so a streamed reply and a whole one
share their cache entry.

The node running the call may override the retry policy, the timeout and the
cache (:mod:`rhizome.engine.client.policy`).

The parts live beside it: the wire format in :mod:`rhizome.engine.client.wire_format`, the
retry policy in :mod:`rhizome.engine.client.retry`, and the per-loop connections and
shared adaptive limiter in :mod:`rhizome.engine.client.connections`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import anyio
import httpx
from pydantic import ValidationError

from rhizome.engine import events
from rhizome.engine.client.cache import ResponseCache, default_cache
from rhizome.engine.client.connections import USER_AGENT as USER_AGENT
from rhizome.engine.client.connections import Connections, LoopState, SharedLimiter
from rhizome.engine.client.options import grouped
from rhizome.engine.client.policy import CallPolicy, current_policy
from rhizome.engine.client.protocol import (
    Capabilities,
    Choice,
    HistoryEntry,
    LMRequest,
    LMResponse,
    Usage,
)
from rhizome.engine.client.retry import Failure, RetryPolicy, backoff_wait, status_failure
from rhizome.engine.client.sse import StreamError, StreamReader
from rhizome.engine.client.usage import Prices, UsageTracker
from rhizome.engine.client.wire_format import ChatCompletion as ChatCompletion
from rhizome.engine.client.wire_format import ChatRequest as ChatRequest
from rhizome.engine.client.wire_format import WireChoice as WireChoice
from rhizome.engine.client.wire_format import WireFunction as WireFunction
from rhizome.engine.client.wire_format import WireMessage as WireMessage
from rhizome.engine.client.wire_format import WireToolCall as WireToolCall
from rhizome.engine.client.wire_format import WireUsage as WireUsage
from rhizome.engine.client.wire_format import (
    decode_cached,
    dumps,
    encode_cached,
    fast_parse,
    read_completion,
    request_body,
)
from rhizome.engine.errors import (
    ConfigError,
    LMConnectionError,
    LMError,
    LMReplyError,
    LMTimeoutError,
)

__all__ = ("HISTORY_SIZE", "Limits", "OpenAILM", "RequestDefaults")

logger = logging.getLogger("rhizome.client")

HISTORY_SIZE = 1000


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Limits:
    """How much a client asks of its server at once: ``OpenAILM(limits=Limits(...))``.

    Attributes:
        max_concurrency: Requests in flight at once, shared by every caller.
        timeout: Seconds allowed for connecting, sending and each read.

    Raises:
        ConfigError: ``max_concurrency`` is below 1 or ``timeout`` not positive.
    """

    max_concurrency: int = 32
    timeout: float = 60.0

    def __post_init__(self) -> None:
        concurrency, timeout = self.max_concurrency, self.timeout
        if isinstance(concurrency, bool) or not isinstance(concurrency, int):
            raise ConfigError(f"Limits(max_concurrency={concurrency!r}) must be an int")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise ConfigError(f"Limits(timeout={timeout!r}) must be a number of seconds")
        if concurrency < 1:
            raise ConfigError(f"max_concurrency must be at least 1, got {concurrency}")
        if timeout <= 0:
            raise ConfigError(f"timeout must be positive seconds, got {timeout}")


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class RequestDefaults:
    """Values for requests that set none: ``OpenAILM(defaults=RequestDefaults(...))``.

    Attributes:
        temperature: Sampling temperature (None: the server's default).
        max_tokens: Completion limit (None: the server's default).

    Raises:
        ConfigError: ``temperature`` is negative or ``max_tokens`` below 1.
    """

    temperature: float | None = None
    max_tokens: int | None = None

    def __post_init__(self) -> None:
        temperature, max_tokens = self.temperature, self.max_tokens
        if temperature is not None and (
            isinstance(temperature, bool)
            or not isinstance(temperature, (int, float))
            or temperature < 0
        ):
            raise ConfigError(
                f"RequestDefaults(temperature={temperature!r}) must be a number >= 0 or None"
            )
        if max_tokens is not None and (
            isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
        ):
            raise ConfigError(
                f"RequestDefaults(max_tokens={max_tokens!r}) must be an int >= 1 or None"
            )


class OpenAILM:
    """An LM served over the OpenAI chat-completions HTTP API.

    Args:
        model: The model name sent with each request.
        base_url: The API root, e.g. ``"https://api.openai.com/v1"``.
        api_key_env: Environment variable holding the API key.
        api_key: The key itself (overrides ``api_key_env``); no key sends no header.
        retry: The retry policy, as a group (default ``RetryPolicy()``: 5 retries,
            0.5 s first wait, 30 s cap); or give its flat keywords below.
        limits: Concurrency and timeout, as a group (default ``Limits()``: 32
            requests at once, 60 s); or give its flat keywords below.
        defaults: Temperature and completion limit of requests that set none,
            as a group; or give its flat keywords below.
        max_concurrency: Requests in flight at once, shared by every caller
            (``Limits.max_concurrency``; default 32).
        timeout: Seconds allowed for connecting, sending and each read
            (``Limits.timeout``; default 60).
        max_retries: Retries after a failed attempt that may pass on retry
            (``RetryPolicy.max_retries``; default 5).
        temperature: Default sampling temperature when a request sets none.
        max_tokens: Default completion limit when a request sets none.
        cache: ``"default"`` (the user cache file, unless ``RHIZOME_CACHE=0``),
            a :class:`~rhizome.engine.client.cache.ResponseCache`, or None for no cache.
        capabilities: What the server supports; default JSON schema, tools, n and
            streaming.
        prices: Token prices, to report cost.
        headers: Extra HTTP headers sent with every request.
        backoff: Seconds of the first retry wait (doubling, with jitter;
            ``RetryPolicy.backoff``; default 0.5).
        max_wait: Cap in seconds on any retry wait, ``Retry-After`` included
            (``RetryPolicy.max_wait``; default 30).
        transport: An httpx transport to use instead of real connections.
        cache_namespace: What identifies the server in cache keys; defaults to
            ``base_url``. Servers on a changing port (the embedded model) pass a
            stable name so cached replies survive restarts.

    Raises:
        ConfigError: A value is out of range, or a group is given together
            with one of its flat keywords (``retry=`` and ``max_retries=``).
    """

    def __init__(
        self,
        model: str,
        *,
        base_url: str,
        api_key_env: str = "OPENAI_API_KEY",
        api_key: str | None = None,
        retry: RetryPolicy | None = None,
        limits: Limits | None = None,
        defaults: RequestDefaults | None = None,
        max_concurrency: int | None = None,
        timeout: float | None = None,
        max_retries: int | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        cache: ResponseCache | Literal["default"] | None = "default",
        capabilities: Capabilities | None = None,
        prices: Prices | None = None,
        headers: Mapping[str, str] | None = None,
        backoff: float | None = None,
        max_wait: float | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        cache_namespace: str | None = None,
    ) -> None:
        _check_target(model, base_url)
        limits = grouped(
            "OpenAILM",
            "limits",
            limits,
            Limits(),
            {"max_concurrency": max_concurrency, "timeout": timeout},
        )
        retry = grouped(
            "OpenAILM",
            "retry",
            retry,
            RetryPolicy(),
            {"max_retries": max_retries, "backoff": backoff, "max_wait": max_wait},
        )
        defaults = grouped(
            "OpenAILM",
            "defaults",
            defaults,
            RequestDefaults(),
            {"temperature": temperature, "max_tokens": max_tokens},
        )
        self._retry, self._limits, self._defaults = retry, limits, defaults
        self._model = model
        self._base_url = base_url.rstrip("/")
        self._url = self._base_url + "/chat/completions"
        self._api_key_env = api_key_env
        key = api_key if api_key is not None else os.environ.get(api_key_env)
        self._secret = key or ""
        self._headers = {"Accept": "application/json", "Content-Type": "application/json"}
        self._headers.update(headers or {})
        if key:
            self._headers["Authorization"] = f"Bearer {key}"
        self._conns = Connections(
            self._url,
            headers=self._headers,
            timeout=limits.timeout,
            max_concurrency=limits.max_concurrency,
            transport=transport,
        )
        self._origin = self._conns.origin
        self._head = self._conns.head
        # The hot path reads these plain attributes, resolved once, not the groups.
        self._max_concurrency = limits.max_concurrency
        self._timeout = limits.timeout
        self._max_retries = retry.max_retries
        self._temperature = defaults.temperature
        self._max_tokens = defaults.max_tokens
        self._cache = _resolve_cache(cache)
        self._caps = capabilities or Capabilities(json_schema=True, tools=True, n=True, stream=True)
        self._prices = prices
        self._backoff = retry.backoff
        self._max_wait = retry.max_wait
        self._cache_namespace = cache_namespace or self._base_url
        self.usage = UsageTracker()
        self._history: deque[HistoryEntry] = deque(maxlen=HISTORY_SIZE)

    # ---- LM protocol ----------------------------------------------------------

    @property
    def name(self) -> str:
        """The model name."""
        return self._model

    @property
    def capabilities(self) -> Capabilities:
        """What the server supports."""
        return self._caps

    @property
    def base_url(self) -> str:
        """The API root requests go to."""
        return self._base_url

    @property
    def max_tokens(self) -> int | None:
        """The completion limit of requests that set none (None: the server's default)."""
        return self._max_tokens

    @property
    def retry(self) -> RetryPolicy:
        """The retry policy (read-only; build a new client to change it)."""
        return self._retry

    @property
    def limits(self) -> Limits:
        """The concurrency cap and timeout (read-only)."""
        return self._limits

    @property
    def defaults(self) -> RequestDefaults:
        """Temperature and completion limit of requests that set none (read-only)."""
        return self._defaults

    @property
    def cache(self) -> ResponseCache | None:
        """The response cache in use, or None."""
        return self._cache

    @property
    def prices(self) -> Prices | None:
        """Token prices used to report cost, or None."""
        return self._prices

    @property
    def cache_namespace(self) -> str:
        """What identifies the server in cache keys (``base_url`` unless set)."""
        return self._cache_namespace

    @property
    def api_key_env(self) -> str:
        """The environment variable the API key is read from."""
        return self._api_key_env

    @property
    def sends_key(self) -> bool:
        """True when requests carry an API key (the key itself is never exposed)."""
        return bool(self._secret)

    @property
    def limiter(self) -> SharedLimiter:
        """The cap on this client's requests in flight, shared by all its callers."""
        return self._conns.limiter

    def use_limiter(self, limiter: SharedLimiter) -> None:
        """Take request slots from ``limiter`` instead (a cluster-wide cap wraps the client's)."""
        self._conns.limiter = limiter

    def __deepcopy__(self, memo: dict[int, Any]) -> OpenAILM:
        return self  # a handle on a shared endpoint (its limiter, pools, usage): never copied

    def __repr__(self) -> str:
        return (
            f"OpenAILM(model={self._model!r}, base_url={self._base_url!r}, "
            f"max_concurrency={self._max_concurrency}, cache={self._cache!r})"
        )

    async def complete(self, request: LMRequest, *, sample: int = 0) -> LMResponse:
        """Return a reply for ``request``, from the cache when it holds one.

        Args:
            request: The request; unset temperature/max_tokens take the client defaults.
            sample: Sample index; part of the cache key, so a new index asks anew.

        Raises:
            LMStatusError: The server answered an error status (after retries if retryable).
            LMConnectionError: The server could not be reached after all retries.
            LMTimeoutError: The server did not answer in time after all retries.
            LMReplyError: The server kept answering bodies that are not chat completions.
            ConfigError: ``request.n`` is above 1 but the capabilities say the
                server samples one per request (:func:`~rhizome.engine.call.run.run_predictor`
                sends such calls as ``n`` requests).
        """
        if request.n > 1 and not self._caps.n:
            raise ConfigError(
                f"LM {self._model!r} at {self._base_url} takes one sample per request "
                f"(capabilities.n is False), but the request asks for n={request.n}; ask "
                "n=1 per request, or call through a predictor, which fans n out"
            )
        body = self._body(request)
        payload = dumps(body)
        policy = current_policy()
        cache, refresh = self._cache, False
        if policy is not None and policy.cache is not None:
            cache, refresh = self._cache_of(policy)
        key = None
        if cache is not None:
            key = self._cache_key(payload, sample)
            hit = None if refresh else await self._cache_get(cache, key, request)
            if hit is not None:
                return hit
        if request.stream:  # the cache key is the same streamed or not: made above
            payload = dumps({**body, "stream": True, "stream_options": {"include_usage": True}})
        try:
            response = await self._send(payload, request.n, policy, stream=request.stream)
        except LMError as exc:
            self.usage.add_error()
            self._remember(request, None, str(exc))
            raise
        self.usage.add_tokens(response.usage, response.cost)
        if cache is not None and key is not None:
            await cache.put(key, encode_cached(response))
        self._remember(request, response)
        return response

    def inspect_history(self, n: int = 1) -> Sequence[HistoryEntry]:
        """The last ``n`` calls (up to 1000 are kept), oldest first."""
        return list(self._history)[-n:] if n > 0 else []

    async def aclose(self) -> None:
        """Close this event loop's HTTP connections (the client reopens on next use)."""
        await self._conns.aclose()

    async def __aenter__(self) -> OpenAILM:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ---- request building and cache --------------------------------------------

    def _body(self, request: LMRequest) -> dict[str, Any]:
        return request_body(self._model, request, self._temperature, self._max_tokens)

    def _cache_key(self, payload: bytes, sample: int) -> str:
        head = f"{self._cache_namespace}\n{sample}\n".encode()
        return hashlib.sha256(head + payload).hexdigest()

    def _cache_of(self, policy: CallPolicy) -> tuple[ResponseCache | None, bool]:
        """The cache a node's policy asks for, and whether to skip reading it."""
        chosen = policy.cache
        if chosen is False:
            return None, False
        if chosen is True:
            return self._cache, False
        if chosen == "refresh":
            return self._cache, True
        assert isinstance(chosen, ResponseCache)
        return chosen, False

    async def _cache_get(
        self, cache: ResponseCache, key: str, request: LMRequest
    ) -> LMResponse | None:
        value = await cache.get(key)
        if value is None:
            return None
        try:
            response = decode_cached(value)
        except (ValueError, KeyError, TypeError, IndexError):
            logger.warning("response cache entry %s is unreadable; asking the server", key[:12])
            return None
        self.usage.add_cache_hit()
        self._remember(request, response)
        return response

    def _remember(self, request: LMRequest, response: LMResponse | None, error: str = "") -> None:
        entry = HistoryEntry(
            request=request, response=response, error=error or None, timestamp=time.time()
        )
        self._history.append(entry)

    # ---- HTTP with retries --------------------------------------------------------

    async def _send(
        self, payload: bytes, n: int, policy: CallPolicy | None, *, stream: bool = False
    ) -> LMResponse:
        state = await self._conns.state()
        limiter = self._conns.limiter
        retry = self._retry if policy is None or policy.retry is None else policy.retry
        timeout = None if policy is None else policy.timeout
        attempts = 0
        while True:
            outcome = await self._attempt(state, payload, n, read_timeout=timeout, stream=stream)
            if isinstance(outcome, LMResponse):
                limiter.relax()
                return outcome
            if outcome.status == 429:
                limiter.throttle(outcome.retry_after)
            attempts += 1
            if attempts > retry.max_retries or not retry.retries(outcome):
                raise outcome.error(attempts)
            wait = backoff_wait(
                attempts, outcome.retry_after, backoff=retry.backoff, max_wait=retry.max_wait
            )
            logger.info("%s; retry %d in %.2f s", outcome.message, attempts, wait)
            self.usage.add_retry()
            events.retried(attempts, outcome.message, wait)
            await anyio.sleep(wait)

    async def _attempt(
        self,
        state: LoopState,
        payload: bytes,
        n: int,
        *,
        read_timeout: float | None = None,
        stream: bool = False,
    ) -> LMResponse | Failure:
        limiter = self._conns.limiter
        reader = StreamReader(n, events.delta) if stream else None
        try:
            await limiter.acquire()
            try:
                self.usage.add_request()
                start = time.perf_counter()
                if state.pool is not None and reader is None and read_timeout is None:
                    # inline: one coroutine fewer per request
                    data = b"%s%d\r\n\r\n%s" % (self._head, len(payload), payload)
                    raw = await state.pool.request(self._origin, data)
                    status, content, headers, streamed = raw.status, raw.content, raw.headers, False
                else:
                    status, content, headers, streamed = await self._exchange(
                        state, payload, reader, read_timeout
                    )
            finally:
                limiter.release()
        except StreamError as exc:
            return Failure(
                LMReplyError, f"{self._url} streamed a reply that could not be read: {exc}"
            )
        except httpx.TimeoutException as exc:
            limit = read_timeout if read_timeout is not None else self._timeout
            message = f"{self._url} did not answer within timeout={limit} s"
            return Failure(LMTimeoutError, f"{message} ({type(exc).__name__})")
        except httpx.UnsupportedProtocol as exc:
            message = f"cannot request {self._url}: {exc}; base_url must start with http(s)://"
            return Failure(LMConnectionError, message, retryable=False)
        except httpx.TransportError as exc:
            detail = self._redact(str(exc)) or type(exc).__name__
            if reader is not None and reader.events:
                message = f"the stream from {self._url} broke off after {reader.events} events"
                return Failure(LMConnectionError, f"{message}: {detail}")
            return Failure(LMConnectionError, f"could not reach {self._url}: {detail}")
        latency = time.perf_counter() - start
        if not 200 <= status < 300:
            return self._status_failure(status, content, httpx.Headers(headers))
        if streamed and reader is not None:
            try:
                reply = reader.result()
            except StreamError as exc:
                return Failure(LMReplyError, f"{self._url}: {exc}")
            return self._response(reply, latency)
        return self._parse(content, n, latency)

    async def _exchange(
        self,
        state: LoopState,
        payload: bytes,
        reader: StreamReader | None,
        read_timeout: float | None,
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]], bool]:
        """One request, streamed into ``reader`` when given, with its own timeout when given."""
        on_chunk = reader.feed if reader is not None else None
        if state.pool is None:
            return await self._conns.via_httpx(
                state, payload, on_chunk=on_chunk, read_timeout=read_timeout
            )
        data = b"%s%d\r\n\r\n%s" % (self._head, len(payload), payload)
        raw = await state.pool.request(
            self._origin, data, on_chunk=on_chunk, read_timeout=read_timeout
        )
        return raw.status, raw.content, raw.headers, raw.streamed

    def _status_failure(self, status: int, content: bytes, headers: httpx.Headers) -> Failure:
        text = self._redact(content[:8000].decode(errors="replace")[:2000])
        return status_failure(self._url, status, text, headers, self._api_key_env)

    def _parse(self, content: bytes, n: int, latency: float) -> LMResponse | Failure:
        reply = fast_parse(content, n)
        if reply is None:
            try:
                wire = ChatCompletion.model_validate_json(content)
            except ValidationError as exc:
                error = exc.errors()[0]
                where = ".".join(str(p) for p in error["loc"]) or "body"
                excerpt = self._redact(content[:200].decode(errors="replace"))
                message = (
                    f"{self._url} answered 200 but the body is not a chat completion "
                    f"({where}: {error['msg']}); it starts {excerpt!r}"
                )
                return Failure(LMReplyError, message)
            if len(wire.choices) < n:
                got = len(wire.choices)
                return Failure(LMReplyError, f"{self._url} sent {got} choices, {n} were asked for")
            reply = read_completion(wire, n)
        return self._response(reply, latency)

    def _response(self, reply: tuple[str, tuple[Choice, ...], Usage], latency: float) -> LMResponse:
        model, choices, usage = reply
        cost = self._prices.cost(usage) if self._prices is not None else 0.0
        return LMResponse(
            choices=choices, usage=usage, model=model or self._model, latency=latency, cost=cost
        )

    def _redact(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text


# ---- helpers ----------------------------------------------------------------------


def _check_target(model: str, base_url: str) -> None:
    if not isinstance(model, str) or not model:
        raise ConfigError(f"model must be a non-empty string, got {model!r}")
    if not base_url.startswith(("http://", "https://")):
        raise ConfigError(
            f"base_url must start with http:// or https://, got {base_url!r} "
            "(e.g. 'https://api.openai.com/v1' or 'http://localhost:8000/v1')"
        )


def _resolve_cache(cache: object) -> ResponseCache | None:
    if cache == "default":
        return default_cache()
    if cache is None or isinstance(cache, ResponseCache):
        return cache
    raise ConfigError(
        f"cache must be 'default', a ResponseCache or None, got {cache!r} "
        "(use ResponseCache(path) for a cache file of your choice)"
    )
