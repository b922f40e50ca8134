"""Issue 15: predictor inputs are checked against their declared types before the LM call."""

from __future__ import annotations

import re

import pytest

from rhizome.engine.call.predictor import Predictor
from rhizome.engine.call.signature import Field
from rhizome.engine.call.values import value_adapter
from rhizome.engine.client.fake import FakeLM
from rhizome.engine.errors import NodeError, SignatureError
from rhizome.engine.graphs.graph import Graph
from rhizome.engine.trace import NodeRecord, Trace, node_record, recording
from rhizome.nodes.predict import Predict


def _lm() -> FakeLM:
    return FakeLM(["<answer>ok</answer>"])


async def test_a_wrongly_typed_input_is_refused_before_the_lm_call() -> None:
    lm = _lm()
    p = Predictor("items: list[str] -> answer", lm=lm)
    with pytest.raises(SignatureError) as exc:
        await p(items=5)
    message = str(exc.value)
    assert "predictor 'predictor'" in message
    assert "input 'items' expects list[str]" in message
    assert "got int 5" in message
    assert lm.calls == 0


async def test_the_error_names_the_node_path_inside_a_graph() -> None:
    lm = _lm()
    g = Graph("g").add("answer", Predict("question, count: int -> answer"))
    with pytest.raises(NodeError) as exc:
        await g.run(question="q", count="many", lm=lm)
    cause = exc.value.__cause__
    assert isinstance(cause, SignatureError)
    assert "predictor 'answer': input 'count' expects int, got str 'many'" in str(cause)
    assert lm.calls == 0


@pytest.mark.parametrize(
    ("spec", "given", "received"),
    [
        ("items: list[str]", ("a", "b"), ["a", "b"]),  # a tuple for a list
        ("count: int", "3", 3),  # lax mode reads a numeric string
        ("score: float", 2, 2.0),
        ("text", 7, "7"),  # a number for text becomes its text
        ("text", True, "true"),
        ("note: str | None", None, None),
    ],
)
async def test_harmless_mismatches_are_converted(
    spec: str, given: object, received: object
) -> None:
    lm = _lm()
    p = Predictor(f"{spec} -> answer", lm=lm)
    name = spec.partition(":")[0]
    trace = Trace()
    with recording(trace), node_record(NodeRecord(node="n", kind="Predict")):
        assert await p(**{name: given}) == {"answer": "ok"}
    sent = trace.lm_calls()[0].inputs[name]
    assert sent == received
    assert type(sent) is type(received)
    assert lm.calls == 1


@pytest.mark.parametrize(
    ("spec", "given", "expected"),
    [
        ("text", ["a", "b"], "expects str, got list"),
        ("text", None, "expects str, got NoneType"),
        ("count: int", 3.5, "expects int, got float 3.5"),
        ("items: list[str]", {"a": 1}, "expects list[str], got dict"),
    ],
)
async def test_wrong_types_are_errors(spec: str, given: object, expected: str) -> None:
    p = Predictor(f"{spec} -> answer", lm=_lm())
    name = spec.partition(":")[0]
    with pytest.raises(SignatureError, match=re.escape(expected)):
        await p(**{name: given})


async def test_plain_text_inputs_skip_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: Field, value: object) -> object:
        raise AssertionError("a str value for a str field must not be validated")

    monkeypatch.setattr(Field, "convert", refuse)
    p = Predictor("context, question -> answer", lm=_lm())
    assert await p(context="c", question="q") == {"answer": "ok"}


def test_validators_are_built_once_per_type() -> None:
    assert value_adapter(list[str]) is value_adapter(list[str])
