"""Adapters: turn a predictor and its inputs into chat messages, and replies into fields.

Two protocols ship:

- :class:`TextAdapter` asks for each output field between its own tags::

      <reasoning>
      6 times 7 is 42.
      </reasoning>
      <answer>
      42
      </answer>

  Text fields are written as-is, lists, dicts and models as JSON inside the
  tag, numbers, booleans and choices as a bare word.
- :class:`JSONAdapter` asks for one JSON object keyed by the output fields and,
  on servers that honour it, sends the fields' JSON schema as
  ``response_format``.

``adapter=None`` on a predictor picks :class:`JSONAdapter` when the LM's
capabilities say it honours JSON schemas, else :class:`TextAdapter`.

The system message (instruction, fields, reply format) depends only on the
signature and instruction, so it is built once per pair and cached; demos
follow as user/assistant pairs and the real input comes last, so calls of one
predictor share a long prefix that servers can cache.

:func:`run_predictor` is the one place an LM call of a predictor happens:
render, call, parse, one repair attempt, and an :class:`LMCall` logged into the
current node record for every request.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
import json
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import anyio
import pydantic

from rhizome.engine.context import resolve_lm, settings
from rhizome.engine.errors import ParseError, SignatureError
from rhizome.engine.lm import LM, Capabilities, LMRequest, LMResponse, Usage
from rhizome.engine.parsing import (
    describe_type,
    format_input,
    format_value,
    parse_json,
    parse_tagged,
)
from rhizome.engine.signature import Field, Signature
from rhizome.engine.trace import LMCall, current_record, jsonable, log_call

if TYPE_CHECKING:
    from rhizome.engine.predictor import Predictor

Message = dict[str, Any]


@dataclasses.dataclass(frozen=True, kw_only=True)
class RenderedPrompt:
    """What an adapter produces for one call.

    Attributes:
        messages: The chat messages to send.
        response_format: An OpenAI ``response_format`` to send when the LM
            honours JSON schemas, else None.
    """

    messages: tuple[Message, ...]
    response_format: dict[str, Any] | None = None


@runtime_checkable
class Adapter(Protocol):
    """How a predictor's call is written as chat messages and its reply read back."""

    def render(
        self,
        predictor: Predictor,
        inputs: Mapping[str, Any],
        *,
        demos: Sequence[Mapping[str, Any]] | None = None,
    ) -> RenderedPrompt:
        """Messages (and request extras) for ``inputs``; ``demos=None`` uses the predictor's."""
        ...

    def parse(self, signature: Signature, text: str) -> dict[str, Any]:
        """Typed output fields from a reply, or :class:`ParseError` naming the field."""
        ...

    def repair_message(self, signature: Signature, error: ParseError) -> str:
        """A user message telling the model what was wrong and the format to use."""
        ...


@dataclasses.dataclass(frozen=True)
class _Format:
    """How replies of one signature must look: the full rules and a one-line reminder."""

    rules: str
    reminder: str


class _ChatAdapter:
    """Rendering shared by both protocols; subclasses say how outputs are written."""

    def render(
        self,
        predictor: Predictor,
        inputs: Mapping[str, Any],
        *,
        demos: Sequence[Mapping[str, Any]] | None = None,
    ) -> RenderedPrompt:
        """Messages for ``inputs``: system, demo pairs, then the real input."""
        signature = predictor.signature
        messages: list[Message] = [
            {"role": "system", "content": system_prompt(self, signature, predictor.instruction)}
        ]
        for demo in predictor.demos if demos is None else demos:
            messages.extend(self._demo_messages(signature, demo))
        reminder = reply_format(self, signature).reminder
        body = _sections(signature.inputs.values(), inputs)
        messages.append({"role": "user", "content": f"{body}\n\n{reminder}"})
        return RenderedPrompt(
            messages=tuple(messages), response_format=self.response_format(signature)
        )

    def repair_message(self, signature: Signature, error: ParseError) -> str:
        """Say what was wrong with the last reply and restate the reply format."""
        return (
            f"Your reply could not be used: {error}\n"
            f"Answer again, following this format exactly.\n\n"
            f"{reply_format(self, signature).rules}"
        )

    def response_format(self, signature: Signature) -> dict[str, Any] | None:
        """The ``response_format`` to request, if this protocol uses one."""
        return None

    def format_outputs(self, signature: Signature, values: Mapping[str, Any]) -> str:
        """An assistant reply holding ``values`` (demos, repairs)."""
        raise NotImplementedError

    def output_rules(self, signature: Signature) -> _Format:
        """The reply format for ``signature`` (built once through :func:`reply_format`)."""
        raise NotImplementedError

    def _demo_messages(self, signature: Signature, demo: Mapping[str, Any]) -> list[Message]:
        outputs = {k: demo[k] for k in signature.outputs if k in demo}
        if not outputs:
            return []
        return [
            {"role": "user", "content": _sections(signature.inputs.values(), demo)},
            {"role": "assistant", "content": self.format_outputs(signature, outputs)},
        ]


