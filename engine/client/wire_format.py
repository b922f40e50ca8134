"""The OpenAI chat-completions wire format: request bodies, replies, cached replies.

The pydantic models say what crosses the wire. The client builds request
bodies as plain dicts (:func:`request_body`) and reads the common reply with
:func:`fast_parse`, because a model on that hot path costs more than it
checks; anything unusual falls back to :class:`ChatCompletion`, which parses it
or says what is wrong. :func:`encode_cached` and :func:`decode_cached` are the
compact form a reply takes in the response cache.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict

from rhizome.engine.client.protocol import Choice, LMRequest, LMResponse, ToolCall, Usage
from rhizome.engine.errors import ConfigError

__all__ = (
    "ChatCompletion",
    "ChatRequest",
    "WireChoice",
    "WireFunction",
    "WireMessage",
    "WireToolCall",
    "WireUsage",
    "decode_cached",
    "dumps",
    "encode_cached",
    "error_detail",
    "fast_parse",
    "read_completion",
    "request_body",
)


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
    stream: bool | None = None
    stream_options: dict[str, Any] | None = None


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


# ---- requests -------------------------------------------------------------


def request_body(
    model: str, request: LMRequest, temperature: float | None, max_tokens: int | None
) -> dict[str, Any]:
    """The body of ``request`` as a dict; ``temperature``/``max_tokens`` fill unset ones.

    Raises:
        ConfigError: ``request.n`` is below 1.
    """
    if request.n < 1:
        raise ConfigError(f"LMRequest.n must be at least 1, got {request.n}")
    body: dict[str, Any] = {"model": model, "messages": list(request.messages)}
    temperature = temperature if request.temperature is None else request.temperature
    if temperature is not None:
        body["temperature"] = temperature
    max_tokens = max_tokens if request.max_tokens is None else request.max_tokens
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


def dumps(body: dict[str, Any]) -> bytes:
    """``body`` as compact UTF-8 JSON in the order it was built: the bytes sent and cached.

    Key order is kept, never sorted: a JSON schema's property order is the order
    a server that decodes with a grammar makes the model write the fields in
    (``reasoning`` before ``answer``), and a tool's parameters reach the model in
    the order its signature declares them. The same program builds the same dicts
    in the same order, so the bytes (and the cache key made from them) are stable.

    orjson writes the common body; what it refuses (integer dict keys, integers
    beyond 64 bits) goes through the standard library, which writes the same
    form for everything orjson accepts.

    Raises:
        ConfigError: The body holds something JSON cannot carry.
    """
    try:
        return orjson.dumps(body)
    except TypeError:
        pass
    try:
        text = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"the LM request is not JSON-serialisable ({exc}); messages, tools and "
            "response_format must hold only str, numbers, bools, None, lists and dicts"
        ) from exc
    return text.encode()


# ---- replies --------------------------------------------------------------


def fast_parse(content: bytes, n: int) -> tuple[str, tuple[Choice, ...], Usage] | None:
    """The common reply (text choices, usage) read without pydantic; None for anything else.

    Anything unusual (tool calls, odd types, missing fields, too few choices)
    returns None, and the pydantic models then parse it or say what is wrong.
    """
    try:
        data = orjson.loads(content)
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


def read_completion(completion: ChatCompletion, n: int) -> tuple[str, tuple[Choice, ...], Usage]:
    """The model, the first ``n`` choices (by index when ``n > 1``) and usage of a reply.

    The caller has checked that ``completion`` holds at least ``n`` choices.
    """
    wires = sorted(completion.choices, key=lambda c: c.index) if n > 1 else completion.choices
    choices = tuple(_choice(c) for c in wires[:n])
    usage = Usage()
    if completion.usage is not None:
        usage = Usage(
            prompt_tokens=completion.usage.prompt_tokens,
            completion_tokens=completion.usage.completion_tokens,
        )
    return completion.model, choices, usage


def _choice(wire: WireChoice) -> Choice:
    calls = tuple(
        ToolCall(id=c.id, name=c.function.name, arguments=c.function.arguments)
        for c in wire.message.tool_calls or ()
    )
    text = wire.message.content or ""
    return Choice(text=text, tool_calls=calls, finish_reason=wire.finish_reason)


def error_detail(text: str) -> str:
    """The server's error message from an OpenAI-style error body, else the body's start."""
    try:
        data = json.loads(text)
        message = data["error"]["message"] if isinstance(data["error"], dict) else data["error"]
        return str(message)[:300]
    except (ValueError, KeyError, TypeError):
        return text[:300].strip() or "(empty body)"


# ---- cached replies -------------------------------------------------------


def encode_cached(response: LMResponse) -> str:
    """``response`` as the compact JSON kept in the response cache."""
    choices = [
        [c.text, [[t.id, t.name, t.arguments] for t in c.tool_calls], c.finish_reason]
        for c in response.choices
    ]
    usage = [response.usage.prompt_tokens, response.usage.completion_tokens]
    return json.dumps({"choices": choices, "usage": usage, "model": response.model})


def decode_cached(value: str) -> LMResponse:
    """The reply :func:`encode_cached` wrote, marked cached.

    Raises:
        ValueError, KeyError, TypeError, IndexError: ``value`` is not such a reply.
    """
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
