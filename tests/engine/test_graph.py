"""Building and validating graphs: wiring, errors, parameters, copies, drawings."""

from __future__ import annotations

import pytest

from rhizome.engine.call.predictor import Predictor
from rhizome.engine.call.signature import Field
from rhizome.engine.client.fake import FakeLM
from rhizome.engine.errors import GraphError
from rhizome.engine.graphs.graph import Graph
from rhizome.engine.graphs.node import Node
from rhizome.nodes.function import FunctionNode
from rhizome.nodes.predict import ChainOfThought, Predict


def rag() -> Graph:
    g = Graph("rag")
    g.add("query", Predict("question -> query"))
    g.add("search", FunctionNode(lambda query: [query], outputs={"passages": list[str]}))
    g.add("answer", Predict("passages: list[str], question -> answer"))
    return g.connect("query", "search").connect("search", "answer")


def test_inputs_and_outputs_are_inferred() -> None:
    g = rag()
    assert list(g.inputs) == ["question"]
    assert list(g.outputs) == ["answer"]
    assert g.outputs["answer"].is_input is False
    assert list(g.nodes) == ["query", "search", "answer"]
    assert g.edges[0][:3] == ("query", "search", [("query", "query")])


def test_explicit_connect_maps_differently_named_fields() -> None:
    g = Graph().add("a", Predict("q -> text")).add("b", Predict("question -> answer"))
    g.connect("a.text", "b.question")
    assert list(g.inputs) == ["q"]
    assert g.edges == [("a", "b", [("text", "question")], None)]


def test_connect_one_side_named_uses_the_same_field_name() -> None:
    g = Graph().add("a", Predict("q -> x, y")).add("b", Predict("x, y -> z"))
    g.connect("a.x", "b")
    assert g.edges[0][2] == [("x", "x")]
    assert list(g.inputs) == ["q", "y"]  # y is not fed, so it comes from the graph


def test_duplicate_name_lists_existing_names() -> None:
    g = Graph("g").add("a", Predict("q -> x"))
    with pytest.raises(GraphError, match="already has a node named 'a'; its nodes are: a"):
        g.add("a", Predict("q -> y"))


@pytest.mark.parametrize("bad", ["a.b", "1x", "", "with space"])
def test_node_names_must_be_identifiers(bad: str) -> None:
    with pytest.raises(GraphError, match="must be a Python identifier"):
        Graph().add(bad, Predict("q -> x"))


def test_adding_a_function_says_to_wrap_it() -> None:
    with pytest.raises(GraphError, match="wrap plain functions with FunctionNode"):
        Graph().add("f", len)  # type: ignore[arg-type]


def test_graph_cannot_contain_itself() -> None:
    outer = Graph("outer")
    inner = Graph("inner").add("outer", outer)
    with pytest.raises(GraphError, match="cannot contain itself"):
        outer.add("inner", inner)


def test_unknown_node_lists_nodes() -> None:
    g = Graph("g").add("a", Predict("q -> x"))
    with pytest.raises(GraphError, match="has no node 'b'; its nodes are: a"):
        g.connect("a", "b")


def test_unknown_output_field_lists_outputs() -> None:
    g = Graph("g").add("a", Predict("q -> x, y")).add("b", Predict("x -> z"))
    with pytest.raises(
        GraphError, match=r"node 'a' \(Predict\).*has no output 'w'; its outputs are: x, y"
    ):
        g.connect("a.w", "b.x")


def test_unknown_input_field_lists_inputs() -> None:
    g = Graph("g").add("a", Predict("q -> x")).add("b", Predict("x, ctx -> z"))
    with pytest.raises(GraphError, match="has no input 'context'; its inputs are: x, ctx"):
        g.connect("a.x", "b.context")


def test_connect_without_matching_names_lists_both_sides() -> None:
    g = Graph("g").add("a", Predict("q -> x")).add("b", Predict("y -> z"))
    with pytest.raises(GraphError, match="'a' outputs: x; 'b' inputs: y") as info:
        g.connect("a", "b")
    assert "connect('a.<output>', 'b.<input>')" in str(info.value)