@dataclasses.dataclass(frozen=True)
class TextAdapter(_ChatAdapter):
    """Each output field between ``<name>`` and ``</name>`` tags, in signature order."""

    def format_outputs(self, signature: Signature, values: Mapping[str, Any]) -> str:
        """The reply as tagged sections, skipping fields absent from ``values``."""
        return _sections(signature.outputs.values(), values, inputs=False)

    def output_rules(self, signature: Signature) -> _Format:
        """Tag-per-field rules with a placeholder saying how each value is written."""
        outputs = signature.outputs.values()
        example = "\n".join(
            f"<{f.name}>\n{{{describe_type(f.annotation)}}}\n</{f.name}>" for f in outputs
        )
        tags = ", ".join(f"<{f.name}>" for f in outputs)
        rules = (
            "Reply format: write every output field between its own opening and closing "
            "tag, in this order, with nothing outside the tags. Lists, dicts and objects "
            "are JSON inside the tag.\n\n" + example
        )
        return _Format(rules, f"Reply with {tags}, each closed by its end tag.")

    def parse(self, signature: Signature, text: str) -> dict[str, Any]:
        """Read each output's tagged section and coerce it to the field's type."""
        return parse_tagged(signature.outputs, text)


@dataclasses.dataclass(frozen=True)
class JSONAdapter(_ChatAdapter):
    """One JSON object keyed by the output fields; sends a JSON schema where supported."""

    def format_outputs(self, signature: Signature, values: Mapping[str, Any]) -> str:
        """The reply as a JSON object, skipping fields absent from ``values``."""
        present = {k: jsonable(values[k]) for k in signature.outputs if k in values}
        return json.dumps(present, ensure_ascii=False, indent=2)

    def output_rules(self, signature: Signature) -> _Format:
        """JSON-object rules with a placeholder saying how each value is written."""
        lines = [
            f'  "{f.name}": <{describe_type(f.annotation)}>' for f in signature.outputs.values()
        ]
        keys = ", ".join(signature.outputs)
        rules = (
            "Reply format: a single JSON object with exactly these keys, in this order, "
            "and nothing before or after it. Text values are JSON strings.\n\n"
            "{\n" + ",\n".join(lines) + "\n}"
        )
        return _Format(rules, f"Reply with one JSON object with the keys: {keys}.")

    def response_format(self, signature: Signature) -> dict[str, Any] | None:
        """``{"type": "json_schema", ...}`` built from the output fields.

        Built once per signature and shared by every request (it is only
        serialised): copy it before changing it.
        """
        return _json_response_format(signature)

    def parse(self, signature: Signature, text: str) -> dict[str, Any]:
        """Read the reply's JSON object and coerce each output to the field's type."""
        return parse_json(signature.outputs, text)


def default_adapter(lm: LM) -> Adapter:
    """JSONAdapter for LMs that honour JSON schemas, else TextAdapter."""
    return JSONAdapter() if lm.capabilities.json_schema else TextAdapter()


# ---------------------------------------------------------------- cached templates


@functools.lru_cache(maxsize=512)
def reply_format(adapter: _ChatAdapter, signature: Signature) -> _Format:
    """The reply format of ``signature`` under ``adapter`` (built once per pair)."""
    return adapter.output_rules(signature)


