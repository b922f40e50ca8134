"""History and Image inputs through ``rhizome serve``: the OpenAPI schema and a JSON round trip."""

from __future__ import annotations

import httpx

from rhizome.engine.call.media import Image
from rhizome.engine.client.openai import OpenAILM
from rhizome.engine.graphs.graph import Graph
from rhizome.nodes.predict import Predict
from rhizome.serving.app import ServeConfig, create_app
from tests.engine.test_media import png
from tests.serve.conftest import TOKEN, serving
from tests.server import OpenAIServer

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_history_and_image_inputs_are_in_the_schema_and_reach_the_lm(
    server: OpenAIServer,
) -> None:
    server.responder = lambda body: '{"answer": "a grey square"}'
    graph = Graph("look").add(
        "answer", Predict("history: History, photo: Image, question -> answer")
    )
    lm = OpenAILM("test-model", base_url=server.url, cache=None, max_retries=0)
    picture = Image.from_bytes(png())
    with serving(create_app(graph, lm=lm, config=ServeConfig(token=TOKEN))) as api:
        schema = httpx.get(f"{api.url}/openapi.json").json()["components"]["schemas"]
        inputs = schema["LookInputs"]
        assert inputs["required"] == ["history", "photo", "question"]
        assert inputs["properties"]["history"]["$ref"].endswith("/History")
        assert inputs["properties"]["photo"]["$ref"].endswith("/Image")
        assert schema["History"]["properties"]["messages"]["type"] == "array"
        assert "data: URL" in schema["Image"]["properties"]["url"]["description"]
        body = {
            "inputs": {
                "history": {"messages": [{"role": "user", "content": "Look closely."}]},
                "photo": {"url": picture.url},
                "question": "What is it?",
            },
            "trace": True,
        }
        reply = httpx.post(f"{api.url}/v1/predict", json=body, headers=AUTH)
        assert reply.status_code == 200, reply.text
        assert reply.json()["outputs"] == {"answer": "a grey square"}
        record = reply.json()["trace"]["records"][0]
        assert record["inputs"]["photo"]["url"] == picture.url
        assert record["inputs"]["history"]["messages"][0]["content"] == "Look closely."
        bad = {**body, "inputs": {**body["inputs"], "photo": {"url": "file:///etc/passwd"}}}
        refused = httpx.post(f"{api.url}/v1/predict", json=bad, headers=AUTH)
        assert refused.status_code == 422
        assert "http(s) URL or a data: URL" in refused.text
    messages = server.requests[0]["messages"]
    assert messages[1] == {"role": "user", "content": "Look closely."}
    parts = messages[2]["content"]
    assert [p["type"] for p in parts] == ["text", "image_url", "text"]
    assert parts[1]["image_url"]["url"] == picture.url
    assert server.request_count == 1
