"""History and Image inputs: checked values, chat turns and image parts on the wire, saved demos."""

from __future__ import annotations

import base64
import json
import struct
import zlib
from pathlib import Path
from typing import Any

import pydantic
import pytest

from rhizome.engine.call.adapters import JSONAdapter, TextAdapter
from rhizome.engine.call.media import History, Image
from rhizome.engine.client.openai import OpenAILM
from rhizome.engine.errors import NodeError
from rhizome.engine.example import Example
from rhizome.engine.graphs.graph import Graph
from rhizome.nodes.predict import ChainOfThought, Predict
from rhizome.optimizers.bootstrap import BootstrapFewShot
from rhizome.optimizers.metrics import exact_match
from tests.server import OpenAIServer


def png(width: int = 1, height: int = 1) -> bytes:
    """A real PNG file: grey pixels, built with zlib (no imaging library needed)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = b"".join(b"\x00" + b"\x80" * width for _ in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


CHAT = History(
    messages=[
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Nice to meet you, Ada."},
    ]
)


def roles(body: dict[str, Any]) -> list[str]:
    return [m["role"] for m in body["messages"]]


# ---------------------------------------------------------------- the values


def test_image_from_bytes_path_and_urls(tmp_path: Path) -> None:
    data = png()
    from_bytes = Image.from_bytes(data)
    assert from_bytes.url == "data:image/png;base64," + base64.b64encode(data).decode()
    path = tmp_path / "pixel.png"
    path.write_bytes(data)
    assert Image.from_path(path) == from_bytes
    assert Image.from_url(from_bytes.url) == from_bytes
    assert Image.from_url("https://example.org/cat.jpg").url == "https://example.org/cat.jpg"
    jpeg = Image.from_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 16)
    assert jpeg.url.startswith("data:image/jpeg;base64,")
    assert Image.from_bytes(b"GIF89a" + b"\x00" * 8).url.startswith("data:image/gif;")
    webp = b"RIFF\x10\x00\x00\x00WEBPVP8 " + b"\x00" * 8
    assert Image.from_bytes(webp).url.startswith("data:image/webp;")


def test_image_refuses_unsupported_formats_and_sizes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a PNG, JPEG, GIF or WebP image"):
        Image.from_bytes(b"BM\x00\x00 a bitmap")
    with pytest.raises(ValueError, match="over the 0 MiB limit"):
        Image.from_bytes(png(64, 64), max_bytes=10)
    with pytest.raises(ValueError, match="cannot read the image"):
        Image.from_path(tmp_path / "missing.png")
    svg = "data:image/svg+xml;base64," + base64.b64encode(b"<svg/>").decode()
    with pytest.raises(pydantic.ValidationError, match="not a PNG, JPEG, GIF or WebP"):
        Image(url=svg)
    with pytest.raises(pydantic.ValidationError, match=r"says image/jpeg but holds image/png"):
        Image(url="data:image/jpeg;base64," + base64.b64encode(png()).decode())
    # A string is a URL, never a file path: a request body cannot make a server read files.
    with pytest.raises(pydantic.ValidationError, match="http\\(s\\) URL or a data: URL"):
        Image.model_validate("/etc/passwd")


def test_history_checks_chat_turns() -> None:
    assert History.model_validate([{"role": "user", "content": "hi"}]).messages[0]["content"]
    with pytest.raises(pydantic.ValidationError, match="needs a role of assistant, system, user"):
        History(messages=[{"role": "robot", "content": "hi"}])
    with pytest.raises(pydantic.ValidationError, match="besides role and content"):
        History(messages=[{"role": "user", "content": "hi", "extra": 1}])
    with pytest.raises(pydantic.ValidationError, match="message 0 of the history is empty"):
        History(messages=[{}])


# ---------------------------------------------------------------- on the wire


@pytest.mark.parametrize("adapter", [JSONAdapter(), TextAdapter()])
async def test_history_is_sent_as_chat_turns(
    server: OpenAIServer, lm: OpenAILM, adapter: JSONAdapter | TextAdapter
) -> None:
    server.responder = lambda body: adapter.format_fields({"answer": "Ada"})
    node = Predict("history: History, question -> answer", adapter=adapter)
    out = await node.acall(history=CHAT, question="What is my name?", lm=lm)
    assert out.answer == "Ada"
    body = server.requests[0]
    assert roles(body) == ["system", "user", "assistant", "user"]
    assert body["messages"][1]["content"] == "My name is Ada."
    assert body["messages"][2]["content"] == "Nice to meet you, Ada."
    last = body["messages"][3]["content"]
    assert "What is my name?" in last
    assert "Nice to meet" not in last
    assert "<history>" not in last
    assert "earlier messages of this chat" in body["messages"][0]["content"]


async def test_field_keyed_history_and_demo_histories_become_turns(
    server: OpenAIServer, lm: OpenAILM
) -> None:
    server.responder = lambda body: '{"reasoning": "r", "answer": "4"}'
    node = ChainOfThought("history: History, question -> answer", adapter=JSONAdapter())
    node.predictor.demos = [
        {
            "history": {"messages": [{"role": "user", "content": "demo turn"}]},
            "question": "demo question",
            "reasoning": "demo reasoning",
            "answer": "demo answer",
        }
    ]
    past = History(messages=[{"question": "2+2?", "answer": "4"}])
    await node.acall(history=past, question="and doubled?", lm=lm)
    messages = server.requests[0]["messages"]
    assert roles(server.requests[0]) == [
        "system",
        "user",
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
    ]
    assert messages[1]["content"] == "demo turn"
    assert "demo question" in messages[2]["content"]
    assert json.loads(messages[3]["content"])["answer"] == "demo answer"
    assert messages[4]["content"] == "<question>\n2+2?\n</question>"
    assert json.loads(messages[5]["content"]) == {"answer": "4"}
    assert "and doubled?" in messages[6]["content"]


@pytest.mark.parametrize("adapter", [JSONAdapter(), TextAdapter()])
async def test_image_is_sent_as_an_image_url_part(
    server: OpenAIServer, lm: OpenAILM, adapter: JSONAdapter | TextAdapter
) -> None:
    server.responder = lambda body: adapter.format_fields({"answer": "grey"})
    picture = Image.from_bytes(png())
    node = Predict("photo: Image, question -> answer", adapter=adapter)
    out = await node.acall(photo=picture, question="What colour?", lm=lm)
    assert out.answer == "grey"
    content = server.requests[0]["messages"][-1]["content"]
    assert isinstance(content, list)
    kinds = [part["type"] for part in content]
    assert kinds == ["text", "image_url", "text"]
    assert content[0]["text"].endswith("<photo>\n")
    assert content[1]["image_url"] == {"url": picture.url}
    assert content[2]["text"].startswith("\n</photo>\n<question>\nWhat colour?")


async def test_demo_images_and_lists_of_images_render_as_parts(
    server: OpenAIServer, lm: OpenAILM
) -> None:
    server.responder = lambda body: '{"count": 2}'
    first, second = Image.from_bytes(png()), Image.from_url("https://example.org/b.png")
    node = Predict("pages: list[Image] -> count: int", adapter=JSONAdapter())
    node.predictor.demos = [{"pages": [first.url], "count": 1}]  # as a loaded file holds it
    out = await node.acall(pages=[first, second], lm=lm)
    assert out.count == 2
    demo_user, real_user = server.requests[0]["messages"][1], server.requests[0]["messages"][3]
    assert [p["image_url"]["url"] for p in demo_user["content"] if p["type"] == "image_url"] == [
        first.url
    ]
    urls = [p["image_url"]["url"] for p in real_user["content"] if p["type"] == "image_url"]
    assert urls == [first.url, second.url]


async def test_a_wrong_image_value_is_a_clear_error(lm: OpenAILM) -> None:
    node = Predict("photo: Image -> answer")
    with pytest.raises(
        NodeError, match=r"input 'photo' expects Image.*http\(s\) URL or a data: URL"
    ):
        await node.acall(photo="not an image", lm=lm)


# ---------------------------------------------------------------- saved and optimized


async def test_demos_with_history_and_image_survive_save_and_load(
    server: OpenAIServer, lm: OpenAILM, tmp_path: Path
) -> None:
    server.responder = lambda body: '{"answer": "x"}'

    def build() -> Graph:
        node = Predict("history: History, photo: Image, question -> answer", adapter=JSONAdapter())
        return Graph("seen").add("answer", node)

    picture = Image.from_bytes(png())
    graph = build()
    graph.set_parameters(
        {
            "answer.demos": [
                {"history": CHAT, "photo": picture, "question": "q", "answer": "a"},
            ]
        }
    )
    graph.save(tmp_path / "p.json")
    saved = json.loads((tmp_path / "p.json").read_text())
    demo = saved["parameters"]["answer"]["demos"][0]
    assert demo["history"] == {"messages": CHAT.messages}
    assert demo["photo"]["url"] == picture.url
    loaded = build().load(tmp_path / "p.json")
    await loaded.run(history=History(), photo=picture, question="now?", lm=lm)
    await graph.run(history=History(), photo=picture, question="now?", lm=lm)
    first, second = server.requests
    assert first["messages"] == second["messages"]
    assert roles(first) == ["system", "user", "assistant", "user", "assistant", "user"]
    assert first["messages"][3]["content"][1]["image_url"]["url"] == picture.url


async def test_bootstrap_keeps_history_in_its_demos(server: OpenAIServer, lm: OpenAILM) -> None:
    def answer(body: dict[str, Any]) -> str:
        return '{"answer": "Ada"}' if "Ada" in json.dumps(body["messages"]) else '{"answer": "?"}'

    server.responder = answer
    graph = Graph("chat").add(
        "answer", Predict("history: History, question -> answer", adapter=JSONAdapter())
    )
    trainset = [
        Example(history=CHAT, question="What is my name?", answer="Ada").with_inputs(
            "history", "question"
        )
    ]
    tuned = await BootstrapFewShot(exact_match("answer"), max_bootstrapped_demos=1, lm=lm).optimize(
        graph, trainset
    )
    (demo,) = tuned.named_parameters()["answer.demos"]
    assert isinstance(demo["history"], History)
    assert demo["history"].messages == CHAT.messages
    server.requests.clear()
    await tuned.run(history=History(), question="Who am I?", lm=lm)
    assert roles(server.requests[0]) == ["system", "user", "assistant", "user", "assistant", "user"]
    assert server.requests[0]["messages"][1]["content"] == "My name is Ada."
