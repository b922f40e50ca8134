"""ReAct with several native tool calls in one turn, and with a history, on the test server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio

from rhizome.engine.call.media import History
from rhizome.engine.client.openai import OpenAILM
from rhizome.engine.example import Example
from rhizome.engine.graphs.graph import Graph
from rhizome.nodes.react import ReAct
from rhizome.optimizers.bootstrap import BootstrapFewShot
from rhizome.optimizers.metrics import exact_match
from rhizome.tools.agent.tool import tool
from tests.server import OpenAIServer, Reply

CITIES = {"paris": "18C", "oslo": "4C", "lima": "22C", "cairo": "30C"}


class Gauge:
    """Counts how many tool calls run at the same moment."""

    def __init__(self) -> None:
        self.now = 0
        self.most = 0


def weather_tool(gauge: Gauge) -> Any:
    @tool
    async def weather(city: str) -> str:
        """Today's temperature in a city.

        Args:
            city: The city's name.
        """
        gauge.now += 1
        gauge.most = max(gauge.most, gauge.now)
        await anyio.sleep(0.05)
        gauge.now -= 1
        return CITIES[city.lower()]

    return weather


def calls(*cities: str) -> Reply:
    return Reply(
        text="I check every city at once.",
        tool_calls=[{"id": f"id-{c}", "name": "weather", "arguments": {"city": c}} for c in cities],
    )


async def test_one_turn_of_calls_runs_concurrently_and_answers_by_call_id(
    server: OpenAIServer, lm: OpenAILM
) -> None:
    gauge = Gauge()
    server.script(
        [
            calls("Paris", "Oslo", "Lima"),
            Reply(tool_calls=[{"id": "end", "name": "finish", "arguments": {"answer": "Lima"}}]),
        ]
    )
    agent = ReAct("question -> answer", tools=[weather_tool(gauge)], protocol="native")
    out = await agent.acall(question="Which of Paris, Oslo, Lima is warmest?", lm=lm)
    assert out.answer == "Lima"
    assert gauge.most == 3  # all three at once
    assert [(s["args"]["city"], s["observation"]) for s in out.trajectory[:3]] == [
        ("Paris", "18C"),
        ("Oslo", "4C"),
        ("Lima", "22C"),
    ]
    second = server.requests[1]["messages"]
    assistant = second[-4]
    assert assistant["role"] == "assistant"
    assert [c["id"] for c in assistant["tool_calls"]] == ["id-Paris", "id-Oslo", "id-Lima"]
    assert assistant["tool_calls"][0]["function"] == {
        "name": "weather",
        "arguments": json.dumps({"city": "Paris"}),
    }
    assert [(m["role"], m["tool_call_id"], m["content"]) for m in second[-3:]] == [
        ("tool", "id-Paris", "18C"),
        ("tool", "id-Oslo", "4C"),
        ("tool", "id-Lima", "22C"),
    ]
    # The replayed calls are not written a second time into the trajectory text.
    assert second[-5]["role"] == "user"
    assert "(no steps yet)" in second[-5]["content"]


async def test_parallel_calls_are_bounded_and_older_turns_move_to_the_text(
    server: OpenAIServer, lm: OpenAILM
) -> None:
    gauge = Gauge()
    server.script(
        [
            calls("Paris", "Oslo", "Lima", "Cairo"),
            calls("Oslo"),
            Reply(tool_calls=[{"id": "end", "name": "finish", "arguments": {"answer": "Cairo"}}]),
        ]
    )
    agent = ReAct(
        "history: History, question -> answer",
        tools=[weather_tool(gauge)],
        protocol="native",
        max_parallel_tools=2,
    )
    chat = History(messages=[{"role": "user", "content": "I like warm places."}])
    out = await agent.acall(history=chat, question="Warmest city?", lm=lm)
    assert out.answer == "Cairo"
    assert gauge.most == 2
    third = server.requests[2]["messages"]
    assert [m.get("tool_call_id") for m in third[-2:]] == [None, "id-Oslo"]
    assert third[-2]["tool_calls"][0]["id"] == "id-Oslo"
    text = str(third[-3]["content"])
    assert "observation: 30C" in text
    assert "[step 4]" in text
    assert "[step 5]" not in text  # the second turn is replayed as messages instead
    # The conversation history comes as a chat turn, before the agent's prompt.
    assert third[1] == {"role": "user", "content": "I like warm places."}


async def test_finish_among_calls_ends_after_the_calls_before_it(
    server: OpenAIServer, lm: OpenAILM
) -> None:
    gauge = Gauge()
    server.script(
        [
            Reply(
                tool_calls=[
                    {"id": "w", "name": "weather", "arguments": {"city": "Oslo"}},
                    {"id": "f", "name": "finish", "arguments": {"answer": "cold"}},
                    {"id": "x", "name": "weather", "arguments": {"city": "Lima"}},
                ]
            )
        ]
    )
    agent = ReAct("question -> answer", tools=[weather_tool(gauge)], protocol="native")
    out = await agent.acall(question="Oslo?", lm=lm)
    assert out.answer == "cold"
    assert [s["tool"] for s in out.trajectory] == ["weather", "finish"]
    assert server.request_count == 1


async def test_an_agent_with_history_bootstraps_saves_and_loads(
    server: OpenAIServer, lm: OpenAILM, tmp_path: Path
) -> None:
    def model(body: dict[str, Any]) -> Reply:
        if body["messages"][-1]["role"] == "tool":
            return Reply(tool_calls=[{"name": "finish", "arguments": {"answer": "Oslo"}}])
        return calls("Oslo", "Lima")

    server.responder = model

    def build() -> Graph:
        agent = ReAct(
            "history: History, question -> answer", tools=[weather_tool(Gauge())], protocol="native"
        )
        return Graph("trip").add("agent", agent)

    liked = History(messages=[{"role": "user", "content": "I like cold places."}])
    trainset = [
        Example(history=liked, question="Where should I go?", answer="Oslo").with_inputs(
            "history", "question"
        )
    ]
    tuned = await BootstrapFewShot(exact_match("answer"), max_bootstrapped_demos=1, lm=lm).optimize(
        build(), trainset
    )
    demos = tuned.named_parameters()["agent.step.demos"]
    assert demos
    assert all(d["history"].messages == liked.messages for d in demos)
    tuned.save(tmp_path / "trip.json")
    loaded = build().load(tmp_path / "trip.json")
    server.requests.clear()
    out = await loaded.run(history=History(), question="Any tip?", lm=lm)
    assert out["answer"] == "Oslo"
    first = server.requests[0]["messages"]
    assert first[1] == {"role": "user", "content": "I like cold places."}  # the demo's history
    assert "Where should I go?" in first[2]["content"]
    assert "Any tip?" in first[-1]["content"]
