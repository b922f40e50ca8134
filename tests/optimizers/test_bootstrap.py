from __future__ import annotations

import json
import re

import pytest

from rhizome.engine.client.fake import FakeLM
from rhizome.engine.client.protocol import LMRequest
from rhizome.engine.errors import ConfigError
from rhizome.engine.example import Example
from rhizome.engine.graphs.graph import Graph
from rhizome.nodes.function import FunctionNode
from rhizome.nodes.predict import Predict
from rhizome.optimizers.bootstrap import BootstrapFewShot
from rhizome.optimizers.evaluate import Evaluate
from rhizome.optimizers.labeled import LabeledFewShot
from rhizome.optimizers.metrics import exact_match

FACTS = {f"item{i}": f"colour{i}" for i in range(12)}


def lookup(query: str) -> list[str]:
    """Find the fact for the item named in the query."""
    return [f"{k} is {v}" for k, v in FACTS.items() if k in query.split()]


def build() -> Graph:
    return (
        Graph("qa", outputs=["answer"])
        .add("write_query", Predict("question -> query"))
        .add("retrieve", FunctionNode(lookup, outputs=["context"]))
        .add("answer", Predict("context: list[str], question -> answer"))
        .connect("write_query", "retrieve")
        .connect("retrieve", "answer")
    )


def last_user(request: LMRequest) -> str:
    return str(request.messages[-1]["content"])


def responder(request: LMRequest, sample: int) -> str:
    """Queries are always right; answers are right only for even items."""
    text = last_user(request)
    item = re.search(r"item(\d+)", text)
    assert item is not None
    n = int(item.group(1))
    if "<query>" in str(request.messages[0]["content"]) and "<context>" not in text:
        return f"<query>item{n}</query>"
    return f"<answer>{FACTS[f'item{n}'] if n % 2 == 0 else 'unknown'}</answer>"


def trainset() -> list[Example]:
    return [
        Example(question=f"What colour is item{i}?", answer=f"colour{i}").with_inputs("question")
        for i in range(12)
    ]


async def test_bootstrap_keeps_only_traces_whose_metric_passed() -> None:
    graph = build()
    lm = FakeLM(responder)
    opt = BootstrapFewShot(exact_match(), max_bootstrapped_demos=3, max_labeled_demos=0, lm=lm)
    new = await opt.optimize(graph, trainset())
    query_demos = new.nodes["write_query"].predictor.demos
    answer_demos = new.nodes["answer"].predictor.demos
    assert len(query_demos) == 3
    assert len(answer_demos) == 3
    # Every kept demo comes from a passing (even) example, and both nodes took
    # their demos from the same traces, intermediate fields included.
    for q, a in zip(query_demos, answer_demos, strict=True):
        n = int(re.search(r"item(\d+)", q["question"]).group(1))  # type: ignore[union-attr]
        assert n % 2 == 0
        assert q["query"] == f"item{n}"
        assert a["question"] == q["question"]
        assert a["context"] == [f"item{n} is colour{n}"]
        assert a["answer"] == f"colour{n}"
    assert opt.report.kept == 3
    assert opt.report.dropped >= 1
    # The input graph is untouched.
    assert graph.nodes["answer"].predictor.demos == []


async def test_bootstrap_adds_labeled_demos_from_unused_examples() -> None:
    lm = FakeLM(responder)
    opt = BootstrapFewShot(exact_match(), max_bootstrapped_demos=1, max_labeled_demos=3, lm=lm)
    new = await opt.optimize(build(), trainset())
    demos = new.nodes["answer"].predictor.demos
    assert len(demos) == 3
    assert "context" in demos[0]
    assert set(demos[1]) == {"question", "answer"}
    assert demos[1]["question"] != demos[0]["question"]