def test_clearly_incompatible_types_are_rejected_at_connect() -> None:
    g = Graph("g").add("a", Predict("q -> n: int")).add("b", Predict("n: list[str] -> z"))
    with pytest.raises(GraphError, match=r"'a.n' \(int\) to 'b.n' \(list\[str\]\)"):
        g.connect("a", "b")


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        ("str", "Any"),
        ("Any", "list[str]"),
        ("int", "float"),
        ("str", "int"),  # LM text coerces to numbers; not clearly wrong
        ("list[int]", "list[str]"),
        ("list[str]", "list[str] | None"),
        ("dict[str, int]", "dict[str, Any]"),
    ],
)
def test_compatible_types_connect(src: str, dst: str) -> None:
    g = Graph().add("a", Predict(f"q -> v: {src}")).add("b", Predict(f"v: {dst} -> z"))
    g.connect("a", "b").validate()


@pytest.mark.parametrize(
    ("src", "dst"),
    [("list[str]", "str"), ("dict[str, int]", "list[int]"), ("list[list[str]]", "list[str]")],
)
def test_incompatible_types_fail(src: str, dst: str) -> None:
    g = Graph().add("a", Predict(f"q -> v: {src}")).add("b", Predict(f"v: {dst} -> z"))
    with pytest.raises(GraphError, match="incompatible"):
        g.connect("a", "b")


def test_cycles_are_rejected() -> None:
    g = Graph("g").add("a", Predict("x -> y")).add("b", Predict("y -> x"))
    g.connect("a", "b")
    with pytest.raises(GraphError, match=r"would make a cycle.*Loop or agent node"):
        g.connect("b", "a")
    with pytest.raises(GraphError, match="cycle"):
        g.connect("b.x", "a.x")


def test_self_loop_is_a_cycle() -> None:
    g = Graph("g").add("a", Predict("x -> x2"))
    with pytest.raises(GraphError, match="cycle"):
        g.connect("a.x2", "a.x")


def test_empty_graph_is_invalid() -> None:
    with pytest.raises(GraphError, match="has no nodes"):
        Graph("g").validate()


def test_declared_inputs_must_cover_unfed_inputs() -> None:
    g = Graph("g", inputs=["question"]).add("a", Predict("question, context -> answer"))
    with pytest.raises(GraphError) as info:
        g.validate()
    message = str(info.value)
    assert "node 'a' (Predict) needs input 'context'" in message
    assert "declared graph inputs: question" in message


def test_declared_inputs_feeding_nothing_are_rejected() -> None:
    g = Graph("g", inputs=["question", "qestion"]).add("a", Predict("question -> answer"))
    with pytest.raises(GraphError, match=r"declares input.*qestion.*feed no node"):
        g.validate()


def test_declared_input_types_are_checked_against_nodes() -> None:
    g = Graph("g", inputs={"question": list[int]}).add("a", Predict("question -> answer"))
    with pytest.raises(GraphError, match=r"takes input 'question' as str.*is list\[int\]"):
        g.validate()


def test_declared_input_types_are_kept() -> None:
    g = Graph("g", inputs={"question": str}).add("a", Predict("question -> answer"))
    assert g.inputs["question"] == Field("question", str)


def test_inferred_outputs_that_collide_ask_for_declaration() -> None:
    g = Graph("g").add("a", Predict("q -> answer")).add("b", Predict("q -> answer"))
    with pytest.raises(
        GraphError,
        match=r"output 'answer' is produced by several nodes \(a.answer, b.answer\); declare",
    ):
        g.validate()


def test_declared_outputs_disambiguate_with_node_dot_field() -> None:
    g = Graph("g", outputs=["b.answer", "note"])
    g.add("a", Predict("q -> answer, note")).add("b", Predict("q -> answer"))
    assert list(g.outputs) == ["answer", "note"]


