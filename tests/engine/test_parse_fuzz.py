"""Fuzzing the parsers: any reply gives correctly typed fields or a ParseError, nothing else."""

from __future__ import annotations

import enum
import json
import typing
from typing import Any, Literal

import pydantic
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rhizome.engine.call.adapters import JSONAdapter, TextAdapter
from rhizome.engine.call.signature import InputField, OutputField, Signature
from rhizome.engine.errors import ParseError


class Level(enum.Enum):
    LOW = 1
    HIGH = 2


class Point(pydantic.BaseModel):
    x: int
    y: float


class Fuzzed(Signature):
    """Everything at once."""

    question: str = InputField()
    text: str = OutputField()
    count: int = OutputField()
    score: float = OutputField()
    flag: bool = OutputField()
    tags: list[str] = OutputField()
    table: dict[str, int] = OutputField()
    mood: Literal["happy", "sad", 3] = OutputField()
    level: Level = OutputField()
    point: Point = OutputField()
    maybe: int | None = OutputField()


SIG = Fuzzed()
NAMES = list(SIG.outputs)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
snippets = st.sampled_from(
    ["42", "-1.5", "yes", "No", "null", "happy", "HIGH", "3", '["a"]', '{"x": 1, "y": 2}',
     '{"a": 1}', "```json\n[1]\n```", "- a\n- b", "", "nan", "1,000", "[[[[", "{", "<", "</"]
)  # fmt: skip
values = snippets | st.text(max_size=30) | json_values.map(json.dumps)


@st.composite
def tagged_replies(draw: st.DrawFn) -> str:
    parts = []
    for name in draw(st.lists(st.sampled_from(NAMES), max_size=14)):
        close = draw(st.sampled_from([f"</{name}>", "", f"</{name.upper()}>"]))
        parts.append(f"<{name}>{draw(values)}{close}")
        parts.append(draw(st.sampled_from(["", "\n", " noise "])))
    return "".join(parts)


@st.composite
def json_replies(draw: st.DrawFn) -> str:
    keys = draw(st.lists(st.sampled_from([*NAMES, "other"]), max_size=14))
    obj = {k: draw(json_values | snippets) for k in keys}
    text = json.dumps(obj)
    return draw(st.sampled_from([text, f"```json\n{text}\n```", f"Answer: {text} done", text[:-1]]))


replies = st.text(max_size=200) | tagged_replies() | json_replies()


def check_types(values: dict[str, Any], sig: Signature = SIG) -> None:
    assert list(values) == list(sig.outputs)
    for name, field in sig.outputs.items():
        value = values[name]
        annotation = field.annotation
        if typing.get_origin(annotation) is Literal:
            assert value in typing.get_args(annotation)
        elif name == "maybe":
            assert value is None or type(value) is int
        elif name == "tags":
            assert all(type(v) is str for v in value)
        elif name == "table":
            assert all(type(k) is str and type(v) is int for k, v in value.items())
        else:
            assert type(value) is typing.get_origin(annotation) or type(value) is annotation


def parse_or_fail(sig: Signature, reply: str) -> int:
    """Parse with both adapters; returns how many parsed (and checks their types)."""
    parsed = 0
    for adapter in (TextAdapter(), JSONAdapter()):
        try:
            values = adapter.parse(sig, reply)
        except ParseError as exc:
            error: ParseError | None = exc
        else:
            error = None
            check_types(values, sig)
            parsed += 1
        if error is not None:
            assert error.raw == reply
    return parsed


FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@FUZZ
@given(replies)
def test_any_reply_parses_to_typed_values_or_parse_error(reply: str) -> None:
    parse_or_fail(SIG, reply)


SINGLE = [Signature(fields=[SIG.inputs["question"], f]) for f in SIG.outputs.values()]


@st.composite
def single_field_replies(draw: st.DrawFn) -> tuple[Signature, str]:
    sig = draw(st.sampled_from(SINGLE))
    (name,) = sig.outputs
    value = draw(values)
    reply = draw(st.sampled_from([f"<{name}>{value}</{name}>", json.dumps({name: value})]))
    if draw(st.booleans()):
        reply = json.dumps({name: draw(json_values)})
    return sig, reply


@FUZZ
@given(single_field_replies())
def test_single_fields_parse_to_their_type_or_parse_error(case: tuple[Signature, str]) -> None:
    parse_or_fail(*case)


def test_a_fully_valid_reply_parses_with_both() -> None:
    good = {
        "text": "t", "count": 1, "score": 2.0, "flag": False, "tags": ["a"], "table": {"k": 1},
        "mood": 3, "level": 2, "point": {"x": 1, "y": 2}, "maybe": None,
    }  # fmt: skip
    tagged = "".join(f"<{k}>{json.dumps(v) if k != 'text' else v}</{k}>" for k, v in good.items())
    for adapter, reply in ((TextAdapter(), tagged), (JSONAdapter(), json.dumps(good))):
        parsed = adapter.parse(SIG, reply)
        check_types(parsed)
        assert parsed["level"] is Level.HIGH
        assert parsed["point"] == Point(x=1, y=2.0)
