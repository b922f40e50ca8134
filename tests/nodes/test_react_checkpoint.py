"""ReAct in a checkpointed run: each step is recorded, so a resumed agent repeats no call."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rhizome.engine.client.openai import OpenAILM
from rhizome.engine.errors import NodeError
from rhizome.engine.graphs.checkpoint import SQLiteCheckpoint
from rhizome.engine.graphs.durable import RunWaiting, interrupt
from rhizome.engine.graphs.graph import Graph
from rhizome.nodes.react import ReAct
from rhizome.tools.agent.tool import tool
from tests.server import OpenAIServer


def action(thought: str, tool_name: str, args: dict[str, object]) -> str:
    return json.dumps({"thought": thought, "tool_name": tool_name, "tool_args": args})


async def test_a_resumed_agent_continues_after_its_last_finished_step(
    server: OpenAIServer, lm: OpenAILM, tmp_path: Path
) -> None:
    used: list[str] = []

    @tool
    def price(item: str) -> str:
        """Price of an item.

        Args:
            item: The item.
        """
        used.append(f"price {item}")
        return "3"

    @tool
    def stock(item: str) -> str:
        """Units in stock.

        Args:
            item: The item.
        """
        used.append(f"stock {item}")
        return "7"

    server.script(
        [
            action("price first", "price", {"item": "pen"}),
            server.Reply(status=401, text="the key expired"),  # the run fails here
            action("then stock", "stock", {"item": "pen"}),
            action("done", "finish", {"answer": "3 each, 7 left"}),
        ]
    )
    g = Graph("shop").add("agent", ReAct("question -> answer", [price, stock], protocol="text"))
    store = SQLiteCheckpoint(tmp_path / "c.sqlite")
    with pytest.raises(NodeError, match="401"):
        await g.run(question="pens?", lm=lm, checkpoint=store, run_id="a")
    assert server.request_count == 2
    result = await g.run(question="pens?", lm=lm, checkpoint=store, run_id="a")
    assert result["answer"] == "3 each, 7 left"
    assert server.request_count == 4, "step 0 was restored: its LM call was not repeated"
    assert used == ["price pen", "stock pen"], "and neither was its tool call"
    assert [s["tool"] for s in result["trajectory"]] == ["price", "stock", "finish"]
    saved = store.read("a")
    assert saved is not None
    assert {"agent[0]", "agent[1]", "agent[2]", "agent"} <= set(saved.entries)


async def test_a_tool_may_ask_a_person(server: OpenAIServer, lm: OpenAILM, tmp_path: Path) -> None:
    @tool
    def buy(item: str) -> str:
        """Buy an item, once a person agreed.

        Args:
            item: The item.
        """
        return "bought" if interrupt(f"buy {item}?") == "yes" else "not bought"

    server.script(
        [
            action("buy it", "buy", {"item": "pen"}),
            action("buy it", "buy", {"item": "pen"}),  # the asking step runs again
            action("done", "finish", {"answer": "bought a pen"}),
        ]
    )
    g = Graph("shop").add("agent", ReAct("question -> answer", [buy], protocol="text"))
    store = tmp_path / "c.sqlite"
    with pytest.raises(RunWaiting, match="buy pen"):
        await g.run(question="pen?", lm=lm, checkpoint=store, run_id="b")
    result = await g.resume("b", "yes", checkpoint=store, lm=lm)
    assert [s["observation"] for s in result["trajectory"]] == ["bought", "done"]
    assert server.request_count == 3
