"""The OpenAI-compatible chat client: httpx, retries, a shared concurrency cap, cache, usage.

:class:`OpenAILM` implements the :class:`~rhizome.engine.lm.LM` protocol for any
server speaking ``POST {base_url}/chat/completions`` (OpenAI, vLLM, llama.cpp,
Ollama, LiteLLM ...).

Each attempt holds the endpoint's :class:`anyio.CapacityLimiter`, so every task
sharing one client shares its ``max_concurrency``. The limit adapts to the
server: each 429 lowers it by one (down to 1) and a run of successes raises it
again, so a provider allowing fewer requests at once than ``max_concurrency``
is learnt from rather than hammered with retries. Failures that may pass
(HTTP 408/409/429/5xx, connection errors, timeouts, a 200 whose body is not a
chat completion) are retried up to ``max_retries`` times with exponential
backoff and jitter, honouring ``Retry-After``; then, or at once for other
statuses, a typed :class:`~rhizome.engine.errors.LMError` is raised.

Requests go through rhizome's lean HTTP/1.1 pool (:mod:`rhizome.engine.http`),
whose cost per request does not grow with the number of connections, unlike
one big httpx pool; the request head is rendered once per client. A
``transport=`` (e.g. ``httpx.MockTransport``), or a proxy set in the
environment, sends through an ``httpx.AsyncClient`` instead.

The client may serve several event loops over its life (each sync
``graph(...)`` call runs a fresh one), so the connections and the limiter are
made per running loop. A loop's connections are closed when that loop shuts down
(through the loop's async-generator shutdown hook) or by :meth:`OpenAILM.aclose`.
The API key is sent in the ``Authorization`` header only: it never appears in
``repr``, history, logs or error messages.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import hashlib
import json
import logging
import os
import random
import ssl
import time
import urllib.request
import weakref
from collections import deque
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any, Literal, Protocol

import anyio
import httpx
from pydantic import BaseModel, ConfigDict, ValidationError

from rhizome.engine.cache import ResponseCache, default_cache
from rhizome.engine.errors import (
    ConfigError,
    LMConnectionError,
    LMError,
    LMReplyError,
    LMStatusError,
    LMTimeoutError,
)
from rhizome.engine.http import HttpPool, Origin
from rhizome.engine.lm import (
    Capabilities,
    Choice,
    HistoryEntry,
    LMRequest,
    LMResponse,
    ToolCall,
    Usage,
)
from rhizome.engine.usage import Prices, UsageTracker

logger = logging.getLogger("rhizome.client")

HISTORY_SIZE = 1000
USER_AGENT = "rhizome/0.1"
_RETRY_STATUS = frozenset({408, 409, 429})
_HINTS = {
    400: "the server rejected the request; check that the model supports the options used "
    "(response_format, tools, n, stop, seed)",
    403: "the API key may not use this model or endpoint",
    404: "check base_url (it usually ends in /v1) and the model name",
    422: "the server could not process the request body; check the options used",
    429: "rate limited; lower max_concurrency or raise max_retries",
}


# ---- wire format (pydantic) ----------------------------------------------


class ChatRequest(BaseModel):
    """The body of a chat-completion request as sent; unset options are left out.

    The client builds this body as a plain dict on its hot path (a model there
    costs more than it checks); tests validate what servers receive against it.
    """

    model_config = ConfigDict(extra="forbid")

    model: str
    messages: list[dict[str, Any]]
    temperature: float | None = None
    max_tokens: int | None = None
    n: int | None = None
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    stop: list[str] | None = None
    seed: int | None = None


class WireFunction(BaseModel):
    """The function part of a tool call in a reply."""

    name: str
    arguments: str = ""


class WireToolCall(BaseModel):
    """A tool call in a reply."""

    id: str = ""
    type: str = "function"
    function: WireFunction


class WireMessage(BaseModel):
    """The assistant message of one choice."""

    role: str = "assistant"
    content: str | None = None
    tool_calls: list[WireToolCall] | None = None


class WireChoice(BaseModel):
    """One choice of a chat completion."""

    index: int = 0
    message: WireMessage
    finish_reason: str | None = None


class WireUsage(BaseModel):
    """Token counts of a chat completion."""

    prompt_tokens: int = 0
    completion_tokens: int = 0


class ChatCompletion(BaseModel):
    """The body of a chat-completion reply (unknown fields are ignored)."""

    model: str = ""
    choices: list[WireChoice]
    usage: WireUsage | None = None


# ---- internals ------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class _Failure:
    """A failed attempt, before deciding whether to retry it."""

    kind: type[LMError]
    message: str
    retryable: bool = True
    retry_after: float | None = None
    status: int = 0
    body: str = ""

    def error(self, attempts: int) -> LMError:
        message = self.message
        if attempts > 1:
            message += f" (gave up after {attempts} attempts)"
        if self.kind is LMStatusError:
            return LMStatusError(message, status=self.status, body=self.body, attempts=attempts)
        return self.kind(message, attempts=attempts)


class _Closeable(Protocol):
    async def aclose(self) -> None: ...


@dataclasses.dataclass(slots=True)
class _LoopState:
    """The connections and the limiter serving one event loop: a pool or an httpx client.

    The limiter's size adapts to the server: :meth:`throttle` on every 429,
    :meth:`relax` on every success, never above ``ceiling`` (``max_concurrency``).
    """

    limiter: anyio.CapacityLimiter
    pool: HttpPool | None = None
    client: httpx.AsyncClient | None = None
    ceiling: int = 1
    streak: int = 0

    def throttle(self) -> None:
        """A 429: the server takes fewer requests at once than we send; send one fewer."""
        self.limiter.total_tokens = max(1, int(self.limiter.total_tokens) - 1)
        self.streak = 0

    def relax(self) -> None:
        """A success: after ``4 x limit`` in a row, probe with one more request at once."""
        limit = int(self.limiter.total_tokens)
        if limit < self.ceiling:
            self.streak += 1
            if self.streak >= 4 * limit:
                self.limiter.total_tokens = limit + 1
                self.streak = 0

    @property
    def closeable(self) -> _Closeable:
        return self.pool if self.pool is not None else self.client  # type: ignore[return-value]


class _LoopClients:
    """The pools and httpx clients open on one event loop, closed when that loop shuts down."""

    def __init__(self) -> None:
        self.clients: set[_Closeable] = set()
        self.keeper: AsyncGenerator[None, None] | None = None


# Open clients per event loop. This is resource bookkeeping, not settings: it lives
# here rather than on an OpenAILM so that clients of an OpenAILM dropped just before
# ``asyncio.run`` returns are still closed properly by the loop's async-generator
# shutdown (which fully awaits ``_close_at_loop_end``).
_OPEN: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopClients] = (
    weakref.WeakKeyDictionary()
)


async def _register(loop: asyncio.AbstractEventLoop, clients: list[_Closeable]) -> None:
    entry = _OPEN.get(loop)
    if entry is None:
        entry = _OPEN[loop] = _LoopClients()
        entry.keeper = _close_at_loop_end(loop, entry)
        await entry.keeper.asend(None)
    entry.clients.update(clients)


async def _close_at_loop_end(
    loop: asyncio.AbstractEventLoop, entry: _LoopClients
) -> AsyncGenerator[None, None]:
    """Parked at ``yield`` (kept alive by ``entry``) until the loop shuts down."""
    try:
        yield
    finally:
        _OPEN.pop(loop, None)
        for client in list(entry.clients):
            await client.aclose()


async def _close(loop: asyncio.AbstractEventLoop, clients: list[_Closeable]) -> None:
    entry = _OPEN.get(loop)
    for client in clients:
        if entry is not None:
            entry.clients.discard(client)
        await client.aclose()


class OpenAILM:
    """An LM served over the OpenAI chat-completions HTTP API.

    Args:
        model: The model name sent with each request.
        base_url: The API root, e.g. ``"https://api.openai.com/v1"``.
        api_key_env: Environment variable holding the API key.
        api_key: The key itself (overrides ``api_key_env``); no key sends no header.
        max_concurrency: Requests in flight at once, shared by every caller.
        timeout: Seconds allowed for connecting, sending and each read.
        max_retries: Retries after a failed attempt that may pass on retry.
        temperature: Default sampling temperature when a request sets none.
        max_tokens: Default completion limit when a request sets none.
        cache: ``"default"`` (the user cache file, unless ``RHIZOME_CACHE=0``),
            a :class:`~rhizome.engine.cache.ResponseCache`, or None for no cache.
        capabilities: What the server supports; default JSON schema, tools and n.
        prices: Token prices, to report cost.
        headers: Extra HTTP headers sent with every request.
        backoff: Seconds of the first retry wait (doubling, with jitter).
        max_wait: Cap in seconds on any retry wait, ``Retry-After`` included.
        transport: An httpx transport to use instead of real connections.
        cache_namespace: What identifies the server in cache keys; defaults to
            ``base_url``. Servers on a changing port (the embedded model) pass a
            stable name so cached replies survive restarts.
    """

    def __init__(
        self,
        model: str,
        *,
        base_url: str,
        api_key_env: str = "OPENAI_API_KEY",
        api_key: str | None = None,
        max_concurrency: int = 32,
        timeout: float = 60.0,
        max_retries: int = 5,
        temperature: float | None = None,
        max_tokens: int | None = None,
        cache: ResponseCache | Literal["default"] | None = "default",
        capabilities: Capabilities | None = None,
        prices: Prices | None = None,
        headers: Mapping[str, str] | None = None,
        backoff: float = 0.5,
        max_wait: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        cache_namespace: str | None = None,
    ) -> None:
        _check_config(model, base_url, max_concurrency, timeout, max_retries, backoff, max_wait)
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
        self._origin = Origin.of(httpx.URL(self._url))
        self._head = _request_head(self._url, self._origin, self._headers)
        self._max_concurrency = max_concurrency
        self._timeout = timeout
        self._max_retries = max_retries
        self._temperature = temperature
        self._max_tokens = max_tokens
        self._cache = _resolve_cache(cache)
        self._caps = capabilities or Capabilities(json_schema=True, tools=True, n=True)
        self._prices = prices
        self._backoff = backoff
        self._max_wait = max_wait
        self._transport = transport
        self._cache_namespace = cache_namespace or self._base_url
        self._ssl: ssl.SSLContext | None = None
        self.usage = UsageTracker()
        self._history: deque[HistoryEntry] = deque(maxlen=HISTORY_SIZE)
        self._states: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState] = (
            weakref.WeakKeyDictionary()
        )

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
    def cache(self) -> ResponseCache | None:
        """The response cache in use, or None."""
        return self._cache

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
        """
        body = self._body(request)
        payload = _dumps(body)
        key = None
        if self._cache is not None:
            key = self._cache_key(payload, sample)
            hit = await self._cache_get(key, request)
            if hit is not None:
                return hit
        try:
            if request.n > 1 and not self._caps.n:
                response = await self._fan_out(body, request.n)
            else:
                response = await self._send(payload.encode(), request.n)
        except LMError as exc:
            self.usage.add_error()
            self._remember(request, None, str(exc))
            raise
        self.usage.add_tokens(response.usage, response.cost)
        if self._cache is not None and key is not None:
            await self._cache.put(key, _encode(response))
        self._remember(request, response)
        return response

    def inspect_history(self, n: int = 1) -> Sequence[HistoryEntry]:
        """The last ``n`` calls (up to 1000 are kept), oldest first."""
        return list(self._history)[-n:] if n > 0 else []

    async def aclose(self) -> None:
        """Close this event loop's HTTP connections (the client reopens on next use)."""
        loop = asyncio.get_running_loop()
        state = self._states.pop(loop, None)
        if state is not None:
            await _close(loop, [state.closeable])

    async def __aenter__(self) -> OpenAILM:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ---- request building and cache --------------------------------------------

    def _body(self, request: LMRequest) -> dict[str, Any]:
        if request.n < 1:
            raise ConfigError(f"LMRequest.n must be at least 1, got {request.n}")
        body: dict[str, Any] = {"model": self._model, "messages": list(request.messages)}
        temperature = self._temperature if request.temperature is None else request.temperature
        if temperature is not None:
            body["temperature"] = temperature
        max_tokens = self._max_tokens if request.max_tokens is None else request.max_tokens
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        if request.n != 1:
            body["n"] = request.n
        for name in ("response_format", "tool_choice", "seed"):
            value = getattr(request, name)
            if value is not None:
                body[name] = value
        if request.tools is not None:
            body["tools"] = list(request.tools)
        if request.stop is not None:
            body["stop"] = list(request.stop)
        return body

    def _cache_key(self, payload: str, sample: int) -> str:
        text = f"{self._cache_namespace}\n{sample}\n{payload}"
        return hashlib.sha256(text.encode()).hexdigest()

    async def _cache_get(self, key: str, request: LMRequest) -> LMResponse | None:
        assert self._cache is not None
        value = await self._cache.get(key)
        if value is None:
            return None
        try:
            response = _decode(value)
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

    async def _loop_state(self) -> _LoopState:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise ConfigError(
                "OpenAILM runs on asyncio; run it with asyncio or anyio's asyncio backend"
            ) from None
        state = self._states.get(loop)
        if state is None:
            state = await self._open_state(loop)
        return state

    async def _open_state(self, loop: asyncio.AbstractEventLoop) -> _LoopState:
        for old_loop in [old for old in self._states if old.is_closed()]:
            del self._states[old_loop]  # its connections were closed when it shut down
        if self._origin.scheme == "https" and self._ssl is None:
            self._ssl = httpx.create_ssl_context()  # loading CA certificates takes ~20 ms: once
        limiter = anyio.CapacityLimiter(self._max_concurrency)
        state = _LoopState(limiter=limiter, ceiling=self._max_concurrency)
        if self._transport is None and not _proxied(self._origin):
            state.pool = HttpPool(
                timeout=self._timeout, ssl_context=self._ssl, max_idle=self._max_concurrency
            )
        else:
            state.client = self._new_client()
        self._states[loop] = state
        await _register(loop, [state.closeable])
        return state

    def _new_client(self) -> httpx.AsyncClient:
        size = self._max_concurrency
        return httpx.AsyncClient(
            headers=self._headers,
            timeout=httpx.Timeout(self._timeout),
            limits=httpx.Limits(max_connections=size, max_keepalive_connections=size),
            transport=self._transport,
            verify=self._ssl if self._ssl is not None else True,
        )

    async def _send(self, payload: bytes, n: int) -> LMResponse:
        state = await self._loop_state()
        attempts = 0
        while True:
            outcome = await self._attempt(state, payload, n)
            if isinstance(outcome, LMResponse):
                state.relax()
                return outcome
            if outcome.status == 429:
                state.throttle()
            attempts += 1
            if not outcome.retryable or attempts > self._max_retries:
                raise outcome.error(attempts)
            wait = self._wait(attempts, outcome.retry_after)
            logger.info("%s; retry %d in %.2f s", outcome.message, attempts, wait)
            self.usage.add_retry()
            await anyio.sleep(wait)

    def _wait(self, attempts: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self._max_wait)
        base = min(self._max_wait, self._backoff * 2 ** (attempts - 1))
        return base * (0.5 + 0.5 * random.random())

    async def _attempt(self, state: _LoopState, payload: bytes, n: int) -> LMResponse | _Failure:
        try:
            await _acquire(state.limiter)
            try:
                self.usage.add_request()
                start = time.perf_counter()
                if state.pool is not None:  # inline: one coroutine fewer per request
                    data = b"%s%d\r\n\r\n%s" % (self._head, len(payload), payload)
                    raw = await state.pool.request(self._origin, data)
                    status, content, headers = raw.status, raw.content, raw.headers
                else:
                    status, content, headers = await self._via_httpx(state, payload)
            finally:
                state.limiter.release()
        except httpx.TimeoutException as exc:
            message = f"{self._url} did not answer within timeout={self._timeout} s"
            return _Failure(LMTimeoutError, f"{message} ({type(exc).__name__})")
        except httpx.UnsupportedProtocol as exc:
            message = f"cannot request {self._url}: {exc}; base_url must start with http(s)://"
            return _Failure(LMConnectionError, message, retryable=False)
        except httpx.TransportError as exc:
            detail = self._redact(str(exc)) or type(exc).__name__
            return _Failure(LMConnectionError, f"could not reach {self._url}: {detail}")
        latency = time.perf_counter() - start
        if not 200 <= status < 300:
            return self._status_failure(status, content, httpx.Headers(headers))
        return self._parse(content, n, latency)

    async def _via_httpx(
        self, state: _LoopState, payload: bytes
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        """One POST of ``payload`` through httpx: status, body and raw headers of the reply."""
        assert state.client is not None
        reply = await state.client.post(self._url, content=payload)
        return reply.status_code, reply.content, reply.headers.raw

    def _status_failure(self, status: int, content: bytes, headers: httpx.Headers) -> _Failure:
        text = self._redact(content[:8000].decode(errors="replace")[:2000])
        message = f"{self._url} answered HTTP {status}: {_error_detail(text)}"
        hint = _HINTS.get(status)
        if status == 401:
            hint = (
                f"the API key was rejected or missing; set the {self._api_key_env} "
                "environment variable (or pass api_key=...) to a valid key"
            )
        elif status >= 500:
            hint = "the server failed"
        if hint:
            message += f" — {hint}"
        retryable = status in _RETRY_STATUS or status >= 500
        retry_after = _retry_after(headers) if retryable else None
        return _Failure(LMStatusError, message, retryable, retry_after, status, text[:500])

    def _parse(self, content: bytes, n: int, latency: float) -> LMResponse | _Failure:
        fast = _fast_parse(content, n)
        if fast is not None:
            model, choices, usage = fast
            cost = self._prices.cost(usage) if self._prices is not None else 0.0
            return LMResponse(
                choices=choices, usage=usage, model=model or self._model, latency=latency, cost=cost
            )
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
            return _Failure(LMReplyError, message)
        if len(wire.choices) < n:
            got = len(wire.choices)
            return _Failure(LMReplyError, f"{self._url} sent {got} choices, {n} were asked for")
        wire_choices = sorted(wire.choices, key=lambda c: c.index) if n > 1 else wire.choices
        choices = tuple(_choice(c) for c in wire_choices[:n])
        usage = Usage()
        if wire.usage is not None:
            usage = Usage(
                prompt_tokens=wire.usage.prompt_tokens,
                completion_tokens=wire.usage.completion_tokens,
            )
        cost = self._prices.cost(usage) if self._prices is not None else 0.0
        model = wire.model or self._model
        return LMResponse(choices=choices, usage=usage, model=model, latency=latency, cost=cost)

    async def _fan_out(self, body: dict[str, Any], n: int) -> LMResponse:
        """``n`` samples as ``n`` one-sample requests, for servers without ``n``."""
        payload = _dumps({k: v for k, v in body.items() if k != "n"}).encode()
        results: list[LMResponse | LMError | None] = [None] * n

        async def one(index: int) -> None:
            try:
                results[index] = await self._send(payload, 1)
            except LMError as exc:
                results[index] = exc

        async with anyio.create_task_group() as group:
            for index in range(n):
                group.start_soon(one, index)
        for result in results:
            if isinstance(result, LMError):
                raise result
        done = [r for r in results if isinstance(r, LMResponse)]
        usage = Usage(
            prompt_tokens=sum(r.usage.prompt_tokens for r in done),
            completion_tokens=sum(r.usage.completion_tokens for r in done),
        )
        return LMResponse(
            choices=tuple(r.choices[0] for r in done),
            usage=usage,
            model=done[0].model,
            latency=max(r.latency for r in done),
            cost=sum(r.cost for r in done),
        )

    def _redact(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text


# ---- helpers ----------------------------------------------------------------------


def _check_config(
    model: str,
    base_url: str,
    max_concurrency: int,
    timeout: float,
    max_retries: int,
    backoff: float,
    max_wait: float,
) -> None:
    if not isinstance(model, str) or not model:
        raise ConfigError(f"model must be a non-empty string, got {model!r}")
    if not base_url.startswith(("http://", "https://")):
        raise ConfigError(
            f"base_url must start with http:// or https://, got {base_url!r} "
            "(e.g. 'https://api.openai.com/v1' or 'http://localhost:8000/v1')"
        )
    if max_concurrency < 1:
        raise ConfigError(f"max_concurrency must be at least 1, got {max_concurrency}")
    if timeout <= 0:
        raise ConfigError(f"timeout must be positive seconds, got {timeout}")
    if max_retries < 0 or backoff < 0 or max_wait < 0:
        raise ConfigError(
            "max_retries, backoff and max_wait must not be negative; got "
            f"max_retries={max_retries}, backoff={backoff}, max_wait={max_wait}"
        )


async def _acquire(limiter: anyio.CapacityLimiter) -> None:
    """Take a slot of ``limiter``; a free one is taken without yielding to the loop.

    anyio's ``acquire`` always yields once, which costs an event-loop iteration
    per request; waiting for a slot still goes through it (and stays fair).
    """
    try:
        limiter.acquire_nowait()
    except anyio.WouldBlock:
        await limiter.acquire()


def _request_head(url: str, origin: Origin, headers: Mapping[str, str]) -> bytes:
    """The request line and headers of every chat request, up to the Content-Length value."""
    lines = [f"POST {httpx.URL(url).raw_path.decode('ascii')} HTTP/1.1"]
    lines.append(f"Host: {origin.host_header}")
    lines.append(f"User-Agent: {USER_AGENT}")
    lines.extend(f"{name}: {value}" for name, value in headers.items())
    return ("\r\n".join(lines) + "\r\nContent-Length: ").encode("latin-1")


def _proxied(origin: Origin) -> bool:
    """True when the environment routes requests to ``origin`` through a proxy."""
    proxies = urllib.request.getproxies_environment()
    if not (proxies.get(origin.scheme) or proxies.get("all")):
        return False
    return not urllib.request.proxy_bypass(origin.host)


def _fast_parse(content: bytes, n: int) -> tuple[str, tuple[Choice, ...], Usage] | None:
    """The common reply (text choices, usage) read without pydantic; None for anything else.

    Anything unusual (tool calls, odd types, missing fields, too few choices)
    returns None, and the pydantic models then parse it or say what is wrong.
    """
    try:
        data = json.loads(content)
        wires = data["choices"]
        usage_data = data.get("usage") or {}
        model = data.get("model", "")
        prompt = usage_data.get("prompt_tokens", 0)
        completion = usage_data.get("completion_tokens", 0)
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    if type(wires) is not list or len(wires) < n or type(model) is not str:
        return None
    if type(prompt) is not int or type(completion) is not int:
        return None
    found: list[tuple[int, Choice]] = []
    for wire in wires:
        choice = _fast_choice(wire)
        if choice is None:
            return None
        found.append(choice)
    if n > 1:
        found.sort(key=lambda pair: pair[0])
    choices = tuple(choice for _, choice in found[:n])
    return model, choices, Usage(prompt_tokens=prompt, completion_tokens=completion)


def _fast_choice(wire: Any) -> tuple[int, Choice] | None:
    if type(wire) is not dict:
        return None
    message = wire.get("message")
    if type(message) is not dict or message.get("tool_calls"):
        return None
    text, finish = message.get("content"), wire.get("finish_reason")
    index, role = wire.get("index", 0), message.get("role", "assistant")
    if text is not None and type(text) is not str:
        return None
    if (finish is not None and type(finish) is not str) or type(index) is not int:
        return None
    if type(role) is not str:
        return None
    return index, Choice(text=text or "", finish_reason=finish)


def _resolve_cache(cache: object) -> ResponseCache | None:
    if cache == "default":
        return default_cache()
    if cache is None or isinstance(cache, ResponseCache):
        return cache
    raise ConfigError(
        f"cache must be 'default', a ResponseCache or None, got {cache!r} "
        "(use ResponseCache(path) for a cache file of your choice)"
    )


def _dumps(body: dict[str, Any]) -> str:
    try:
        return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"the LM request is not JSON-serialisable ({exc}); messages, tools and "
            "response_format must hold only str, numbers, bools, None, lists and dicts"
        ) from exc


def _choice(wire: WireChoice) -> Choice:
    calls = tuple(
        ToolCall(id=c.id, name=c.function.name, arguments=c.function.arguments)
        for c in wire.message.tool_calls or ()
    )
    text = wire.message.content or ""
    return Choice(text=text, tool_calls=calls, finish_reason=wire.finish_reason)


def _encode(response: LMResponse) -> str:
    choices = [
        [c.text, [[t.id, t.name, t.arguments] for t in c.tool_calls], c.finish_reason]
        for c in response.choices
    ]
    usage = [response.usage.prompt_tokens, response.usage.completion_tokens]
    return json.dumps({"choices": choices, "usage": usage, "model": response.model})


def _decode(value: str) -> LMResponse:
    data = json.loads(value)
    choices = tuple(
        Choice(
            text=text,
            tool_calls=tuple(ToolCall(id=i, name=n, arguments=a) for i, n, a in calls),
            finish_reason=finish,
        )
        for text, calls, finish in data["choices"]
    )
    prompt, completion = data["usage"]
    usage = Usage(prompt_tokens=prompt, completion_tokens=completion)
    return LMResponse(choices=choices, usage=usage, model=data["model"], cached=True)


def _error_detail(text: str) -> str:
    """The server's error message from an OpenAI-style error body, else the body's start."""
    try:
        data = json.loads(text)
        message = data["error"]["message"] if isinstance(data["error"], dict) else data["error"]
        return str(message)[:300]
    except (ValueError, KeyError, TypeError):
        return text[:300].strip() or "(empty body)"


def _retry_after(headers: httpx.Headers) -> float | None:
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
