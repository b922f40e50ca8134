"""Running a predictor: the one place a predictor's LM call happens.

:func:`run_predictor` renders the call with the predictor's adapter
(:mod:`rhizome.engine.call.adapters`), sends it, parses the reply and logs an
:class:`LMCall` into the current node record for every request. When the reply
cannot be used it recovers in a fixed order, each step noted in the trace: a
server refusing ``response_format`` gets the request without it (remembered
per endpoint), a reply cut by the token limit is asked for again with a larger
limit, a reply that does not parse gets one repair attempt, and a JSON reply
without a schema behind it gets one last try in the tagged-text format.

Every node's LM call comes through here, agents too: with ``tools=`` (a
:class:`ToolUse`) the request also offers native function calling, and each
sample is a :class:`Sample` holding either the parsed fields or the tool calls
the model made. Asking for ``n`` samples from an LM whose capabilities say it
cannot sample ``n`` per request is fanned out here, and only here, into ``n``
one-sample requests (see :meth:`_Call._complete`).
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, overload

import anyio

from rhizome.engine import events
from rhizome.engine.call.adapters import JSONAdapter, TextAdapter, default_adapter
from rhizome.engine.call.endpoints import (
    REFUSAL_STATUSES,
    probe_lock,
    remember_accepted,
    remember_refusal,
    structured_known,
    without_refused_schema,
)
from rhizome.engine.call.field_stream import streamed_complete
from rhizome.engine.call.signature import Signature
from rhizome.engine.client.protocol import LM, Choice, LMRequest, LMResponse, ToolCall, Usage
from rhizome.engine.context import resolve_lm, settings
from rhizome.engine.errors import LMStatusError, ParseError, SignatureError, SpendLimitError
from rhizome.engine.events import LMCallFinished
from rhizome.engine.trace import LMCall, current_record, log_call

if TYPE_CHECKING:
    from rhizome.engine.call.adapters import Adapter, RenderedPrompt
    from rhizome.engine.call.predictor import Predictor

__all__ = ("Sample", "ToolUse", "run_predictor")


LENGTH_RETRY_FACTOR = 2
"""A reply cut by its token limit is asked for once more with this many times the limit."""

logger = logging.getLogger("rhizome.predictor")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ToolUse:
    """Native function calling offered with a predictor call (``run_predictor(tools=...)``).

    Attributes:
        tools: OpenAI function definitions, sent as the request's ``tools``.
        read: The signature's output fields for a reply that called tools, given
            that choice and the adapter in use (for the thought in its text).
            They are the sample's ``outputs`` and the logged call's, so demos cut
            from a trace look alike whether the model acted by text or by call.
        choice: The request's ``tool_choice``; None leaves it to the server.
        hint: Text added to the last user message (and to a repair), telling
            the model it may call the tools; empty adds nothing.
        turns: Messages sent after the prompt: the model's last turn that
            called tools (an assistant message with ``tool_calls``) and one
            ``tool`` message per call, carrying its ``tool_call_id``.
    """

    tools: tuple[dict[str, Any], ...]
    read: Callable[[Choice, Adapter], dict[str, Any]]
    choice: str | dict[str, Any] | None = None
    hint: str = ""
    turns: tuple[dict[str, Any], ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class Sample:
    """One sample of a predictor call made with tools.

    Attributes:
        outputs: The signature's output fields: parsed from the reply text, or,
            when the model called tools, what :attr:`ToolUse.read` made of it.
        tool_calls: The function calls the model made, in order; empty when it
            answered in text.
    """

    outputs: dict[str, Any]
    tool_calls: tuple[ToolCall, ...] = ()


@overload
async def run_predictor(
    predictor: Predictor, inputs: Mapping[str, Any], n: int = 1, *, tools: None = None
) -> list[dict[str, Any]]: ...


@overload
async def run_predictor(
    predictor: Predictor, inputs: Mapping[str, Any], n: int = 1, *, tools: ToolUse
) -> list[Sample]: ...


async def run_predictor(
    predictor: Predictor, inputs: Mapping[str, Any], n: int = 1, *, tools: ToolUse | None = None
) -> list[dict[str, Any]] | list[Sample]:
    """Make ``predictor``'s LM call for ``inputs`` and return the samples that parsed.

    One logical call may take several requests, each logged as an
    :class:`LMCall` (``attempt`` 0, 1, ...) with a ``note`` saying why:

    1. The first request. A server that refuses ``response_format`` (HTTP 400 or
       422) gets the same request without it: the prompt already asks for the
       JSON object. The refusal is remembered per LM endpoint and logged once;
       later calls send no schema there.
    2. A reply cut by the token limit (``finish_reason="length"``) that does not
       parse is asked for again once with ``LENGTH_RETRY_FACTOR`` times the limit
       (at temperature 0 a repair would reproduce the same cut reply).
    3. A reply that still does not parse gets one repair attempt: the bad reply is
       sent back with a message saying what was wrong, asking for brevity.
    4. When the JSON protocol went without a schema (the server has none) and the
       repair failed too, one last request in the tagged-text protocol.

    With ``tools``, every request also carries the tools (and ``tool_choice``)
    and no ``response_format`` (a schema-constrained decoder could not emit a
    call); a reply that called tools counts as parsed, one with neither a call
    nor readable fields goes through the steps above.

    Args:
        predictor: The predictor: signature, instruction, demos (or its
            ``demo_selector``), LM, adapter, temperature and token limit.
        inputs: Its input values.
        n: Samples wanted.
        tools: Native function calling to offer; the result is then a list of
            :class:`Sample`, else of output-field dicts.

    Raises:
        SignatureError: An input field is missing.
        ConfigError: No LM is bound or set for the run.
        ParseError: No sample parsed, after every attempt above.
        LMError: The LM could not answer.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    call = _Call.start(predictor, inputs, tools)
    demos = await _select_demos(predictor, call.inputs)
    prompt = call.adapter.render(predictor, call.inputs, demos=demos)
    request = LMRequest(
        messages=call.hinted(prompt.messages),
        temperature=predictor.temperature,
        max_tokens=predictor.max_tokens,
        n=n,
        response_format=None if tools else _response_format(prompt, call.lm, predictor.signature),
        tools=tools.tools if tools else None,
        tool_choice=tools.choice if tools else None,
    )
    outcome = await _recover(call, request, await call.attempt(request), demos)
    if isinstance(outcome, _Failed):
        error = outcome.error
        raise ParseError(
            f"predictor {call.path!r}: the reply did not parse, even after a repair attempt "
            f"({call.attempts} attempts): {error}",
            raw=error.raw,
            field=error.field,
        ) from error
    if tools is None:
        return outcome.outputs
    return [Sample(o, c) for o, c in zip(outcome.outputs, outcome.calls, strict=True)]