def test_declared_outputs_must_exist() -> None:
    g = Graph("g", outputs=["answr"]).add("a", Predict("q -> answer"))
    with pytest.raises(GraphError, match=r"declares output 'answr'.*node outputs are: a\.answer"):
        g.validate()
    g2 = Graph("g", outputs=["a.answr"]).add("a", Predict("q -> answer"))
    with pytest.raises(GraphError, match="has no output 'answr'; its outputs are: answer"):
        g2.validate()


def test_input_fed_twice_without_router_is_rejected() -> None:
    g = (
        Graph("g")
        .add("a", Predict("q -> x"))
        .add("b", Predict("q -> x"))
        .add("c", Predict("x -> y"))
    )
    g.connect("a", "c").connect("b", "c")
    with pytest.raises(GraphError, match=r"input 'c.x' is fed by several outputs \(a.x, b.x\)"):
        g.validate()


def test_router_branches_may_feed_one_input_and_one_output() -> None:
    g = Graph("g").add("route", Predict("q -> kind"))
    g.add("a", Predict("q -> x")).add("b", Predict("q -> x")).add("c", Predict("x -> y"))
    g.connect("route", "a", when=lambda o: o["kind"] == "a")
    g.connect("route", "b", when=lambda o: o["kind"] == "b")
    g.connect("a", "c").connect("b", "c")
    assert list(g.validate().outputs) == ["y"]


def test_when_must_be_callable() -> None:
    g = Graph().add("a", Predict("q -> x")).add("b", Predict("x -> y"))
    with pytest.raises(GraphError, match="when= must be a function"):
        g.connect("a", "b", when="x == 1")  # type: ignore[arg-type]


def test_validation_is_cached_and_mutation_invalidates() -> None:
    g = Graph("g").add("a", Predict("q -> x"))
    plan = g.plan()
    assert g.plan() is plan
    g.add("b", Predict("x -> y")).connect("a", "b")
    assert g.plan() is not plan
    assert list(g.outputs) == ["y"]


def test_optional_function_inputs_are_optional_graph_inputs() -> None:
    def search(query: str, k: int = 3) -> list[str]:
        return [query] * k

    g = Graph().add("s", FunctionNode(search, outputs=["passages"]))
    assert g.optional_inputs == frozenset({"k"})
    assert g.inputs["k"].annotation is int


def test_named_predictors_and_parameters_use_paths() -> None:
    inner = Graph("inner").add("answer", Predict("question -> answer"))
    g = Graph("outer").add("think", ChainOfThought("question -> plan")).add("sub", inner)
    paths = [p for p, _ in g.named_predictors()]
    assert paths == ["think", "sub.answer"]
    params = g.named_parameters()
    assert set(params) == {
        f"{p}.{s}" for p in paths for s in ("instruction", "demos", "temperature", "lm")
    }
    assert params["sub.answer.demos"] == []


def test_roles_become_path_suffixes() -> None:
    class TwoStep(Node):
        def __init__(self) -> None:
            super().__init__()
            self.step = Predictor("q -> a", role="step")
            self.extract = Predictor("a -> b", role="extract")

        @property
        def inputs(self) -> dict[str, Field]:
            return {"q": Field("q")}

        @property
        def outputs(self) -> dict[str, Field]:
            return {"b": Field("b", is_input=False)}

    g = Graph().add("agent", TwoStep())
    assert [p for p, _ in g.named_predictors()] == ["agent.step", "agent.extract"]


