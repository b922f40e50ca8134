"""Saving and loading tuned parameters as JSON with a structure fingerprint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rhizome.engine.errors import SaveError
from rhizome.engine.graphs import saving
from rhizome.engine.graphs.graph import Graph
from rhizome.nodes.function import FunctionNode
from rhizome.nodes.predict import ChainOfThought, Predict


def program(answer_sig: str = "passages: list[str], question -> answer") -> Graph:
    inner = Graph("inner").add("check", Predict("answer -> ok: bool"))
    g = Graph("rag")
    g.add("query", ChainOfThought("question -> query"))
    g.add("search", FunctionNode(lambda query: [query], outputs={"passages": list[str]}))
    g.add("answer", Predict(answer_sig))
    g.add("verify", inner)
    return g.connect("query", "search").connect("search", "answer").connect("answer", "verify")


def tuned() -> Graph:
    return program().set_parameters(
        {
            "query.instruction": "Write a search query.",
            "answer.demos": [{"passages": ["p"], "question": "q", "answer": "a"}],
            "verify.check.temperature": 0.5,
        }
    )


def test_roundtrip_restores_parameters(tmp_path: Path) -> None:
    path = tmp_path / "rag.json"
    tuned().save(path)
    fresh = program()
    assert fresh.load(path) is fresh
    assert fresh.named_parameters() == tuned().named_parameters()


def test_file_is_readable_json(tmp_path: Path) -> None:
    path = tmp_path / "rag.json"
    tuned().save(path)
    data = json.loads(path.read_text())
    assert data["graph"] == "rag"
    assert data["format"] == saving.FORMAT == 2
    assert data["rhizome_version"] == saving.rhizome_version()
    assert len(data["fingerprint"]) == 64
    assert data["structure"]["nodes"] == {
        "query": "ChainOfThought",
        "search": "FunctionNode",
        "answer": "Predict",
        "verify": "Graph",
        "verify.check": "Predict",
    }
    assert data["structure"]["predictors"]["answer"] == "passages: list[str], question -> answer"
    assert "query -> search [query->query]" in data["structure"]["edges"]
    assert data["parameters"]["query"]["instruction"] == "Write a search query."
    assert data["parameters"]["query"]["lm"] is None  # the run's default LM
    assert set(data["parameters"]) == {"query", "answer", "verify.check"}


def test_fingerprint_ignores_parameters_but_not_structure() -> None:
    fp = saving.fingerprint(saving.structure(program()))
    assert saving.fingerprint(saving.structure(tuned())) == fp
    assert (
        saving.fingerprint(
            saving.structure(program("passages: list[str], question -> answer, note"))
        )
        != fp
    )


def test_changed_graph_lists_the_differences(tmp_path: Path) -> None:
    path = tmp_path / "rag.json"
    tuned().save(path)
    changed = program("passages: list[str], question -> answer, confidence: float")
    changed.add("extra", Predict("answer -> summary")).connect("answer", "extra")
    with pytest.raises(SaveError) as info:
        changed.load(path)
    message = str(info.value)
    assert "does not fit graph 'rag'" in message
    assert "node 'extra' is in the graph but not in the file" in message
    assert "predictor 'answer' changed signature" in message
    assert "edge 'answer -> extra [answer->answer]' was added" in message
    assert "strict=False" in message
    assert changed.named_parameters()["query.instruction"] != "Write a search query."


def test_removed_node_is_listed(tmp_path: Path) -> None:
    path = tmp_path / "rag.json"
    tuned().save(path)
    smaller = Graph("rag").add("query", ChainOfThought("question -> query"))
    with pytest.raises(SaveError, match="node 'search' is in the file but not in the graph"):
        smaller.load(path)


def test_non_strict_load_restores_what_still_fits(tmp_path: Path) -> None:
    path = tmp_path / "rag.json"
    tuned().save(path)
    changed = program("passages: list[str], question -> answer, note")
    changed.load(path, strict=False)
    params = changed.named_parameters()
    assert params["query.instruction"] == "Write a search query."
    assert params["verify.check.temperature"] == 0.5
    assert params["answer.demos"] == []  # signature changed: not restored


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SaveError, match="no saved program at"):
        program().load(tmp_path / "nope.json")


def test_truncated_json_says_so(tmp_path: Path) -> None:
    path = tmp_path / "rag.json"
    tuned().save(path)
    path.write_text(path.read_text()[:200])
    with pytest.raises(SaveError, match="is not valid JSON \\(truncated or damaged\\?\\)"):
        program().load(path)


def test_too_large_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "rag.json"
    tuned().save(path)
    monkeypatch.setattr(saving, "MAX_BYTES", 100)
    with pytest.raises(SaveError, match="over the 0 MiB limit"):
        program().load(path)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.pop("parameters"), "has no 'parameters' key"),
        (lambda d: d.update(fingerprint=3), "'fingerprint' must be a string"),
        (lambda d: d["parameters"].update(answer=[]), "'parameters.answer' must be an object"),
        (
            lambda d: d["parameters"]["answer"].update(demos={}),
            "'parameters.answer.demos' must be a list",
        ),
        (
            lambda d: d["parameters"]["answer"].update(instruction=1),
            "'parameters.answer.instruction'",
        ),
        (
            lambda d: d["parameters"]["answer"].update(temperature="hot"),
            "'parameters.answer.temperature'",
        ),
    ],
)
def test_wrong_types_name_the_key(tmp_path: Path, edit: object, message: str) -> None:
    path = tmp_path / "rag.json"
    tuned().save(path)
    data = json.loads(path.read_text())
    edit(data)  # type: ignore[operator]
    path.write_text(json.dumps(data))
    with pytest.raises(SaveError, match=message.replace("(", "\\(").replace(".", "\\.")):
        program().load(path)


def test_not_an_object(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text("[1, 2]")
    with pytest.raises(SaveError, match="must hold a JSON object, found list"):
        program().load(path)


def test_edited_fingerprint_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "rag.json"
    tuned().save(path)
    data = json.loads(path.read_text())
    data["fingerprint"] = "0" * 64
    path.write_text(json.dumps(data))
    with pytest.raises(SaveError, match="fingerprint does not match the file's own structure"):
        program().load(path)
