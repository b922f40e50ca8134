"""End to end: a two-hop RAG graph and a ReAct agent, over real HTTP and a real chromadb.

The LM is the OpenAI-compatible test server on 127.0.0.1 (``server``/``lm``
fixtures); its scripted "model" reads the prompts it is sent and answers only
from what they contain, so a wrong retrieval or a lost observation changes the
final answer. Passages live in chromadb on a temporary directory, embedded by
the offline MiniLM model.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from rhizome.engine.client.openai import OpenAILM
from rhizome.engine.client.protocol import Capabilities
from rhizome.engine.graphs.graph import Graph
from rhizome.nodes.function import FunctionNode
from rhizome.nodes.loop import Loop
from rhizome.nodes.predict import ChainOfThought, Predict
from rhizome.nodes.react import ReAct
from rhizome.nodes.retrieve import Retrieve
from rhizome.tools.agent.calculator import calculator
from rhizome.tools.agent.tool import FunctionTool, tool
from rhizome.tools.retrieval.chroma import ChromaRetriever
from rhizome.tools.retrieval.embeddings import MiniLMEmbedder
from rhizome.tools.retrieval.indexing import index_documents
from tests.server import OpenAIServer, Reply

pytestmark = pytest.mark.slow

DOCS = [
    ("Ada Lovelace", "Ada Lovelace was born in London in 1815; she wrote the first program."),
    ("Ada Lovelace death", "Ada Lovelace died in 1852 at the age of thirty-six."),
    ("London", "London, the capital of England, lies on the River Thames."),
    ("Paris", "Paris, the capital of France, lies on the River Seine."),
    ("Alan Turing", "Alan Turing was born in Maida Vale, London, in 1912."),
    ("Tokyo", "Tokyo is the capital of Japan and its largest city."),
    ("Coffee", "Coffee is brewed from roasted coffee beans and contains caffeine."),
    ("Everest", "Mount Everest is the highest mountain above sea level."),
    ("Violin", "The violin is a small string instrument played with a bow."),
    ("Nile", "The Nile is a long river flowing north through Egypt."),
]
QUESTION = "Which river flows through the city where Ada Lovelace was born?"


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def retriever(tmp_path_factory: pytest.TempPathFactory) -> ChromaRetriever:
    path: Path = tmp_path_factory.mktemp("chroma")
    store = ChromaRetriever("e2e", path=path, embedder=MiniLMEmbedder())
    docs = [{"id": f"d{i}", "title": t, "text": text} for i, (t, text) in enumerate(DOCS)]
    stats = index_documents(store, docs, progress=False)
    assert stats.added == len(DOCS)
    return store


@pytest.fixture
async def text_lm(server: OpenAIServer) -> AsyncIterator[OpenAILM]:
    """An LM on the same server that claims neither JSON schemas nor native tools."""
    lm = OpenAILM(
        "test-model",
        base_url=server.url,
        api_key="test",
        cache=None,
        capabilities=Capabilities(json_schema=False, tools=False),
    )
    yield lm
    await lm.aclose()


def search_tool(store: ChromaRetriever) -> FunctionTool:
    @tool
    async def search(query: str) -> list[str]:
        """Search the encyclopedia; returns the best passage.

        Args:
            query: What to look for.
        """
        return [p.text for p in await store.search(query, 1)]

    return search


# ---------------------------------------------------------------- the scripted model


def asked(body: dict[str, Any]) -> list[str]:
    """The output fields the request asks for (JSON schema, else the reply-format tags)."""
    schema = (body.get("response_format") or {}).get("json_schema", {}).get("schema")
    if schema:
        return list(schema["properties"])
    system = str(body["messages"][0]["content"])
    tags = re.findall(r"^<(\w+)>$", system, re.MULTILINE)
    keys = re.findall(r'^  "(\w+)": <', system, re.MULTILINE)
    return list(dict.fromkeys(tags or keys))


def field(body: dict[str, Any], name: str) -> str:
    """An input field's text in the last user message."""
    user = str([m for m in body["messages"] if m["role"] == "user"][-1]["content"])
    match = re.search(rf"<{name}>\n(.*?)\n</{name}>", user, re.DOTALL)
    return match.group(1) if match else ""


