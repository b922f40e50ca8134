"""ray_batch on a real three-node Ray cluster against the loopback test server."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path

import anyio
import pytest

from rhizome.engine.client.openai import OpenAILM
from rhizome.scale import RayOptions, ray_batch, ray_dataset
from tests.distributed.conftest import LocalCluster, answer_for
from tests.distributed.programs import build
from tests.server import OpenAIServer, Reply

pytest.importorskip("ray.data")

FACTORY = "tests.distributed.programs:build"

# Ray Data warns about its own deprecated settings on first use.
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning:ray")]


def questions(n: int) -> list[dict[str, str]]:
    return [{"question": f"q{i}"} for i in range(n)]


def delayed(seconds: float):  # type: ignore[no-untyped-def]
    def respond(body):  # type: ignore[no-untyped-def]
        return Reply(text=answer_for(body), delay=seconds)

    return respond


def single_process(server: OpenAIServer, examples: list[dict[str, str]]) -> list[dict[str, object]]:
    async def run() -> list[dict[str, object]]:
        async with OpenAILM("test-model", base_url=server.url, cache=None) as lm:
            results = await build().batch(examples, lm=lm, concurrency=8)
        return [dict(r.prediction) if r.prediction is not None else {} for r in results]

    return anyio.run(run)


def test_outputs_equal_one_process_on_two_nodes_under_the_cluster_cap_and_429s_pause_all(
    ray_cluster: LocalCluster, ray_server: OpenAIServer
) -> None:
    examples = questions(48)
    expected = single_process(ray_server, examples)
    ray_server.reset()
    arrivals: list[float] = []

    def respond(body):  # type: ignore[no-untyped-def]
        arrivals.append(time.monotonic())
        if len(arrivals) == 8:  # one request, mid-run, is told to wait 1.5 s
            return Reply(status=429, headers={"Retry-After": "1.5"}, text="slow down")
        return Reply(text=answer_for(body), delay=0.03)

    ray_server.responder = respond
    lm = OpenAILM("test-model", base_url=ray_server.url, cache=None, max_concurrency=3)
    options = RayOptions(actors=2, concurrency=8, batch_size=4, num_cpus=0.5)

    rows = ray_batch(FACTORY, examples, lm=lm, options=options)

    assert [r["index"] for r in rows] == list(range(48))
    assert [r["outputs"] for r in rows] == expected
    assert all(r["error"] is None for r in rows)
    assert len({r["node"] for r in rows}) == 2  # both worker nodes served examples
    assert ray_server.request_count == 49  # one request per example, and the one retry
    # Each actor's own client allows 3 in flight; the shared cap holds both to 3 together.
    assert ray_server.max_in_flight <= 3
    assert ray_server.max_in_flight >= 2
    # Requests already on the wire may land just after the 429; then both workers,
    # not only the one that saw it, hold back until its Retry-After has passed.
    limited = arrivals[7]
    later = [t - limited for t in arrivals if t > limited + 0.2]
    assert later
    assert min(later) >= 1.3


def test_resume_reruns_only_unfinished_examples_and_keys_reach_workers_by_variable(
    ray_cluster: LocalCluster,
    ray_server: OpenAIServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RHIZOME_RAY_TEST_KEY", "sk-ray-test-123")
    examples = questions(12)
    ray_server.reset()
    failing = {"q3", "q8"}

    def flaky(body):  # type: ignore[no-untyped-def]
        reply = answer_for(body)
        if any(f'"A-{q}"' in reply for q in failing):
            return Reply(status=500, text="down")
        return reply

    ray_server.responder = flaky
    lm = OpenAILM(
        "test-model",
        base_url=ray_server.url,
        cache=None,
        max_retries=0,
        api_key_env="RHIZOME_RAY_TEST_KEY",
    )
    options = RayOptions(actors=2, concurrency=4, batch_size=3, num_cpus=0.5)
    out = tmp_path / "rows.jsonl"
    first = ray_batch(
        FACTORY, examples, lm=lm, options=options, run_dir=tmp_path / "run", output=out
    )
    assert {r["inputs"]["question"] for r in first if r["error"] is not None} == failing
    assert len(out.read_text().splitlines()) == 12
    assert ray_server.request_count == 12
    # The workers read the key from the variable the LM names (Ray's runtime env).
    auth = {h.get("authorization") for h in ray_server.request_headers}
    assert auth == {"Bearer sk-ray-test-123"}

    ray_server.reset()
    ray_server.responder = answer_for
    again = ray_batch(FACTORY, examples, lm=lm, options=options, run_dir=tmp_path / "run")
    assert ray_server.request_count == 2  # only the two failed examples ran again
    assert all(r["error"] is None for r in again)
    assert [r["outputs"] for r in again] == [{"answer": f"A-q{i}"} for i in range(12)]


def test_a_worker_node_removed_mid_run_loses_nothing_and_repeats_nothing(
    ray_cluster: LocalCluster, ray_server: OpenAIServer
) -> None:
    examples = questions(40)
    ray_server.reset()
    ray_server.responder = delayed(0.15)
    cap = 4
    lm = OpenAILM("test-model", base_url=ray_server.url, cache=None, max_concurrency=cap)
    options = RayOptions(actors=2, concurrency=4, batch_size=2, num_cpus=0.5, ttl=2.0)
    done: list[list[dict[str, object]]] = []
    runner = threading.Thread(
        target=lambda: done.append(ray_batch(FACTORY, examples, lm=lm, options=options))
    )
    runner.start()
    deadline = time.monotonic() + 60
    while ray_server.request_count < 12 and time.monotonic() < deadline:
        time.sleep(0.05)
    ray_cluster.remove_a_worker_node()
    runner.join(120)

    assert done, "the run did not finish after losing a node"
    rows = done[0]
    assert [r["index"] for r in rows] == list(range(40))
    assert [r["outputs"] for r in rows] == [{"answer": f"A-q{i}"} for i in range(40)]
    per_question = Counter(answer_for(body) for body in ray_server.requests)
    repeated = sum(n - 1 for n in per_question.values())
    # Only requests in flight on the dead node may be sent again: at most the cap.
    assert repeated <= cap
    assert len(per_question) == 40


def test_ray_dataset_streams_result_rows_lazily_with_an_error_column(
    ray_cluster: LocalCluster, ray_server: OpenAIServer, tmp_path: Path
) -> None:
    examples = questions(10)
    expected = single_process(ray_server, examples)
    ray_server.reset()

    def one_fails(body):  # type: ignore[no-untyped-def]
        reply = answer_for(body)
        return Reply(status=500, text="down") if '"A-q4"' in reply else reply

    ray_server.responder = one_fails
    lm = OpenAILM("test-model", base_url=ray_server.url, cache=None, max_retries=0)
    options = RayOptions(actors=2, concurrency=4, batch_size=3, num_cpus=0.5)

    dataset = ray_dataset(FACTORY, examples, lm=lm, options=options)
    assert ray_server.request_count == 0  # nothing runs until the dataset is consumed
    dataset.write_parquet(str(tmp_path / "out"))  # a Ray Data sink consumes it
    assert list((tmp_path / "out").glob("*.parquet"))
    assert ray_server.request_count == 10

    rows = sorted(ray_data_rows(tmp_path / "out"), key=lambda r: r["index"])
    assert [r["index"] for r in rows] == list(range(10))
    failed = [r for r in rows if r["error"] is not None]
    assert [r["index"] for r in failed] == [4]
    assert not failed[0]["ok"]
    assert "500" in json.loads(failed[0]["error"])["message"]
    outputs = [json.loads(r["outputs"]) if r["outputs"] else {} for r in rows]
    assert [o for i, o in enumerate(outputs) if i != 4] == [
        e for i, e in enumerate(expected) if i != 4
    ]


def ray_data_rows(folder: Path) -> list[dict[str, object]]:
    import pyarrow.parquet as pq

    return pq.read_table(folder).to_pylist()
