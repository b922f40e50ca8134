"""``POST /v1/stream`` end to end: uvicorn on 127.0.0.1, the LM on the SSE test server."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx

from rhizome.serving.app import ServeConfig
from tests.serve.conftest import TOKEN, Served, serve_example
from tests.server import OpenAIServer, Reply

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def read_events(reply: httpx.Response) -> list[tuple[str, dict[str, Any], float]]:
    """``(event name, data, seconds since the request)`` for each server-sent event."""
    start = time.perf_counter()
    found: list[tuple[str, dict[str, Any], float]] = []
    name, data = "", ""
    for line in reply.iter_lines():
        if line.startswith("event: "):
            name = line[len("event: ") :]
        elif line.startswith("data: "):
            data = line[len("data: ") :]
        elif not line and name:
            found.append((name, json.loads(data), time.perf_counter() - start))
            name, data = "", ""
    return found


def test_stream_sends_events_then_the_outputs(api: Served, server: OpenAIServer) -> None:
    answer = "Paris, on the Seine, since the tenth century"
    server.responder = lambda body: Reply(text=json.dumps({"answer": answer}), chunk_delay=0.03)
    body = {"inputs": {"question": "Capital of France?"}}
    with httpx.stream("POST", f"{api.url}/v1/stream", json=body, headers=AUTH) as reply:
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/event-stream")
        events = read_events(reply)
    names = [name for name, _, _ in events]
    assert names[:2] == ["node_started", "lm_call_started"]
    assert names[-3:] == ["lm_call_finished", "node_finished", "run_finished"]
    tokens = [(data, at) for name, data, at in events if name == "token"]
    assert "".join(data["text"] for data, _ in tokens) == answer
    assert {data["field"] for data, _ in tokens} == {"answer"}
    final = events[-1]
    assert final[1]["outputs"] == {"answer": answer}
    assert final[1]["usage"]["calls"] == 1
    # The server sent the tokens while the LM was still writing (15 pieces, 30 ms apart),
    # not all at the end (event times are the server's clock; the client may be starved).
    assert final[1]["time"] - tokens[0][0]["time"] > 0.2
    assert server.requests[0]["stream"] is True


def test_stream_reports_a_failed_run_as_an_error_event(server: OpenAIServer) -> None:
    server.script([Reply(status=503, text="upstream down")])
    with serve_example(server, ServeConfig()) as served:
        body = {"inputs": {"question": "x"}}
        with httpx.stream("POST", f"{served.url}/v1/stream", json=body) as reply:
            events = read_events(reply)
    name, data, _ = events[-1]
    assert name == "error"
    assert data["status"] == 502
    assert "HTTP 503" in data["error"]["message"]
    assert server.url not in json.dumps([d for _, d, _ in events])  # the LM's address stays private


def test_stream_validates_inputs_and_needs_the_token(api: Served, server: OpenAIServer) -> None:
    assert httpx.post(f"{api.url}/v1/stream", json={"inputs": {"question": "x"}}).status_code == 401
    reply = httpx.post(f"{api.url}/v1/stream", json={"inputs": {}}, headers=AUTH)
    assert reply.status_code == 422
    assert reply.json()["error"]["fields"][0]["field"] == "inputs.question"
    assert server.request_count == 0
