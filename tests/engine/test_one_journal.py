"""One journal for every way of resuming: ``graph.batch``, ``graph.stream``, ``Evaluate``, CLI.

Each entry point, given a ``run_dir``, keeps the same journal with the same rules:
a journal of a changed program is refused with a message naming the directory
and what to do, failed examples run again on resume while finished ones do not,
and a torn last line is tolerated (its example runs again).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from rhizome.cli import main as cli_main
from rhizome.engine.client.fake import FakeLM
from rhizome.engine.client.protocol import LMRequest
from rhizome.engine.errors import ConfigError
from rhizome.engine.graphs.graph import Graph
from rhizome.examples import build as build_example
from rhizome.nodes.predict import ChainOfThought, Predict
from rhizome.optimizers.evaluate import JOURNAL_DIR, Evaluate
from rhizome.optimizers.metrics import exact_match
from tests.server import OpenAIServer

EXAMPLES = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(4)]


class Answerer:
    """Answers ``qN`` with ``aN``, failing the questions in ``failing``; records questions."""

    def __init__(self, failing: set[str] | None = None) -> None:
        self.failing = failing or set()
        self.asked: list[str] = []

    def __call__(self, request: LMRequest, sample: int) -> str:
        text = json.dumps(request.messages)
        question = next(e["question"] for e in reversed(EXAMPLES) if e["question"] in text)
        self.asked.append(question)
        if question in self.failing:
            raise RuntimeError(f"the LM is down for {question}")
        return f"<answer>a{question[1:]}</answer>"


def qa(instruction: str = "Answer briefly.") -> Graph:
    graph = Graph("qa").add("answer", Predict("question -> answer"))
    return graph.set_parameters({"answer.instruction": instruction})


async def via_batch(graph: Graph, lm: FakeLM, run_dir: Path) -> list[bool]:
    return [r.ok for r in await graph.batch(EXAMPLES, lm=lm, run_dir=run_dir)]


async def via_stream(graph: Graph, lm: FakeLM, run_dir: Path) -> list[bool]:
    async with contextlib.aclosing(graph.stream(EXAMPLES, lm=lm, run_dir=run_dir)) as stream:
        results = [r async for r in stream]
    return [r.ok for r in sorted(results, key=lambda r: r.index)]


async def via_evaluate(graph: Graph, lm: FakeLM, run_dir: Path) -> list[bool]:
    result = await Evaluate(graph, EXAMPLES, exact_match(), lm=lm, run_dir=run_dir, progress=False)
    return [r.error is None for r in result.results]


Entry = Callable[[Graph, FakeLM, Path], Awaitable[list[bool]]]
ENTRIES = [
    pytest.param(via_batch, "", id="graph.batch"),
    pytest.param(via_stream, "", id="graph.stream"),
    pytest.param(via_evaluate, JOURNAL_DIR, id="Evaluate"),
]


@pytest.mark.parametrize(("entry", "folder"), ENTRIES)
async def test_a_journal_of_a_changed_program_is_refused(
    entry: Entry, folder: str, tmp_path: Path
) -> None:
    answerer = Answerer()
    await entry(qa("Answer briefly."), FakeLM(answerer), tmp_path)
    answerer.asked.clear()
    with pytest.raises(ConfigError) as caught:
        await entry(qa("Answer at length."), FakeLM(answerer), tmp_path)
    message = str(caught.value)
    assert str(tmp_path / folder) in message
    assert "different program" in message
    assert "pass a new run_dir" in message
    assert answerer.asked == [], "nothing ran against the other program's journal"


@pytest.mark.parametrize(("entry", "folder"), ENTRIES)
async def test_a_journal_of_a_changed_structure_is_refused(
    entry: Entry, folder: str, tmp_path: Path
) -> None:
    await entry(qa(), FakeLM(Answerer()), tmp_path)
    changed = Graph("qa").add("answer", ChainOfThought("question -> answer"))
    changed.set_parameters({"answer.instruction": "Answer briefly."})
    with pytest.raises(ConfigError, match=r"different program.*pass a new run_dir"):
        await entry(changed, FakeLM(Answerer()), tmp_path)


@pytest.mark.parametrize(("entry", "folder"), ENTRIES)
async def test_failed_examples_run_again_and_finished_ones_do_not(
    entry: Entry, folder: str, tmp_path: Path
) -> None:
    down = Answerer(failing={"q1", "q3"})
    assert await entry(qa(), FakeLM(down), tmp_path) == [True, False, True, False]
    assert sorted(set(down.asked)) == ["q0", "q1", "q2", "q3"]

    healed = Answerer()
    assert await entry(qa(), FakeLM(healed), tmp_path) == [True] * 4
    assert sorted(healed.asked) == ["q1", "q3"]

    again = Answerer()
    assert await entry(qa(), FakeLM(again), tmp_path) == [True] * 4
    assert again.asked == [], "a finished run redoes nothing"


@pytest.mark.parametrize(("entry", "folder"), ENTRIES)
async def test_a_torn_last_line_is_tolerated_and_its_example_runs_again(
    entry: Entry, folder: str, tmp_path: Path
) -> None:
    await entry(qa(), FakeLM(Answerer()), tmp_path)
    journal = tmp_path / folder / "results.jsonl"
    lines = journal.read_text(encoding="utf-8").splitlines(keepends=True)
    torn = json.loads(lines[-1])["index"]
    # The process died half-way through writing its last line.
    journal.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2], encoding="utf-8")

    answerer = Answerer()
    assert await entry(qa(), FakeLM(answerer), tmp_path) == [True] * 4
    assert answerer.asked == [EXAMPLES[torn]["question"]]
    rows = [json.loads(line) for line in journal.read_text(encoding="utf-8").splitlines()]
    assert sorted(row["index"] for row in rows) == [0, 1, 2, 3]


async def test_evaluate_scores_resumed_examples_like_fresh_ones(tmp_path: Path) -> None:
    first = await Evaluate(qa(), EXAMPLES, exact_match(), lm=FakeLM(Answerer()), run_dir=tmp_path)
    again = await Evaluate(qa(), EXAMPLES, exact_match(), lm=FakeLM(Answerer()), run_dir=tmp_path)
    assert first.score == again.score == 1.0
    record = (tmp_path / "results.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(record) == 4, "a resumed evaluation rewrites its record, not appends to it"


# ---- the `rhizome batch` command keeps the same journal next to its --out file ----------

CLI_QUESTIONS = ["Capital of France?", "Capital of Italy?", "Capital of Japan?"]


def cli_data(folder: Path) -> Path:
    path = folder / "data.jsonl"
    path.write_text("".join(json.dumps({"question": q}) + "\n" for q in CLI_QUESTIONS))
    return path


def batch_command(folder: Path, server: OpenAIServer, *extra: str) -> list[str]:
    data, out = cli_data(folder), folder / "results.jsonl"
    lm = ["--base-url", server.url, "--model", "test-model", "-q"]
    return ["batch", "rhizome.examples:build", str(data), "-o", str(out), *lm, *extra]


def asked(server: OpenAIServer) -> list[str]:
    return [q for r in server.requests for q in CLI_QUESTIONS if q in json.dumps(r["messages"])]


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RHIZOME_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("RHIZOME_BASE_URL", raising=False)
    monkeypatch.delenv("RHIZOME_MODEL_NAME", raising=False)
    return tmp_path


def test_cli_refuses_a_journal_of_a_changed_program(
    cli_env: Path, server: OpenAIServer, capsys: pytest.CaptureFixture[str]
) -> None:
    server.responder = lambda body: '{"answer": "x"}'
    assert cli_main(batch_command(cli_env, server)) == 0
    changed = build_example()
    changed.set_parameters({"answer.instruction": "Answer at length."})
    changed.save(cli_env / "program.json")
    server.reset()
    capsys.readouterr()
    assert cli_main(batch_command(cli_env, server, "-p", str(cli_env / "program.json"))) == 1
    err = capsys.readouterr().err
    assert str(cli_env / "results.jsonl.journal") in err
    assert "different program" in err
    assert "--overwrite" in err
    assert server.request_count == 0


def test_cli_reruns_failed_examples_only(cli_env: Path, server: OpenAIServer) -> None:
    server.responder = lambda body: (
        server.Reply(status=400, text="down")
        if "Italy" in json.dumps(body["messages"])
        else '{"answer": "x"}'
    )
    assert cli_main(batch_command(cli_env, server)) == 1
    server.reset()
    server.responder = lambda body: '{"answer": "x"}'
    assert cli_main(batch_command(cli_env, server)) == 0
    assert asked(server) == ["Capital of Italy?"]
    server.reset()
    assert cli_main(batch_command(cli_env, server)) == 0
    assert server.request_count == 0


def test_cli_tolerates_a_torn_last_line(cli_env: Path, server: OpenAIServer) -> None:
    server.responder = lambda body: '{"answer": "x"}'
    assert cli_main(batch_command(cli_env, server)) == 0
    journal = cli_env / "results.jsonl.journal" / "results.jsonl"
    lines = journal.read_text(encoding="utf-8").splitlines(keepends=True)
    torn = json.loads(lines[-1])["index"]
    journal.write_text("".join(lines[:-1]) + lines[-1][:20], encoding="utf-8")
    server.reset()
    assert cli_main(batch_command(cli_env, server)) == 0
    assert asked(server) == [CLI_QUESTIONS[torn]]
    out = (cli_env / "results.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["index"] for line in out] == [0, 1, 2]
