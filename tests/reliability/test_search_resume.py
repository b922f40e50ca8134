"""Ctrl-C on an optimization over HTTP, then resume: it ends where an uninterrupted run ends.

tests/optimizers/test_joint.py already resumes JointSearch after a budget stop
and after a cancelled task, on a fake LM. This test does it the way a user
would meet it: a separate process searching against a real HTTP server gets
SIGINT half-way, and the search is resumed on its run directory.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import anyio
import pytest

from rhizome.optimizers.joint import JointSearch
from rhizome.optimizers.records import read_jsonl
from tests.reliability import search_case
from tests.reliability.procs import interrupt, interruptible, wait_until
from tests.server import OpenAIServer

ROOT = Path(__file__).resolve().parents[2]


def summary(search: JointSearch) -> list[tuple[int, str, dict[str, int], float]]:
    return [(t.tid, t.kind, t.config, t.score) for t in search.history]


@pytest.mark.slow
async def test_ctrl_c_on_a_search_then_resume_ends_where_an_uninterrupted_one_ends(
    server: OpenAIServer, tmp_path: Path
) -> None:
    server.responder = search_case.planted
    whole = search_case.search(server.url, tmp_path / "whole")
    await whole.optimize(search_case.graph(), search_case.DATA)
    whole_requests = server.request_count
    assert whole.best_score == 1.0

    server.reset()
    server.responder = lambda body: search_case.planted(body, delay=0.03)
    cut = tmp_path / "cut"
    command = interruptible("-m", "tests.reliability.search_case", server.url, str(cut))
    child = await anyio.open_process(
        command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        await wait_until(lambda: len(read_jsonl(cut / "trials.jsonl")) >= 4, 60, "4 trials")
        err, exited_after = await interrupt(child)
    finally:
        if child.returncode is None:
            child.kill()
        await child.aclose()
    assert b"KeyboardInterrupt" in err
    assert exited_after < 3.0
    finished = [r["tid"] for r in read_jsonl(cut / "trials.jsonl") if r["kind"] == "trial"]
    assert 0 < len(finished) < search_case.NUM_TRIALS

    server.reset()
    server.responder = search_case.planted
    rest = search_case.search(server.url, cut)
    await rest.optimize(search_case.graph(), search_case.DATA)
    assert summary(rest) == summary(whole)
    assert rest.best_config == whole.best_config
    tids = [r["tid"] for r in read_jsonl(cut / "trials.jsonl") if r["kind"] == "trial"]
    assert sorted(tids) == list(range(search_case.NUM_TRIALS)), "each trial ran exactly once"
    assert server.request_count < whole_requests, "the resumed run redid finished work"
