"""MCP tools against a real MCP server (``tests/tools/mcp_server.py``, written with the SDK).

The server runs as a subprocess over stdio, or over streamable HTTP on
127.0.0.1; the agent's LM is the OpenAI-compatible test server.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rhizome.engine.client.openai import OpenAILM
from rhizome.engine.errors import ConfigError
from rhizome.engine.graphs.graph import Graph
from rhizome.nodes.react import ReAct
from rhizome.tools.agent.mcp import MCPTool, mcp_tools, require_mcp
from rhizome.tools.agent.tool import tool
from tests.serve.conftest import free_port, wait_listening
from tests.server import OpenAIServer, Reply

SERVER = str(Path(__file__).with_name("mcp_server.py"))
STDIO = [sys.executable, SERVER]

CITY_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {
            "description": "The city's name, e.g. Castmere.",
            "title": "City",
            "type": "string",
        },
        "year": {
            "default": 2020,
            "description": "The census year.",
            "minimum": 1900,
            "title": "Year",
            "type": "integer",
        },
    },
    "required": ["city"],
    "title": "city_populationArguments",
}


def gone(pid: int, within: float = 5.0) -> bool:
    """Whether process ``pid`` no longer exists (waiting up to ``within`` seconds)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


@contextlib.contextmanager
def http_server() -> Iterator[str]:
    """The test MCP server over streamable HTTP on a free 127.0.0.1 port: its ``/mcp`` URL."""
    port = free_port()
    process = subprocess.Popen(
        [*STDIO, "http", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        wait_listening(process, port, "the test MCP server")
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        process.terminate()
        process.wait(10)
        assert process.stderr is not None
        process.stderr.close()


async def test_stdio_tools_keep_the_servers_schema_and_errors_become_observations() -> None:
    async with mcp_tools(stdio=STDIO) as tools:
        by_name = {t.name: t for t in tools}
        assert list(by_name) == ["city_population", "fail", "server_pid"]
        city = by_name["city_population"]
        assert isinstance(city, MCPTool)
        assert city.description == "Population of a city in a given year."
        assert city.openai_schema()["function"]["parameters"] == CITY_SCHEMA
        assert "city (string, required): The city's name" in city.describe_parameters()

        assert (await city({"city": "Castmere"})).text == "Castmere had 9120 inhabitants in 2020."
        assert await city.observe('{"city": "Brindlewick", "year": 1990}') == (
            "Brindlewick had 48213 inhabitants in 1990."
        )
        unknown = await city.observe({"city": "Atlantis"})
        assert unknown.startswith("Error: tool 'city_population' failed")
        assert "no census data for 'Atlantis'; known cities: Brindlewick, Castmere" in unknown
        failed = await by_name["fail"].observe({"reason": "the census office is closed"})
        assert "the census office is closed" in failed
        bad = await city.observe({"city": 7, "year": 1800})
        assert "argument 'city': 7 is not of type 'string'" in bad
        assert "argument 'year': 1800 is less than the minimum of 1900" in bad
        assert "parameters of tool 'city_population'" in bad
        assert "missing required argument 'city'" in await city.observe({"year": 2000})
        pid = int((await by_name["server_pid"]()).text)
        assert pid != os.getpid()
        assert int((await by_name["server_pid"]()).text) == pid  # one session for the block
    assert gone(pid), "the stdio server outlived its async with block"


async def test_streamable_http_tools_with_include_and_prefix() -> None:
    with http_server() as url:
        async with mcp_tools(url=url, include=["city_population"], prefix="census.") as tools:
            (city,) = tools
            assert city.name == "census_city_population"  # '.' is not allowed in LM tool names
            assert city.remote_name == "city_population"
            assert city.parameters_schema == CITY_SCHEMA
            assert await city.observe({"city": "Castmere", "year": 2001}) == (
                "Castmere had 9120 inhabitants in 2001."
            )
            assert "no census data" in await city.observe({"city": "Atlantis"})
        with pytest.raises(ConfigError, match=r"has no tool\(s\) nope; its tools: city_pop"):
            await mcp_tools(url=url, include=["nope"]).aload()
        # loaded tools outside any run or block open a connection for the one call
        (alone,) = await mcp_tools(url=url, include=["city_population"]).aload()
        assert "9120" in await alone.observe({"city": "Castmere"})


@tool
def double(n: int) -> int:
    """Double a whole number.

    Args:
        n: The number.
    """
    return 2 * n


def call(name: str, arguments: dict[str, object], thought: str = "") -> Reply:
    return Reply(text=thought, tool_calls=[{"name": name, "arguments": json.dumps(arguments)}])


async def test_react_agent_uses_mcp_and_local_tools_in_a_run_that_owns_the_server(
    server: OpenAIServer, lm: OpenAILM
) -> None:
    tools = await mcp_tools(stdio=STDIO).aload()  # listed, then closed: each run reopens
    agent = ReAct("question -> answer", tools=[*tools, double], protocol="native")
    graph = Graph("census").add("agent", agent)
    server.script(
        [
            call("city_population", {"city": "Castmere"}, "Look the figure up."),
            call("double", {"n": 9120}),
            call("fail", {"reason": "the census office is closed"}),
            call("server_pid", {}),
            call("server_pid", {}),
            call("finish", {"answer": "18240"}),
        ]
    )
    prediction = await graph.run(question="Twice the population of Castmere?", lm=lm)

    assert prediction["answer"] == "18240"
    sent = server.requests[0]["tools"]
    offered = {t["function"]["name"]: t["function"] for t in sent}
    assert list(offered) == ["city_population", "fail", "server_pid", "double", "finish"]
    assert offered["city_population"]["parameters"] == CITY_SCHEMA
    assert offered["city_population"]["description"] == "Population of a city in a given year."
    assert offered["double"]["parameters"]["properties"]["n"]["type"] == "integer"

    def seen(index: int) -> str:
        return json.dumps(server.requests[index]["messages"])

    assert "Castmere had 9120 inhabitants in 2020." in seen(1)
    last = server.requests[2]["messages"][-1]  # the local tool's result, as a tool message
    assert (last["role"], last["content"]) == ("tool", "18240")
    assert "the census office is closed" in seen(3)
    steps = prediction["trajectory"]
    assert steps[2]["observation"].startswith("Error: tool 'fail' failed")
    pid = int(steps[3]["observation"])
    assert steps[4]["observation"] == str(pid)  # the run kept one session for its calls
    assert gone(pid), "the MCP server outlived the graph run"


def test_missing_sdk_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mcp", None)
    with pytest.raises(ImportError, match=r'pip install "rhizome\[mcp\]"'):
        require_mcp()
    with pytest.raises(ImportError, match=r'pip install "rhizome\[mcp\]"'):
        mcp_tools(stdio=STDIO).load()


def test_importing_rhizome_does_not_import_the_sdk() -> None:
    code = "import sys, rhizome, rhizome.tools.agent.mcp; print('mcp' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "exactly one server"),
        ({"stdio": STDIO, "url": "http://127.0.0.1:1/mcp"}, "exactly one server"),
        ({"stdio": "python server.py"}, "as a list"),
        ({"url": "http://127.0.0.1:1/mcp", "env": {"A": "1"}}, "stdio server only"),
        ({"stdio": STDIO, "headers": {"A": "1"}}, "HTTP server"),
    ],
)
def test_bad_options_are_refused(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        mcp_tools(**options)  # type: ignore[arg-type]


async def test_a_server_that_cannot_start_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match=r"could not connect to the MCP server .*nonexistent"):
        await mcp_tools(stdio=["/nonexistent/mcp-server"]).aload()
