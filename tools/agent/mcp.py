"""The tools of a Model Context Protocol server, as rhizome tools.

An MCP server (a subprocess over stdio, or a streamable HTTP endpoint) lists
its tools with a name, a description and a JSON schema of their arguments.
:func:`mcp_tools` connects with the official ``mcp`` SDK and turns each into a
:class:`MCPTool`: the schema is sent to the model as it is (ReAct's function
calling offers it as the tool's ``parameters``), arguments are checked against
it, and a call goes to the server. A server's error, a tool that reports
``isError`` or a broken connection become :class:`~rhizome.tools.agent.tool.ToolError`,
so an agent shows the message to the model as the observation.

Who holds the connection::

    async with mcp_tools(stdio=["python", "server.py"]) as tools:   # this block
        agent = ReAct("question -> answer", tools=[*tools, local_tool])
        await graph.run(question=..., lm=lm)

    tools = mcp_tools(stdio=["python", "server.py"]).load()           # each run
    graph(question=..., lm=lm)   # started on first call, closed when the run ends

``load()`` lists the tools and closes the connection; a graph run (or a batch,
for all its examples) then opens one session when a tool is first called and
closes it, stopping the server process, when the run ends. A call outside any
run or block opens a connection for that call alone.

The SDK is an optional extra: ``pip install "rhizome[mcp]"``; ``import rhizome``
never imports it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import json
import re
import sys
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pydantic

from rhizome.engine.errors import ConfigError
from rhizome.engine.resources import run_resource
from rhizome.tools.agent.tool import Tool, ToolArgumentError, ToolError

if TYPE_CHECKING:
    from mcp import Client

__all__ = ("MCPTool", "MCPToolset", "mcp_tools", "require_mcp")

_INSTALL = 'pip install "rhizome[mcp]"'
_BAD_CHARS = re.compile(r"[^A-Za-z0-9_-]")


def require_mcp(feature: str = "MCP tools") -> None:
    """Raise an ImportError naming the extra when the ``mcp`` SDK is not installed."""
    try:
        import mcp  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            f"{feature} need the official MCP SDK, which is not installed: {_INSTALL}"
        ) from exc


class _AnyArguments(pydantic.BaseModel):
    """Placeholder model: an MCP tool's arguments are checked against its JSON schema."""

    model_config = pydantic.ConfigDict(extra="allow")


class MCPTool(Tool):
    """One tool of an MCP server; calls go to the server through its :class:`MCPToolset`.

    Attributes:
        remote_name: The tool's name on the server (``name`` is made safe for LM APIs).
        toolset: The server connection the tool belongs to.
    """

    def __init__(
        self,
        *,
        name: str,
        remote_name: str,
        description: str,
        schema: Mapping[str, Any],
        toolset: MCPToolset,
    ) -> None:
        super().__init__(name=name, description=description, arguments_model=_AnyArguments)
        self.remote_name = remote_name
        self.toolset = toolset
        self._schema = {"type": "object", "properties": {}, **dict(schema)}

    @functools.cached_property
    def parameters_schema(self) -> dict[str, Any]:
        """The server's JSON schema of the arguments, unchanged."""
        return self._schema

    def validate(self, arguments: Mapping[str, Any] | str | None) -> dict[str, Any]:
        """Decode the arguments and check them against the server's schema."""
        payload: dict[str, Any] = self._decode(arguments)
        validator = _validator(json.dumps(self._schema, sort_keys=True))
        if validator is None:
            return payload
        problems, names = _schema_problems(validator, payload)
        if problems:
            raise ToolArgumentError(
                f"invalid arguments for tool {self.name!r}: {'; '.join(problems)}.\n"
                f"{self.describe_parameters()}",
                tool=self.name,
                arguments=tuple(names),
            )
        return payload

    async def invoke(self, arguments: dict[str, Any]) -> Any:
        """Call the tool on the server; its text content is the value."""
        from mcp import MCPError

        try:
            result = await self.toolset.call(self.remote_name, arguments)
        except MCPError as exc:
            raise ToolError(f"{exc.message} (MCP error {exc.code})", tool=self.name) from exc
        text = _result_text(result)
        if result.is_error:
            raise ToolError(text or "the server reported an error", tool=self.name)
        return text


