"""``rhizome serve --mcp``: a program served as an MCP tool, called by MCP clients.

The server is a real subprocess (``python -m rhizome.cli serve ... --mcp``);
the program's LM is the OpenAI-compatible test server. Over stdio the SDK's own
client drives it; over streamable HTTP rhizome's MCP tools do, with a token.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from mcp import Client, StdioServerParameters

from rhizome.engine.errors import ConfigError
from rhizome.tools.agent.mcp import mcp_tools
from tests.serve.conftest import free_port, wait_listening
from tests.server import OpenAIServer, Reply

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "mcp-secret"


def serve_command(server: OpenAIServer, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "rhizome.cli",
        "serve",
        "rhizome.examples:build",
        "--base-url",
        server.url,
        "--model",
        "test-model",
        *extra,
    ]


def capitals(body: dict) -> str | Reply:
    text = json.dumps(body["messages"])
    if "Capital of France?" in text:
        return json.dumps({"answer": "Paris"})
    return Reply(status=400, text="the model refuses")


@pytest.mark.slow
async def test_stdio_mcp_server_runs_the_program_for_the_sdk_client(server: OpenAIServer) -> None:
    server.responder = capitals
    command = serve_command(server, "--mcp")
    params = StdioServerParameters(
        command=command[0],
        args=command[1:],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "RHIZOME_CACHE_DIR": os.environ["RHIZOME_CACHE_DIR"]},
    )
    async with Client(params, read_timeout_seconds=30) as client:
        (tool,) = (await client.list_tools()).tools
        assert tool.name == "qa"
        assert "takes question; gives answer" in (tool.description or "")
        assert tool.input_schema["properties"]["question"]["type"] == "string"
        assert tool.input_schema["required"] == ["question"]
        assert tool.input_schema["additionalProperties"] is False
        assert tool.output_schema is not None
        assert "answer" in tool.output_schema["properties"]

        result = await client.call_tool("qa", {"question": "Capital of France?"})
        assert not result.is_error
        assert result.structured_content == {"answer": "Paris"}
        assert json.loads(result.content[0].text) == {"answer": "Paris"}  # type: ignore[union-attr]
        assert "Capital of France?" in json.dumps(server.requests[-1]["messages"])

        bad = await client.call_tool("qa", {"query": "Capital of France?"})
        assert bad.is_error
        text = bad.content[0].text  # type: ignore[union-attr]
        assert "question: Field required; query: unknown field" in text

        refused = await client.call_tool("qa", {"question": "Capital of Chad?"})
        assert refused.is_error
        text = refused.content[0].text  # type: ignore[union-attr]
        assert text.startswith("LMStatusError: the language model server failed: HTTP 400")
        assert str(server.port) not in text  # the LM endpoint's address stays private


@contextlib.contextmanager
def http_mcp(server: OpenAIServer) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RHIZOME_SERVE_TOKEN": TOKEN}
    command = serve_command(server, "--mcp", "http", "--port", str(port), "--log-level", "warning")
    process = subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    try:
        wait_listening(process, port, "rhizome serve --mcp http")
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        process.terminate()
        assert process.wait(15) == 0, "SIGTERM did not stop the server cleanly"
        assert process.stderr is not None
        process.stderr.close()


@pytest.mark.slow
async def test_http_mcp_server_behind_a_token_called_by_rhizome_mcp_tools(
    server: OpenAIServer,
) -> None:
    server.responder = capitals
    with http_mcp(server) as url:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        async with mcp_tools(url=url, headers=auth) as tools:
            (qa,) = tools
            assert qa.parameters_schema["required"] == ["question"]
            reply = await qa.observe({"question": "Capital of France?"})
            assert json.loads(reply) == {"answer": "Paris"}
            missing = await qa.observe({})
            assert "tool 'qa': missing required argument 'question'" in missing
        with pytest.raises(ConfigError, match="could not connect"):
            await mcp_tools(url=url).aload()  # no token: 401