@pytest.mark.parametrize(
    ("max_booted", "max_labeled", "expected"),
    [(2, 2, (2, 0)), (1, 2, (1, 1)), (2, 4, (2, 2)), (4, 2, (4, 0)), (2, 0, (2, 0))],
)
async def test_labelled_demos_fill_up_to_max_labeled_demos(
    max_booted: int, max_labeled: int, expected: tuple[int, int]
) -> None:
    """DSPy's rule: bootstrapped first, then labelled ones until ``max_labeled_demos`` in all."""
    opt = BootstrapFewShot(
        exact_match(),
        max_bootstrapped_demos=max_booted,
        max_labeled_demos=max_labeled,
        lm=FakeLM(responder),
    )
    demos = (await opt.optimize(build(), trainset())).nodes["answer"].predictor.demos
    from_traces = [d for d in demos if "context" in d]
    assert (len(from_traces), len(demos) - len(from_traces)) == expected
    assert demos[: len(from_traces)] == from_traces  # bootstrapped ones come first
    assert len({d["question"] for d in demos}) == len(demos)  # labelled ones are other examples


async def test_extra_rounds_ask_for_fresh_samples() -> None:
    samples: list[int] = []

    def record(request: LMRequest, sample: int) -> str:
        samples.append(sample)
        return responder(request, sample)

    opt = BootstrapFewShot(
        exact_match(),
        max_bootstrapped_demos=12,
        max_labeled_demos=0,
        max_rounds=2,
        lm=FakeLM(record),
    )
    await opt.optimize(build(), trainset())
    assert opt.report.rounds == 2
    assert 0 in samples
    assert 1 in samples


async def test_teacher_must_have_same_shape() -> None:
    teacher = Graph("other").add("answer", Predict("question -> answer"))
    opt = BootstrapFewShot(exact_match(), teacher=teacher, lm=FakeLM(responder))
    with pytest.raises(ConfigError, match="missing in teacher"):
        await opt.optimize(build(), trainset())


async def test_labeled_few_shot_and_evaluate_improve_nothing_by_magic() -> None:
    lm = FakeLM(responder)
    graph = build()
    new = await LabeledFewShot(k=2).optimize(graph, trainset())
    assert len(new.nodes["answer"].predictor.demos) == 2
    assert new.nodes["write_query"].predictor.demos == []  # no query labels in the data
    result = await Evaluate(new, trainset(), exact_match(), lm=lm, concurrency=4)
    assert result.n == 12
    assert result.score == pytest.approx(0.5)
    assert result.failures == 0
    assert result.usage["calls"] == 24


async def test_evaluate_counts_failures_and_slices_by_tag(tmp_path) -> None:  # type: ignore[no-untyped-def]
    lm = FakeLM(responder)
    data = [
        Example(
            question=f"What colour is item{i}?",
            answer=f"colour{i}",
            tags=("even" if i % 2 == 0 else "odd",),
        )
        for i in range(6)
    ]
    data.append(Example(wrong_field="x", answer="y", tags=("broken",)))
    result = await Evaluate(build(), data, exact_match(), lm=lm, run_dir=tmp_path / "run")
    assert result.failures == 1
    assert result.slices["even"]["score"] == 1.0
    assert result.slices["odd"]["score"] == 0.0
    assert result.slices["broken"]["score"] == 0.0
    assert result.score == pytest.approx(3 / 7)
    assert (tmp_path / "run" / "run.json").exists()
    lines = (tmp_path / "run" / "results.jsonl").read_text().splitlines()
    assert len(lines) == 7


async def test_bootstrap_writes_a_run_record(tmp_path) -> None:  # type: ignore[no-untyped-def]
    opt = BootstrapFewShot(
        exact_match(), max_bootstrapped_demos=2, lm=FakeLM(responder), run_dir=tmp_path / "boot"
    )
    new = await opt.optimize(build(), trainset())
    rows = [
        json.loads(line) for line in (tmp_path / "boot" / "trials.jsonl").read_text().splitlines()
    ]
    assert sum(r["kept"] for r in rows) == 2
    assert all("calls" in r for r in rows)
    meta = json.loads((tmp_path / "boot" / "run.json").read_text())
    assert meta["status"] == "finished"
    assert meta["summary"]["kept"] == 2
    reloaded = build().load(tmp_path / "boot" / "program.json")
    assert reloaded.named_parameters() == new.named_parameters()
