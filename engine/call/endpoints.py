"""What the run has learned about each LM endpoint: does it take structured output?

A server that answers a request carrying ``response_format`` with HTTP 400 or
422, and then answers the same request without it, is remembered as refusing
structured output: its later requests go without ``response_format`` (the
prompt still asks for the JSON object) and one warning is logged. A server that
answers such a request is remembered as accepting. Until one or the other is
known, schema requests to an endpoint go one at a time per event loop
(:func:`probe_lock`), so a refusing server sees one refused request, not a burst.

An endpoint is the LM's kind, model name and base URL. The memory is
process-wide; :func:`effective_capabilities` shows it as the LM's capabilities
with ``json_schema`` off, and :func:`forget` clears it (a server upgraded in
place, or tests).
"""

from __future__ import annotations

import dataclasses
import logging
import threading

import anyio
from anyio.lowlevel import RunVar

from rhizome.engine.client.protocol import LM, Capabilities, LMRequest
from rhizome.engine.errors import LMStatusError

__all__ = (
    "REFUSAL_STATUSES",
    "effective_capabilities",
    "forget",
    "probe_lock",
    "refused",
    "remember_accepted",
    "remember_refusal",
    "structured_known",
    "without_refused_schema",
)

logger = logging.getLogger("rhizome.predictor")

REFUSAL_STATUSES = frozenset({400, 422})
"""Statuses that, to a request carrying ``response_format``, may mean "not supported"."""

_Key = tuple[str, str, object]
_REFUSED: set[_Key] = set()
_STRUCTURED_OK: set[_Key] = set()
_LOCK = threading.Lock()
_PROBE_LOCKS: RunVar[dict[_Key, anyio.Lock]] = RunVar("rhizome_schema_probes")


def _endpoint(lm: LM) -> _Key:
    """What identifies an LM endpoint: its kind, model name and URL (else the object)."""
    return (type(lm).__qualname__, lm.name, getattr(lm, "base_url", None) or id(lm))


def remember_refusal(lm: LM, error: LMStatusError) -> None:
    """Remember that ``lm``'s endpoint refused ``response_format`` (logged once)."""
    key = _endpoint(lm)
    with _LOCK:
        if key in _REFUSED:
            return
        _REFUSED.add(key)
        _STRUCTURED_OK.discard(key)
    where = getattr(lm, "base_url", "") or "its server"
    logger.warning(
        "LM %r at %s refused structured output (HTTP %d: %s); its requests go without "
        "response_format from now on, the prompt still asks for the JSON object",
        lm.name,
        where,
        error.status,
        error.body[:200] or str(error)[:200],
    )


def remember_accepted(lm: LM) -> None:
    """Remember that ``lm``'s endpoint answered a request carrying ``response_format``."""
    key = _endpoint(lm)
    with _LOCK:
        if key not in _REFUSED:
            _STRUCTURED_OK.add(key)


def structured_known(lm: LM) -> bool:
    """True once ``lm``'s endpoint has accepted or refused a ``response_format``."""
    key = _endpoint(lm)
    return key in _STRUCTURED_OK or key in _REFUSED


def refused(lm: LM) -> bool:
    """True when ``lm``'s endpoint has refused structured output in this process."""
    return bool(_REFUSED) and _endpoint(lm) in _REFUSED


def probe_lock(lm: LM) -> anyio.Lock:
    """The running event loop's lock that lets one schema request at a time probe ``lm``."""
    try:
        locks = _PROBE_LOCKS.get()
    except LookupError:
        locks = {}
        _PROBE_LOCKS.set(locks)
    return locks.setdefault(_endpoint(lm), anyio.Lock())


def without_refused_schema(lm: LM, request: LMRequest) -> LMRequest:
    """``request`` without ``response_format`` when ``lm``'s endpoint refused it."""
    if request.response_format is None or not refused(lm):
        return request
    return dataclasses.replace(request, response_format=None)


def effective_capabilities(lm: LM) -> Capabilities:
    """``lm.capabilities`` as this process has found them: no ``json_schema`` once refused."""
    caps = lm.capabilities
    return dataclasses.replace(caps, json_schema=False) if refused(lm) else caps


def forget(lm: LM | None = None) -> None:
    """Forget what was learned about ``lm``'s endpoint (every endpoint when None)."""
    with _LOCK:
        if lm is None:
            _REFUSED.clear()
            _STRUCTURED_OK.clear()
        else:
            _REFUSED.discard(_endpoint(lm))
            _STRUCTURED_OK.discard(_endpoint(lm))
