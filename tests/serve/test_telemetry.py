"""OpenTelemetry spans for runs, nodes and LM calls, collected by an in-memory exporter."""

from __future__ import annotations

import json
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from rhizome.engine.client.openai import OpenAILM
from rhizome.engine.errors import NodeError
from rhizome.engine.trace import Trace
from rhizome.examples import build, build_two_step
from rhizome.telemetry import Telemetry, configure
from tests.server import OpenAIServer, Reply


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def telemetry(exporter: InMemorySpanExporter) -> Telemetry:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Telemetry(tracer_provider=provider)


def _reply(body: dict) -> Reply:
    """The think node gets notes (11+3 tokens), the answer node an answer (13+4 tokens)."""
    if "notes" in body["messages"][0]["content"].split("Outputs")[1]:
        return Reply(text=json.dumps({"notes": "some notes"}), usage=(11, 3))
    return Reply(text=json.dumps({"answer": "Paris"}), usage=(13, 4))


def _by_name(spans: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    return {s.name: s for s in spans}


def _parent(span: ReadableSpan) -> int:
    assert span.parent is not None, f"{span.name} has no parent"
    return span.parent.span_id


def _attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


async def test_spans_for_the_run_its_nodes_and_lm_calls(
    telemetry: Telemetry, exporter: InMemorySpanExporter, server: OpenAIServer, lm: OpenAILM
) -> None:
    server.responder = _reply
    prediction = await telemetry.run(build_two_step(), {"question": "Capital of  France?"}, lm=lm)
    assert prediction["answer"] == "Paris"
    spans = _by_name(exporter.get_finished_spans())
    assert set(spans) == {
        "rhizome.run qa_two_step",
        "rhizome.node tidy",
        "rhizome.node think",
        "rhizome.node answer",
        "rhizome.lm think",
        "rhizome.lm answer",
    }
    run = spans["rhizome.run qa_two_step"]
    for name in ("rhizome.node tidy", "rhizome.node think", "rhizome.node answer"):
        assert _parent(spans[name]) == run.context.span_id
        assert spans[name].context.trace_id == run.context.trace_id
    call = spans["rhizome.lm answer"]
    assert _parent(call) == spans["rhizome.node answer"].context.span_id
    assert _attrs(call)["rhizome.node"] == "answer"
    assert _attrs(call)["gen_ai.usage.input_tokens"] == 13
    assert _attrs(call)["gen_ai.usage.output_tokens"] == 4
    assert _attrs(spans["rhizome.node think"])["rhizome.node.kind"] == "Predict"
    assert _attrs(run)["rhizome.usage.calls"] == 2
    assert _attrs(run)["gen_ai.usage.input_tokens"] == 24
    assert _attrs(run)["gen_ai.usage.output_tokens"] == 7
    node = spans["rhizome.node answer"]
    assert node.start_time is not None
    assert node.end_time is not None
    assert run.start_time <= node.start_time <= node.end_time <= run.end_time  # type: ignore[operator]


async def test_a_failed_run_marks_its_spans(
    telemetry: Telemetry, exporter: InMemorySpanExporter, server: OpenAIServer
) -> None:
    server.responder = lambda body: Reply(status=400, text="no such model")
    lm = OpenAILM("test-model", base_url=server.url, cache=None, max_retries=0)
    trace = Trace()
    with pytest.raises(NodeError):
        await telemetry.run(build(), {"question": "x"}, lm=lm, trace=trace)
    spans = _by_name(exporter.get_finished_spans())
    assert spans["rhizome.run qa"].status.status_code is StatusCode.ERROR
    assert spans["rhizome.node answer"].status.status_code is StatusCode.ERROR
    assert trace.records[0].node == "answer"  # the caller keeps the partial trace


async def test_emit_replays_a_finished_trace(
    telemetry: Telemetry, exporter: InMemorySpanExporter, server: OpenAIServer, lm: OpenAILM
) -> None:
    server.responder = lambda body: '{"answer": "Paris"}'
    [result] = await build().batch([{"question": "x"}], lm=lm)
    assert result.trace is not None
    telemetry.emit("qa", result.trace)
    spans = _by_name(exporter.get_finished_spans())
    assert set(spans) == {"rhizome.run qa", "rhizome.node answer", "rhizome.lm answer"}
    assert _parent(spans["rhizome.node answer"]) == spans["rhizome.run qa"].context.span_id


async def test_disabled_telemetry_still_runs(server: OpenAIServer, lm: OpenAILM) -> None:
    server.responder = lambda body: '{"answer": "Paris"}'
    off = Telemetry(enabled=False)
    assert not off.enabled
    prediction = await off.run(build(), {"question": "x"}, lm=lm)
    assert prediction["answer"] == "Paris"


def test_configure_refuses_unknown_exporters() -> None:
    with pytest.raises(ValueError, match="console, otlp"):
        configure("zipkin")
    provider = configure("console")
    provider.shutdown()
