"""Reflect killed with SIGKILL mid-run, then resumed on its run directory, over HTTP."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from rhizome.optimizers.records import read_jsonl
from rhizome.optimizers.reflect import Reflect
from tests.optimizers import reflect_case as case
from tests.reliability.procs import wait_until
from tests.server import OpenAIServer

ROOT = Path(__file__).resolve().parents[2]


def outcome(search: Reflect) -> list[str]:
    keys = ("kind", "iteration", "parent", "minibatch", "node", "proposal", "accepted")
    rows = [json.dumps({k: s.get(k) for k in keys}, sort_keys=True) for s in search.steps]
    pool = [json.dumps([c.changes, c.scores], sort_keys=True) for c in search.candidates]
    return rows + pool


@pytest.mark.slow
async def test_sigkill_then_resume_ends_where_an_uninterrupted_run_ends(
    server: OpenAIServer, tmp_path: Path
) -> None:
    server.responder = case.planted
    whole = case.search(server.url, tmp_path / "whole", max_iterations=8)
    whole_best = await whole.optimize(case.graph(), case.DATA)
    whole_requests = server.request_count

    server.reset()
    server.responder = lambda body: case.planted(body, delay=0.05)
    cut = tmp_path / "cut"
    command = [sys.executable, "-m", "tests.optimizers.reflect_case", server.url, str(cut)]
    child = await anyio.open_process(
        command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        await wait_until(lambda: len(read_jsonl(cut / "trials.jsonl")) >= 2, 60, "2 steps")
        child.kill()  # SIGKILL: no handler runs, a line may be half written
        await child.wait()
    finally:
        if child.returncode is None:
            child.kill()
        await child.aclose()
    done = read_jsonl(cut / "trials.jsonl")
    assert 2 <= len(done) < 9, "killed half-way"
    assert json.loads((cut / "run.json").read_text())["status"] == "running"

    server.reset()
    server.responder = case.planted
    rest = case.search(server.url, cut, max_iterations=8)
    best = await rest.optimize(case.graph(), case.DATA)
    assert outcome(rest) == outcome(whole)
    assert best.named_parameters() == whole_best.named_parameters()
    assert server.request_count < whole_requests, "the resumed run redid finished steps"
    iterations = [r["iteration"] for r in read_jsonl(cut / "trials.jsonl") if "iteration" in r]
    assert iterations == list(range(8)), "each step ran exactly once"