async def _recover(
    call: _Call, request: LMRequest, outcome: _Parsed | _Failed, demos: list[Any] | None
) -> _Parsed | _Failed:
    """Steps 2 to 4 of :func:`run_predictor`, as far as the outcome needs them."""
    if isinstance(outcome, _Failed) and outcome.cut:
        longer = call.longer(request)
        if longer is not None:
            request = longer
            note = (
                "the reply was cut by the token limit; asked again with "
                f"max_tokens={longer.max_tokens}"
            )
            outcome = await call.attempt(longer, note=note)
    if isinstance(outcome, _Failed):
        outcome = await call.attempt(call.repair_request(request, outcome.error), repair=True)
    if isinstance(outcome, _Failed) and call.may_fall_back(request):
        text = TextAdapter()
        rendered = text.render(call.predictor, call.inputs, demos=demos)
        fallback = dataclasses.replace(
            request, messages=call.hinted(rendered.messages), response_format=None
        )
        note = "the JSON reply did not parse, even repaired; asked again in the tagged-text format"
        outcome = await call.attempt(fallback, note=note, adapter=text)
    return outcome


@dataclasses.dataclass(frozen=True)
class _Failed:
    """No sample of one request parsed: the first error, and whether the limit cut it."""

    error: ParseError
    cut: bool


