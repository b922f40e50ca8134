"""Fixtures for the HTTP server tests: the example program served by uvicorn on 127.0.0.1."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn

from rhizome.engine.client.openai import OpenAILM
from rhizome.examples import build
from rhizome.serving.app import ServeConfig, create_app
from tests.server import OpenAIServer

TOKEN = "test-token-123"


def wait_listening(process: subprocess.Popen[Any], port: int, what: str) -> None:
    """Wait until ``process`` listens on 127.0.0.1:``port``; RuntimeError if it dies first."""
    deadline = time.monotonic() + 30
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start (exit status {process.poll()})")
        time.sleep(0.05)


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_serving(url: str, process: subprocess.Popen[str], within: float = 30) -> None:
    """Wait for a ``rhizome serve`` subprocess to answer ``/healthz``; fail if it exits."""
    deadline = time.monotonic() + within
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"rhizome serve did not start: {process.communicate()[1]}")
        time.sleep(0.1)


class Served:
    """A running uvicorn server: its base URL, and the uvicorn object to stop it."""

    def __init__(self, server: uvicorn.Server, thread: threading.Thread, port: int) -> None:
        self.server = server
        self.thread = thread
        self.url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        """Ask uvicorn to shut down gracefully (what SIGTERM does) and wait for it."""
        self.server.should_exit = True
        self.thread.join(15)


@contextlib.contextmanager
def serving(app: object) -> Iterator[Served]:
    """Run ``app`` with uvicorn in a thread on a free port until the block ends."""
    port = free_port()
    config = uvicorn.Config(
        app,  # type: ignore[arg-type]
        host="127.0.0.1",
        port=port,
        log_level="warning",
        ws="none",
        lifespan="on",
        timeout_graceful_shutdown=10,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    served = Served(server, thread, port)
    try:
        yield served
    finally:
        served.stop()


def serve_example(
    server: OpenAIServer, config: ServeConfig
) -> contextlib.AbstractContextManager[Served]:
    """``rhizome.examples:build`` served with an LM on the test server."""
    lm = OpenAILM("test-model", base_url=server.url, cache=None, max_retries=0)
    return serving(create_app(build(), lm=lm, config=config))


@pytest.fixture
def api(server: OpenAIServer) -> Iterator[Served]:
    """The example program served with a token and a 4 KiB body limit."""
    server.responder = lambda body: '{"answer": "Paris"}'
    with serve_example(server, ServeConfig(token=TOKEN, max_body_bytes=4096)) as served:
        yield served
