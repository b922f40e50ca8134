"""Issue 14: one walk over nested programs, one door for parameters, saving through it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from rhizome.drawing import graph_svg
from rhizome.engine.client.fake import FakeLM
from rhizome.engine.client.openai import OpenAILM
from rhizome.engine.errors import GraphError, SaveError
from rhizome.engine.example import Example
from rhizome.engine.graphs import saving
from rhizome.engine.graphs.graph import Graph
from rhizome.engine.graphs.walk import walk
from rhizome.nodes.loop import Loop
from rhizome.nodes.predict import Predict
from rhizome.nodes.retrieve import Retrieve
from rhizome.optimizers.describe import describe_graph
from rhizome.optimizers.joint import JointSearch
from rhizome.optimizers.space import scalar_dimensions
from rhizome.tools.retrieval.retrievers import InMemoryRetriever
from tests.engine.program_model_case import (
    DOCS,
    PATHS,
    QUESTION,
    lms,
    program,
    run_once,
    score,
    snapshot,
)

ROOT = Path(__file__).resolve().parents[2]
# Nodes that hold no tunable slot of their own: containers and the ensemble's combiner.
NO_SLOTS = {"hops", "write", "vote", "vote.combine"}


def _mermaid_paths(text: str) -> set[str]:
    ids = re.findall(r"^\s*(?:subgraph )?n_(\w+)\[", text, re.M)
    return {re.sub(r"__\d+$", "", i).replace("__", ".") for i in ids}


def _owners(names: list[str]) -> set[str]:
    return {name.rpartition(".")[0] for name in names}


def test_every_consumer_sees_the_same_nodes() -> None:
    g = program()
    lm = FakeLM(["x"], name="x")
    assert {path for path, _ in walk(g)} == PATHS
    assert set(saving.structure(g)["nodes"]) == PATHS
    assert _mermaid_paths(g.to_mermaid()) == PATHS
    described = re.findall(r"- node ([\w.]+):", describe_graph(g))
    assert set(described) == PATHS
    owners = _owners(list(g.named_parameters()))
    assert owners == PATHS - NO_SLOTS
    dims = scalar_dimensions(g, temperatures=[0.5], ks=[2], lms=[lm])
    assert {d.path for d in dims} == owners
    assert "hops.search.k" in {d.name for d in dims}, "k inside a loop must be searched"
    assert {d.name for d in dims} <= set(g.named_parameters())
    # the drawing counts what each top-level box holds with the same walk
    svg = graph_svg(g)
    for name, node in g.nodes.items():
        inside = sum(1 for path in PATHS if path.startswith(name + "."))
        if inside:
            assert f"{node.kind if not node.wires_children else 'Graph'} · {inside} inside" in svg


def test_k_inside_a_loop_goes_through_the_one_door() -> None:
    g = program()
    assert g.named_parameters()["hops.search.k"] == 1
    tuned = g.with_parameters({"hops.search.k": 2})
    assert tuned.named_parameters()["hops.search.k"] == 2
    assert g.named_parameters()["hops.search.k"] == 1, "with_parameters leaves the graph alone"
    with pytest.raises(GraphError, match=r"'hops.search.k' must be a whole number >= 1"):
        g.set_parameters({"write.answer.instruction": "changed", "hops.search.k": 0})
    assert g.named_parameters()["write.answer.instruction"] != "changed"
    with pytest.raises(GraphError, match=r"did you mean hops.search.k"):
        g.set_parameters({"hops.serch.k": 2})


def _looped(feed: str) -> Graph:
    body = Graph("hop", outputs=["passages"])
    body.add("a", Predict("question -> query")).add("b", Predict("question -> query"))
    body.add("search", Retrieve(InMemoryRetriever(DOCS), k=1))
    body.connect(f"{feed}.query", "search.query")
    return Graph("g").add("hops", Loop(body, max_iters=2))


def test_changed_wiring_inside_a_loop_body_changes_the_fingerprint(tmp_path: Path) -> None:
    via_a, via_b = _looped("a"), _looped("b")
    assert saving.fingerprint(saving.structure(via_a)) != saving.fingerprint(
        saving.structure(via_b)
    )
    via_a.save(tmp_path / "a.json")
    with pytest.raises(SaveError, match=r"edge 'hops.a -> hops.search \[query->query\]' was"):
        via_b.load(tmp_path / "a.json")


def _in_fresh_process(saved: Path, out: Path) -> dict[str, Any]:
    subprocess.run(
        [sys.executable, "-m", "tests.engine.program_model_case", str(saved), str(out)],
        cwd=ROOT,
        check=True,
        timeout=120,
    )
    data: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    return data


async def _here(graph: Graph, recorded: dict[str, FakeLM]) -> dict[str, Any]:
    for lm in recorded.values():
        lm.requests.clear()
    await run_once(graph, recorded["small"])
    # A JSON round trip, as the other process's snapshot had.
    here: dict[str, Any] = json.loads(json.dumps(snapshot(graph, list(recorded.values()))))
    return here


async def test_save_and_load_in_a_fresh_process_gives_identical_prompts(tmp_path: Path) -> None:
    given = lms()
    tuned = program().set_parameters(
        {
            "hops.search.k": 2,
            "hops.query.demos": [{"context": [], "question": "q", "query": "a query"}],
            "write.answer.instruction": "Answer from the passages only.",
            "write.answer.temperature": 0.3,
            "write.answer.lm": given["big"],
            "route.lm": given["small"],
        }
    )
    path = tmp_path / "program.json"
    tuned.save(path)
    data = json.loads(path.read_text())
    assert data["format"] == 2
    assert data["lms"] == ["big", "small"]
    assert data["parameters"]["hops.search"] == {"k": 2}
    assert data["parameters"]["write.answer"]["lm"] == "big"
    assert data["parameters"]["check"]["lm"] is None

    there = _in_fresh_process(path, tmp_path / "there.json")
    here = await _here(tuned, given)
    assert there == here
    assert there["parameters"]["hops.search.k"] == 2
    assert there["parameters"]["write.answer.lm"] == "big"
    answer_prompts = here["requests"]["big"]
    assert len(answer_prompts) == 1
    assert all(doc in answer_prompts[0] for doc in DOCS[:2]), "k=2 reached the loop body"


async def test_joint_search_over_k_and_lms_survives_a_fresh_process(tmp_path: Path) -> None:
    given = lms()
    data = [Example(question=QUESTION, answer="the Thames").with_inputs("question")] * 2
    search = JointSearch(
        score,
        num_trials=24,
        num_demo_sets=0,
        max_labeled_demos=0,
        ks=[2],
        lms=[given["small"], given["big"]],
        minibatch_size=2,
        full_eval_every=8,
        lm=given["small"],
        seed=0,
    )
    best = await search.optimize(program(), data)
    assert search.best_score == 1.0
    params = best.named_parameters()
    assert params["hops.search.k"] == 2
    assert params["write.answer.lm"] is given["big"]
    path = tmp_path / "best.json"
    best.save(path)

    there = _in_fresh_process(path, tmp_path / "there.json")
    here = await _here(best, given)
    assert there == here
    assert there["parameters"]["hops.search.k"] == 2
    assert there["parameters"]["write.answer.lm"] == "big"


def test_lm_references_must_be_given_and_never_hold_secrets(tmp_path: Path) -> None:
    remote = OpenAILM("gpt-x", base_url="http://user:pw@example.invalid/v1", api_key="sk-SECRET")
    path = tmp_path / "p.json"
    program().set_parameters({"write.answer.lm": remote, "route.lm": FakeLM(["x"])}).save(path)
    text = path.read_text()
    for secret in ("sk-SECRET", "pw@", "example.invalid"):
        assert secret not in text
    with pytest.raises(SaveError, match=r"LMs that are not given: 'fake', 'gpt-x'") as info:
        program().load(path)
    assert "lms={'fake': <LM>, 'gpt-x': <LM>}" in str(info.value)
    loaded = program().load(path, lms={"fake": FakeLM(["y"]), "gpt-x": remote})
    assert loaded.named_parameters()["write.answer.lm"] is remote


def test_two_lms_under_one_name_must_be_named_when_saving(tmp_path: Path) -> None:
    one, two = FakeLM(["a"], name="m"), FakeLM(["b"], name="m")
    g = program().set_parameters({"route.lm": one, "check.lm": two})
    with pytest.raises(SaveError, match="both named 'm'"):
        g.save(tmp_path / "p.json")
    g.save(tmp_path / "p.json", lms={"first": one, "second": two})
    loaded = program().load(tmp_path / "p.json", lms={"first": two, "second": one})
    assert loaded.named_parameters()["route.lm"] is two


def _old_file(tmp_path: Path, spec: str = "question -> answer") -> Path:
    """A program as rhizome wrote it before format 2: no format key, no LM or k."""
    data = {
        "rhizome_version": "0.1.0",
        "graph": "qa",
        "fingerprint": "0" * 64,
        "structure": {
            "nodes": {"answer": "Predict"},
            "predictors": {"answer": spec},
            "edges": [],
            "inputs": ["question"],
            "outputs": ["answer"],
        },
        "parameters": {"answer": {"instruction": "Old.", "demos": [], "temperature": 0.2}},
    }
    path = tmp_path / "old.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_a_format_1_file_loads_when_its_lm_nodes_still_fit(tmp_path: Path) -> None:
    g = Graph("qa").add("answer", Predict("question -> answer")).load(_old_file(tmp_path))
    assert g.named_parameters()["answer.instruction"] == "Old."
    assert g.named_parameters()["answer.temperature"] == 0.2


def test_a_format_1_file_that_does_not_fit_says_what_to_do(tmp_path: Path) -> None:
    path = _old_file(tmp_path, spec="question -> answer, note")
    with pytest.raises(SaveError, match=r"older rhizome \(file format 1\)") as info:
        Graph("qa").add("answer", Predict("question -> answer")).load(path)
    assert "predictor 'answer' changed signature" in str(info.value)
    assert "strict=False" in str(info.value)


def test_a_file_from_a_newer_format_is_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    g = Graph("qa").add("answer", Predict("question -> answer"))
    g.save(path)
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "format": 99}))
    with pytest.raises(SaveError, match=r"file format 99.*upgrade rhizome"):
        g.load(path)
