"""Running graphs: concurrency, traces, errors, timeouts, cancellation, nesting, routers."""

from __future__ import annotations

import threading
from typing import Any

import anyio
import pytest

from rhizome.engine.client.fake import FakeLM
from rhizome.engine.client.protocol import LMRequest
from rhizome.engine.context import context
from rhizome.engine.errors import GraphError, NodeError, NodeTimeoutError
from rhizome.engine.graphs.graph import Graph
from rhizome.nodes.function import FunctionNode
from rhizome.nodes.predict import Predict


def echo_lm() -> FakeLM:
    """Answers every call with the last line of the prompt, tagged as `answer`/`query`."""

    def reply(request: LMRequest, sample: int) -> str:
        text = str(request.messages[-1]["content"])
        return f"<query>q:{len(text)}</query><answer>a:{len(text)}</answer>"

    return FakeLM(reply)


def three_nodes() -> Graph:
    g = Graph("rag")
    g.add("query", Predict("question -> query"))
    g.add("search", FunctionNode(lambda query: [query, query], outputs={"passages": list[str]}))
    g.add("answer", Predict("passages: list[str], question -> answer"))
    return g.connect("query", "search").connect("search", "answer")


async def test_run_returns_outputs_and_a_linked_trace() -> None:
    lm = echo_lm()
    prediction = await three_nodes().run(question="Who?", lm=lm)
    assert set(prediction) == {"answer"}
    assert prediction["answer"].startswith("a:")
    trace = prediction.trace
    assert trace is not None
    assert [r.node for r in trace.records] == ["query", "search", "answer"]
    assert trace.node("search").parents == ["query"]
    assert trace.node("answer").parents == ["search"]
    assert trace.node("search").inputs == {"query": trace.node("query").outputs["query"]}
    assert trace.node("search").kind == "FunctionNode"
    assert [c.predictor for c in trace.lm_calls()] == ["query", "answer"]
    assert trace.inputs == {"question": "Who?"}
    assert trace.outputs == dict(prediction)
    assert lm.calls == 2


async def test_inputs_mapping_and_fields_merge_and_extras_are_ignored() -> None:
    g = Graph().add("f", FunctionNode(lambda a, b: a + b, outputs=["s"]))
    p = await g.run({"a": 1, "b": 1, "label": "ignored"}, b=2)
    assert p == {"s": 3}
    assert p.trace is not None
    assert p.trace.inputs == {"a": 1, "b": 2}


async def test_missing_input_lists_the_inputs() -> None:
    def f(question: str, k: int = 2) -> str:
        return question

    g = Graph("g").add("f", FunctionNode(f, outputs=["out"]))
    with pytest.raises(
        GraphError,
        match=r"input\(s\): question; its inputs are: question \(str\), k \(int, optional\)",
    ):
        await g.run(k=3)
    assert (await g.run(question="x")) == {"out": "x"}


async def test_independent_nodes_run_concurrently() -> None:
    a_started, b_started = anyio.Event(), anyio.Event()

    async def a(x: int) -> int:
        a_started.set()
        await b_started.wait()  # deadlocks unless b runs at the same time
        return x

    async def b(x: int) -> int:
        b_started.set()
        await a_started.wait()
        return x

    g = Graph().add("a", FunctionNode(a, outputs=["ya"])).add("b", FunctionNode(b, outputs=["yb"]))
    with anyio.fail_after(5):
        assert await g.run(x=1) == {"ya": 1, "yb": 1}


async def test_a_node_starts_when_its_own_inputs_are_ready() -> None:
    c_ran = anyio.Event()

    async def slow(x: int) -> int:
        await c_ran.wait()  # finishes only after c, which must not wait for it
        return x

    async def c(y: int) -> int:
        c_ran.set()
        return y

    g = Graph().add("a", FunctionNode(lambda x: x, outputs=["y"]))
    g.add("slow", FunctionNode(slow, outputs=["z"])).add("c", FunctionNode(c, outputs=["w"]))
    g.connect("a", "c")
    with anyio.fail_after(5):
        assert await g.run(x=2) == {"z": 2, "w": 2}