@dataclasses.dataclass(slots=True)
class _Parsed:
    """The samples of one attempt that parsed; ``calls[i]`` are sample i's tool calls.

    ``calls`` is filled only for a call made with tools.
    """

    outputs: list[dict[str, Any]]
    calls: list[tuple[ToolCall, ...]]


@dataclasses.dataclass(kw_only=True)
class _Call:
    """One logical predictor call: where it logs, which LM and adapter it uses."""

    predictor: Predictor
    path: str
    inputs: dict[str, Any]
    lm: LM
    adapter: Adapter
    tools: ToolUse | None = None
    attempts: int = 0

    @classmethod
    def start(
        cls, predictor: Predictor, inputs: Mapping[str, Any], tools: ToolUse | None = None
    ) -> _Call:
        record = current_record()
        role = predictor.role
        if record is None:
            path = role or "predictor"
        else:
            path = f"{record.node}.{role}" if role else record.node
        values = _checked_inputs(predictor.signature, inputs, path)
        lm = resolve_lm(predictor.lm, node=path)
        adapter = predictor.adapter or default_adapter(lm, predictor.signature)
        return cls(
            predictor=predictor, path=path, inputs=values, lm=lm, adapter=adapter, tools=tools
        )

    def hinted(self, messages: tuple[dict[str, Any], ...]) -> tuple[dict[str, Any], ...]:
        """``messages`` with the tool hint added to the last one, then the tool turns."""
        if self.tools is None:
            return messages
        if self.tools.hint and messages:
            *head, last = messages
            messages = (*head, {**last, "content": _appended(last["content"], self.tools.hint)})
        return (*messages, *self.tools.turns)

    def longer(self, request: LMRequest) -> LMRequest | None:
        """``request`` with ``LENGTH_RETRY_FACTOR`` times its token limit; None if unknown.

        Where the request carries a JSON schema, its text fields get a
        ``maxLength`` that fits the new limit, so a server that decodes with a
        grammar must close them in time (a small model otherwise runs on inside
        its reasoning string); strict mode has no length bounds, so that schema
        goes with ``strict: false``.
        """
        limit = request.max_tokens or getattr(self.lm, "max_tokens", None)
        if not isinstance(limit, int) or limit < 1:
            return None
        limit *= LENGTH_RETRY_FACTOR
        response_format = _bounded(
            _response_format_for(self.lm, request), self.predictor.signature, limit
        )
        return dataclasses.replace(request, max_tokens=limit, n=1, response_format=response_format)

    def repair_request(self, request: LMRequest, error: ParseError) -> LMRequest:
        """The follow-up request: the bad reply, then what was wrong with it."""
        fix = self.adapter.repair_message(self.predictor.signature, error)
        if self.tools is not None and self.tools.hint:
            fix = f"{fix}\n\n{self.tools.hint}"
        messages = (
            *request.messages,
            {"role": "assistant", "content": error.raw},
            {"role": "user", "content": fix},
        )
        return dataclasses.replace(request, messages=messages, n=1)

    def may_fall_back(self, request: LMRequest) -> bool:
        """True when the tagged-text protocol is worth one last try.

        Only for a JSON protocol the predictor did not choose itself, sent
        without a schema the server would enforce.
        """
        return (
            self.predictor.adapter is None
            and isinstance(self.adapter, JSONAdapter)
            and _response_format_for(self.lm, request) is None
        )

    async def attempt(
        self,
        request: LMRequest,
        *,
        note: str = "",
        repair: bool = False,
        adapter: Adapter | None = None,
    ) -> _Parsed | _Failed:
        """Parsed samples of one request, or the first parse error when none parsed."""
        adapter = adapter or self.adapter
        parsed = _Parsed([], [])
        errors: list[ParseError] = []
        cut = False
        number = self.attempts
        self.attempts += 1
        for response, sent, how in await self._complete(
            request, _Entry(number, note, repair, adapter)
        ):
            ok = len(parsed.outputs)
            bad = self._parse(response, adapter, parsed)
            cut = cut or any(c.finish_reason == "length" for c in response.choices)
            entry = _Entry(number, how or note, repair)
            self._log(sent, entry, response=response, outputs=parsed.outputs[ok:], errors=bad)
            errors += bad
        return parsed if parsed.outputs else _Failed(errors[0], cut)

    def _parse(self, response: LMResponse, adapter: Adapter, into: _Parsed) -> list[ParseError]:
        """Add the choices that parse to ``into``; the errors of those that do not."""
        if not response.choices:
            return [ParseError("the LM returned no choices", raw="")]
        bad = []
        for choice in response.choices:
            if self.tools is not None and choice.tool_calls:
                into.outputs.append(self.tools.read(choice, adapter))
                into.calls.append(choice.tool_calls)
                continue
            try:
                into.outputs.append(adapter.parse(self.predictor.signature, choice.text))
            except ParseError as exc:
                if choice.finish_reason == "length":
                    exc = ParseError(
                        f"the reply was cut off by the token limit before it was complete ({exc})",
                        raw=exc.raw,
                        field=exc.field,
                    )
                bad.append(exc)
                continue
            if self.tools is not None:
                into.calls.append(())
        return bad

    async def _complete(
        self, request: LMRequest, entry: _Entry
    ) -> list[tuple[LMResponse, LMRequest, str]]:
        """One request, or ``n`` one-sample requests when the LM cannot sample ``n``.

        This is the one place ``n`` is fanned out, for every LM implementation.
        Sample ``i`` of a call made at ``settings().sample == s`` goes out with
        sample index ``s * n + i`` (as :class:`~rhizome.engine.client.fake.FakeLM`
        numbers the choices of one request), so each has its own cache key, the
        same on every run, and the replies come back in sample order.
        """
        sample = settings().sample
        if request.n == 1 or self.lm.capabilities.n:
            return [await self._send(request, sample, entry)]
        single = dataclasses.replace(request, n=1)
        entry = dataclasses.replace(entry, tokens=False)  # n replies at once: no one text
        results: list[tuple[LMResponse, LMRequest, str] | Exception | None] = [None] * request.n

        async def one(index: int) -> None:
            try:
                results[index] = await self._send(single, sample * request.n + index, entry)
            except Exception as exc:
                results[index] = exc

        async with anyio.create_task_group() as group:
            for index in range(request.n):
                group.start_soon(one, index)
        done = []
        for result in results:
            if isinstance(result, Exception):
                raise result
            if result is not None:
                done.append(result)
        return done

    async def _send(
        self, request: LMRequest, sample: int, entry: _Entry
    ) -> tuple[LMResponse, LMRequest, str]:
        """The reply, the request that got it, and a note when it was changed on the way.

        Until an endpoint has answered one request carrying ``response_format``,
        such requests go one at a time (per event loop), so a server that refuses
        them sees one refused request, not a burst; see :func:`run_predictor`.
        """
        request = without_refused_schema(self.lm, request)
        if request.response_format is not None and not structured_known(self.lm):
            async with probe_lock(self.lm):
                if not structured_known(self.lm):
                    return await self._send_structured(request, sample, entry)
            request = without_refused_schema(self.lm, request)
        return await self._send_structured(request, sample, entry)

    async def _send_structured(
        self, request: LMRequest, sample: int, entry: _Entry
    ) -> tuple[LMResponse, LMRequest, str]:
        started = time.perf_counter()
        try:
            response = await self._ask(request, sample, entry)
        except SpendLimitError:
            raise  # refused by an optimizer's budget before sending: not a call to log
        except LMStatusError as exc:
            self._log(request, entry, error=f"{type(exc).__name__}: {exc}", started=started)
            if request.response_format is None or exc.status not in REFUSAL_STATUSES:
                raise
            plain = dataclasses.replace(request, response_format=None)
            started = time.perf_counter()
            try:
                response = await self._ask(plain, sample, entry)
            except SpendLimitError:
                raise
            except Exception as again:
                self._log(plain, entry, error=f"{type(again).__name__}: {again}", started=started)
                raise
            remember_refusal(self.lm, exc)
            return response, plain, "the server refused response_format; sent again without it"
        except Exception as exc:
            self._log(request, entry, error=f"{type(exc).__name__}: {exc}", started=started)
            raise
        if request.response_format is not None:
            remember_accepted(self.lm)
        return response, request, ""

    async def _ask(self, request: LMRequest, sample: int, entry: _Entry) -> LMResponse:
        """The LM's reply; reported (and streamed, when it can be) while a run is listened to."""
        if not events.active():
            return await self.lm.complete(request, sample=sample)
        adapter = entry.adapter or self.adapter
        return await streamed_complete(
            self.lm,
            request,
            sample=sample,
            path=self.path,
            attempt=entry.number,
            note=entry.note,
            fields=list(self.predictor.signature.outputs) if entry.tokens else None,
            json=isinstance(adapter, JSONAdapter),
        )

    def _log(
        self,
        request: LMRequest,
        entry: _Entry,
        *,
        response: LMResponse | None = None,
        outputs: Sequence[dict[str, Any]] = (),
        errors: Sequence[ParseError] = (),
        error: str | None = None,
        started: float = 0.0,
    ) -> None:
        if error is None and not outputs and errors:
            error = f"ParseError: {errors[0]}"
        latency = response.latency if response else time.perf_counter() - started
        choice = response.choices[0] if response and response.choices else None
        if events.active():
            events.emit(_finished_event(self.path, entry.number, response, error, latency))
        log_call(
            LMCall(
                predictor=self.path,
                model=(response.model if response else "") or self.lm.name,
                started=time.time() - latency,
                inputs=dict(self.inputs),
                outputs=dict(outputs[0]) if outputs else {},
                messages=list(request.messages),
                reply=_reply_text(choice),
                usage=response.usage if response else Usage(),
                cached=response.cached if response else False,
                latency=latency,
                cost=response.cost if response else 0.0,
                error=error,
                attempt=entry.number,
                finish_reason=choice.finish_reason if choice else None,
                repair=entry.repair,
                note=entry.note,
            )
        )


