"""Issue 15: optional output fields the model leaves out parse as None, in both protocols."""

from __future__ import annotations

import pytest

from rhizome.engine.call.adapters import JSONAdapter, TextAdapter
from rhizome.engine.call.parsing import parse_json, parse_tagged
from rhizome.engine.call.signature import InputField, OutputField, Signature
from rhizome.engine.errors import ParseError

SIG = Signature("question -> answer, note: str | None, count: int | None")


class WithDefault(Signature):
    """Class form: an optional output written with a default."""

    question: str = InputField()
    answer: str = OutputField()
    count: int | None = OutputField()


def test_json_reply_without_optional_fields_gives_none() -> None:
    values = parse_json(SIG.outputs, '{"answer": "Paris"}')
    assert values == {"answer": "Paris", "note": None, "count": None}


def test_tagged_reply_without_optional_fields_gives_none() -> None:
    values = parse_tagged(SIG.outputs, "<answer>Paris</answer>")
    assert values == {"answer": "Paris", "note": None, "count": None}


def test_optional_fields_given_still_parse() -> None:
    tagged = "<answer>Paris</answer><count>3</count>"
    assert parse_tagged(SIG.outputs, tagged) == {"answer": "Paris", "note": None, "count": 3}
    assert parse_json(SIG.outputs, '{"answer": "Paris", "count": "3"}')["count"] == 3


def test_class_signature_optional_output_may_be_left_out() -> None:
    sig = WithDefault()
    assert JSONAdapter().parse(sig, '{"answer": "x"}') == {"answer": "x", "count": None}
    assert TextAdapter().parse(sig, "<answer>x</answer>") == {"answer": "x", "count": None}


def test_required_field_left_out_is_still_an_error() -> None:
    with pytest.raises(ParseError, match="'answer' is missing from the JSON object") as exc:
        parse_json(SIG.outputs, '{"note": "n"}')
    assert exc.value.field == "answer"
    with pytest.raises(ParseError, match="no <answer> section") as exc:
        parse_tagged(SIG.outputs, "<note>n</note>")
    assert exc.value.field == "answer"


def test_optional_tag_opened_but_never_closed_is_an_error() -> None:
    with pytest.raises(ParseError, match="<count> is never closed") as exc:
        parse_tagged(SIG.outputs, "<answer>Paris</answer><count>3")
    assert exc.value.field == "count"