def reply(body: dict[str, Any], values: dict[str, Any]) -> str:
    """``values`` written the way the request asks: a JSON object or tagged sections."""
    if body.get("response_format"):
        return json.dumps(values)
    parts = []
    for key, value in values.items():
        text = value if isinstance(value, str) else json.dumps(value)
        parts.append(f"<{key}>\n{text}\n</{key}>")
    return "\n".join(parts)


def rag_model(body: dict[str, Any]) -> str:
    """Writes queries and answers from the passages the prompt actually contains."""
    outputs = asked(body)
    context = field(body, "context")
    if "answer" in outputs:
        river = re.search(r"lies on the (River \w+)", context)
        answer = river.group(1) if river else "unknown"
        return reply(body, {"reasoning": f"From the context: {answer}.", "answer": answer})
    born = re.search(r"Ada Lovelace was born in (\w+)", context)
    if born:
        return reply(body, {"query": f"Which river does {born.group(1)} lie on?"})
    return reply(body, {"query": "Where was Ada Lovelace born?"})


# ---------------------------------------------------------------- two-hop RAG


def two_hop_rag(store: ChromaRetriever) -> Graph:
    g = Graph("two_hop")
    g.add("hop1", Predict("question -> query"))
    g.add("search1", Retrieve(store, k=1))
    g.add("hop2", Predict("context: list[str], question -> query"))
    g.add("search2", Retrieve(store, k=1, exclude="context"))
    g.add(
        "gather",
        FunctionNode(lambda first, second: first + second, outputs={"context": list[str]}),
    )
    g.add("answer", ChainOfThought("context: list[str], question -> answer"))
    g.connect("hop1", "search1")
    g.connect("search1.passages", "hop2.context").connect("hop2", "search2")
    g.connect("search1.passages", "search2.context")
    g.connect("search1.passages", "gather.first").connect("search2.passages", "gather.second")
    return g.connect("gather", "answer")


async def test_two_hop_rag_over_http_and_chromadb(
    server: OpenAIServer, lm: OpenAILM, retriever: ChromaRetriever
) -> None:
    server.responder = rag_model
    g = two_hop_rag(retriever)
    p = await g.run(question=QUESTION, lm=lm)
    assert p["answer"] == "River Thames"
    assert p.trace is not None
    first = p.trace.node("search1").outputs["passages"]
    second = p.trace.node("search2").outputs["passages"]
    assert first == ["Ada Lovelace | " + DOCS[0][1]]
    assert second == ["London | " + DOCS[2][1]]
    assert p.trace.node("hop2").outputs == {"query": "Which river does London lie on?"}
    assert [c.predictor for c in p.trace.lm_calls()] == ["hop1", "hop2", "answer"]
    assert server.request_count == 3
    assert all(body.get("response_format") for body in server.requests)  # JSON protocol
    usage = p.trace.usage()
    assert usage["calls"] == 3
    assert usage["prompt_tokens"] > 0


async def test_multi_hop_loop_with_text_protocol(
    server: OpenAIServer, text_lm: OpenAILM, retriever: ChromaRetriever
) -> None:
    server.responder = rag_model
    body = Graph("hop").add("query", Predict("context: list[str], question -> query"))
    body.add("search", Retrieve(retriever, k=1, exclude="context")).connect("query", "search")
    g = Graph("multihop").add("hops", Loop(body, max_iters=2, accumulate={"passages": "context"}))
    g.add("answer", ChainOfThought("context: list[str], question -> answer"))
    g.connect("hops.context", "answer.context")
    p = await g.run(question=QUESTION, lm=text_lm)
    assert p["answer"] == "River Thames"
    assert p.trace is not None
    assert p.trace.node("hops").outputs["context"] == [
        "Ada Lovelace | " + DOCS[0][1],
        "London | " + DOCS[2][1],
    ]
    assert [r.iteration for r in p.trace.records if r.node == "hops.search"] == [0, 1]
    assert not any(b.get("response_format") for b in server.requests)
    assert "<query>" in str(server.requests[0]["messages"][0]["content"])


# ---------------------------------------------------------------- ReAct agent

AGENT_QUESTION = "How many years did Ada Lovelace live?"


def next_action(trajectory: str) -> tuple[str, str, dict[str, Any]]:
    """The scripted agent: decides from the observations it was shown."""
    born = re.search(r"born in \w+ in (\d{4})", trajectory)
    died = re.search(r"died in (\d{4})", trajectory)
    result = re.search(r"tool: calculator\nargs: .*\nobservation: (\d+)", trajectory)
    if result:
        return "I have the answer.", "finish", {"answer": int(result.group(1))}
    if born and died:
        expression = f"{died.group(1)} - {born.group(1)}"
        return "Subtract the years.", "calculator", {"expression": expression}
    if born:
        return "Now find when she died.", "search", {"query": "When did Ada Lovelace die?"}
    return "Find when she was born.", "search", {"query": "When was Ada Lovelace born?"}


