"""The ASGI layers in front of the served program: metrics, bearer-token auth, body limits.

Each is plain ASGI middleware (no request buffering beyond the size limit, no
``BaseHTTPMiddleware``), so streaming responses and client disconnects pass
through untouched. Errors are answered as ``{"error": {"type", "message"}}``.

API clients never see where the LM server is: a run that failed because the
LM endpoint did (:func:`public_error`) is answered with what happened ("the
language model server failed: HTTP 500") and a request id, while the full
error, URL and upstream body included, goes to the ``rhizome.serving.app`` log under
that id; a trace returned with the result is cleaned the same way
(:func:`public_trace`).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import re
import time
from collections.abc import Iterable
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rhizome.engine.errors import (
    GraphError,
    LMConnectionError,
    LMError,
    LMReplyError,
    LMStatusError,
    LMTimeoutError,
    NodeError,
    NodeTimeoutError,
    describe,
)
from rhizome.serving.metrics import ServeMetrics

__all__ = (
    "AuthMiddleware",
    "BodyLimitMiddleware",
    "MetricsMiddleware",
    "busy_response",
    "error_response",
    "exposure_warning",
    "is_loopback",
    "lm_failure",
    "public_error",
    "public_trace",
    "status_for",
)


logger = logging.getLogger("rhizome.serving.app")

_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
_HIDDEN_URL = "<url hidden>"

ROUTES = frozenset(
    {"/v1/predict", "/v1/batch", "/v1/stream", "/healthz", "/metrics", "/docs", "/openapi.json"}
)
OPEN_PATHS = frozenset({"/healthz", "/docs", "/openapi.json"})
_BODYLESS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})


def error_response(
    status: int, kind: str, message: str, *, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    """The JSON error body every endpoint answers with."""
    return JSONResponse(
        {"error": {"type": kind, "message": message, **extra}}, status_code=status, headers=headers
    )


def busy_response() -> JSONResponse:
    """The 503 a run request gets when every slot is taken and the waiting line is full."""
    return error_response(
        503,
        "busy",
        "the server is at its concurrency limit; retry shortly",
        headers={"Retry-After": "1"},
    )


def lm_failure(exc: BaseException) -> LMError | None:
    """The LM error behind a failed run: ``exc`` itself or one of its causes, if any."""
    seen: BaseException | None = exc
    for _ in range(16):  # nodes wrap the errors of nodes inside them; no chain is this long
        if seen is None or isinstance(seen, LMError):
            return seen
        seen = seen.__cause__
    return None


def public_error(exc: BaseException, request_id: str) -> dict[str, Any]:
    """The error of a failed run as API clients see it, tagged with ``request_id``.

    An LM failure is told in words without its URL, host or upstream body,
    which are logged under the request id instead; other errors are described
    in full (:func:`~rhizome.engine.errors.describe`).
    """
    lm_error = lm_failure(exc)
    if lm_error is None:
        return {**_without_urls(describe(exc), request_id, exc), "request_id": request_id}
    logger.error("request %s: the LM server failed: %s", request_id, exc)
    out: dict[str, Any] = {
        "type": type(lm_error).__name__,
        "message": (
            f"{_lm_summary(lm_error)} (request id {request_id}; the server's log has the details)"
        ),
    }
    for attr in ("node", "kind"):
        if getattr(exc, attr, None) is not None:
            out[attr] = getattr(exc, attr)
    if isinstance(lm_error, LMStatusError):
        out["status"] = lm_error.status
    return {**out, "request_id": request_id}


def _without_urls(described: dict[str, Any], request_id: str, exc: BaseException) -> dict[str, Any]:
    """``described`` with URLs masked in its messages; the unmasked error goes to the log."""
    out = dict(described)
    out["message"] = _URL.sub(_HIDDEN_URL, str(out["message"]))
    if isinstance(out.get("cause"), dict):
        out["cause"] = {**out["cause"], "message": _URL.sub(_HIDDEN_URL, out["cause"]["message"])}
    if out != described:
        logger.error("request %s failed: %s", request_id, exc)
    return out


def _lm_summary(exc: LMError) -> str:
    if isinstance(exc, LMStatusError):
        return f"the language model server failed: HTTP {exc.status}"
    if isinstance(exc, LMTimeoutError):
        return "the language model server did not answer in time"
    if isinstance(exc, LMConnectionError):
        return "the language model server could not be reached"
    if isinstance(exc, LMReplyError):
        return "the language model server sent a reply that is not a chat completion"
    return "the language model server failed"


def public_trace(trace: dict[str, Any], exc: BaseException | None) -> dict[str, Any]:
    """A trace dict fit for API clients: error strings without the LM failure's detail or URLs.

    Where the run failed because the LM endpoint did, that error's text (URL,
    upstream body) is replaced by the words :func:`public_error` uses; any URL
    left in an error string (a tool's, say) is masked.
    """
    lm_error = lm_failure(exc) if exc is not None else None
    detail = str(lm_error) if lm_error is not None else ""
    summary = _lm_summary(lm_error) if lm_error is not None else ""

    def clean(item: dict[str, Any]) -> dict[str, Any]:
        error = item.get("error")
        if not isinstance(error, str):
            return item
        if detail:
            error = error.replace(detail, summary)
        return {**item, "error": _URL.sub(_HIDDEN_URL, error)}

    records = [
        {**clean(r), "calls": [clean(c) for c in r.get("calls", [])]}
        for r in trace.get("records", [])
    ]
    return {**clean(trace), "records": records}


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value)
    return None


class MetricsMiddleware:
    """Count every HTTP request by method, route and status, with its latency."""

    def __init__(self, app: ASGIApp, metrics: ServeMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry: count and time each HTTP request."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        start = time.perf_counter()

        async def observe(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        self.metrics.request_started()
        try:
            await self.app(scope, receive, observe)
        finally:
            route = scope["path"] if scope["path"] in ROUTES else "other"
            elapsed = time.perf_counter() - start
            self.metrics.request_finished(scope["method"], route, status, elapsed)


class AuthMiddleware:
    """Require ``Authorization: Bearer <token>`` on every path but health and docs."""

    def __init__(self, app: ASGIApp, token: str, open_paths: Iterable[str] = OPEN_PATHS) -> None:
        self.app = app
        self._expected = f"Bearer {token}".encode()
        self._open = frozenset(open_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry: refuse requests without the bearer token (open paths excepted)."""
        if scope["type"] != "http" or scope["path"] in self._open:
            await self.app(scope, receive, send)
            return
        given = _header(scope, b"authorization")
        if given is not None and hmac.compare_digest(given, self._expected):
            await self.app(scope, receive, send)
            return
        message = (
            "missing bearer token: send 'Authorization: Bearer <token>'"
            if given is None
            else "invalid bearer token"
        )
        response = error_response(
            401, "unauthorized", message, headers={"WWW-Authenticate": 'Bearer realm="rhizome"'}
        )
        await response(scope, receive, send)


class BodyLimitMiddleware:
    """Refuse request bodies over ``max_bytes`` with 413, declared or streamed."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry: refuse bodies over the size limit with 413."""
        if scope["type"] != "http" or scope["method"] in _BODYLESS:
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._too_large(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._too_large(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(b"".join(chunks), receive), send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(
            413,
            "request_too_large",
            f"the request body is over the {self.max_bytes}-byte limit; send fewer or "
            "smaller examples (the server's --max-body-bytes sets the limit)",
        )
        await response(scope, receive, send)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # later reads wait for the disconnect, as Starlette expects

    return replay


def is_loopback(host: str) -> bool:
    """True when ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str, token: str | None) -> str | None:
    """A warning when the server listens beyond loopback without a token, else None."""
    if token or is_loopback(host):
        return None
    return (
        f"warning: serving on {host} without a token: anyone who can reach this port can "
        "run the program (and spend its LM budget); set RHIZOME_SERVE_TOKEN (or the "
        "variable named by --token-env), or bind to 127.0.0.1"
    )


def status_for(exc: BaseException) -> int:
    """A failed run's HTTP status: 504 timed out, 502 the LM failed, 422 bad input, else 500."""
    cause = exc.__cause__ if isinstance(exc, NodeError) else exc
    if isinstance(exc, NodeTimeoutError | TimeoutError) or isinstance(cause, TimeoutError):
        return 504
    if lm_failure(exc) is not None:
        return 502
    if isinstance(exc, GraphError):
        return 422
    return 500