def test_set_parameters_sets_slots_and_rejects_unknown_names() -> None:
    g = rag()
    g.set_parameters(
        {"answer.instruction": "Be brief.", "query.demos": [{"question": "q", "query": "x"}]}
    )
    assert g.nodes["answer"].predictor.instruction == "Be brief."  # type: ignore[attr-defined]
    assert g.named_parameters()["query.demos"] == [{"question": "q", "query": "x"}]
    with pytest.raises(
        GraphError, match=r"no parameter 'anser.instruction' \(did you mean answer.instruction"
    ) as info:
        g.set_parameters({"anser.instruction": "x"})
    assert "valid parameters: query.instruction" in str(info.value)
    with pytest.raises(GraphError, match="must be a string"):
        g.set_parameters({"answer.instruction": 3})
    with pytest.raises(GraphError, match="must be a number or None"):
        g.set_parameters({"answer.temperature": "hot"})


def test_set_parameters_is_all_or_nothing() -> None:
    g = rag()
    with pytest.raises(GraphError):
        g.set_parameters({"answer.instruction": "new", "nope.demos": []})
    assert g.named_parameters()["answer.instruction"] != "new"


def test_copy_is_independent() -> None:
    lm = FakeLM(["x"])
    g = rag()
    g.nodes["answer"].predictor.lm = lm  # type: ignore[attr-defined]
    new = g.copy()
    new.set_parameters({"answer.instruction": "changed", "answer.demos": [{"a": 1}]})
    assert g.named_parameters()["answer.instruction"] != "changed"
    assert g.named_parameters()["answer.demos"] == []
    assert new.nodes["answer"] is not g.nodes["answer"]
    assert new.nodes["answer"].predictor.lm is lm  # type: ignore[attr-defined]  # shared
    assert new.edges == g.edges
    new.add("extra", Predict("answer -> final")).connect("answer", "extra")
    assert "extra" not in g.nodes
    assert list(g.outputs) == ["answer"]


def test_copy_repoints_subclass_attributes() -> None:
    class Program(Graph):
        def __init__(self) -> None:
            super().__init__("program")
            self.answer = Predict("question -> answer")
            self.add("answer", self.answer)

    g = Program()
    new = g.copy()
    assert isinstance(new, Program)
    assert new.answer is new.nodes["answer"]
    assert new.answer is not g.answer
    assert g.kind == "Program"


def test_mermaid_shows_nodes_edges_inputs_outputs() -> None:
    g = Graph("g", outputs=["answer"])
    g.add("route", Predict("question -> kind")).add("end", Predict("question -> answer"))
    g.add("fmt", FunctionNode(lambda text: text, outputs=["answer2"]))
    g.connect("route", "end", when=lambda o: True)
    g.connect("end.answer", "fmt.text")
    text = g.to_mermaid()
    assert text.startswith("flowchart TD\n")
    assert 'n_route["route<br/><i>Predict</i>"]' in text
    assert 'n_fmt["fmt<br/><i>FunctionNode</i>"]' in text
    assert 'n_route -.->|"when"| n_end' in text
    assert 'n_end -->|"answer → text"| n_fmt' in text
    assert 'graph_inputs(["inputs: question"])' in text
    assert 'graph_inputs -->|"question"| n_route' in text
    assert 'n_end -->|"answer"| graph_outputs' in text


def test_mermaid_nests_subgraphs() -> None:
    inner = Graph("inner").add("answer", Predict("question -> answer"))
    g = Graph("outer").add("sub", inner)
    text = g.to_mermaid()
    assert 'subgraph n_sub["sub (Graph)"]' in text
    assert 'n_sub__answer["answer<br/><i>Predict</i>"]' in text
    assert 'graph_inputs -->|"question"| n_sub' in text


def test_graph_is_a_node_with_kind_graph() -> None:
    g = rag()
    assert isinstance(g, Node)
    assert g.kind == "Graph"
    assert g.describe() == "Graph(question -> answer)"


def test_copy_of_nested_graphs_is_deep() -> None:
    inner = Graph("inner").add("answer", Predict("question -> answer"))
    outer = Graph("outer").add("sub", inner)
    new = outer.copy()
    new.set_parameters({"sub.answer.instruction": "changed"})
    assert outer.named_parameters()["sub.answer.instruction"] != "changed"
    assert new.nodes["sub"] is not inner
