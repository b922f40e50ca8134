"""Issue 15: GenAI model attributes on LM spans, and spans for plain graph runs."""

from __future__ import annotations

import json
from typing import Any

import pytest
from opentelemetry import trace as otel_trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from rhizome.engine.client.fake import FakeLM
from rhizome.engine.client.openai import OpenAILM
from rhizome.engine.errors import NodeError
from rhizome.examples import build, build_two_step
from rhizome.telemetry import Telemetry, global_telemetry, request_models
from tests.server import OpenAIServer, Reply


def _completion(body: dict[str, Any]) -> Reply:
    """A reply from a server that names a dated model, as OpenAI does."""
    completion = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": "test-model-2024-07-18",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": '{"answer": "Paris"}'},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
    }
    return Reply(raw_body=json.dumps(completion))


def _spans(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    return {s.name: s for s in exporter.get_finished_spans()}


def _attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


@pytest.fixture
def global_provider(provider: TracerProvider, monkeypatch: pytest.MonkeyPatch) -> TracerProvider:
    """``provider`` as the global tracer provider for this test only.

    opentelemetry lets a process set its global provider once, so the test
    stands in for ``set_tracer_provider`` by answering ``get_tracer_provider``.
    """
    monkeypatch.setattr(otel_trace, "get_tracer_provider", lambda: provider)
    return provider


async def test_lm_spans_name_the_requested_and_the_answering_model(
    provider: TracerProvider, exporter: InMemorySpanExporter, server: OpenAIServer, lm: OpenAILM
) -> None:
    server.responder = _completion
    await Telemetry(tracer_provider=provider).run(build(), {"question": "x"}, lm=lm)
    call = _attrs(_spans(exporter)["rhizome.lm answer"])
    assert call["gen_ai.operation.name"] == "chat"
    assert call["gen_ai.request.model"] == "test-model"
    assert call["gen_ai.response.model"] == "test-model-2024-07-18"
    assert (call["gen_ai.usage.input_tokens"], call["gen_ai.usage.output_tokens"]) == (5, 2)


async def test_a_failed_call_still_names_the_requested_model(
    provider: TracerProvider, exporter: InMemorySpanExporter, server: OpenAIServer
) -> None:
    server.responder = lambda body: Reply(status=400, text="bad request")
    lm = OpenAILM("test-model", base_url=server.url, cache=None, max_retries=0)
    with pytest.raises(NodeError):
        await Telemetry(tracer_provider=provider).run(build(), {"question": "x"}, lm=lm)
    call = _attrs(_spans(exporter)["rhizome.lm answer"])
    assert call["gen_ai.request.model"] == "test-model"
    assert "gen_ai.response.model" not in call


def test_request_models_prefer_a_bound_lm() -> None:
    graph = build_two_step()
    graph.nodes["think"].predictor.lm = FakeLM([], name="small")  # type: ignore[attr-defined]
    assert request_models(graph, FakeLM([], name="big")) == {"think": "small", "answer": "big"}


async def test_await_graph_run_emits_spans_to_the_global_provider(
    global_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    lm = FakeLM(["<answer>Paris</answer>"], name="fake-model")
    prediction = await build().run(question="x", lm=lm)
    assert prediction["answer"] == "Paris"
    spans = _spans(exporter)
    assert set(spans) == {"rhizome.run qa", "rhizome.node answer", "rhizome.lm answer"}
    assert _attrs(spans["rhizome.lm answer"])["gen_ai.request.model"] == "fake-model"


def test_a_plain_call_emits_spans_to_the_global_provider(
    global_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    lm = FakeLM(["<answer>Paris</answer>"])
    assert build()(question="x", lm=lm)["answer"] == "Paris"
    assert "rhizome.run qa" in _spans(exporter)


def test_no_global_provider_means_no_spans_and_no_telemetry() -> None:
    assert isinstance(otel_trace.get_tracer_provider(), otel_trace.ProxyTracerProvider)
    assert global_telemetry() is None
    assert build()(question="x", lm=FakeLM(["<answer>Paris</answer>"]))["answer"] == "Paris"


def test_the_global_telemetry_is_built_once_per_provider(global_provider: TracerProvider) -> None:
    first = global_telemetry()
    assert first is not None
    assert first.enabled
    assert global_telemetry() is first
