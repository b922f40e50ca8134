"""KNNFewShot: each call's demos are the trainset examples nearest to its input."""

from __future__ import annotations

import re

import pytest

from rhizome.engine.client.fake import FakeLM
from rhizome.engine.client.protocol import LMRequest
from rhizome.engine.errors import ConfigError
from rhizome.engine.example import Example
from rhizome.engine.graphs.graph import Graph
from rhizome.nodes.predict import ChainOfThought, Predict
from rhizome.optimizers.knn import DemoSelector, KNNFewShot
from rhizome.optimizers.metrics import exact_match
from rhizome.tools.retrieval.embeddings import HashEmbedder

TRAIN = [
    Example(question="What is the capital of France?", answer="Paris"),
    Example(question="How many legs does a spider have?", answer="8"),
    Example(question="What colour is a clear daytime sky?", answer="blue"),
    Example(question="Who wrote the play Hamlet?", answer="Shakespeare"),
    Example(question="How many legs does an insect have?", answer="6"),
]


def qa() -> Graph:
    return Graph("qa").add("answer", Predict("question -> answer"))


def demo_questions(request: LMRequest) -> list[str]:
    demo_users = [m["content"] for m in request.messages[1:-1] if m["role"] == "user"]
    return [re.findall(r"<question>\n(.*?)\n</question>", str(u))[0] for u in demo_users]


def echo_first_demo(request: LMRequest, sample: int) -> str:
    """Answers with the question of the first demo it was shown."""
    shown = demo_questions(request)
    return f"<answer>\n{shown[0] if shown else 'none'}\n</answer>"


def selector_of(graph: Graph) -> DemoSelector:
    selector = getattr(dict(graph.named_predictors())["answer"], "demo_selector", None)
    assert isinstance(selector, DemoSelector)
    return selector


async def test_selector_ranks_demos_by_similarity_to_the_input() -> None:
    knn = KNNFewShot(2, TRAIN, embedder=HashEmbedder(dimension=256))
    program = await knn.optimize(qa())
    picked = await selector_of(program)({"question": "How many legs does a dog have?"})
    assert [d["question"] for d in picked] == [
        "How many legs does a spider have?",
        "How many legs does an insect have?",
    ]
    capital = await selector_of(program)({"question": "What is the capital of Italy?"})
    assert capital[0] == {"question": "What is the capital of France?", "answer": "Paris"}
    assert len(capital) == 2


async def test_runs_pick_demos_per_input_at_run_time() -> None:
    program = await KNNFewShot(1, TRAIN, embedder=HashEmbedder(dimension=256)).optimize(qa())
    lm = FakeLM(echo_first_demo)
    legs = await program.run(question="How many legs does a dog have?", lm=lm)
    play = await program.run(question="Who wrote the play Macbeth?", lm=lm)
    assert legs["answer"] == "How many legs does a spider have?"
    assert play["answer"] == "Who wrote the play Hamlet?"
    # The demos sent are in the trace, so bootstrapping and export see them too.
    call = play.trace.lm_calls("answer")[0] if play.trace else None
    assert call is not None
    assert "Hamlet" in str(call.messages[1]["content"])


async def test_an_input_equal_to_a_demo_does_not_get_its_own_answer() -> None:
    program = await KNNFewShot(1, TRAIN, embedder=HashEmbedder(dimension=256)).optimize(qa())
    picked = await selector_of(program)({"question": "How many legs does a spider have?"})
    assert picked[0]["question"] == "How many legs does an insect have?"
    keep = KNNFewShot(1, TRAIN, embedder=HashEmbedder(dimension=256), skip_same=False)
    same = await selector_of(await keep.optimize(qa()))(
        {"question": "How many legs does a spider have?"}
    )
    assert same[0]["question"] == "How many legs does a spider have?"


async def test_leaves_the_input_graph_alone() -> None:
    graph = qa()
    graph.set_parameters({"answer.demos": [{"question": "q", "answer": "a"}]})
    program = await KNNFewShot(2, TRAIN, embedder=HashEmbedder()).optimize(graph)
    original = dict(graph.named_predictors())["answer"]
    assert getattr(original, "demo_selector", None) is None
    assert original.demos == [{"question": "q", "answer": "a"}]
    assert dict(program.named_predictors())["answer"].demos == []


async def test_with_a_metric_the_pool_holds_bootstrapped_demos() -> None:
    def reasoner(request: LMRequest, sample: int) -> str:
        question = re.findall(
            r"<question>\n(.*?)\n</question>", str(request.messages[-1]["content"])
        )
        gold = {str(e["question"]): str(e["answer"]) for e in TRAIN}
        return f"<reasoning>\nrecall it\n</reasoning>\n<answer>\n{gold[question[0]]}\n</answer>"

    graph = Graph("qa").add("answer", ChainOfThought("question -> answer"))
    knn = KNNFewShot(
        2, TRAIN, embedder=HashEmbedder(dimension=256), metric=exact_match(), lm=FakeLM(reasoner)
    )
    program = await knn.optimize(graph)
    pool = selector_of(program).pool
    assert len(pool) == len(TRAIN)
    assert all(d["reasoning"] == "recall it" for d in pool)


async def test_predictor_without_matching_fields_is_an_error() -> None:
    graph = Graph("qa").add("answer", Predict("context, question -> answer"))
    data = [Example(context="c", answer="a"), Example(question="q", answer="b")]
    with pytest.raises(ConfigError, match="share none of its inputs"):
        await KNNFewShot(1, data, embedder=HashEmbedder()).optimize(graph)


def test_k_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="k=0"):
        KNNFewShot(0, TRAIN, embedder=HashEmbedder())