def replayed(body: dict[str, Any]) -> str:
    """The last turn's function calls and their results, which come as messages (native)."""
    results = {m["tool_call_id"]: m["content"] for m in body["messages"] if m["role"] == "tool"}
    return "\n\n".join(
        f"tool: {c['function']['name']}\nargs: {c['function']['arguments']}\n"
        f"observation: {results[c['id']]}"
        for m in body["messages"]
        for c in m.get("tool_calls") or ()
    )


def agent_model(*, native: bool) -> Callable[[dict[str, Any]], str | Reply]:
    """The agent's model; ``native`` answers with function calls."""

    def respond(body: dict[str, Any]) -> str | Reply:
        outputs = asked(body)
        trajectory = f"{field(body, 'trajectory')}\n\n{replayed(body)}"
        if "tool_name" not in outputs:  # the extract predictor
            return reply(body, {"answer": -1})
        thought, name, args = next_action(trajectory)
        if native:
            assert "tools" in body
            call = {"name": name, "arguments": json.dumps(args)}
            return Reply(text=thought, tool_calls=[call])
        return reply(body, {"thought": thought, "tool_name": name, "tool_args": args})

    return respond


def check_agent_run(p: Any) -> None:
    assert p["answer"] == 37
    steps = p["trajectory"]
    assert [s["tool"] for s in steps] == ["search", "search", "calculator", "finish"]
    assert "born in London in 1815" in steps[0]["observation"]
    assert "died in 1852" in steps[1]["observation"]
    assert steps[2]["args"] == {"expression": "1852 - 1815"}
    assert steps[2]["observation"] == "37"
    assert p.trace is not None
    assert len(p.trace.lm_calls("agent.step")) == 4
    assert p.trace.lm_calls("agent.extract") == []


async def test_react_agent_with_native_tool_calls(
    server: OpenAIServer, lm: OpenAILM, retriever: ChromaRetriever
) -> None:
    server.responder = agent_model(native=True)
    g = Graph("agent_graph").add(
        "agent", ReAct("question -> answer: int", [search_tool(retriever), calculator])
    )
    p = await g.run(question=AGENT_QUESTION, lm=lm)
    check_agent_run(p)
    assert p["trajectory"][0]["thought"] == "Find when she was born."
    sent = server.requests[0]
    assert [t["function"]["name"] for t in sent["tools"]] == ["search", "calculator", "finish"]
    assert sent["tools"][2]["function"]["parameters"]["required"] == ["answer"]
    step_call = p.trace.lm_calls("agent.step")[0]
    assert step_call.outputs["tool_name"] == "search"
    assert step_call.usage.prompt_tokens > 0


@pytest.mark.parametrize("json_replies", [False, True], ids=["tags", "json"])
async def test_react_agent_with_the_text_protocol(
    server: OpenAIServer,
    lm: OpenAILM,
    text_lm: OpenAILM,
    retriever: ChromaRetriever,
    json_replies: bool,
) -> None:
    server.responder = agent_model(native=False)
    agent = ReAct("question -> answer: int", [search_tool(retriever), calculator], protocol="text")
    g = Graph("agent_graph").add("agent", agent)
    p = await g.run(question=AGENT_QUESTION, lm=lm if json_replies else text_lm)
    check_agent_run(p)
    assert all("tools" not in body for body in server.requests)


async def test_react_agent_runs_out_of_steps_and_extracts(
    server: OpenAIServer, lm: OpenAILM, retriever: ChromaRetriever
) -> None:
    server.responder = agent_model(native=True)
    agent = ReAct("question -> answer: int", [search_tool(retriever), calculator], max_steps=2)
    p = await Graph("g").add("agent", agent).run(question=AGENT_QUESTION, lm=lm)
    assert p["answer"] == -1
    assert len(p["trajectory"]) == 2
    assert p.trace is not None
    extract = p.trace.lm_calls("agent.extract")
    assert len(extract) == 1
    assert "died in 1852" in extract[0].inputs["trajectory"]
    assert "tools" not in server.requests[-1]
