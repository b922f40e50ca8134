"""The HTTP API over real HTTP: predict, batch streaming, auth, validation, limits, metrics."""

from __future__ import annotations

import json
import re
import threading
import time

import httpx

from rhizome.serving.app import ServeConfig
from tests.serve.conftest import TOKEN, Served, serve_example
from tests.server import OpenAIServer, Reply

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_predict_answers_with_outputs_and_usage(api: Served, server: OpenAIServer) -> None:
    reply = httpx.post(
        f"{api.url}/v1/predict", json={"inputs": {"question": "Capital of France?"}}, headers=AUTH
    )
    assert reply.status_code == 200
    body = reply.json()
    assert body["outputs"] == {"answer": "Paris"}
    assert body["usage"]["calls"] == 1
    assert body["usage"]["completion_tokens"] > 0
    assert "Capital of France?" in json.dumps(server.requests[0]["messages"])


def test_predict_can_return_the_trace(api: Served) -> None:
    body = {"inputs": {"question": "Capital of France?"}, "trace": True}
    reply = httpx.post(f"{api.url}/v1/predict", json=body, headers=AUTH).json()
    assert [r["node"] for r in reply["trace"]["records"]] == ["answer"]


def test_missing_token_is_401(api: Served, server: OpenAIServer) -> None:
    reply = httpx.post(f"{api.url}/v1/predict", json={"inputs": {"question": "x"}})
    assert reply.status_code == 401
    assert reply.headers["www-authenticate"].startswith("Bearer")
    assert "missing bearer token" in reply.json()["error"]["message"]
    assert server.request_count == 0


def test_wrong_token_is_401(api: Served) -> None:
    for header in ("Bearer wrong", f"Basic {TOKEN}", TOKEN):
        reply = httpx.post(
            f"{api.url}/v1/predict",
            json={"inputs": {"question": "x"}},
            headers={"Authorization": header},
        )
        assert reply.status_code == 401, header
        assert reply.json()["error"]["message"] == "invalid bearer token"


def test_metrics_need_the_token_but_health_and_docs_do_not(api: Served) -> None:
    assert httpx.get(f"{api.url}/metrics").status_code == 401
    assert httpx.get(f"{api.url}/healthz").json() == {"status": "ok", "program": "qa"}
    schema = httpx.get(f"{api.url}/openapi.json").json()
    inputs = schema["components"]["schemas"]["QaInputs"]
    assert inputs["required"] == ["question"]
    assert "/v1/batch" in schema["paths"]


def test_docs_page_is_self_contained(api: Served) -> None:
    """/docs works offline: no script, style or font from another host, only openapi.json."""
    reply = httpx.get(f"{api.url}/docs")
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/html")
    page = reply.text
    assert "/openapi.json" in page
    assert re.findall(r"(?:src|href)\s*=|@import|https?://", page) == []
    assert httpx.get(f"{api.url}/redoc", headers=AUTH).status_code == 404


def test_missing_field_is_422_naming_it(api: Served, server: OpenAIServer) -> None:
    reply = httpx.post(f"{api.url}/v1/predict", json={"inputs": {}}, headers=AUTH)
    assert reply.status_code == 422
    error = reply.json()["error"]
    assert error["fields"] == [{"field": "inputs.question", "message": "Field required"}]
    assert "inputs.question" in error["message"]
    assert server.request_count == 0


def test_unknown_and_mistyped_fields_are_422(api: Served) -> None:
    body = {"inputs": {"question": ["not", "text"], "qestion": "typo"}}
    reply = httpx.post(f"{api.url}/v1/predict", json=body, headers=AUTH)
    assert reply.status_code == 422
    fields = {f["field"]: f["message"] for f in reply.json()["error"]["fields"]}
    assert "valid string" in fields["inputs.question"]
    assert fields["inputs.qestion"] == "unknown field; the program's inputs are: question"


