"""What goes over the wire: the exact request bytes a recording server receives.

Field order (the signature's, never sorted), strict-mode validity of every
schema sent with ``strict: true``, the fallback when a server refuses
``response_format``, and replies cut by the token limit.
"""

from __future__ import annotations

import enum
import json
import logging
from datetime import date
from typing import Any, Literal

import pydantic
import pytest

from rhizome.engine.call import endpoints
from rhizome.engine.call.adapters import JSONAdapter
from rhizome.engine.call.signature import InputField, OutputField, Signature
from rhizome.engine.client.openai import OpenAILM
from rhizome.engine.client.protocol import Capabilities
from rhizome.engine.errors import NodeError, ParseError
from rhizome.engine.graphs.graph import Graph
from rhizome.nodes.predict import ChainOfThought, Predict
from rhizome.nodes.react import ReAct
from tests.server import OpenAIServer, Reply

# ---------------------------------------------------------------- strict-mode rules

# The documented subset, written out here independently of rhizome's rewriter.
_ALLOWED = {
    None: {"type", "description", "enum", "const", "anyOf", "$ref", "$defs"},
    "object": {"properties", "required", "additionalProperties"},
    "array": {"items", "minItems", "maxItems"},
    "string": {"pattern", "format"},
    "number": {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"},
    "integer": {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"},
    "boolean": set(),
    "null": set(),
}
_FORMATS = {"date-time", "time", "date", "duration", "email", "hostname", "ipv4", "ipv6", "uuid"}


def strict_violations(schema: dict[str, Any]) -> list[str]:
    """Every way ``schema`` breaks the strict structured-output rules (empty: valid)."""
    problems: list[str] = []
    defs = schema.get("$defs", {})
    if schema.get("type") != "object" or "anyOf" in schema:
        problems.append("root is not an object schema")

    def walk(node: dict[str, Any], where: str, depth: int) -> None:
        if depth > 10:
            problems.append(f"{where}: deeper than 10 levels")
        if "$ref" in node:
            problems.extend(_ref_violations(node, where, defs))
            return
        types = node.get("type")
        names = [types] if isinstance(types, str) else list(types or [])
        allowed = set(_ALLOWED[None])
        for name in names:
            allowed |= _ALLOWED.get(name, set())
        for key in set(node) - allowed:
            problems.append(f"{where}: keyword {key!r} not allowed")
        if "format" in node and node["format"] not in _FORMATS:
            problems.append(f"{where}: format {node['format']!r}")
        if not names and not {"anyOf", "enum", "const"} & set(node):
            problems.append(f"{where}: no type")
        if "object" in names:
            problems.extend(_object_violations(node, where))
            for name, sub in node.get("properties", {}).items():
                walk(sub, f"{where}.{name}", depth + 1)
        if "items" in node:
            walk(node["items"], f"{where}[]", depth + 1)
        for i, branch in enumerate(node.get("anyOf", [])):
            walk(branch, f"{where}|{i}", depth)

    walk({k: v for k, v in schema.items() if k != "$defs"}, "$", 1)
    for name, sub in defs.items():
        walk(sub, f"$defs.{name}", 2)
    return problems


def _ref_violations(node: dict[str, Any], where: str, defs: dict[str, Any]) -> list[str]:
    problems = []
    if set(node) != {"$ref"}:
        problems.append(f"{where}: $ref has siblings {sorted(set(node) - {'$ref'})}")
    if node["$ref"].removeprefix("#/$defs/") not in defs:
        problems.append(f"{where}: dangling {node['$ref']}")
    return problems


def _object_violations(node: dict[str, Any], where: str) -> list[str]:
    props = node.get("properties", {})
    problems = []
    if node.get("additionalProperties") is not False:
        problems.append(f"{where}: additionalProperties is not false")
    if list(node.get("required", [])) != list(props):
        problems.append(f"{where}: required {node.get('required')} != {list(props)}")
    return problems


class Addr(pydantic.BaseModel):
    city: str
    zip: str | None = None


class Person(pydantic.BaseModel):
    name: str = pydantic.Field(description="full name")
    home: Addr = pydantic.Field(description="where they live")
    past: list[Addr] = []
    age: int = 0


class Tree(pydantic.BaseModel):
    label: str
    children: list[Tree] = []


class Mood(enum.Enum):
    HAPPY = "happy"
    SAD = "sad"


class Everything(Signature):
    """Fill every field."""

    question: str = InputField()
    reasoning: str = OutputField()
    count: int = OutputField()
    score: float = OutputField()
    flag: bool = OutputField()
    tags: list[str] = OutputField()
    maybe: int | None = OutputField()
    kind: Literal["a", "b"] = OutputField()
    mood: Mood = OutputField()
    person: Person = OutputField(desc="the person")
    people: list[Person] = OutputField()
    tree: Tree = OutputField()
    when: date = OutputField()


class Nested(Signature):
    """Fill both, in this order."""

    question: str = InputField()
    zeta: str = OutputField()
    alpha: Person = OutputField()


STRICT_CORPUS = [
    "question -> answer",
    "question -> reasoning, answer",
    "context: list[str], question -> answer: int, confidence: float",
    "q -> ok: bool, labels: list[str], maybe: str | None",
    "q -> choice: Literal['x', 'y', 'z']",
    Everything,
]
NOT_STRICT = ["q -> table: dict[str, int]", "q -> pair: tuple[int, str]", "q -> anything: Any"]


@pytest.mark.parametrize("spec", STRICT_CORPUS, ids=str)
def test_every_strict_schema_follows_the_strict_rules(spec: Any) -> None:
    rf = JSONAdapter().response_format(Signature.coerce(spec))
    assert rf is not None
    assert rf["json_schema"]["strict"] is True
    assert strict_violations(rf["json_schema"]["schema"]) == []


@pytest.mark.parametrize("spec", NOT_STRICT)
def test_types_strict_mode_cannot_say_go_out_with_strict_false(spec: str) -> None:
    rf = JSONAdapter().response_format(Signature.coerce(spec))
    assert rf is not None
    assert rf["json_schema"]["strict"] is False
    assert strict_violations(rf["json_schema"]["schema"]) != []  # the reason it is not strict


def test_the_validator_catches_what_pydantic_sends_as_is() -> None:
    raw = Person.model_json_schema()  # nested $defs without additionalProperties, optionals
    problems = strict_violations(raw)
    assert any("additionalProperties" in p for p in problems)
    assert any("required" in p for p in problems)


def test_nested_optional_field_is_required_and_nullable() -> None:
    rf = JSONAdapter().response_format(Signature.coerce(Everything))
    assert rf is not None
    addr = rf["json_schema"]["schema"]["$defs"]["Addr"]
    assert addr["required"] == ["city", "zip"]
    assert addr["additionalProperties"] is False
    assert {"type": "null"} in addr["properties"]["zip"]["anyOf"]


# ---------------------------------------------------------------- field order on the wire


def _properties_in_bytes(raw: bytes, names: list[str]) -> list[int]:
    return [raw.index(b'"%s":{' % name.encode()) for name in names]


async def test_chain_of_thought_asks_for_reasoning_before_the_answer(
    server: OpenAIServer, lm: OpenAILM
) -> None:
    server.script(['{"reasoning": "r", "answer": "a"}'])
    graph = Graph("g").add("cot", ChainOfThought("context, question -> answer"))
    await graph.run(context="c", question="q", lm=lm)
    raw = server.raw_requests[0]
    schema = server.requests[0]["response_format"]["json_schema"]["schema"]
    assert list(schema["properties"]) == ["reasoning", "answer"]
    assert schema["required"] == ["reasoning", "answer"]
    first, second = _properties_in_bytes(raw, ["reasoning", "answer"])
    assert first < second
    # The body's own keys go out as built too: model and messages first.
    assert raw.startswith(b'{"model":"test-model","messages":[')


async def test_predict_and_nested_models_keep_declared_order(
    server: OpenAIServer, lm: OpenAILM
) -> None:
    reply = {
        "zeta": "z",
        "alpha": {"name": "n", "home": {"city": "c", "zip": None}, "past": [], "age": 3},
    }
    server.script([json.dumps(reply)])
    graph = Graph("g").add("p", Predict(Nested))
    await graph.run(question="q", lm=lm)
    raw = server.raw_requests[0]
    schema = server.requests[0]["response_format"]["json_schema"]["schema"]
    assert list(schema["properties"]) == ["zeta", "alpha"]
    assert list(schema["$defs"]["Person"]["properties"]) == ["name", "home", "past", "age"]
    assert list(schema["$defs"]["Addr"]["properties"]) == ["city", "zip"]
    name, home, past, age = _properties_in_bytes(raw, ["name", "home", "past", "age"])
    assert name < home < past < age


async def test_demos_are_written_in_signature_order(server: OpenAIServer, lm: OpenAILM) -> None:
    server.script(['{"reasoning": "r", "answer": "a"}'])
    node = ChainOfThought("question -> answer")
    node.predictor.demos = [{"question": "q0", "answer": "a0", "reasoning": "r0"}]
    await Graph("g").add("cot", node).run(question="q", lm=lm)
    demo_reply = server.requests[0]["messages"][2]
    assert demo_reply["role"] == "assistant"
    assert list(json.loads(demo_reply["content"])) == ["reasoning", "answer"]


def zebra_first(zebra: str, apple: int, mango: bool = False) -> str:
    """Look something up."""
    return f"{zebra}{apple}{mango}"


async def test_tool_parameters_keep_the_function_order(server: OpenAIServer) -> None:
    lm = OpenAILM("test-model", base_url=server.url, cache=None, backoff=0.01)
    finish = {"name": "finish", "arguments": {"answer": "done"}}
    server.script([Reply(text="", tool_calls=[finish])])
    agent = ReAct("question -> answer", tools=[zebra_first], protocol="native")
    await Graph("g").add("agent", agent).run(question="q", lm=lm)
    await lm.aclose()
    raw = server.raw_requests[0]
    tool = server.requests[0]["tools"][0]["function"]
    assert tool["name"] == "zebra_first"
    assert list(tool["parameters"]["properties"]) == ["zebra", "apple", "mango"]
    zebra, apple, mango = _properties_in_bytes(raw, ["zebra", "apple", "mango"])
    assert zebra < apple < mango


# ---------------------------------------------------------------- refused structured output


def _refuse_schemas(body: dict[str, Any]) -> str | Reply:
    if "response_format" in body:
        return Reply(status=400, text="response_format is not supported by this server")
    return '{"answer": "Paris"}'


async def test_a_server_refusing_response_format_gets_one_refused_request(
    server: OpenAIServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.responder = _refuse_schemas
    lm = OpenAILM("test-model", base_url=server.url, cache=None, backoff=0.01)
    graph = Graph("g", outputs=["answer"]).add("p", Predict("question -> answer"))
    examples = [{"question": f"q{i}"} for i in range(8)]
    with caplog.at_level(logging.WARNING, logger="rhizome.predictor"):
        results = await graph.batch(examples, lm=lm, concurrency=8)
    await lm.aclose()
    assert [r.error for r in results] == [None] * 8
    assert all(r.prediction is not None and r.prediction["answer"] == "Paris" for r in results)
    refused = [b for b in server.requests if "response_format" in b]
    assert len(refused) == 1
    assert server.request_count == 9  # one refused, then eight prompt-only requests
    warnings = [r for r in caplog.records if "refused structured output" in r.getMessage()]
    assert len(warnings) == 1
    # The prompt-only request still asks for the JSON object in words.
    assert "JSON object" in server.requests[1]["messages"][0]["content"]
    trace = results[0].prediction.trace if results[0].prediction else None
    assert trace is not None


async def test_refusal_is_noted_in_the_trace(server: OpenAIServer) -> None:
    server.responder = _refuse_schemas
    lm = OpenAILM("test-model", base_url=server.url, cache=None, backoff=0.01)
    prediction = await Graph("g").add("p", Predict("question -> answer")).run(question="q", lm=lm)
    await lm.aclose()
    assert prediction.trace is not None
    calls = prediction.trace.lm_calls()
    assert [c.error is not None for c in calls] == [True, False]
    assert "HTTP 400" in (calls[0].error or "") or "400" in (calls[0].error or "")
    assert "refused response_format" in calls[1].note


async def test_a_refusal_shows_in_the_lms_effective_capabilities(server: OpenAIServer) -> None:
    server.responder = _refuse_schemas
    lm = OpenAILM("test-model", base_url=server.url, cache=None, backoff=0.01)
    assert lm.capabilities.json_schema
    assert endpoints.effective_capabilities(lm).json_schema
    await Graph("g").add("p", Predict("question -> answer")).run(question="q", lm=lm)
    assert not endpoints.effective_capabilities(lm).json_schema
    assert lm.capabilities.json_schema  # the declared capabilities are left alone
    endpoints.forget(lm)  # e.g. the server was upgraded: the next call probes again
    server.responder = lambda body: '{"answer": "Paris"}'
    await Graph("g").add("p", Predict("question -> answer")).run(question="q2", lm=lm)
    await lm.aclose()
    assert "response_format" in server.requests[-1]
    assert endpoints.effective_capabilities(lm).json_schema


async def test_other_400s_are_not_taken_for_a_refusal(server: OpenAIServer) -> None:
    server.responder = lambda body: Reply(status=400, text="context length exceeded")
    lm = OpenAILM("test-model", base_url=server.url, cache=None, backoff=0.01, max_retries=0)
    graph = Graph("g").add("p", Predict("question -> answer"))
    with pytest.raises(Exception, match="context length exceeded"):
        await graph.run(question="q", lm=lm)
    await lm.aclose()
    server.responder = lambda body: '{"answer": "x"}'
    await graph.run(question="q", lm=lm)
    await lm.aclose()
    assert "response_format" in server.requests[-1]  # not remembered as a refusal


async def test_prompt_only_json_falls_back_to_tagged_text(server: OpenAIServer) -> None:
    def responder(body: dict[str, Any]) -> str | Reply:
        if "response_format" in body:
            return Reply(status=400, text="response_format: unsupported")
        system = body["messages"][0]["content"]
        if "between its own opening and closing tag" in system:
            return "<answer>\nParis\n</answer>"
        return "The answer is Paris."  # never the JSON object the prompt asks for

    server.responder = responder
    lm = OpenAILM("test-model", base_url=server.url, cache=None, backoff=0.01)
    prediction = await Graph("g").add("p", Predict("question -> answer")).run(question="q", lm=lm)
    await lm.aclose()
    assert prediction["answer"] == "Paris"
    assert prediction.trace is not None
    calls = prediction.trace.lm_calls()
    assert "tagged-text" in calls[-1].note
    assert [c.repair for c in calls] == [False, False, True, False]


# ---------------------------------------------------------------- cut by the token limit


async def test_a_reply_cut_by_the_limit_is_asked_again_with_a_larger_limit(
    server: OpenAIServer, lm: OpenAILM
) -> None:
    cut = Reply(text='{"reasoning": "First, the passage says that the', finish_reason="length")
    server.script([cut, '{"reasoning": "short", "answer": "Paris"}'])
    node = ChainOfThought("question -> answer", max_tokens=200)
    prediction = await Graph("g").add("cot", node).run(question="q", lm=lm)
    assert prediction["answer"] == "Paris"
    assert [b["max_tokens"] for b in server.requests] == [200, 400]
    # The retry bounds the text fields so a grammar must close them within the new limit.
    first_spec, retry_spec = (b["response_format"]["json_schema"] for b in server.requests)
    assert first_spec["strict"] is True
    assert "maxLength" not in first_spec["schema"]["properties"]["reasoning"]
    assert retry_spec["strict"] is False
    bounds = [retry_spec["schema"]["properties"][f]["maxLength"] for f in ("reasoning", "answer")]
    assert bounds[0] == bounds[1]
    assert sum(bounds) <= 400 * 3
    assert prediction.trace is not None
    first, second = prediction.trace.lm_calls()
    assert first.finish_reason == "length"
    assert "cut off by the token limit" in (first.error or "")
    assert "max_tokens=400" in second.note
    assert "cut-by-length" in prediction.trace.format()


async def test_a_reply_cut_twice_gets_a_repair_that_asks_for_brevity(
    server: OpenAIServer, lm: OpenAILM
) -> None:
    cut = Reply(text='{"reasoning": "On and on', finish_reason="length")
    server.script([cut, cut, '{"reasoning": "short", "answer": "Paris"}'])
    node = ChainOfThought("question -> answer", max_tokens=100)
    prediction = await Graph("g").add("cot", node).run(question="q", lm=lm)
    assert prediction["answer"] == "Paris"
    assert [b["max_tokens"] for b in server.requests] == [100, 200, 200]
    repair = server.requests[2]["messages"][-1]["content"]
    assert "cut off by the token limit" in repair
    assert "brief" in repair.lower()


async def test_a_cut_reply_that_never_fits_is_reported_as_cut(
    server: OpenAIServer, lm: OpenAILM
) -> None:
    server.responder = lambda body: Reply(text='{"reasoning": "On', finish_reason="length")
    graph = Graph("g").add("cot", ChainOfThought("question -> answer", max_tokens=50))
    with pytest.raises(NodeError, match="cut off by the token limit") as info:
        await graph.run(question="q", lm=lm)
    assert isinstance(info.value.__cause__, ParseError)
    assert [b["max_tokens"] for b in server.requests] == [50, 100, 100]


async def test_the_text_protocol_has_no_schema_and_keeps_field_order(
    server: OpenAIServer,
) -> None:
    lm = OpenAILM(
        "test-model", base_url=server.url, cache=None, capabilities=Capabilities(json_schema=False)
    )
    server.script(["<reasoning>\nr\n</reasoning>\n<answer>\na\n</answer>"])
    graph = Graph("g").add("cot", ChainOfThought("question -> answer"))
    prediction = await graph.run(question="q", lm=lm)
    await lm.aclose()
    assert prediction["answer"] == "a"
    assert "response_format" not in server.requests[0]
    system = server.requests[0]["messages"][0]["content"]
    assert system.index("<reasoning>") < system.index("<answer>")


async def test_the_optimizers_prompt_model_calls_keep_the_lms_token_cap(
    server: OpenAIServer,
) -> None:
    from rhizome.optimizers.propose import propose_instructions

    server.responder = lambda body: (
        "<summary>\nShort questions.\n</summary>\n"
        "<proposed_instruction>\nAnswer with the exact name only.\n</proposed_instruction>"
    )
    lm = OpenAILM(
        "test-model",
        base_url=server.url,
        cache=None,
        max_tokens=64,
        capabilities=Capabilities(json_schema=False),
    )
    graph = Graph("g").add("answer", Predict("question -> answer"))
    data = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(4)]
    found = await propose_instructions(graph, data, prompt_lm=lm, n=2)
    await lm.aclose()
    assert "Answer with the exact name only." in found["answer"]
    assert len(server.requests) >= 3  # the data summary and two proposals
    assert {b.get("max_tokens") for b in server.requests} == {64}