class MCPToolset:
    """An MCP server to take tools from: how to reach it, and the session when one is open.

    Also named ``mcp_tools``. Enter it (``async with``) to hold one session for
    a block, or call :meth:`load` to list the tools and let each graph run hold
    its own session.

    Args:
        stdio: Start the server as a subprocess: the command and its arguments.
        url: Or reach a streamable HTTP server at this URL (``http://host:port/mcp``).
        env: Extra environment variables for a stdio server (merged over a safe default set).
        cwd: Working folder of a stdio server.
        headers: HTTP headers for a ``url`` server (an ``Authorization`` token...).
        include: Take only these tools (by their names on the server).
        prefix: Put before every tool name, to keep two servers' tools apart.
        timeout: Seconds to wait for any one reply from the server, or None.

    Raises:
        ConfigError: Neither or both of ``stdio`` and ``url``, or options of the other kind.
    """

    def __init__(
        self,
        *,
        stdio: Sequence[str] | None = None,
        url: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        headers: Mapping[str, str] | None = None,
        include: Collection[str] | None = None,
        prefix: str = "",
        timeout: float | None = 60.0,
    ) -> None:
        if (stdio is None) == (url is None):
            raise ConfigError(
                "mcp_tools needs exactly one server: stdio=[command, *args] to start one, "
                "or url='http://host:port/mcp' for a streamable HTTP endpoint"
            )
        if stdio is not None and (isinstance(stdio, str) or not stdio):
            raise ConfigError(
                f"stdio takes the command as a list, e.g. ['python', 'server.py'], got {stdio!r}"
            )
        if url is not None and (env is not None or cwd is not None):
            raise ConfigError("env and cwd apply to a stdio server only, not to url=")
        if stdio is not None and headers is not None:
            raise ConfigError("headers apply to an HTTP server (url=) only, not to stdio=")
        self.stdio = list(stdio) if stdio is not None else None
        self.url = url
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.headers = dict(headers) if headers is not None else None
        self.include = frozenset(include) if include is not None else None
        self.prefix = prefix
        self.timeout = timeout
        self._client: Client | None = None
        self._open: AbstractAsyncContextManager[Client] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        where = f"stdio={self.stdio!r}" if self.stdio is not None else f"url={self.url!r}"
        return f"MCPToolset({where})"

    # ------------------------------------------------------------ sessions

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[Client]:
        """A new session with the server (a new process for stdio), closed after the block."""
        require_mcp()
        from mcp import Client, StdioServerParameters

        if self.stdio is not None:
            params = StdioServerParameters(
                command=self.stdio[0], args=self.stdio[1:], env=self.env, cwd=self.cwd
            )
            client = Client(params, read_timeout_seconds=self.timeout)
        else:
            client = Client(self._http_transport(), read_timeout_seconds=self.timeout)
        connected = False
        try:
            async with client:
                connected = True
                yield client
        except Exception as exc:
            cause = _leaf(exc)
            if connected:  # the block's own error, out of the SDK's task groups' wrapping
                if cause is exc:
                    raise
                raise cause from None
            raise ConfigError(
                f"could not connect to the MCP server {self}: {type(cause).__name__}: {cause}"
            ) from exc

    @asynccontextmanager
    async def _http_transport(self) -> AsyncIterator[Any]:
        """The SDK's streamable HTTP streams, over an HTTP client carrying ``headers``."""
        import httpx2
        from mcp.client.streamable_http import streamable_http_client

        assert self.url is not None
        # The SDK's own defaults: a long read timeout, as a reply may be a held-open stream.
        timeout = httpx2.Timeout(30.0, read=300.0)
        async with (
            httpx2.AsyncClient(headers=self.headers, timeout=timeout) as http,
            streamable_http_client(self.url, http_client=http) as streams,
        ):
            yield streams

    async def call(self, name: str, arguments: dict[str, Any]) -> Any:
        """Call the server's tool ``name``: in the open block, the current run, or alone.

        The block's session serves calls on its own event loop only (a sync
        ``graph(...)`` inside the block runs on another, and gets the run's session).
        """
        if self._client is not None and self._loop is asyncio.get_running_loop():
            return await self._client.call_tool(name, arguments)
        client = await run_resource(self, self.connect)
        if client is not None:
            return await client.call_tool(name, arguments)
        async with self.connect() as alone:
            return await alone.call_tool(name, arguments)

    # ------------------------------------------------------------ listing

    async def __aenter__(self) -> list[MCPTool]:
        if self._open is not None:
            raise ConfigError(f"{self} is already open; leave its block before entering it again")
        opened = self.connect()
        client = await opened.__aenter__()
        self._open, self._client, self._loop = opened, client, asyncio.get_running_loop()
        try:
            return await self._tools(client)
        except BaseException:
            await self.__aexit__(*sys.exc_info())
            raise

    async def __aexit__(self, *exc_info: Any) -> None:
        opened, self._open, self._client = self._open, None, None
        if opened is not None:
            await opened.__aexit__(*exc_info)

    async def aload(self) -> list[MCPTool]:
        """List the server's tools, then close the connection (runs reopen it)."""
        async with self.connect() as client:
            return await self._tools(client)

    def load(self) -> list[MCPTool]:
        """:meth:`aload` from sync code (in a running event loop too, e.g. a notebook)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return anyio.run(self.aload)
        with concurrent.futures.ThreadPoolExecutor(1, "rhizome-mcp") as pool:
            return pool.submit(anyio.run, self.aload).result()

    async def _tools(self, client: Client) -> list[MCPTool]:
        listed = []
        cursor: str | None = None
        while True:
            page = await client.list_tools(cursor=cursor)
            listed.extend(page.tools)
            cursor = page.next_cursor
            if cursor is None:
                break
        if self.include is not None:
            missing = sorted(self.include - {t.name for t in listed})
            if missing:
                known = ", ".join(t.name for t in listed) or "none"
                raise ConfigError(
                    f"the MCP server {self} has no tool(s) {', '.join(missing)}; its tools: {known}"
                )
            listed = [t for t in listed if t.name in self.include]
        return self._wrap(listed)

    def _wrap(self, listed: Sequence[Any]) -> list[MCPTool]:
        tools: dict[str, MCPTool] = {}
        for remote in listed:
            name = _BAD_CHARS.sub("_", f"{self.prefix}{remote.name}")[:64]
            if name in tools:
                raise ConfigError(
                    f"MCP tools {tools[name].remote_name!r} and {remote.name!r} both become "
                    f"{name!r}; pick one with include=[...] or set prefix="
                )
            tools[name] = MCPTool(
                name=name,
                remote_name=remote.name,
                description=remote.description or remote.title or "",
                schema=remote.input_schema,
                toolset=self,
            )
        return list(tools.values())


# The name the examples use: ``async with mcp_tools(stdio=[...]) as tools``.
mcp_tools = MCPToolset


def _result_text(result: Any) -> str:
    """A tool result's content as text: text parts as they are, others described."""
    parts = []
    for block in result.content:
        kind = getattr(block, "type", "")
        if kind == "text":
            parts.append(block.text)
        elif kind == "resource" and hasattr(block.resource, "text"):
            parts.append(block.resource.text)
        elif kind == "resource_link":
            parts.append(f"[resource {block.uri}]")
        else:
            mime = getattr(block, "mime_type", None) or "binary"
            parts.append(f"[{kind} content, {mime}]")
    if not parts and result.structured_content is not None:
        return json.dumps(result.structured_content, ensure_ascii=False, default=str)
    return "\n".join(parts)


def _schema_problems(validator: Any, payload: dict[str, Any]) -> tuple[list[str], list[str]]:
    """What is wrong with ``payload`` by the schema, and the arguments concerned."""
    problems: list[str] = []
    names: list[str] = []
    for error in sorted(validator.iter_errors(payload), key=lambda e: list(e.absolute_path)):
        where = ".".join(str(part) for part in error.absolute_path)
        if error.validator == "required" and isinstance(error.instance, dict):
            absent = [n for n in error.validator_value if n not in error.instance]
            names.extend(f"{where}.{n}" if where else n for n in absent)
            problems.extend(f"missing required argument {n!r}" for n in absent)
            continue
        names.append(where or "(arguments)")
        problems.append(f"argument {where!r}: {error.message}" if where else error.message)
    return problems, names


def _leaf(exc: BaseException) -> BaseException:
    """The one error inside nested single-error groups (the SDK's task groups wrap them)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


@functools.lru_cache(maxsize=256)
def _validator(schema_json: str) -> Any:
    """A JSON-schema validator for a tool's schema, or None when the schema is not valid."""
    import jsonschema

    schema = json.loads(schema_json)
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError:
        return None
    return cls(schema)