async def test_node_error_is_one_node_error_and_cancels_the_rest() -> None:
    cancelled = anyio.Event()

    async def forever(x: int) -> int:
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()
        return x

    def broken(x: int) -> int:
        raise KeyError("boom")

    g = Graph("g").add("slow", FunctionNode(forever, outputs=["a"]))
    g.add("bad", FunctionNode(broken, outputs=["b"]))
    with anyio.fail_after(5), pytest.raises(NodeError) as info:
        await g.run(x=1)
    err = info.value
    assert type(err) is NodeError
    assert (err.node, err.kind) == ("bad", "FunctionNode")
    assert isinstance(err.__cause__, KeyError)
    assert "node 'bad' (FunctionNode) failed: KeyError: 'boom'" in str(err)
    assert cancelled.is_set()


async def test_failed_run_records_the_error_in_the_trace() -> None:
    g = Graph("g").add("bad", FunctionNode(lambda x: 1 / 0, outputs=["y"]))
    lm_free = await _failure_trace(g)
    assert lm_free.error is not None
    assert "ZeroDivisionError" in lm_free.error
    assert "ZeroDivisionError" in str(lm_free.node("bad").error)


async def _failure_trace(g: Graph) -> Any:
    from rhizome.engine.graphs.scheduler import run_traced
    from rhizome.engine.trace import Trace

    trace = Trace()
    with pytest.raises(NodeError):
        await run_traced(g.plan(), {"x": 1}, trace=trace)
    return trace


async def test_missing_output_from_a_node_is_an_error_naming_it() -> None:
    class Half(FunctionNode):
        async def forward(self, **inputs: Any) -> dict[str, Any]:
            return {"a": 1}

    g = Graph().add("half", Half(lambda x: x, outputs=["a", "b"]))
    with pytest.raises(
        NodeError, match=r"node 'half' \(Half\) failed: .*no value for output\(s\) b"
    ):
        await g.run(x=1)


async def test_node_timeout() -> None:
    g = Graph().add(
        "slow", FunctionNode(anyio.sleep_forever, inputs={}, outputs=["y"], timeout=0.05)
    )
    with (
        anyio.fail_after(5),
        pytest.raises(NodeTimeoutError, match=r"node 'slow'.*timeout of 0\.05 s") as info,
    ):
        await g.run()
    assert isinstance(info.value, TimeoutError)
    assert isinstance(info.value, NodeTimeoutError)
    assert info.value.node == "slow"


async def test_run_wide_timeout_applies_to_sync_functions() -> None:
    release = threading.Event()

    def blocking() -> int:
        release.wait(10)
        return 1

    g = Graph().add("block", FunctionNode(blocking, outputs=["y"]))
    try:
        with anyio.fail_after(5), context(node_timeout=0.05), pytest.raises(NodeTimeoutError):
            await g.run()
    finally:
        release.set()


async def test_cancellation_propagates_and_is_not_a_node_error() -> None:
    started = anyio.Event()
    finished = False

    async def forever(x: int) -> int:
        nonlocal finished
        started.set()
        await anyio.sleep_forever()
        finished = True
        return x

    g = Graph().add("slow", FunctionNode(forever, outputs=["y"]))
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(g.run, {"x": 1})
            await started.wait()
            tg.cancel_scope.cancel()
    assert not finished


async def test_nested_graph_records_paths_in_the_same_trace() -> None:
    inner = Graph("inner").add("answer", Predict("question -> answer"))
    inner.add("shout", FunctionNode(lambda answer: answer.upper(), outputs=["loud"]))
    inner.connect("answer", "shout")
    outer = Graph("outer").add("sub", inner)
    outer.add("final", FunctionNode(lambda loud: f"[{loud}]", outputs=["result"]))
    outer.connect("sub", "final")
    p = await outer.run(question="hi", lm=FakeLM(["<answer>ok</answer>"]))
    assert p == {"result": "[OK]"}
    trace = p.trace
    assert trace is not None
    assert [r.node for r in trace.records] == ["sub", "sub.answer", "sub.shout", "final"]
    assert trace.node("sub.answer").parents == ["sub"]
    assert trace.node("sub.shout").parents == ["sub.answer"]
    assert trace.node("final").parents == ["sub"]
    assert [c.predictor for c in trace.lm_calls()] == ["sub.answer"]
    assert trace.node("sub").outputs == {"loud": "OK"}


