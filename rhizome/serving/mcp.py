"""Serve a program as a Model Context Protocol server (``rhizome serve PROGRAM --mcp``).

Other agents (Claude Desktop, an IDE, another rhizome ReAct agent through
:func:`rhizome.tools.agent.mcp.mcp_tools`) then call the program as one MCP tool:

- its name is the program's name (``qa``), its description says what it takes and gives;
- its input schema is the program's inputs, as the HTTP API's request bodies
  type them (required unless optional, unknown fields refused), and its output
  schema the program's outputs;
- a call runs the graph through the same runner as ``POST /v1/predict`` (the
  shared slots, the timeout, telemetry, metrics); the reply carries the outputs
  as JSON text and as structured content, and a failed run or bad arguments
  come back as an error result (``isError``) whose text names the problem,
  never the LM endpoint's address.

Two transports: ``stdio`` (the client starts ``rhizome serve ... --mcp`` as its
subprocess) and streamable HTTP at ``/mcp`` (``--mcp http``, behind the same
bearer token and body limit as the HTTP API). Needs ``pip install "rhizome[serve,mcp]"``.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any

from rhizome.engine.errors import ConfigError
from rhizome.serving.app import Runner, ServeConfig
from rhizome.serving.middleware import AuthMiddleware, BodyLimitMiddleware
from rhizome.serving.schema import check_inputs, inputs_model, outputs_model
from rhizome.telemetry import Telemetry
from rhizome.tools.agent.mcp import require_mcp

if TYPE_CHECKING:
    from mcp.server import Server
    from starlette.types import ASGIApp

    from rhizome.engine.client.protocol import LM
    from rhizome.engine.graphs.graph import Graph

__all__ = ("create_mcp_server", "mcp_http_app", "program_tool", "serve_mcp_stdio")


def _tool_name(graph: Graph) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", graph.name)[:64] or "program"


def program_tool(graph: Graph) -> Any:
    """The MCP tool definition of ``graph``: name, description, input and output schemas."""
    from mcp.types import Tool

    inputs = ", ".join(graph.inputs) or "nothing"
    outputs = ", ".join(graph.outputs) or "nothing"
    return Tool(
        name=_tool_name(graph),
        description=f"Runs the rhizome program {graph.name!r}: takes {inputs}; gives {outputs}.",
        input_schema=inputs_model(graph).model_json_schema(by_alias=True),
        output_schema=outputs_model(graph).model_json_schema(by_alias=True),
    )


def create_mcp_server(
    graph: Graph,
    *,
    lm: LM | None = None,
    config: ServeConfig | None = None,
    telemetry: Telemetry | None = None,
) -> Server[Any]:
    """An MCP server (the SDK's low-level ``Server``) with ``graph`` as its one tool.

    Args:
        graph: The program; validated here, so wiring errors surface at start.
        lm: The default LM for nodes not bound to one.
        config: Pacing (``concurrency``, ``timeout``); the HTTP transport also
            reads ``token`` and ``max_body_bytes``.
        telemetry: Where run spans go (default: the global OpenTelemetry provider).

    Raises:
        ImportError: The ``mcp`` extra is not installed (the message names it).
    """
    require_mcp("rhizome serve --mcp")
    from mcp import MCPError
    from mcp.server import Server
    from mcp.types import INVALID_PARAMS, CallToolResult, ListToolsResult, TextContent

    graph.validate()
    runner = Runner(graph, lm, config or ServeConfig(), telemetry or Telemetry())
    tool = program_tool(graph)

    async def list_tools(ctx: Any, params: Any) -> ListToolsResult:
        return ListToolsResult(tools=[tool])

    def failed(message: str) -> CallToolResult:
        return CallToolResult(content=[TextContent(type="text", text=message)], is_error=True)

    async def call_tool(ctx: Any, params: Any) -> CallToolResult:
        if params.name != tool.name:
            raise MCPError(
                INVALID_PARAMS, f"no tool {params.name!r}; this server has {tool.name!r}"
            )
        try:
            inputs = check_inputs(graph, params.arguments or {})
        except ConfigError as exc:
            return failed(str(exc))
        result, _ = await runner.run(inputs, with_trace=False)
        if result["error"] is not None:
            return failed(f"{result['error']['type']}: {result['error']['message']}")
        outputs = result["outputs"]
        text = json.dumps(outputs, ensure_ascii=False)
        return CallToolResult(
            content=[TextContent(type="text", text=text)], structured_content=outputs
        )

    return Server(
        f"rhizome-{graph.name}",
        description=f"The rhizome program {graph.name!r} as an MCP tool.",
        lifespan=_closing(lm),
        get_tool_input_schema=lambda name: tool.input_schema if name == tool.name else None,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
    )


def _closing(lm: LM | None) -> Callable[[Any], AbstractAsyncContextManager[None]]:
    """A server lifespan that closes the LM's connections when the server stops."""

    @asynccontextmanager
    async def lifespan(server: Any) -> AsyncIterator[None]:
        try:
            yield
        finally:
            close = getattr(lm, "aclose", None)
            if close is not None:
                await close()

    return lifespan


async def serve_mcp_stdio(server: Server[Any]) -> None:
    """Serve over this process's stdin and stdout until the client closes them."""
    from mcp.server.stdio import stdio_server

    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


def mcp_http_app(
    server: Server[Any], *, config: ServeConfig | None = None, host: str = "127.0.0.1"
) -> ASGIApp:
    """The streamable HTTP endpoint ``/mcp`` as an ASGI app, behind the token and body limit.

    Args:
        server: From :func:`create_mcp_server`.
        config: ``token`` (bearer token required when set) and ``max_body_bytes``.
        host: The address served; on loopback the SDK refuses other ``Host`` headers
            (DNS rebinding protection).
    """
    config = config or ServeConfig()
    app: ASGIApp = server.streamable_http_app(streamable_http_path="/mcp", host=host)
    app = BodyLimitMiddleware(app, max_bytes=config.max_body_bytes)
    if config.token:
        app = AuthMiddleware(app, token=config.token)
    return app
