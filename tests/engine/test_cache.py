"""The SQLite response cache, alone and behind OpenAILM against the real test server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from rhizome.engine.client.cache import ResponseCache, default_cache_path
from rhizome.engine.client.openai import OpenAILM
from rhizome.engine.client.protocol import LMRequest
from rhizome.engine.errors import LMStatusError
from tests.server import OpenAIServer, Reply


def ask(text: str = "hello there", **options: Any) -> LMRequest:
    return LMRequest(messages=({"role": "user", "content": text},), **options)


def cached_lm(server: OpenAIServer, cache: ResponseCache, **options: Any) -> OpenAILM:
    return OpenAILM("test-model", base_url=server.url, cache=cache, backoff=0.01, **options)


async def test_hit_avoids_a_request(server: OpenAIServer, tmp_cache: ResponseCache) -> None:
    lm = cached_lm(server, tmp_cache)
    server.script(["first answer", "second answer"])
    fresh = await lm.complete(ask())
    again = await lm.complete(ask())
    await lm.aclose()
    assert server.request_count == 1
    assert (fresh.text, fresh.cached) == ("first answer", False)
    assert (again.text, again.cached) == ("first answer", True)
    assert again.usage == fresh.usage
    usage = lm.usage.snapshot()
    assert (usage["calls"], usage["cache_hits"]) == (1, 1)
    assert lm.inspect_history(1)[0].response == again


async def test_sample_index_and_fields_are_part_of_the_key(
    server: OpenAIServer, tmp_cache: ResponseCache
) -> None:
    lm = cached_lm(server, tmp_cache)
    server.responder = lambda body: f"reply {server.request_count}"
    base = await lm.complete(ask(), sample=0)
    other_sample = await lm.complete(ask(), sample=1)
    other_temperature = await lm.complete(ask(temperature=0.5), sample=0)
    assert server.request_count == 3
    assert len({base.text, other_sample.text, other_temperature.text}) == 3
    assert (await lm.complete(ask(), sample=1)).text == other_sample.text
    assert server.request_count == 3
    await lm.aclose()


async def test_n_samples_cached_as_one_choice_list(
    server: OpenAIServer, tmp_cache: ResponseCache
) -> None:
    lm = cached_lm(server, tmp_cache)
    server.responder = lambda body: f"choice {body['_choice_index']}"
    first = await lm.complete(ask(n=3))
    second = await lm.complete(ask(n=3))
    await lm.aclose()
    assert server.request_count == 1
    assert second.cached
    assert second.choices == first.choices
    assert len(second.choices) == 3


async def test_tool_calls_survive_the_cache(server: OpenAIServer, tmp_cache: ResponseCache) -> None:
    lm = cached_lm(server, tmp_cache)
    server.script([Reply(tool_calls=[{"name": "calc", "arguments": '{"x": 1}'}])])
    first = await lm.complete(ask())
    second = await lm.complete(ask())
    await lm.aclose()
    assert second.cached
    assert second.choices[0].tool_calls == first.choices[0].tool_calls
    assert second.choices[0].tool_calls[0].name == "calc"


async def test_errors_are_not_cached(server: OpenAIServer, tmp_cache: ResponseCache) -> None:
    lm = cached_lm(server, tmp_cache, max_retries=0)
    server.script([Reply(status=400, text="bad")])
    with pytest.raises(LMStatusError):
        await lm.complete(ask())
    assert (await lm.complete(ask())).text == "ok"
    assert server.request_count == 2
    await lm.aclose()


async def test_shared_by_two_clients_on_one_file(server: OpenAIServer, tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite"
    one, two = ResponseCache(path), ResponseCache(path)
    first = cached_lm(server, one)
    second = cached_lm(server, two)
    other_model = OpenAILM("other-model", base_url=server.url, cache=two)
    server.responder = lambda body: f"answer {server.request_count}"
    made = await first.complete(ask())
    reused = await second.complete(ask())
    different = await other_model.complete(ask())
    for lm in (first, second, other_model):
        await lm.aclose()
    one.close()
    two.close()
    assert reused.cached
    assert reused.text == made.text
    assert not different.cached
    assert server.request_count == 2


async def test_many_tasks_share_one_cache(tmp_cache: ResponseCache) -> None:
    async def write_then_read(i: int) -> None:
        await tmp_cache.put(f"key{i}", f'"value {i}"')
        assert await tmp_cache.get(f"key{i}") == f'"value {i}"'

    async with anyio.create_task_group() as group:
        for i in range(200):
            group.start_soon(write_then_read, i)
    assert len(tmp_cache) == 200
    assert await tmp_cache.get("missing") is None


async def test_threads_and_reopening(tmp_path: Path) -> None:
    path = tmp_path / "threads.sqlite"
    cache = ResponseCache(path)
    await anyio.to_thread.run_sync(cache.put_sync, "from-thread", "1")
    await cache.put("from-loop", "2")
    cache.close()
    reopened = ResponseCache(path)
    assert await reopened.get("from-thread") == "1"
    assert await anyio.to_thread.run_sync(reopened.get_sync, "from-loop") == "2"
    reopened.close()


def test_shared_between_processes(tmp_path: Path) -> None:
    path = tmp_path / "processes.sqlite"
    code = (
        "import sys\n"
        "from rhizome.engine.client.cache import ResponseCache\n"
        "cache = ResponseCache(sys.argv[1])\n"
        "for i in range(100):\n"
        "    cache.put_sync(f'{sys.argv[2]}{i}', str(i))\n"
    )
    workers = [subprocess.Popen([sys.executable, "-c", code, str(path), prefix]) for prefix in "ab"]
    cache = ResponseCache(path)
    for i in range(100):
        cache.put_sync(f"main{i}", str(i))
    assert [worker.wait(timeout=60) for worker in workers] == [0, 0]
    assert len(cache) == 300
    assert cache.get_sync("b99") == "99"
    cache.close()


async def test_corrupt_file_is_moved_aside(server: OpenAIServer, tmp_path: Path) -> None:
    path = tmp_path / "broken.sqlite"
    path.write_bytes(b"this is not an sqlite database at all " * 50)
    cache = ResponseCache(path)
    lm = cached_lm(server, cache)
    with pytest.warns(RuntimeWarning, match="unreadable"):
        first = await lm.complete(ask())
    second = await lm.complete(ask())
    await lm.aclose()
    cache.close()
    assert (first.cached, second.cached) == (False, True)
    (moved,) = [p for p in os.listdir(tmp_path) if p.startswith("broken.sqlite.corrupt-")]
    assert (tmp_path / moved).read_bytes().startswith(b"this is not an sqlite database")
    assert server.request_count == 1


def test_environment_switches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RHIZOME_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert default_cache_path() == tmp_path / "elsewhere" / "responses.sqlite"
    lm = OpenAILM("m", base_url="http://127.0.0.1:9/v1")
    assert lm.cache is not None
    assert lm.cache.path == default_cache_path()
    monkeypatch.setenv("RHIZOME_CACHE", "0")
    assert OpenAILM("m", base_url="http://127.0.0.1:9/v1").cache is None
    assert OpenAILM("m", base_url="http://127.0.0.1:9/v1", cache=None).cache is None


async def test_cache_namespace_survives_a_port_change(
    server: OpenAIServer, tmp_cache: ResponseCache
) -> None:
    request = LMRequest(messages=({"role": "user", "content": "hello"},))
    first = OpenAILM("m", base_url=server.url, cache=tmp_cache, cache_namespace="local:m")
    await first.complete(request)
    await first.aclose()
    with OpenAIServer() as other:  # same model, new port: a restarted local server
        second = OpenAILM("m", base_url=other.url, cache=tmp_cache, cache_namespace="local:m")
        reply = await second.complete(request)
        await second.aclose()
        assert reply.cached
        assert other.request_count == 0
        plain = OpenAILM("m", base_url=other.url, cache=tmp_cache)
        assert not (await plain.complete(request)).cached
        await plain.aclose()
        assert other.request_count == 1
