"""``rhizome serve`` runs that wait for a person: served end to end by a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.serve import human_case
from tests.serve.conftest import free_port, wait_until_serving
from tests.server import OpenAIServer

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def served(server: OpenAIServer, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    command = [
        sys.executable, "-m", "rhizome.cli", "serve", "tests.serve.human_case:build",
        "--port", str(port), "--base-url", server.url, "--model", "test-model",
        "--log-level", "warning", "--checkpoints", str(tmp_path / "runs.sqlite"),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RHIZOME_CACHE": "0"}
    process = subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(url, process)
        yield url
    finally:
        process.kill()
        process.wait(10)
        if process.stderr is not None:
            process.stderr.close()


@pytest.mark.slow
def test_a_served_run_waits_for_answers_and_resumes_where_it_stopped(
    served: str, server: OpenAIServer
) -> None:
    server.responder = human_case.responder
    started = httpx.post(f"{served}/v1/runs", json={"inputs": {"topic": "tea"}}, timeout=20)
    assert started.status_code == 200, started.text
    first = started.json()
    run_id = first["run_id"]
    assert first["status"] == "waiting"
    assert first["node"] == "rounds.review.ask"
    assert first["question"] == {
        "prompt": "Feedback on this draft?",
        "inputs": {"draft": "about tea"},
    }
    assert httpx.get(f"{served}/v1/runs/{run_id}").json()["status"] == "waiting"

    answer = {"answer": "add milk"}
    second = httpx.post(f"{served}/v1/runs/{run_id}/resume", json=answer, timeout=20).json()
    assert second["status"] == "waiting"
    assert second["question"]["inputs"] == {"draft": "about tea + add milk"}  # round two

    answer = {"answer": "less sugar"}
    done = httpx.post(f"{served}/v1/runs/{run_id}/resume", json=answer, timeout=20).json()
    assert done["status"] == "finished"
    assert done["outputs"] == {"revised": "about tea + add milk + less sugar"}
    # One LM call per node that ran: the resumed rounds repeated no call.
    kinds = [body["response_format"]["json_schema"]["name"] for body in server.requests]
    assert kinds == ["draft", "revised", "revised"]

    status = httpx.get(f"{served}/v1/runs/{run_id}").json()
    assert status == {"run_id": run_id, "status": "finished", "outputs": done["outputs"]}
    again = httpx.post(f"{served}/v1/runs/{run_id}/resume", json=answer, timeout=20)
    assert again.status_code == 409
    assert "not waiting" in again.json()["error"]["message"]
    assert httpx.get(f"{served}/v1/runs/nope").status_code == 404
    assert httpx.post(f"{served}/v1/runs/nope/resume", json=answer).status_code == 404
    named = {"inputs": {"topic": "tea"}, "run_id": "../etc"}
    assert httpx.post(f"{served}/v1/runs", json=named).status_code == 422
