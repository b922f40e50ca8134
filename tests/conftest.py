"""Shared fixtures: a real OpenAI-compatible server on 127.0.0.1 and a client for it.

Any test under ``tests/`` can ask for them::

    async def test_something(server, lm):
        server.responder = lambda body: "the answer"   # or server.script([...])
        reply = await lm.complete(request)
        assert server.request_count == 1

``server`` is an :class:`tests.server.OpenAIServer` (``server.Reply`` scripts
errors, delays, tool calls ...); ``lm`` is an
:class:`~rhizome.engine.client.openai.OpenAILM` on it with no response cache and
short retry waits. Every test session writes the default response cache to a
temporary folder, never to the user's cache.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from rhizome.engine.call import endpoints
from rhizome.engine.client.cache import ResponseCache
from rhizome.engine.client.openai import OpenAILM
from tests.server import OpenAIServer


@pytest.fixture(autouse=True)
def _fresh_endpoint_memory() -> None:
    """Forget what earlier tests taught the process about endpoints (refused schemas).

    Test servers listen on ephemeral ports that the OS reuses, so without this a
    later test's server could inherit an earlier one's remembered answer.
    """
    endpoints.forget()


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Point the default response cache at a temporary folder for the whole session."""
    folder = tmp_path_factory.mktemp("rhizome-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RHIZOME_CACHE_DIR", str(folder))
        yield folder


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    """A started OpenAI-compatible test server; stopped after the test."""
    with OpenAIServer() as running:
        yield running


@pytest.fixture
async def lm(server: OpenAIServer) -> AsyncIterator[OpenAILM]:
    """An OpenAILM on ``server``: model ``test-model``, no cache, 10 ms first retry wait."""
    client = OpenAILM(model="test-model", base_url=server.url, cache=None, backoff=0.01)
    yield client
    await client.aclose()


@pytest.fixture
def tmp_cache(tmp_path: Path) -> Iterator[ResponseCache]:
    """A response cache in a fresh temporary file."""
    cache = ResponseCache(tmp_path / "responses.sqlite")
    yield cache
    cache.close()
