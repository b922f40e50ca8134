"""A node called on its own (no Graph around it), and the process-wide history of LM calls."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

import rhizome
from rhizome.engine.call.media import Image
from rhizome.engine.client.cache import ResponseCache
from rhizome.engine.client.openai import OpenAILM
from rhizome.engine.context import context
from rhizome.engine.errors import ConfigError
from rhizome.engine.trace import Trace, recent_calls
from rhizome.nodes.function import FunctionNode
from rhizome.nodes.predict import ChainOfThought, Predict
from tests.engine.test_media import png
from tests.server import OpenAIServer


def test_predict_called_alone_answers_with_a_trace(server: OpenAIServer, lm: OpenAILM) -> None:
    server.responder = lambda body: '{"answer": "Paris"}'
    out = Predict("question -> answer")(question="Capital of France?", lm=lm)
    assert out.answer == "Paris"
    (record,) = out.trace.records
    assert (record.node, record.kind) == ("predict", "Predict")
    assert record.calls[0].reply == '{"answer": "Paris"}'
    assert "Capital of France?" in str(server.requests[0]["messages"][-1]["content"])


async def test_acall_uses_the_response_cache_and_context_lm(
    server: OpenAIServer, tmp_path: Path
) -> None:
    server.responder = lambda body: '{"reasoning": "it is", "answer": "4"}'
    cache = ResponseCache(tmp_path / "cache.sqlite")
    lm = OpenAILM("test-model", base_url=server.url, cache=cache)
    node = ChainOfThought("question -> answer: int")
    try:
        with context(lm=lm):
            first = await node.acall(question="2+2?")
            trace = Trace()
            again = await node.acall({"question": "2+2?"}, trace=trace)
    finally:
        await lm.aclose()
        cache.close()
    assert first.answer == again.answer == 4
    assert server.request_count == 1
    assert again.trace is trace
    assert trace.records[0].calls[0].cached
    assert trace.records[0].node == "chain_of_thought"


def test_a_node_alone_without_an_lm_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match=r"Predict\(question -> answer\) has no LM.*lm="):
        Predict("question -> answer")(question="hi")


def test_a_node_without_predictors_needs_no_lm() -> None:
    node = FunctionNode(lambda text: text.upper(), outputs=["loud"])
    assert node(text="hey").loud == "HEY"


async def test_inspect_history_shows_the_last_calls_of_the_process(
    server: OpenAIServer, lm: OpenAILM
) -> None:
    server.responder = lambda body: '{"answer": "grey"}'
    await Predict("photo: Image, question -> answer").acall(
        photo=Image.from_bytes(png()), question="Colour?", lm=lm
    )
    await Predict("question -> answer").acall(question="Second call?", lm=lm)
    assert [c["kind"] for c in recent_calls(2)] == ["Predict", "Predict"]
    out = io.StringIO()
    rhizome.inspect_history(2, file=out)
    text = out.getvalue()
    assert text.index("Colour?") < text.index("Second call?")
    assert "── predict (Predict) · " in text
    assert "[image: image/png, 0 KiB]" in text
    assert "base64" not in text
    assert text.count("[reply]") == 2
    assert '{"answer": "grey"}' in text
    out = io.StringIO()
    rhizome.inspect_history(1, file=out)
    assert "Second call?" in out.getvalue()
    assert "Colour?" not in out.getvalue()
    shown = lm.inspect_history(2)[0].format()  # the per-LM view reads images the same way
    assert "[image: image/png, 0 KiB]" in shown
    assert "base64" not in shown


def test_a_copy_of_a_node_runs_as_itself(server: OpenAIServer, lm: OpenAILM) -> None:
    server.responder = lambda body: '{"answer": "ok"}'
    node = Predict("question -> answer")
    node(question="first", lm=lm)
    twin = node.copy()
    twin.predictor.instruction = "Answer in one word."
    twin(question="second", lm=lm)
    node(question="third", lm=lm)
    systems = [body["messages"][0]["content"] for body in server.requests]
    assert [s.startswith("Answer in one word.") for s in systems] == [False, True, False]