def test_invalid_json_is_422(api: Served) -> None:
    reply = httpx.post(
        f"{api.url}/v1/predict",
        content=b'{"inputs": ',
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert reply.status_code == 422
    assert reply.json()["error"]["fields"][0]["field"] == "body"


def test_oversized_body_is_413(api: Served, server: OpenAIServer) -> None:
    body = {"inputs": {"question": "x" * 5000}}
    reply = httpx.post(f"{api.url}/v1/predict", json=body, headers=AUTH)
    assert reply.status_code == 413
    assert reply.json()["error"]["type"] == "request_too_large"

    def chunks():  # no Content-Length: the limit holds on the bytes received
        yield b'{"inputs": {"question": "'
        for _ in range(10):
            yield b"y" * 1000
        yield b'"}}'

    reply = httpx.post(
        f"{api.url}/v1/predict",
        content=chunks(),
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert reply.status_code == 413
    assert server.request_count == 0


def test_batch_streams_ndjson_as_runs_finish(api: Served, server: OpenAIServer) -> None:
    def respond(body: dict) -> Reply:
        slow = "slow" in json.dumps(body["messages"][-1])
        return Reply(text='{"answer": "Paris"}', delay=0.6 if slow else 0.0)

    server.responder = respond
    # Until an endpoint has accepted one structured-output request, such requests go one
    # at a time (a server that refuses them sees one refusal, not a burst): warm it up.
    warm = httpx.post(
        f"{api.url}/v1/predict", json={"inputs": {"question": "warm"}}, headers=AUTH
    )
    assert warm.status_code == 200
    examples = [{"question": "slow one"}, {"question": "fast one"}, {"question": "fast two"}]
    arrivals: list[tuple[float, dict]] = []
    start = time.monotonic()
    with httpx.stream(
        "POST", f"{api.url}/v1/batch", json={"examples": examples}, headers=AUTH
    ) as reply:
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("application/x-ndjson")
        for line in reply.iter_lines():
            arrivals.append((time.monotonic() - start, json.loads(line)))
    indices = [row["index"] for _, row in arrivals]
    assert sorted(indices) == [0, 1, 2]
    assert indices[-1] == 0  # the slow example comes last
    assert arrivals[0][0] < 0.5  # fast results arrive before the slow one is done
    assert all(
        row["outputs"] == {"answer": "Paris"} and row["error"] is None for _, row in arrivals
    )


def test_batch_reports_failures_per_line(api: Served, server: OpenAIServer) -> None:
    server.responder = lambda body: (
        Reply(status=400, text="bad request")
        if "boom" in json.dumps(body["messages"][-1])
        else '{"answer": "Paris"}'
    )
    examples = [{"question": "boom"}, {"question": "fine"}]
    reply = httpx.post(f"{api.url}/v1/batch", json={"examples": examples}, headers=AUTH)
    rows = {r["index"]: r for r in map(json.loads, reply.text.splitlines())}
    assert rows[1]["outputs"] == {"answer": "Paris"}
    assert rows[0]["outputs"] is None
    assert rows[0]["error"]["node"] == "answer"


def test_batch_validates_every_example(api: Served, server: OpenAIServer) -> None:
    examples = [{"question": "ok"}, {"qestion": "typo"}]
    reply = httpx.post(f"{api.url}/v1/batch", json={"examples": examples}, headers=AUTH)
    assert reply.status_code == 422
    fields = [f["field"] for f in reply.json()["error"]["fields"]]
    assert "examples.1.question" in fields
    assert server.request_count == 0


def test_lm_failure_is_502_naming_the_node(api: Served, server: OpenAIServer) -> None:
    server.responder = lambda body: Reply(status=400, text="model not found")
    reply = httpx.post(f"{api.url}/v1/predict", json={"inputs": {"question": "x"}}, headers=AUTH)
    assert reply.status_code == 502
    error = reply.json()["error"]
    assert error["node"] == "answer"
    assert error["message"].startswith("the language model server failed: HTTP 400")
    assert "model not found" not in error["message"]  # the upstream body goes to the log


def _metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_counters_move(api: Served) -> None:
    before = httpx.get(f"{api.url}/metrics", headers=AUTH).text
    for question in ("a", "b"):
        httpx.post(f"{api.url}/v1/predict", json={"inputs": {"question": question}}, headers=AUTH)
    httpx.post(f"{api.url}/v1/predict", json={"inputs": {}}, headers=AUTH)
    after = httpx.get(f"{api.url}/metrics", headers=AUTH)
    assert after.headers["content-type"].startswith("text/plain")
    text = after.text
    ok = 'rhizome_http_requests_total{method="POST",route="/v1/predict",status="200"}'
    assert _metric(text, ok) == _metric(before, ok) + 2
    bad = 'rhizome_http_requests_total{method="POST",route="/v1/predict",status="422"}'
    assert _metric(text, bad) == 1
    assert _metric(text, "rhizome_lm_calls_total") == 2
    assert _metric(text, 'rhizome_runs_total{outcome="ok"}') == 2
    assert _metric(text, "rhizome_lm_tokens_total") > 0
    count = 'rhizome_http_request_duration_seconds_count{route="/v1/predict"}'
    assert _metric(text, count) == 3


def test_concurrency_limit_answers_503_when_the_queue_is_full(server: OpenAIServer) -> None:
    server.responder = lambda body: Reply(text='{"answer": "Paris"}', delay=0.8)
    config = ServeConfig(concurrency=1, max_queue=0)
    with serve_example(server, config) as served:
        slow: list[httpx.Response] = []
        thread = threading.Thread(
            target=lambda: slow.append(
                httpx.post(f"{served.url}/v1/predict", json={"inputs": {"question": "a"}})
            )
        )
        thread.start()
        _wait_for(lambda: server.request_count == 1)
        busy = httpx.post(f"{served.url}/v1/predict", json={"inputs": {"question": "b"}})
        thread.join(10)
    assert busy.status_code == 503
    assert busy.headers["retry-after"] == "1"
    assert slow[0].status_code == 200
    assert server.request_count == 1


def test_graceful_shutdown_finishes_the_request_in_flight(server: OpenAIServer) -> None:
    server.responder = lambda body: Reply(text='{"answer": "Paris"}', delay=1.0)
    with serve_example(server, ServeConfig()) as served:
        done: list[httpx.Response] = []
        thread = threading.Thread(
            target=lambda: done.append(
                httpx.post(
                    f"{served.url}/v1/predict", json={"inputs": {"question": "a"}}, timeout=20
                )
            )
        )
        thread.start()
        _wait_for(lambda: server.request_count == 1)
        served.stop()  # what SIGTERM does: stop accepting, finish what is in flight
        thread.join(15)
        assert not served.thread.is_alive()
        refused = _refused(served.url)
    assert done[0].status_code == 200
    assert done[0].json()["outputs"] == {"answer": "Paris"}
    assert refused


def _refused(url: str) -> bool:
    try:
        httpx.get(f"{url}/healthz", timeout=2)
    except httpx.ConnectError:
        return True
    return False


def _wait_for(condition, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.01)


def test_a_run_over_the_timeout_is_504(server: OpenAIServer) -> None:
    server.responder = lambda body: Reply(text='{"answer": "Paris"}', delay=2.0)
    with serve_example(server, ServeConfig(timeout=0.3)) as served:
        start = time.monotonic()
        reply = httpx.post(f"{served.url}/v1/predict", json={"inputs": {"question": "a"}})
        elapsed = time.monotonic() - start
    assert reply.status_code == 504
    assert reply.json()["error"]["type"] == "TimeoutError"
    assert elapsed < 1.5


def test_batch_stops_running_when_the_client_goes_away(server: OpenAIServer) -> None:
    server.responder = lambda body: Reply(text='{"answer": "Paris"}', delay=0.3)
    examples = [{"question": f"q{i}"} for i in range(8)]
    with serve_example(server, ServeConfig(concurrency=1)) as served:
        with httpx.stream("POST", f"{served.url}/v1/batch", json={"examples": examples}) as reply:
            first = json.loads(next(reply.iter_lines()))
        time.sleep(1.0)  # long enough for several more runs, had they gone on
        asked = server.request_count
    assert first["outputs"] == {"answer": "Paris"}
    assert asked <= 3