@functools.lru_cache(maxsize=512)
def system_prompt(adapter: _ChatAdapter, signature: Signature, instruction: str) -> str:
    """The system message: instruction, fields and reply format (built once per triple)."""
    ins = "\n".join(_field_line(f) for f in signature.inputs.values()) or "(none)"
    outs = "\n".join(_field_line(f) for f in signature.outputs.values())
    return (
        f"{instruction.strip()}\n\n"
        f"Inputs, each given between its own tags:\n{ins}\n\n"
        f"Outputs:\n{outs}\n\n"
        f"{reply_format(adapter, signature).rules}"
    )


@functools.lru_cache(maxsize=512)
def outputs_schema(signature: Signature) -> dict[str, Any]:
    """A JSON schema of an object holding the output fields (all required, no others).

    The result is cached and shared: copy it before changing it.
    """
    spec: dict[str, Any] = {
        f"field_{i}": (f.annotation, pydantic.Field(alias=f.name, description=f.desc or None))
        for i, f in enumerate(signature.outputs.values())
    }
    model = pydantic.create_model("Outputs", __config__=pydantic.ConfigDict(extra="forbid"), **spec)
    schema: dict[str, Any] = model.model_json_schema(by_alias=True)
    return schema


@functools.lru_cache(maxsize=512)
def _json_response_format(signature: Signature) -> dict[str, Any]:
    return {
        "type": "json_schema",
        "json_schema": {
            "name": "_".join(signature.outputs)[:64],
            "schema": copy.deepcopy(outputs_schema(signature)),
            "strict": True,
        },
    }


def _field_line(f: Field) -> str:
    desc = f": {f.desc}" if f.desc else ""
    return f"- {f.name} ({f.type_name}){desc}"


def _sections(fields: Any, values: Mapping[str, Any], *, inputs: bool = True) -> str:
    """Tagged sections for the fields present in ``values``, in field order."""
    write = format_input if inputs else format_value
    return "\n".join(
        f"<{f.name}>\n{write(values[f.name])}\n</{f.name}>" for f in fields if f.name in values
    )


# ---------------------------------------------------------------- running a predictor