def _appended(content: str | list[dict[str, Any]], text: str) -> str | list[dict[str, Any]]:
    """Message content with a paragraph added: to the text, or as a last text part."""
    if isinstance(content, str):
        return f"{content}\n\n{text}"
    return [*content, {"type": "text", "text": f"\n\n{text}"}]


@dataclasses.dataclass(frozen=True, slots=True)
class _Entry:
    """What every :class:`LMCall` of one attempt shares (and the adapter it reads with)."""

    number: int
    note: str
    repair: bool
    adapter: Adapter | None = None
    tokens: bool = True  # False for the one-sample requests of a fanned-out call


def _finished_event(
    path: str, attempt: int, response: LMResponse | None, error: str | None, latency: float
) -> LMCallFinished:
    usage = response.usage if response is not None else Usage()
    return LMCallFinished(
        path=path,
        model=response.model if response is not None else "",
        attempt=attempt,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        cached=response.cached if response is not None else False,
        latency=latency,
        error=error,
    )


def _reply_text(choice: Choice | None) -> str:
    """A reply as logged: its text, then the tool calls it made as a JSON object."""
    if choice is None:
        return ""
    if not choice.tool_calls:
        return choice.text
    listed = [{"name": c.name, "arguments": c.arguments} for c in choice.tool_calls]
    calls = json.dumps({"tool_calls": listed})
    return f"{choice.text}\n{calls}" if choice.text else calls


