"""The LM protocol: what every language-model backend offers the engine.

Requests and replies are plain frozen dataclasses inside the process; the
OpenAI-compatible client turns them into JSON bodies. A backend is anything with
``async complete(request, sample=...)`` plus usage and history accessors — the
real HTTP client (:mod:`rhizome.engine.client.openai`) and the scripted fake used by
logic tests (:mod:`rhizome.engine.client.fake`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

__all__ = (
    "LM",
    "Capabilities",
    "Choice",
    "HistoryEntry",
    "LMRequest",
    "LMResponse",
    "ToolCall",
    "Usage",
    "readable_content",
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ToolCall:
    """A function call the model asked for (native function calling).

    Attributes:
        id: The call id the server assigned, echoed back with the result.
        name: The tool name.
        arguments: The raw JSON text of the arguments, as the model wrote it.
    """

    id: str
    name: str
    arguments: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class LMRequest:
    """One chat-completion request, independent of any wire format.

    Attributes:
        messages: Chat messages, ``{"role": ..., "content": ...}`` dicts.
        temperature: Sampling temperature, or None for the LM's default.
        max_tokens: Completion token limit, or None for the LM's default.
        n: Number of samples wanted from this one request.
        response_format: An OpenAI ``response_format`` object (JSON schema), or None.
        tools: OpenAI ``tools`` definitions for native function calling, or None.
        tool_choice: OpenAI ``tool_choice``, or None.
        stop: Stop sequences.
        seed: A sampling seed, when the server supports one.
        stream: Ask the server to stream the reply (server-sent events); the
            reply is the same, its text reported as it arrives (see
            :mod:`rhizome.engine.events`). Not part of the cache key.
    """

    messages: tuple[dict[str, Any], ...]
    temperature: float | None = None
    max_tokens: int | None = None
    n: int = 1
    response_format: dict[str, Any] | None = None
    tools: tuple[dict[str, Any], ...] | None = None
    tool_choice: str | dict[str, Any] | None = None
    stop: tuple[str, ...] | None = None
    seed: int | None = None
    stream: bool = False


@dataclasses.dataclass(frozen=True, kw_only=True)
class Choice:
    """One sampled completion."""

    text: str
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: str | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class Usage:
    """Token counts of one reply (zero when the server does not report them)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens


@dataclasses.dataclass(frozen=True, kw_only=True)
class LMResponse:
    """A reply: one choice per requested sample, usage, and how it was obtained.

    Attributes:
        choices: The sampled completions, ``len(choices) == request.n``.
        usage: Tokens the server reported (zeros for cache hits are not used:
            a cache hit keeps the original usage and sets ``cached``).
        model: The model name the server reported.
        cached: True when served from the response cache.
        latency: Seconds from send to parsed reply (0 for cache hits).
        cost: Cost in the LM's currency when prices are configured, else 0.
    """

    choices: tuple[Choice, ...]
    usage: Usage = Usage()
    model: str = ""
    cached: bool = False
    latency: float = 0.0
    cost: float = 0.0

    @property
    def text(self) -> str:
        """The first choice's text."""
        return self.choices[0].text if self.choices else ""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Capabilities:
    """What a server supports, so adapters pick the best protocol.

    Attributes:
        json_schema: ``response_format={"type": "json_schema", ...}`` is honoured.
        tools: Native function calling with ``tools``.
        n: More than one sample per request.
        json_key_order: Structured output keeps the schema's property order
            (OpenAI, vLLM and llama.cpp do: rhizome sends properties in the
            signature's order, ``reasoning`` before ``answer``). Set it False
            for a server that reorders them: signatures with several outputs
            then ask for plain JSON mode and the prompt sets the order.
        json_max_outputs: The most output fields a signature may have for the
            JSON protocol to be this model's default; signatures with more use
            the tagged-text protocol (None: no limit). A measured preference,
            not a server limit: the embedded 0.5B model answers one-field
            signatures best under a JSON schema, and chain-of-thought
            (reasoning plus answer) best in tagged text.
        stream: Replies can be streamed (``"stream": true``, server-sent
            events); listened-to runs then report tokens as they arrive.
    """

    json_schema: bool = False
    tools: bool = False
    n: bool = True
    json_key_order: bool = True
    json_max_outputs: int | None = None
    stream: bool = False


@runtime_checkable
class LM(Protocol):
    """A language-model backend.

    Implementations must be safe to share between concurrent tasks; they hold
    the per-endpoint concurrency limit, so every caller shares it.
    """

    @property
    def name(self) -> str:
        """A short readable name (model name, usually)."""
        ...

    @property
    def capabilities(self) -> Capabilities:
        """What the server supports."""
        ...

    async def complete(self, request: LMRequest, *, sample: int = 0) -> LMResponse:
        """Return a reply for ``request``.

        ``sample`` selects which cached sample to use: the same request with a
        different sample index is a different cache key, so callers ask for a
        fresh sample by raising it.
        """
        ...

    def inspect_history(self, n: int = 1) -> Sequence[HistoryEntry]:
        """The last ``n`` calls with their messages and replies, oldest first."""
        ...


@dataclasses.dataclass(frozen=True, kw_only=True)
class HistoryEntry:
    """One remembered call, for :meth:`LM.inspect_history`."""

    request: LMRequest
    response: LMResponse | None
    error: str | None = None
    timestamp: float = 0.0

    def format(self) -> str:
        """The call as readable text: each message, then the reply."""
        lines = []
        for message in self.request.messages:
            lines.append(f"--- {message.get('role', '?')} ---")
            lines.append(readable_content(message.get("content")))
        lines.append("--- reply ---")
        if self.response is not None:
            tag = " (cached)" if self.response.cached else ""
            lines.append(self.response.text + tag)
        else:
            lines.append(f"<error: {self.error}>")
        return "\n".join(lines)


def readable_content(content: Any) -> str:
    """A message's content as text to read: text parts joined, images as a short line.

    Content is a string, or a list of parts (``{"type": "text", ...}``,
    ``{"type": "image_url", ...}``); an image's data URL is shown by its type
    and size, not as thousands of base64 characters.
    """
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return str(content)
    return "".join(_readable_part(part) for part in content)


def _readable_part(part: Any) -> str:
    if not isinstance(part, dict):
        return str(part)
    if part.get("type") == "text":
        return str(part.get("text", ""))
    url = (
        str((part.get("image_url") or {}).get("url", "")) if part.get("type") == "image_url" else ""
    )
    if not url:
        return f"[{part.get('type', 'part')}]"
    if url.startswith("data:"):
        head = url.split(",", 1)[0].removeprefix("data:").split(";")[0]
        return f"[image: {head or 'data'}, {len(url) * 3 // 4 // 1024} KiB]"
    return f"[image: {url}]"
