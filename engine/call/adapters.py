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

Inputs that are not text (:mod:`rhizome.engine.call.media`) take their own
place: a :class:`~rhizome.engine.call.media.History` becomes chat turns just
before the message that holds the inputs (a demo's history before that demo's
pair), and an :class:`~rhizome.engine.call.media.Image` an ``image_url`` part
of that message, between its field's tags.

:func:`run_predictor`, which makes a predictor's LM call with its adapter, lives
in :mod:`rhizome.engine.call.run` and is re-exported here.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import typing
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import pydantic

from rhizome.engine.call.media import History, Image, image_parts, is_turn
from rhizome.engine.call.parsing import (
    describe_type,
    format_input,
    format_value,
    parse_json,
    parse_tagged,
    split_optional,
)
from rhizome.engine.call.signature import Field, Signature
from rhizome.engine.call.strict_schema import strict_schema
from rhizome.engine.client.protocol import LM
from rhizome.engine.errors import ParseError, SignatureError
from rhizome.engine.trace import jsonable

if TYPE_CHECKING:
    from rhizome.engine.call.predictor import Predictor

__all__ = (
    "Adapter",
    "JSONAdapter",
    "Message",
    "RenderedPrompt",
    "TextAdapter",
    "default_adapter",
    "outputs_schema",
    "reply_format",
    "system_prompt",
)


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
        """Messages for ``inputs``: system, demo turns, history turns, then the real input."""
        signature = predictor.signature
        messages: list[Message] = [
            {"role": "system", "content": system_prompt(self, signature, predictor.instruction)}
        ]
        for demo in predictor.demos if demos is None else demos:
            messages.extend(self._demo_messages(signature, demo))
        inputs = _revived(signature, inputs)
        messages.extend(self._history_messages(signature, inputs))
        reminder = reply_format(self, signature).reminder
        body = _content(_layout(signature).prompt, inputs, suffix=f"\n\n{reminder}")
        messages.append({"role": "user", "content": body})
        return RenderedPrompt(
            messages=tuple(messages), response_format=self.response_format(signature)
        )

    def repair_message(self, signature: Signature, error: ParseError) -> str:
        """Say what was wrong with the last reply and restate the reply format."""
        return (
            f"Your reply could not be used: {error}\n"
            "Answer again, following this format exactly, and keep every field brief "
            "(a few sentences at most) so the whole reply fits.\n\n"
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

    def format_fields(self, values: Mapping[str, Any]) -> str:
        """An assistant reply holding ``values``, in their order (demos, history turns)."""
        raise NotImplementedError

    def _demo_messages(self, signature: Signature, demo: Mapping[str, Any]) -> list[Message]:
        outputs = {k: demo[k] for k in signature.outputs if k in demo}
        if not outputs:
            return []
        demo = _revived(signature, demo)
        return [
            *self._history_messages(signature, demo),
            {"role": "user", "content": _content(_layout(signature).prompt, demo)},
            {"role": "assistant", "content": self.format_outputs(signature, outputs)},
        ]

    def _history_messages(self, signature: Signature, values: Mapping[str, Any]) -> list[Message]:
        """The turns of every history input in ``values``, oldest first."""
        messages: list[Message] = []
        for name in _layout(signature).histories:
            history = values.get(name)
            for turn in history.messages if isinstance(history, History) else ():
                if is_turn(turn):
                    messages.append({"role": turn["role"], "content": turn["content"]})
                else:
                    messages.extend(self._exchange(signature, turn))
        return messages

    def _exchange(self, signature: Signature, turn: Mapping[str, Any]) -> list[Message]:
        """A past exchange keyed by field names: the inputs as a user turn, the rest replied."""
        layout = _layout(signature)
        asked = _revived(signature, {k: v for k, v in turn.items() if k in signature.inputs})
        first = [k for k in signature.outputs if k in turn]
        said = {k: turn[k] for k in [*first, *(k for k in turn if k not in signature.inputs)]}
        messages: list[Message] = []
        if asked:
            messages.append({"role": "user", "content": _content(layout.prompt, asked)})
        if said:
            messages.append({"role": "assistant", "content": self.format_fields(said)})
        return messages


@dataclasses.dataclass(frozen=True)
class TextAdapter(_ChatAdapter):
    """Each output field between ``<name>`` and ``</name>`` tags, in signature order."""

    def format_outputs(self, signature: Signature, values: Mapping[str, Any]) -> str:
        """The reply as tagged sections, skipping fields absent from ``values``."""
        return self.format_fields({k: values[k] for k in signature.outputs if k in values})

    def format_fields(self, values: Mapping[str, Any]) -> str:
        """Each value between its own tags, in the order given."""
        return "\n".join(f"<{k}>\n{format_value(v)}\n</{k}>" for k, v in values.items())

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
        return self.format_fields({k: values[k] for k in signature.outputs if k in values})

    def format_fields(self, values: Mapping[str, Any]) -> str:
        """One JSON object holding the values, keyed in the order given."""
        return json.dumps(jsonable(dict(values)), ensure_ascii=False, indent=2)

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


def default_adapter(lm: LM, signature: Signature | None = None) -> Adapter:
    """JSONAdapter for LMs that honour JSON schemas, else TextAdapter.

    With ``signature``, an LM whose ``capabilities.json_max_outputs`` is below
    the number of output fields gets TextAdapter for it.
    """
    caps = lm.capabilities
    if not caps.json_schema:
        return _TEXT
    limit = caps.json_max_outputs
    if signature is not None and limit is not None and len(signature.outputs) > limit:
        return _TEXT
    return _JSON


_JSON, _TEXT = JSONAdapter(), TextAdapter()  # stateless: one of each serves every call


# ---------------------------------------------------------------- cached templates


@functools.lru_cache(maxsize=512)
def reply_format(adapter: _ChatAdapter, signature: Signature) -> _Format:
    """The reply format of ``signature`` under ``adapter`` (built once per pair)."""
    return adapter.output_rules(signature)


@functools.lru_cache(maxsize=512)
def system_prompt(adapter: _ChatAdapter, signature: Signature, instruction: str) -> str:
    """The system message: instruction, fields and reply format (built once per triple)."""
    layout = _layout(signature)
    ins = "\n".join(_field_line(f) for f in layout.prompt) or "(none)"
    outs = "\n".join(_field_line(f) for f in signature.outputs.values())
    earlier = (
        f"The conversation so far ({', '.join(layout.histories)}) comes first, as the "
        "earlier messages of this chat.\n\n"
        if layout.histories
        else ""
    )
    return (
        f"{instruction.strip()}\n\n"
        f"{earlier}Inputs, each given between its own tags:\n{ins}\n\n"
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
    """The outputs' schema under strict mode's rules, or sent with ``strict: false``.

    Properties keep the signature's order (``reasoning`` first), which servers that
    decode with a grammar follow. See :mod:`rhizome.engine.call.strict_schema`.
    """
    schema, strict = strict_schema(outputs_schema(signature))
    return {
        "type": "json_schema",
        "json_schema": {
            "name": "_".join(signature.outputs)[:64],
            "schema": schema,
            "strict": strict,
        },
    }


def _field_line(f: Field) -> str:
    desc = f": {f.desc}" if f.desc else ""
    return f"- {f.name} ({f.type_name}){desc}"


@dataclasses.dataclass(frozen=True)
class _Layout:
    """Where a signature's inputs go: history fields as turns, the rest in the prompt."""

    histories: tuple[str, ...]
    prompt: tuple[Field, ...]
    media: tuple[Field, ...]


@functools.lru_cache(maxsize=512)
def _layout(signature: Signature) -> _Layout:
    inputs = signature.inputs.values()
    histories = tuple(f.name for f in inputs if split_optional(f.annotation)[0] is History)
    return _Layout(
        histories=histories,
        prompt=tuple(f for f in inputs if f.name not in histories),
        media=tuple(f for f in inputs if _mentions_media(f.annotation)),
    )


def _mentions_media(annotation: Any) -> bool:
    if annotation is History or annotation is Image:
        return True
    return any(_mentions_media(a) for a in typing.get_args(annotation))


def _revived(signature: Signature, values: Mapping[str, Any]) -> Mapping[str, Any]:
    """``values`` with histories and images read back from JSON (a loaded demo holds dicts)."""
    stale = [f for f in _layout(signature).media if f.name in values]
    if not stale:
        return values
    revived = dict(values)
    for f in stale:
        try:
            revived[f.name] = f.convert(values[f.name])
        except TypeError as exc:
            raise SignatureError(
                f"{f.name!r} is not a valid {f.type_name} (in a demo or a history turn?): {exc}"
            ) from None
    return revived


def _content(
    fields: Sequence[Field], values: Mapping[str, Any], *, suffix: str = ""
) -> str | list[Message]:
    """A user message's content: tagged sections as text, images as ``image_url`` parts.

    Without images it is one string (what most servers expect); with images a
    list of parts, each image between its field's tags.
    """
    pieces: list[str | list[Message]] = []
    for f in fields:
        if f.name not in values:
            continue
        images = image_parts(values[f.name])
        if images is None:
            pieces.append(f"<{f.name}>\n{format_input(values[f.name])}\n</{f.name}>")
        else:
            pieces += [f"<{f.name}>", images, f"</{f.name}>"]
    if all(isinstance(p, str) for p in pieces):
        return "\n".join(p for p in pieces if isinstance(p, str)) + suffix
    parts: list[Message] = []
    text: list[str] = []
    for piece in pieces:
        if isinstance(piece, str):
            text.append(piece)
            continue
        parts.append({"type": "text", "text": "\n".join([*text, ""])})
        parts.extend(piece)
        text = [""]
    parts.append({"type": "text", "text": "\n".join(text) + suffix})
    return parts
