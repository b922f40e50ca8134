"""Rendering and parsing of both adapters."""

from __future__ import annotations

import enum
import json
from typing import Any, Literal

import pydantic
import pytest

from rhizome.engine.call.adapters import (
    JSONAdapter,
    TextAdapter,
    default_adapter,
    outputs_schema,
    system_prompt,
)
from rhizome.engine.call.predictor import Predictor
from rhizome.engine.call.signature import Field, InputField, OutputField, Signature
from rhizome.engine.client.fake import FakeLM
from rhizome.engine.client.protocol import Capabilities
from rhizome.engine.errors import ParseError


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Person(pydantic.BaseModel):
    name: str
    age: int


class Everything(Signature):
    """Fill every field."""

    question: str = InputField(desc="what to answer")
    text: str = OutputField(desc="free text")
    count: int = OutputField()
    score: float = OutputField()
    flag: bool = OutputField()
    tags: list[str] = OutputField()
    table: dict[str, int] = OutputField()
    mood: Literal["happy", "sad"] = OutputField()
    color: Color = OutputField()
    person: Person = OutputField()


GOOD: dict[str, Any] = {
    "text": "Hello, world.",
    "count": 42,
    "score": 0.5,
    "flag": True,
    "tags": ["a", "b"],
    "table": {"x": 1},
    "mood": "happy",
    "color": Color.GREEN,
    "person": Person(name="Ada", age=36),
}

TEXT_REPLY = """<text>
Hello, world.
</text>
<count>42</count>
<score>0.5</score>
<flag>Yes</flag>
<tags>["a", "b"]</tags>
<table>
```json
{"x": 1}
```
</table>
<mood>HAPPY</mood>
<color>green</color>
<person>{"name": "Ada", "age": 36}</person>"""


def qa(**kwargs: Any) -> Predictor:
    return Predictor("question -> answer", **kwargs)


# ---------------------------------------------------------------- rendering


@pytest.mark.parametrize("adapter", [TextAdapter(), JSONAdapter()])
def test_system_message_holds_instruction_fields_and_format(adapter: Any) -> None:
    p = Predictor(Everything, instruction="Be precise.")
    system = adapter.render(p, {"question": "q"}).messages[0]
    assert system["role"] == "system"
    content = system["content"]
    assert content.startswith("Be precise.")
    assert "- question (str): what to answer" in content
    assert "- tags (list[str])" in content
    assert "- text (str): free text" in content
    assert "exactly one of: happy, sad" in content
    assert '"age"' in content  # the pydantic model's schema is spelled out


def test_text_render_uses_tags_for_inputs_and_reply_format() -> None:
    p = Predictor("question, context: list[str] -> answer: int")
    messages = TextAdapter().render(p, {"question": "Why?", "context": ["x", "y"]}).messages
    assert "<answer>\n{an integer}\n</answer>" in messages[0]["content"]
    user = messages[-1]
    assert user["role"] == "user"
    assert "<question>\nWhy?\n</question>" in user["content"]
    assert "<context>\n[1] x\n[2] y\n</context>" in user["content"]
    assert "<answer>" in user["content"]  # the closing reminder


def test_demos_become_user_assistant_pairs_before_the_input() -> None:
    demos = [
        {"question": "2+2?", "reasoning": "add", "answer": 4},
        {"question": "3+3?", "answer": 6},  # labelled only: no reasoning
        {"question": "no outputs"},  # nothing to teach: skipped
    ]
    p = Predictor("question -> reasoning, answer: int", demos=demos)
    messages = TextAdapter().render(p, {"question": "5+5?"}).messages
    roles = [m["role"] for m in messages]
    assert roles == ["system", "user", "assistant", "user", "assistant", "user"]
    assert messages[1]["content"] == "<question>\n2+2?\n</question>"
    assert messages[2]["content"] == "<reasoning>\nadd\n</reasoning>\n<answer>\n4\n</answer>"
    assert messages[4]["content"] == "<answer>\n6\n</answer>"
    assert "5+5?" in messages[5]["content"]


def test_demo_replies_parse_back_with_both_adapters() -> None:
    demo = {"question": "q", **GOOD}
    for adapter in (TextAdapter(), JSONAdapter()):
        p = Predictor(Everything, demos=[demo])
        reply = adapter.render(p, {"question": "q"}).messages[2]["content"]
        assert adapter.parse(p.signature, reply) == GOOD


