"""Issue 15: a 502 tells API clients what failed, never where the LM server is."""

from __future__ import annotations

import json
import logging

import httpx
import pytest

from rhizome.engine.client.openai import OpenAILM
from rhizome.engine.graphs.graph import Graph
from rhizome.examples import build
from rhizome.nodes.function import FunctionNode
from rhizome.serving.app import ServeConfig, create_app
from rhizome.serving.middleware import public_trace
from tests.serve.conftest import free_port, serving
from tests.server import OpenAIServer, Reply


def _predict(url: str, *, trace: bool = False) -> httpx.Response:
    body = {"inputs": {"question": "x"}, "trace": trace}
    return httpx.post(f"{url}/v1/predict", json=body, timeout=20)


def test_an_lm_status_error_hides_the_url_and_logs_it(
    server: OpenAIServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.responder = lambda body: Reply(status=500, text="GPU 3 on node-17 fell over")
    lm = OpenAILM("test-model", base_url=server.url, cache=None, max_retries=0)
    app = create_app(build(), lm=lm)
    with caplog.at_level(logging.ERROR, "rhizome.serving.app"), serving(app) as api:
        reply = _predict(api.url, trace=True)
    assert reply.status_code == 502
    text = reply.text
    host_port = server.url.split("://", 1)[1]
    assert host_port not in text
    assert "127.0.0.1" not in text
    assert "node-17" not in text
    error = reply.json()["error"]
    assert error["message"].startswith("the language model server failed: HTTP 500")
    assert (error["type"], error["status"], error["node"]) == ("LMStatusError", 500, "answer")
    request_id = error["request_id"]
    assert request_id in error["message"]
    logged = [r.getMessage() for r in caplog.records if request_id in r.getMessage()]
    assert logged, "the full error is logged under the request id"
    assert host_port in logged[0]
    assert "node-17" in logged[0]


def test_an_unreachable_lm_server_is_not_named_in_the_body(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()  # nothing listens there
    lm = OpenAILM("m", base_url=f"http://127.0.0.1:{port}/v1", cache=None, max_retries=0)
    app = create_app(build(), lm=lm)
    with caplog.at_level(logging.ERROR, "rhizome.serving.app"), serving(app) as api:
        reply = _predict(api.url, trace=True)
    assert reply.status_code == 502
    assert str(port) not in reply.text
    error = reply.json()["error"]
    assert error["message"].startswith("the language model server could not be reached")
    assert "trace" in reply.json()
    trace = json.dumps(reply.json()["trace"])
    assert "LMConnectionError: the language model server could not be reached" in trace
    assert any(str(port) in r.getMessage() for r in caplog.records)


def test_batch_lines_hide_the_url_too(server: OpenAIServer) -> None:
    server.responder = lambda body: Reply(status=503, text="overloaded")
    lm = OpenAILM("test-model", base_url=server.url, cache=None, max_retries=0)
    with serving(create_app(build(), lm=lm, config=ServeConfig())) as api:
        reply = httpx.post(
            f"{api.url}/v1/batch", json={"examples": [{"question": "a"}]}, timeout=20
        )
    (line,) = [json.loads(x) for x in reply.text.splitlines()]
    assert server.url.split("://", 1)[1] not in reply.text
    assert line["error"]["message"].startswith("the language model server failed: HTTP 503")
    assert line["error"]["request_id"]


def test_other_urls_in_trace_errors_are_masked() -> None:
    trace = {
        "error": "NodeError: node 'search' failed: could not reach https://search.internal:9200/x",
        "records": [{"node": "search", "error": "GET http://10.0.0.7/q failed", "calls": []}],
    }
    clean = json.dumps(public_trace(trace, None))
    assert "search.internal" not in clean
    assert "10.0.0.7" not in clean
    assert clean.count("<url hidden>") == 2


def test_urls_in_other_failures_are_masked_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    def lookup(question: str) -> str:
        raise ConnectionError("could not reach http://search.internal:9200/index")

    graph = Graph("tool", outputs=["answer"]).add(
        "lookup", FunctionNode(lookup, outputs=["answer"])
    )
    with caplog.at_level(logging.ERROR, "rhizome.serving.app"), serving(create_app(graph)) as api:
        reply = _predict(api.url)
    assert reply.status_code == 500
    assert "search.internal" not in reply.text
    error = reply.json()["error"]
    assert error["node"] == "lookup"
    assert "<url hidden>" in error["message"]
    assert any(
        error["request_id"] in r.getMessage() and "search.internal" in r.getMessage()
        for r in caplog.records
    )
