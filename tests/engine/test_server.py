"""The OpenAI-compatible test server itself, spoken to with plain httpx."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx

from tests.server import OpenAIServer, Reply

BODY: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "a b c"}]}


async def test_models_and_chat_endpoints(server: OpenAIServer) -> None:
    async with httpx.AsyncClient(base_url=server.url) as client:
        models = (await client.get("/models")).json()
        reply = (await client.post("/chat/completions", json=BODY)).json()
        missing = await client.post("/nowhere", json=BODY)
    assert models["data"][0]["id"] == "test-model"
    assert reply["choices"][0]["message"] == {"role": "assistant", "content": "ok"}
    assert reply["usage"] == {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
    assert missing.status_code == 404
    assert server.request_count == 1
    assert server.requests == [BODY]


async def test_script_comes_before_responder(server: OpenAIServer) -> None:
    server.responder = lambda body: f"from responder {body['_choice_index']}"
    server.script([Reply(status=429, text="slow down", headers={"Retry-After": "3"}), "one"])
    async with httpx.AsyncClient(base_url=server.url) as client:
        limited = await client.post("/chat/completions", json=BODY)
        texts = []
        for _ in range(2):
            reply = (await client.post("/chat/completions", json=BODY)).json()
            texts.append(reply["choices"][0]["message"]["content"])
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "3"
    assert limited.json()["error"]["message"] == "slow down"
    assert texts == ["one", "from responder 0"]


async def test_responder_errors_become_500(server: OpenAIServer) -> None:
    def broken(body: dict[str, Any]) -> str:
        raise KeyError("oops")

    server.responder = broken
    async with httpx.AsyncClient(base_url=server.url) as client:
        reply = await client.post("/chat/completions", json=BODY)
    assert reply.status_code == 500
    assert isinstance(server.errors[0], KeyError)


async def post_twice(port: int) -> list[bytes]:
    """Two requests over one raw keep-alive connection; the two response bodies."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    payload = json.dumps(BODY).encode()
    head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {len(payload)}"
    bodies = []
    for _ in range(2):
        writer.write(head.encode() + b"\r\n\r\n" + payload)
        lines = (await reader.readuntil(b"\r\n\r\n")).decode().split("\r\n")
        assert lines[0] == "HTTP/1.1 200 OK"
        length = next(int(x.split(":")[1]) for x in lines if x.lower().startswith("content-length"))
        bodies.append(await reader.readexactly(length))
    writer.close()
    await writer.wait_closed()
    return bodies


async def test_hundreds_of_keep_alive_connections(server: OpenAIServer) -> None:
    server.responder = lambda body: Reply(text="done", delay=0.2)
    results = await asyncio.gather(*(post_twice(server.port) for _ in range(300)))
    assert all(
        json.loads(b)["choices"][0]["message"]["content"] == "done" for r in results for b in r
    )
    assert server.request_count == 600
    assert server.max_in_flight == 300
    assert server.connections_opened == 300