def test_explicit_demos_override_the_predictors() -> None:
    p = qa(demos=[{"question": "a", "answer": "b"}])
    assert len(TextAdapter().render(p, {"question": "q"}, demos=[]).messages) == 2
    assert len(TextAdapter().render(p, {"question": "q"}).messages) == 4


def test_system_prompt_is_built_once_per_signature_and_instruction() -> None:
    p = Predictor("alpha_once -> beta_once")
    before = system_prompt.cache_info().misses
    for i in range(5):
        TextAdapter().render(p, {"alpha_once": str(i)})
    assert system_prompt.cache_info().misses == before + 1
    p.instruction = "A new instruction."
    TextAdapter().render(p, {"alpha_once": "x"})
    TextAdapter().render(p, {"alpha_once": "y"})
    assert system_prompt.cache_info().misses == before + 2


def test_json_adapter_response_format_is_the_output_schema() -> None:
    p = Predictor(Everything)
    rf = JSONAdapter().render(p, {"question": "q"}).response_format
    assert rf is not None
    assert rf["type"] == "json_schema"
    spec = rf["json_schema"]
    assert spec["strict"] is False  # ``table: dict[str, int]`` has open keys: strict mode cannot
    schema = spec["schema"]
    assert list(schema["properties"]) == list(Everything().outputs)
    assert schema["required"] == list(Everything().outputs)
    assert schema["additionalProperties"] is False
    assert schema["properties"]["count"]["type"] == "integer"
    assert TextAdapter().render(p, {"question": "q"}).response_format is None


def test_schema_allows_field_names_that_shadow_pydantic_attributes() -> None:
    schema = outputs_schema(Signature("q -> schema, json, copy: int"))
    assert list(schema["properties"]) == ["schema", "json", "copy"]


def test_default_adapter_follows_capabilities() -> None:
    assert isinstance(default_adapter(FakeLM(["x"])), TextAdapter)
    lm = FakeLM(["x"], capabilities=Capabilities(json_schema=True))
    assert isinstance(default_adapter(lm), JSONAdapter)


# ---------------------------------------------------------------- text parsing


def test_text_parse_every_type() -> None:
    assert TextAdapter().parse(Everything(), TEXT_REPLY) == GOOD


@pytest.mark.parametrize(
    ("annotation", "raw", "expected"),
    [
        (int, "1,000", 1000),
        (int, "**7**", 7),
        (int, "12.", 12),
        (float, "-2.5e1", -25.0),
        (bool, "false", False),
        (bool, "No.", False),
        (int | None, "null", None),
        (int | None, "5", 5),
        (list[str], "- one\n- two", ["one", "two"]),
        (list[int], "1. 3\n2. 4", [3, 4]),
        (Literal[1, 2], "2", 2),
        (Literal["Dr.", "Mr."], "dr.", "Dr."),
        (Color, "RED", Color.RED),
    ],
)
def test_text_parse_lenient_but_unambiguous(annotation: Any, raw: str, expected: Any) -> None:
    sig = Signature(fields=[Field("q"), Field("out", annotation, is_input=False)])
    value = TextAdapter().parse(sig, f"<out>{raw}</out>")["out"]
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize(
    ("annotation", "raw", "wanted"),
    [
        (int, "forty-two", "an integer"),
        (int, "4.5", "integer"),
        (float, "about 3", "a number"),
        (bool, "maybe", "true or false"),
        (list[str], "a, b", "JSON"),
        (list[str], "[1, 2]", "string"),
        (dict[str, int], '{"x": "y"}', "integer"),
        (Literal["happy", "sad"], "glad", "happy, sad"),
        (Color, "blue", "red, green"),
        (Person, '{"name": "Ada"}', "age"),
    ],
)
def test_text_parse_rejects_bad_values(annotation: Any, raw: str, wanted: str) -> None:
    sig = Signature(fields=[Field("q"), Field("out", annotation, is_input=False)])
    reply = f"<out>{raw}</out>"
    with pytest.raises(ParseError) as info:
        TextAdapter().parse(sig, reply)
    assert info.value.field == "out"
    assert info.value.raw == reply
    assert wanted in str(info.value)


def test_choice_matching_ignores_case_only_when_unambiguous() -> None:
    sig = Signature(fields=[Field("q"), Field("out", Literal["A", "a"], is_input=False)])
    assert TextAdapter().parse(sig, "<out> a </out>") == {"out": "a"}
    with pytest.raises(ParseError, match="exactly one of: A, a"):
        TextAdapter().parse(sig, "<out>A.</out>")


