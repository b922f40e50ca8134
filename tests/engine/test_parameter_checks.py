"""Issue 15: temperatures outside [0, 2] and wrongly typed slots are refused on every path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rhizome.engine.call.predictor import Predictor
from rhizome.engine.errors import ConfigError, GraphError, SaveError
from rhizome.engine.graphs.graph import Graph
from rhizome.nodes.predict import Predict


def program() -> Graph:
    return Graph("qa").add("answer", Predict("question -> answer"))


@pytest.mark.parametrize("value", [-0.5, 2.5, float("nan"), float("inf")])
def test_the_constructor_refuses_a_temperature_outside_0_to_2(value: float) -> None:
    with pytest.raises(ConfigError, match="temperature of predictor 'question -> answer'"):
        Predictor("question -> answer", temperature=value)


def test_assignment_is_checked_too() -> None:
    p = Predictor("question -> answer", temperature=0.7)
    with pytest.raises(ConfigError, match=r"must be between 0 and 2 .*got -1"):
        p.temperature = -1
    assert p.temperature == 0.7
    p.temperature = None
    p.temperature = 2
    assert p.temperature == 2


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ({"temperature": -0.1}, r"'parameters\.answer\.temperature' must be between 0 and 2"),
        ({"temperature": "hot"}, "'parameters.answer.temperature' must be a number or None"),
        ({"instruction": 5}, "'parameters.answer.instruction' must be a string, got int"),
        ({"demos": ["not a dict"]}, "'parameters.answer.demos' must be a list of objects"),
        ({"demos": {"q": "a"}}, "'parameters.answer.demos' must be a list of objects"),
        ({"lm": 3}, "'parameters.answer.lm' must be an LM name"),
    ],
)
def test_loading_checks_every_value_and_changes_nothing_on_error(
    tmp_path: Path, state: dict[str, Any], message: str
) -> None:
    path = tmp_path / "qa.json"
    program().save(path)
    data = json.loads(path.read_text())
    data["parameters"]["answer"].update({"instruction": "Changed.", **state})
    path.write_text(json.dumps(data))
    graph = program().set_parameters({"answer.instruction": "Keep me.", "answer.temperature": 0.3})
    with pytest.raises(SaveError, match=message):
        graph.load(path)
    p = graph.nodes["answer"].predictor  # type: ignore[attr-defined]
    assert (p.instruction, p.temperature, p.demos) == ("Keep me.", 0.3, [])


def test_loading_a_saved_negative_temperature_names_its_path(tmp_path: Path) -> None:
    path = tmp_path / "qa.json"
    program().save(path)
    data = json.loads(path.read_text())
    data["parameters"]["answer"]["temperature"] = -0.7
    path.write_text(json.dumps(data))
    graph = program()
    with pytest.raises(
        SaveError, match=r"'parameters\.answer\.temperature' must be between 0 and 2"
    ):
        graph.load(path)
    assert graph.named_parameters()["answer.temperature"] is None


def test_set_parameters_refuses_an_out_of_range_temperature() -> None:
    with pytest.raises(GraphError, match=r"'answer.temperature' must be between 0 and 2 .*got 5"):
        program().set_parameters({"answer.temperature": 5})
