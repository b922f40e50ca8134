"""Cancellation and resume: stop promptly, keep what finished, leave nothing running.

A batch is cancelled from inside (a cancel scope) and from outside (SIGINT to
a process running it, as Ctrl-C does); then it is resumed on the same run
directory, and the server's request count proves no finished example ran twice.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from rhizome.engine.client.cache import ResponseCache
from rhizome.engine.client.openai import OpenAILM
from rhizome.engine.graphs.graph import Graph
from rhizome.nodes.function import FunctionNode
from rhizome.nodes.predict import Predict
from rhizome.tools.agent.sandbox import PythonSandbox
from tests.reliability.faults import echo_answer, question_tag
from tests.reliability.procs import (
    alive,
    command_line,
    descendants,
    interrupt,
    interruptible,
    wait_for,
    wait_until,
)
from tests.server import OpenAIServer, Reply


def echo_graph() -> Graph:
    return Graph("echo").add("answer", Predict("question -> answer"))


def questions(n: int) -> list[dict[str, str]]:
    return [{"question": f"Repeat the tag of question #{i}#."} for i in range(n)]


def fast_then_stuck(fast: int, delay: float = 30.0) -> Any:
    """A responder answering questions below ``fast`` at once and the others after ``delay``."""

    def respond(body: dict[str, Any]) -> str | Reply:
        answer = echo_answer(body)
        return answer if int(question_tag(body)) < fast else Reply(text=answer, delay=delay)

    return respond


def journal(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "results.jsonl"
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]


async def test_cancelled_batch_stops_promptly_keeps_results_and_cache(
    server: OpenAIServer, tmp_path: Path
) -> None:
    n, fast = 60, 20
    server.responder = fast_then_stuck(fast)
    cache_path, run_dir = tmp_path / "cache.sqlite", tmp_path / "run"
    cache = ResponseCache(cache_path)
    lm = OpenAILM("test-model", base_url=server.url, cache=cache, max_concurrency=16)
    graph = echo_graph()
    cancelled_at = 0.0

    async with anyio.create_task_group() as group:

        async def run() -> None:
            await graph.batch(questions(n), concurrency=16, lm=lm, run_dir=run_dir)

        group.start_soon(run)
        await wait_until(lambda: len(journal(run_dir)) == fast, 10, "the fast examples")
        await wait_until(lambda: server.in_flight >= 16, 10, "the slow requests")
        cancelled_at = time.perf_counter()
        group.cancel_scope.cancel()
    stopped_after = time.perf_counter() - cancelled_at
    await lm.aclose()
    cache.close()

    assert stopped_after < 1.0
    rows = journal(run_dir)
    assert sorted(r["index"] for r in rows) == list(range(fast))
    assert all(r["ok"] and r["prediction"] == {"answer": f"echo {r['index']}"} for r in rows)
    # The cache file is whole: a new reader finds every finished reply.
    db = sqlite3.connect(cache_path)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        keys = [row[0] for row in db.execute("SELECT key FROM responses")]
    finally:
        db.close()
    reopened = ResponseCache(cache_path)
    assert len(reopened) == len(keys) == fast
    for key in keys:
        value = reopened.get_sync(key)
        assert value is not None
        assert json.loads(value)["choices"][0][0].startswith('{"answer": "echo ')

    # Resuming runs only the unfinished examples: neither the journal's nor the cache's.
    server.reset()
    server.responder = echo_answer
    lm = OpenAILM("test-model", base_url=server.url, cache=reopened, max_concurrency=16)
    results = await graph.batch(questions(n), concurrency=16, lm=lm, run_dir=run_dir)
    await lm.aclose()
    reopened.close()
    assert server.request_count == n - fast
    assert lm.usage.cache_hits == 0
    assert [r.index for r in results] == list(range(n))
    assert [r.resumed for r in results] == [True] * fast + [False] * (n - fast)
    assert all(
        r.prediction is not None and r.prediction["answer"] == f"echo {r.index}" for r in results
    )
    assert sorted(r["index"] for r in journal(run_dir)) == list(range(n))


BATCH_SCRIPT = """
import sys, anyio
from rhizome.engine.client.openai import OpenAILM
from rhizome.engine.graphs.graph import Graph
from rhizome.nodes.predict import Predict