CHARS_PER_TOKEN = 3
"""A cautious estimate of text per token, for the length bounds of a retried schema."""


def _bounded(
    response_format: dict[str, Any] | None, signature: Signature, limit: int
) -> dict[str, Any] | None:
    """``response_format`` with a ``maxLength`` on each text output sharing ``limit`` tokens.

    Four fifths of the limit go to the text fields, split evenly; the rest is
    left for the JSON around them and the other fields.
    """
    if response_format is None or response_format.get("type") != "json_schema":
        return response_format
    texts = [name for name, field in signature.outputs.items() if field.annotation is str]
    spec = response_format.get("json_schema", {})
    properties = spec.get("schema", {}).get("properties", {})
    if not texts or not all(name in properties for name in texts):
        return response_format
    share = max(16, limit * CHARS_PER_TOKEN * 4 // 5 // len(texts))
    schema = copy.deepcopy(spec["schema"])
    for name in texts:
        schema["properties"][name]["maxLength"] = share
    return {**response_format, "json_schema": {**spec, "schema": schema, "strict": False}}


def _response_format_for(lm: LM, request: LMRequest) -> dict[str, Any] | None:
    """The ``response_format`` that ``request`` really goes out with to ``lm``."""
    return without_refused_schema(lm, request).response_format


def _checked_inputs(signature: Signature, inputs: Mapping[str, Any], path: str) -> dict[str, Any]:
    """The signature's inputs taken from ``inputs``, each checked against its field's type.

    Values are converted the lenient way :mod:`rhizome.engine.graphs.typecheck` describes
    (``"3"`` for an ``int``, a tuple for a list); text for a ``str`` field, nearly
    every input, costs one ``isinstance`` check.

    Raises:
        SignatureError: An input is missing, or its value is not of the field's
            type (the message names the predictor, the field and both types).
    """
    missing = [name for name in signature.inputs if name not in inputs]
    if missing:
        names = ", ".join(repr(m) for m in missing)
        expected = ", ".join(signature.inputs) or "(none)"
        raise SignatureError(
            f"predictor {path!r} is missing input {names}; its inputs are: {expected}"
        )
    values: dict[str, Any] = {}
    for name, field in signature.inputs.items():
        value = inputs[name]
        if field.annotation is not str or not isinstance(value, str):
            try:
                value = field.convert(value)
            except TypeError as exc:
                raise SignatureError(
                    f"predictor {path!r}: input {name!r} expects {field.type_name}, {exc}; "
                    f"pass a {field.type_name}, or declare the value's type in the "
                    f"signature (e.g. '{name}: {type(value).__name__}')"
                ) from None
        values[name] = value
    return values


def _response_format(prompt: RenderedPrompt, lm: LM, signature: Signature) -> dict[str, Any] | None:
    """The adapter's schema if the server honours it; plain JSON mode if it reorders keys.

    An endpoint that refused structured output is handled in one place, where
    requests are sent (:meth:`_Call._send`), not here.
    """
    caps = lm.capabilities
    if prompt.response_format is None or not caps.json_schema:
        return None
    if not caps.json_key_order and len(signature.outputs) > 1:
        return {"type": "json_object"}
    return prompt.response_format


async def _select_demos(predictor: Predictor, inputs: Mapping[str, Any]) -> list[Any] | None:
    """Per-input demos from the predictor's ``demo_selector`` (kNN), else None for its own."""
    selector = predictor.demo_selector
    if selector is None:
        return None
    chosen = selector(dict(inputs))
    return list(await chosen if inspect.isawaitable(chosen) else chosen)
