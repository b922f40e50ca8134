"""A run killed with SIGKILL mid-node resumes in a new process without repeating work."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from rhizome.engine.client.openai import OpenAILM
from rhizome.engine.graphs.checkpoint import SQLiteCheckpoint
from tests.reliability import checkpoint_case as case
from tests.reliability.procs import wait_for
from tests.server import OpenAIServer, Reply

ROOT = Path(__file__).resolve().parents[2]


def child(server: OpenAIServer, store: Path) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "tests.reliability.checkpoint_case", server.url, str(store)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [*command, "crash"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def asked(server: OpenAIServer) -> collections.Counter[str]:
    """Requests by predictor, the loop's told apart by their query."""
    counts: collections.Counter[str] = collections.Counter()
    for body in server.requests:
        name = case.kind(body)
        counts[name if name != "note_next_query" else f"hop {case.fields(body)['query']}"] += 1
    return counts


async def test_a_killed_run_resumes_in_a_new_process(
    server: OpenAIServer, lm: OpenAILM, tmp_path: Path
) -> None:
    stalled: list[str] = []

    def respond(body: dict[str, Any]) -> str | Reply:
        text = case.responder(body)
        if case.kind(body) == "note_next_query" and case.fields(body)["query"].endswith("++"):
            if not stalled:  # the loop's third iteration hangs the first time: kill it there
                stalled.append(text)
                return Reply(text=text, delay=2)
        return text

    server.responder = respond
    store = tmp_path / "runs.sqlite"
    first = child(server, store)
    try:
        wait_for(lambda: bool(stalled), 30, "the loop's third iteration")
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
        first.communicate()
    assert first.returncode == -signal.SIGKILL

    saved = SQLiteCheckpoint(store).read("crash")
    assert saved is not None
    assert saved.meta["status"] == "running"  # it never got to say otherwise
    assert {"plan", "hops[0]", "hops[1]"} <= set(saved.entries)
    assert not {"hops[2]", "hops", "draft", "final"} & set(saved.entries)

    second = child(server, store)
    out, err = second.communicate(timeout=60)
    assert second.returncode == 0, err
    resumed = json.loads(out)

    # Each node that had finished ran once over both processes; the one in flight, twice.
    assert asked(server) == {
        "query": 1,
        "hop q(why?)": 1,
        "hop q(why?)+": 1,
        "hop q(why?)++": 2,
        "draft": 1,
        "answer": 1,
    }
    server.reset()
    straight = await case.build().run(question="why?", lm=lm)
    assert resumed == dict(straight)
    assert resumed["answer"] == "draft from note on q(why?)++ [28 chars]"