def test_text_parse_missing_or_unclosed_field_names_it() -> None:
    sig = Signature("q -> reasoning, answer")
    with pytest.raises(ParseError, match="no <answer> section") as info:
        TextAdapter().parse(sig, "<reasoning>r</reasoning>\nThe answer is 4.")
    assert info.value.field == "answer"
    with pytest.raises(ParseError, match="never closed") as info:
        TextAdapter().parse(sig, "<reasoning>r</reasoning><answer>4")
    assert info.value.field == "answer"


def test_text_parse_reads_sections_in_order_and_tolerates_reordering() -> None:
    sig = Signature("q -> reasoning, answer")
    mention = "<reasoning>I will put it in <answer> tags.</reasoning><answer>B</answer>"
    assert TextAdapter().parse(sig, mention) == {
        "reasoning": "I will put it in <answer> tags.",
        "answer": "B",
    }
    swapped = "<ANSWER>B</ANSWER> < reasoning >why</ reasoning >"
    assert TextAdapter().parse(sig, swapped) == {"reasoning": "why", "answer": "B"}


# ---------------------------------------------------------------- JSON parsing


def test_json_parse_every_type_with_fences_and_prose() -> None:
    body = {**GOOD, "color": "GREEN", "person": GOOD["person"].model_dump(), "flag": "yes"}
    reply = "Sure! Here it is:\n```json\n" + json.dumps(body) + "\n```\nHope that helps."
    assert JSONAdapter().parse(Everything(), reply) == GOOD


def test_json_parse_coerces_only_unambiguous_values() -> None:
    sig = Signature("q -> answer, n: int, ok: bool")
    assert JSONAdapter().parse(sig, '{"answer": 42, "n": "7", "ok": true}') == {
        "answer": "42",
        "n": 7,
        "ok": True,
    }
    with pytest.raises(ParseError, match="boolean") as info:
        JSONAdapter().parse(sig, '{"answer": "a", "n": true, "ok": true}')
    assert info.value.field == "n"


def test_json_parse_missing_key_names_field_and_keys() -> None:
    sig = Signature("q -> reasoning, answer")
    reply = '{"reasoning": "r", "result": 1}'
    with pytest.raises(ParseError, match="'answer' is missing") as info:
        JSONAdapter().parse(sig, reply)
    assert info.value.field == "answer"
    assert info.value.raw == reply
    assert "reasoning, result" in str(info.value)


def test_json_parse_without_object_fails() -> None:
    with pytest.raises(ParseError, match="JSON object") as info:
        JSONAdapter().parse(Signature("q -> a"), "I cannot answer that.")
    assert info.value.raw == "I cannot answer that."


def test_json_parse_picks_the_object_with_the_fields() -> None:
    reply = 'Schema: {"type": "object"} Answer: {"answer": "x"}'
    assert JSONAdapter().parse(Signature("q -> answer"), reply) == {"answer": "x"}


async def test_servers_that_reorder_keys_get_plain_json_mode_for_several_outputs() -> None:
    caps = Capabilities(json_schema=True, json_key_order=False)
    lm = FakeLM(['{"reasoning": "r", "answer": "a"}'], capabilities=caps)
    several = Predictor("question -> reasoning, answer", lm=lm)
    assert await several(question="q") == {"reasoning": "r", "answer": "a"}
    assert lm.requests[-1].response_format == {"type": "json_object"}
    # One output has no order to lose: the schema (and its types) still go out.
    single = Predictor("question -> answer: int", lm=FakeLM(['{"answer": 3}'], capabilities=caps))
    assert await single(question="q") == {"answer": 3}
    fmt = single.lm.requests[-1].response_format  # type: ignore[union-attr]
    assert fmt is not None
    assert fmt["type"] == "json_schema"


def test_json_max_outputs_sends_longer_signatures_to_the_text_protocol() -> None:
    lm = FakeLM(["x"], capabilities=Capabilities(json_schema=True, json_max_outputs=1))
    assert isinstance(default_adapter(lm, Signature("q -> answer")), JSONAdapter)
    assert isinstance(default_adapter(lm, Signature("q -> reasoning, answer")), TextAdapter)
    assert isinstance(default_adapter(lm), JSONAdapter)  # no signature: the LM's own default
    plain = FakeLM(["x"], capabilities=Capabilities(json_schema=True))
    assert isinstance(default_adapter(plain, Signature("q -> reasoning, answer")), JSONAdapter)
