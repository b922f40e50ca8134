"""A real MCP server for the tests, written with the official SDK.

Run over stdio (``python mcp_server.py``) or streamable HTTP on 127.0.0.1
(``python mcp_server.py http PORT``, endpoint ``/mcp``). Its tools:

- ``city_population(city, year=2020)``: a made-up figure, from a fixed table;
- ``fail(reason)``: always fails with ``reason`` (the server reports ``isError``);
- ``server_pid()``: the server process id, so tests can check it is gone after use.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field

POPULATIONS = {"Brindlewick": 48213, "Castmere": 9120}

server = MCPServer("rhizome-test-tools", log_level="WARNING")


@server.tool(description="Population of a city in a given year.")
def city_population(
    city: Annotated[str, Field(description="The city's name, e.g. Castmere.")],
    year: Annotated[int, Field(description="The census year.", ge=1900)] = 2020,
) -> str:
    if city not in POPULATIONS:
        raise ToolError(f"no census data for {city!r}; known cities: {', '.join(POPULATIONS)}")
    return f"{city} had {POPULATIONS[city]} inhabitants in {year}."


@server.tool(description="Always fails, with the reason given.")
def fail(reason: str) -> str:
    raise ToolError(reason)


@server.tool(description="The id of this server process.")
def server_pid() -> int:
    return os.getpid()


if __name__ == "__main__":
    if sys.argv[1:2] == ["http"]:
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        server.run()
