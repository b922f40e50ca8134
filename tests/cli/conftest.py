"""Fixtures for the command-line tests: a data file, LM options, a clean working folder."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.server import OpenAIServer

QUESTIONS = [
    ("Capital of France?", "Paris", "europe"),
    ("Capital of Italy?", "Rome", "europe"),
    ("Capital of Japan?", "Tokyo", "asia"),
    ("Capital of Spain?", "Madrid", "europe"),
    ("Capital of Peru?", "Lima", "america"),
    ("Capital of Chad?", "N'Djamena", "africa"),
]


def capital_responder(body: dict) -> str:
    """Answer from the question in the last message; Chad is wrong unless demos are shown."""
    text = json.dumps(body["messages"][-1])
    has_demos = len(body["messages"]) > 2
    for question, answer, _ in QUESTIONS:
        if question in text:
            wrong = answer == "N'Djamena" and not has_demos
            return json.dumps({"answer": "Lagos" if wrong else answer})
    return json.dumps({"answer": "unknown"})


@pytest.fixture(autouse=True)
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run each test in its own folder, with its own state dir and no LM from the environment."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RHIZOME_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("RHIZOME_BASE_URL", raising=False)
    monkeypatch.delenv("RHIZOME_MODEL_NAME", raising=False)
    return tmp_path


@pytest.fixture
def lm_args(server: OpenAIServer) -> list[str]:
    """Command-line options pointing the default LM at the test server."""
    server.responder = capital_responder
    return ["--base-url", server.url, "--model", "test-model"]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """A JSONL file of six questions with answers and a region tag."""
    path = tmp_path / "data.jsonl"
    rows = [{"question": q, "answer": a, "region": r} for q, a, r in QUESTIONS]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def read_jsonl() -> Callable[[Path], list[dict]]:
    def read(path: Path) -> list[dict]:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]

    return read