async def test_nested_failure_names_the_inner_node() -> None:
    inner = Graph("inner").add("bad", FunctionNode(lambda x: 1 / 0, outputs=["y"]))
    outer = Graph("outer").add("sub", inner)
    with pytest.raises(NodeError) as info:
        await outer.run(x=1)
    assert info.value.node == "sub.bad"
    assert isinstance(info.value.__cause__, ZeroDivisionError)


def router(kind_of: dict[str, str]) -> Graph:
    g = Graph("router", outputs=["answer"])
    g.add("classify", FunctionNode(lambda question: kind_of[question], outputs=["kind"]))
    g.add("math", FunctionNode(lambda question: f"math:{question}", outputs=["answer"]))
    g.add("chat", FunctionNode(lambda question: f"chat:{question}", outputs=["answer"]))
    g.add("polish", FunctionNode(lambda answer: answer + "!", outputs=["final"]))
    g.connect("classify", "math", when=lambda o: o["kind"] == "math")
    g.connect("classify", "chat", when=lambda o: o["kind"] == "chat")
    g.connect("math", "polish")
    return g


async def test_router_runs_one_branch_and_skips_the_other() -> None:
    g = router({"2+2": "math", "hi": "chat"})
    p = await g.run(question="2+2")
    assert p == {"answer": "math:2+2"}
    assert p.trace is not None
    assert [r.node for r in p.trace.records] == ["classify", "math", "polish"]
    assert p.trace.node("math").parents == ["classify"]
    p = await g.run(question="hi")
    assert p == {"answer": "chat:hi"}
    assert p.trace is not None
    # polish only reads math.answer, so it is skipped along with math
    assert [r.node for r in p.trace.records] == ["classify", "chat"]


async def test_join_takes_the_branch_that_ran() -> None:
    g = router({"2+2": "math", "hi": "chat"})
    g.add("join", FunctionNode(lambda answer: answer.upper(), outputs=["shout"]))
    g.connect("math", "join").connect("chat", "join")
    assert (await g.run(question="hi"))["answer"] == "chat:hi"
    p = await g.run(question="hi")
    assert p.trace is not None
    assert p.trace.node("join").outputs == {"shout": "CHAT:HI"}


async def test_all_conditions_false_skips_and_outputs_are_absent() -> None:
    g = router({"?": "other"})
    p = await g.run(question="?")
    assert p == {}
    assert p.trace is not None
    assert [r.node for r in p.trace.records] == ["classify"]


async def test_a_failing_condition_names_the_edge() -> None:
    g = Graph("g").add("a", FunctionNode(lambda q: q, outputs=["x"]))
    g.add("b", FunctionNode(lambda x: x, outputs=["y"]))
    g.connect("a", "b", when=lambda o: o["missing"])
    with pytest.raises(NodeError, match="condition on the edge 'a' -> 'b' raised KeyError") as info:
        await g.run(q=1)
    assert info.value.node == "b"


def test_sync_call_without_a_running_loop() -> None:
    g = Graph().add("f", FunctionNode(lambda a: a * 2, outputs=["b"]))
    assert g(a=2) == {"b": 4}
    assert g({"a": 3}) == {"b": 6}


async def test_sync_call_inside_a_running_loop_keeps_the_context() -> None:
    g = Graph().add("answer", Predict("question -> answer"))
    lm = FakeLM(["<answer>from context</answer>"])
    with context(lm=lm):
        p = g(question="q")  # as in a notebook cell: a loop is already running here
    assert p == {"answer": "from context"}
    assert lm.calls == 1
    assert g(question="q", lm=FakeLM(["<answer>kw</answer>"])) == {"answer": "kw"}


async def test_run_lm_overrides_only_for_that_run() -> None:
    g = Graph().add("answer", Predict("question -> answer"))
    a, b = FakeLM(["<answer>a</answer>"]), FakeLM(["<answer>b</answer>"])
    with context(lm=a):
        async with anyio.create_task_group() as tg:
            results: dict[str, Any] = {}

            async def go(key: str, lm: FakeLM | None) -> None:
                results[key] = await g.run(question="q", lm=lm)

            tg.start_soon(go, "b", b)
            tg.start_soon(go, "default", None)
    assert results["b"] == {"answer": "b"}
    assert results["default"] == {"answer": "a"}