url, run_dir, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
graph = Graph("echo").add("answer", Predict("question -> answer"))
lm = OpenAILM("test-model", base_url=url, cache=None, max_concurrency=8)
examples = [{"question": f"Repeat the tag of question #{i}#."} for i in range(n)]
results = anyio.run(lambda: graph.batch(examples, concurrency=8, lm=lm, run_dir=run_dir))
print("finished", len(results), flush=True)
"""


@pytest.mark.slow
async def test_ctrl_c_then_resume_redoes_nothing(server: OpenAIServer, tmp_path: Path) -> None:
    n, fast = 50, 25
    run_dir = tmp_path / "run"
    server.responder = fast_then_stuck(fast)
    command = interruptible("-c", BATCH_SCRIPT, server.url, str(run_dir), str(n))
    child = await anyio.open_process(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        await wait_until(lambda: len(journal(run_dir)) == fast, 30, "the fast examples")
        await wait_until(lambda: server.in_flight >= 8, 10, "the stuck requests")
        err, exited_after = await interrupt(child)
    finally:
        if child.returncode is None:
            child.kill()
        await child.aclose()
    assert child.returncode != 0
    assert b"KeyboardInterrupt" in err
    assert exited_after < 3.0
    assert sorted(r["index"] for r in journal(run_dir)) == list(range(fast))

    server.reset()
    server.responder = echo_answer
    lm = OpenAILM("test-model", base_url=server.url, cache=None, max_concurrency=8)
    results = await echo_graph().batch(questions(n), concurrency=8, lm=lm, run_dir=run_dir)
    await lm.aclose()
    assert server.request_count == n - fast, "finished examples were run again"
    assert [r.index for r in results] == list(range(n))
    assert all(
        r.prediction is not None and r.prediction["answer"] == f"echo {r.index}" for r in results
    )


def sandbox_processes() -> set[int]:
    return {p for p in descendants(os.getpid()) if "_sandbox_runner" in command_line(p)}


async def test_cancelling_a_batch_kills_its_sandbox_processes() -> None:
    sandbox = PythonSandbox(wall_time=60, cpu_time=60)

    async def run_code(code: str) -> str:
        return (await sandbox.run(code)).stdout

    graph = Graph("tool").add("run", FunctionNode(run_code, outputs=["out"]))
    endless = "import time\nwhile True:\n    time.sleep(0.1)\n"
    before = sandbox_processes()
    running: set[int] = set()
    with anyio.fail_after(30):
        async with anyio.create_task_group() as group:

            async def run() -> None:
                await graph.batch([{"code": endless}] * 3, concurrency=3)

            group.start_soon(run)
            # Each sandbox is a runner and, in its namespaces, a forked child: 3 or 6 processes.
            await wait_until(lambda: len(sandbox_processes() - before) >= 3, 20, "3 sandboxes")
            await anyio.sleep(0.3)
            running = sandbox_processes() - before
            cancelled_at = time.perf_counter()
            group.cancel_scope.cancel()
    assert time.perf_counter() - cancelled_at < 2.0
    assert running
    # SIGKILL went to every process group; a PID namespace's init takes a moment to
    # tear its namespace down before it is gone.
    await wait_until(lambda: not any(alive(pid) for pid in running), 5, "the sandboxes to die")


SANDBOX_SCRIPT = """
import anyio
from rhizome.tools.agent.sandbox import PythonSandbox

async def main():
    await PythonSandbox(wall_time=60, cpu_time=60).run("import time\\ntime.sleep(60)")

anyio.run(main)
"""


@pytest.mark.slow
def test_ctrl_c_kills_the_sandbox_of_a_running_program() -> None:
    child = subprocess.Popen(interruptible("-c", SANDBOX_SCRIPT), stderr=subprocess.PIPE)
    try:
        wait_for(lambda: bool(descendants(child.pid)), 20, "the sandbox process")
        time.sleep(0.3)
        sandboxes = descendants(child.pid)
        child.send_signal(signal.SIGINT)
        child.communicate(timeout=10)
    finally:
        child.kill()
        child.wait()
    assert sandboxes
    # The sandbox runs in its own session, so SIGINT reached only the parent: it is the
    # parent's clean-up that killed it.
    wait_for(lambda: not any(alive(pid) for pid in sandboxes), 5, "the sandbox to die")


LOCAL_MODEL_SCRIPT = """
import sys, anyio
from rhizome.engine.graphs.graph import Graph
from rhizome.nodes.predict import Predict
from rhizome.tools.embedded.lm import async_local_lm

async def main():
    log, run_dir = sys.argv[1], sys.argv[2]
    options = dict(n_parallel=1, ctx_size=1024, threads=1, cache=None, log_path=log)
    async with async_local_lm(**options) as lm:
        print("ready", flush=True)
        graph = Graph("essay").add("write", Predict("topic -> essay", max_tokens=900))
        topics = [{"topic": f"the history of river number {i}"} for i in range(3)]
        await graph.batch(topics, concurrency=1, lm=lm, run_dir=run_dir)

anyio.run(main)
"""


@pytest.mark.slow
@pytest.mark.embedded
def test_ctrl_c_stops_the_local_model_server(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    child = subprocess.Popen(
        interruptible("-c", LOCAL_MODEL_SCRIPT, str(log), str(tmp_path / "run")),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"ready\n"
        server_pid = int(log.read_text(encoding="utf-8").split("server pid ")[1].split()[0])
        time.sleep(1.0)  # the server is decoding the first essay
        assert alive(server_pid)
        child.send_signal(signal.SIGINT)
        child.communicate(timeout=30)
    finally:
        child.kill()
        child.wait()
    assert child.returncode != 0
    wait_for(lambda: not alive(server_pid), 15, "the local model server to stop")
    assert "stdin closed, shutting down" in log.read_text(encoding="utf-8")
