"""End to end: a program optimized by ``rhizome optimize`` served by ``rhizome serve``.

The server runs as a real subprocess (``python -m rhizome.cli serve``) with a
token, answers over HTTP with the optimized demos in its prompts, and on
SIGTERM finishes the request in flight before exiting.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from rhizome.cli import main
from rhizome.serving.middleware import exposure_warning, is_loopback
from tests.serve.conftest import free_port, wait_until_serving
from tests.server import OpenAIServer, Reply

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "e2e-secret"


@pytest.fixture
def optimized(lm_args: list[str], data: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    code = main(
        [
            "optimize",
            "rhizome.examples:build",
            str(data),
            "--optimizer",
            "bootstrap",
            "--demos",
            "2",
            "--run-dir",
            "runs/qa",
            "--out",
            "qa.json",
            "-q",
            *lm_args,
        ]
    )
    assert code == 0
    capsys.readouterr()
    return Path("qa.json").resolve()


def _start(program: Path, server: OpenAIServer, port: int) -> subprocess.Popen[str]:
    env = {**os.environ, "RHIZOME_SERVE_TOKEN": TOKEN, "PYTHONPATH": str(ROOT)}
    command = [
        sys.executable,
        "-m",
        "rhizome.cli",
        "serve",
        "rhizome.examples:build",
        "-p",
        str(program),
        "--port",
        str(port),
        "--base-url",
        server.url,
        "--model",
        "test-model",
        "--log-level",
        "warning",
    ]
    return subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def served(optimized: Path, server: OpenAIServer) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    port = free_port()
    process = _start(optimized, server, port)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(url, process)
        yield url, process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)
        if process.stderr is not None:
            process.stderr.close()


@pytest.mark.slow
def test_optimized_program_is_served_with_auth_and_stops_gracefully(
    served: tuple[str, subprocess.Popen[str]], server: OpenAIServer, optimized: Path
) -> None:
    url, process = served
    demos = json.loads(optimized.read_text())["parameters"]["answer"]["demos"]
    assert demos, "bootstrap kept no demos"
    body = {"inputs": {"question": "Capital of Chad?"}}
    assert httpx.post(f"{url}/v1/predict", json=body).status_code == 401
    server.reset()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    reply = httpx.post(f"{url}/v1/predict", json=body, headers=auth, timeout=20)
    assert reply.status_code == 200
    assert reply.json()["outputs"] == {"answer": "N'Djamena"}  # right only with the demos
    assert len(server.requests[0]["messages"]) > 2  # the optimized demos were sent

    server.responder = lambda b: Reply(text='{"answer": "Paris"}', delay=1.5)
    late: list[httpx.Response] = []
    thread = threading.Thread(
        target=lambda: late.append(
            httpx.post(f"{url}/v1/predict", json=body, headers=auth, timeout=20)
        )
    )
    thread.start()
    deadline = time.monotonic() + 10
    while server.request_count < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    thread.join(20)
    assert late
    assert late[0].status_code == 200
    assert late[0].json()["outputs"] == {"answer": "Paris"}
    assert process.wait(20) == 0


def test_exposure_warning_only_beyond_loopback_without_a_token() -> None:
    assert is_loopback("127.0.0.1")
    assert is_loopback("localhost")
    assert is_loopback("::1")
    assert not is_loopback("0.0.0.0")
    assert not is_loopback("192.168.1.5")
    assert exposure_warning("127.0.0.1", None) is None
    assert exposure_warning("0.0.0.0", "secret") is None
    warning = exposure_warning("0.0.0.0", None)
    assert warning is not None
    assert "without a token" in warning
    assert "RHIZOME_SERVE_TOKEN" in warning