async def run_predictor(
    predictor: Predictor, inputs: Mapping[str, Any], n: int = 1
) -> list[dict[str, Any]]:
    """Make ``predictor``'s LM call for ``inputs`` and return the samples that parsed.

    A reply that does not parse gets one repair attempt: the bad reply is sent
    back with a message saying what was wrong. Every request is logged as an
    :class:`LMCall` in the current node record (``attempt`` 0 or 1).

    Raises:
        SignatureError: An input field is missing.
        ConfigError: No LM is bound or set for the run.
        ParseError: No sample parsed, even after the repair attempt.
        LMError: The LM could not answer.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    call = _Call.start(predictor, inputs)
    prompt = call.adapter.render(
        predictor, call.inputs, demos=await _select_demos(predictor, call.inputs)
    )
    request = LMRequest(
        messages=prompt.messages,
        temperature=predictor.temperature,
        max_tokens=predictor.max_tokens,
        n=n,
        response_format=_response_format(prompt, call.lm.capabilities, predictor.signature),
    )
    first = await call.attempt(request, attempt=0)
    if not isinstance(first, ParseError):
        return first
    second = await call.attempt(call.repair_request(request, first), attempt=1)
    if not isinstance(second, ParseError):
        return second
    raise ParseError(
        f"predictor {call.path!r}: the reply did not parse, even after one repair "
        f"attempt: {second}",
        raw=second.raw,
        field=second.field,
    ) from second


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Call:
    """One logical predictor call: where it logs, which LM and adapter it uses."""

    predictor: Predictor
    path: str
    inputs: dict[str, Any]
    lm: LM
    adapter: Adapter

    @classmethod
    def start(cls, predictor: Predictor, inputs: Mapping[str, Any]) -> _Call:
        record = current_record()
        role = predictor.role
        if record is None:
            path = role or "predictor"
        else:
            path = f"{record.node}.{role}" if role else record.node
        values = _checked_inputs(predictor.signature, inputs, path)
        lm = resolve_lm(predictor.lm, node=path)
        adapter = predictor.adapter or default_adapter(lm)
        return cls(predictor=predictor, path=path, inputs=values, lm=lm, adapter=adapter)

    def repair_request(self, request: LMRequest, error: ParseError) -> LMRequest:
        """The follow-up request: the bad reply, then what was wrong with it."""
        fix = self.adapter.repair_message(self.predictor.signature, error)
        messages = (
            *request.messages,
            {"role": "assistant", "content": error.raw},
            {"role": "user", "content": fix},
        )
        return dataclasses.replace(request, messages=messages, n=1)

    async def attempt(
        self, request: LMRequest, *, attempt: int
    ) -> list[dict[str, Any]] | ParseError:
        """Parsed samples of one request, or the first parse error when none parsed."""
        parsed: list[dict[str, Any]] = []
        errors: list[ParseError] = []
        for response in await self._complete(request, attempt):
            ok, bad = self._parse(response)
            self._log(request, attempt, response=response, outputs=ok, errors=bad)
            parsed += ok
            errors += bad
        return parsed or errors[0]

    def _parse(self, response: LMResponse) -> tuple[list[dict[str, Any]], list[ParseError]]:
        if not response.choices:
            return [], [ParseError("the LM returned no choices", raw="")]
        ok, bad = [], []
        for choice in response.choices:
            try:
                ok.append(self.adapter.parse(self.predictor.signature, choice.text))
            except ParseError as exc:
                bad.append(exc)
        return ok, bad

    async def _complete(self, request: LMRequest, attempt: int) -> list[LMResponse]:
        """One request, or ``n`` single-sample requests when the LM cannot sample ``n``."""
        sample = settings().sample
        if request.n == 1 or self.lm.capabilities.n:
            return [await self._send(request, sample, attempt)]
        single = dataclasses.replace(request, n=1)
        results: list[LMResponse | Exception] = []

        async def one(index: int) -> None:
            try:
                results.append(await self._send(single, sample * request.n + index, attempt))
            except Exception as exc:
                results.append(exc)

        async with anyio.create_task_group() as group:
            for index in range(request.n):
                group.start_soon(one, index)
        for result in results:
            if isinstance(result, Exception):
                raise result
        return [r for r in results if isinstance(r, LMResponse)]

    async def _send(self, request: LMRequest, sample: int, attempt: int) -> LMResponse:
        started = time.perf_counter()
        try:
            return await self.lm.complete(request, sample=sample)
        except Exception as exc:
            self._log(request, attempt, error=f"{type(exc).__name__}: {exc}", started=started)
            raise

    def _log(
        self,
        request: LMRequest,
        attempt: int,
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
        log_call(
            LMCall(
                predictor=self.path,
                model=(response.model if response else "") or self.lm.name,
                started=time.time() - latency,
                inputs=dict(self.inputs),
                outputs=dict(outputs[0]) if outputs else {},
                messages=list(request.messages),
                reply=response.text if response else "",
                usage=response.usage if response else Usage(),
                cached=response.cached if response else False,
                latency=latency,
                cost=response.cost if response else 0.0,
                error=error,
                attempt=attempt,
            )
        )


def _checked_inputs(signature: Signature, inputs: Mapping[str, Any], path: str) -> dict[str, Any]:
    """The signature's inputs taken from ``inputs``; a missing one is an error naming it."""
    missing = [name for name in signature.inputs if name not in inputs]
    if missing:
        names = ", ".join(repr(m) for m in missing)
        expected = ", ".join(signature.inputs) or "(none)"
        raise SignatureError(
            f"predictor {path!r} is missing input {names}; its inputs are: {expected}"
        )
    return {name: inputs[name] for name in signature.inputs}


def _response_format(
    prompt: RenderedPrompt, caps: Capabilities, signature: Signature
) -> dict[str, Any] | None:
    """The adapter's schema if the server honours it; plain JSON mode if it reorders keys."""
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
