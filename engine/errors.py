"""Errors raised by the rhizome engine.

Every error derives from :class:`RhizomeError` and from the built-in it most
resembles, so ``except ValueError`` keeps working for callers who do not know
rhizome::

    RhizomeError
    ├── SignatureError(ValueError)      a signature string or class is malformed
    ├── GraphError(ValueError)          a graph is wired wrongly (named node, valid options)
    ├── ParseError(ValueError)          an LM reply did not parse into the signature's fields
    ├── ConfigError(ValueError)         missing or contradictory configuration (no LM, bad key)
    ├── SaveError(ValueError)           a saved program cannot be loaded onto this graph
    ├── NodeError(RuntimeError)         a node failed while running (carries node name and kind)
    ├── SpendLimitError(RuntimeError)   a spend meter's limit refused an LM request
    │   └── NodeTimeoutError(TimeoutError)
    └── LMError(RuntimeError)           the LM endpoint could not give an answer
        ├── LMStatusError               a non-retryable HTTP status, or retries exhausted
        ├── LMConnectionError           connection failures after all retries
        ├── LMTimeoutError(TimeoutError)
        └── LMReplyError                a reply that is not a valid chat completion
"""

from __future__ import annotations

from typing import Any

__all__ = (
    "ConfigError",
    "GraphError",
    "LMConnectionError",
    "LMError",
    "LMReplyError",
    "LMStatusError",
    "LMTimeoutError",
    "NodeError",
    "NodeTimeoutError",
    "ParseError",
    "RhizomeError",
    "SaveError",
    "SignatureError",
    "SpendLimitError",
    "describe",
)


class RhizomeError(Exception):
    """Base class of every error rhizome raises on purpose."""


class SignatureError(RhizomeError, ValueError):
    """A signature string or class cannot be understood."""


class GraphError(RhizomeError, ValueError):
    """A graph is built or wired incorrectly."""


class ConfigError(RhizomeError, ValueError):
    """Configuration is missing or contradictory."""


class SaveError(RhizomeError, ValueError):
    """A saved program is malformed or does not fit the graph it is loaded onto."""


class ParseError(RhizomeError, ValueError):
    """An LM reply could not be parsed into the expected fields.

    Attributes:
        raw: The raw reply text that failed to parse.
        field: The field that was missing or invalid, when known.
    """

    def __init__(self, message: str, *, raw: str, field: str | None = None) -> None:
        super().__init__(message)
        self.raw = raw
        self.field = field


class NodeError(RhizomeError, RuntimeError):
    """A node raised while running; the original error is the ``__cause__``.

    Attributes:
        node: The node's name in its graph.
        kind: The node's kind (``"Predict"``, ``"Retrieve"`` ...).
    """

    def __init__(self, message: str, *, node: str, kind: str) -> None:
        super().__init__(f"node {node!r} ({kind}) failed: {message}")
        self.node = node
        self.kind = kind


class NodeTimeoutError(NodeError, TimeoutError):
    """A node ran past its time limit."""


class LMError(RhizomeError, RuntimeError):
    """The LM endpoint could not produce an answer.

    Attributes:
        attempts: How many HTTP attempts were made before giving up.
    """

    def __init__(self, message: str, *, attempts: int = 1) -> None:
        super().__init__(message)
        self.attempts = attempts


class LMStatusError(LMError):
    """The endpoint answered with an error status.

    Attributes:
        status: The HTTP status code of the last attempt.
        body: The start of the last response body.
    """

    def __init__(self, message: str, *, status: int, body: str = "", attempts: int = 1) -> None:
        super().__init__(message, attempts=attempts)
        self.status = status
        self.body = body


class LMConnectionError(LMError):
    """The endpoint could not be reached."""


class SpendLimitError(RhizomeError, RuntimeError):
    """A spend meter's limit (an optimizer's budget) refused to send another LM request.

    Raised before the request is sent, so the limit is never exceeded; an
    optimizer that meets it stops and reports ``stopped="budget"``.
    """


class LMTimeoutError(LMError, TimeoutError):
    """The endpoint did not answer within the timeout."""


class LMReplyError(LMError):
    """The endpoint answered 200 but the body is not a usable chat completion."""


def describe(exc: BaseException) -> dict[str, Any]:
    """Summarise an exception as plain JSON-ready data for traces and results."""
    out: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc)}
    for attr in ("node", "kind", "field", "status", "attempts"):
        value = getattr(exc, attr, None)
        if value is not None:
            out[attr] = value
    if exc.__cause__ is not None:
        out["cause"] = {"type": type(exc.__cause__).__name__, "message": str(exc.__cause__)}
    return out
