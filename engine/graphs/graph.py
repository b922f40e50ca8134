"""Graph: a program made of nodes wired output-to-input, itself usable as a node.

Build a graph with :meth:`Graph.add` and :meth:`Graph.connect`; it is validated
once (lazily, on first use, or with :meth:`Graph.validate`) and the checked plan
is cached until the next change. The same object runs
(:meth:`Graph.run`, :meth:`Graph.batch`, calling it), exposes its tunable
parameters to optimizers (:meth:`Graph.named_parameters`), saves, loads and
draws itself::

    g = Graph("rag")
    g.add("query", Predict("question -> query"))
    g.add("search", FunctionNode(search, outputs=["passages"]))
    g.add("answer", Predict("passages: list[str], question -> answer"))
    g.connect("query", "search").connect("search", "answer")
    prediction = g(question="Who wrote Hamlet?")
"""

from __future__ import annotations

import copy
import functools
import sys
from collections.abc import AsyncGenerator, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Self

import networkx as nx

from rhizome.engine.batches import batch as _batch
from rhizome.engine.call.signature import Field
from rhizome.engine.errors import ConfigError, GraphError
from rhizome.engine.graphs import durable as _durable
from rhizome.engine.graphs import params as _params
from rhizome.engine.graphs import saving as _saving
from rhizome.engine.graphs.mermaid import to_mermaid
from rhizome.engine.graphs.node import Node, register_graph_type
from rhizome.engine.graphs.plan import (
    Condition,
    Plan,
    Source,
    build_plan,
    check_types,
    field_error,
    node_of,
    unknown_node,
)
from rhizome.engine.graphs.scheduler import current_path, execute, run_traced
from rhizome.engine.graphs.streaming import EventStream
from rhizome.engine.graphs.walk import walk
from rhizome.engine.trace import Trace

if TYPE_CHECKING:
    from rhizome.engine.batches.batch import BatchResult
    from rhizome.engine.client.protocol import LM
    from rhizome.engine.example import Example, Prediction
    from rhizome.engine.graphs.checkpoint import CheckpointStore
    from rhizome.engine.graphs.durable import Durability

__all__ = ("Graph",)


Declared = Iterable[str] | Mapping[str, Any] | None


class Graph(Node):
    """A directed acyclic graph of named nodes; a node itself, so graphs nest.

    Args:
        name: A readable name used in errors, drawings and saved files.
        inputs: Declared graph inputs (names, or names mapped to types or
            Fields). When omitted they are inferred: every node input no edge
            feeds becomes a graph input of the same name.
        outputs: Declared graph outputs, as output field names (``"answer"``)
            or ``"node.field"`` to pick one node. When omitted, every output of
            every sink node is a graph output.
        timeout: Seconds the whole graph may run when nested as a node.
    """

    # A router inside may skip the node producing an output; consumers then skip too.
    may_omit_outputs: ClassVar[bool] = True
    wires_children: ClassVar[bool] = True

    def __init__(
        self,
        name: str = "graph",
        *,
        inputs: Declared = None,
        outputs: Iterable[str] | None = None,
        timeout: float | None = None,
    ) -> None:
        super().__init__(timeout=timeout)
        self.name = name
        self._declared_inputs = _declared_fields(inputs)
        self._declared_outputs = list(outputs) if outputs is not None else None
        self._g: nx.DiGraph = nx.DiGraph()
        self._plan: Plan | None = None
        self._edge_count = 0

    # -- building ---------------------------------------------------------

    def add(self, name: str, node: Node) -> Self:
        """Add ``node`` under ``name`` (an identifier, unique in this graph); chainable."""
        if not isinstance(name, str) or not name.isidentifier():
            raise GraphError(
                f"graph {self.name!r}: node name {name!r} must be a Python identifier "
                "(letters, digits, underscores; no dots)"
            )
        if name in self._g:
            raise GraphError(
                f"graph {self.name!r} already has a node named {name!r}; "
                f"its nodes are: {', '.join(self._g.nodes)}"
            )
        if not isinstance(node, Node):
            raise GraphError(
                f"graph {self.name!r}: {name!r} must be a Node, got {type(node).__name__}; "
                "wrap plain functions with FunctionNode(fn)"
            )
        if node is self or any(inner is self for _, inner in walk(node)):
            raise GraphError(f"graph {self.name!r} cannot contain itself (node {name!r})")
        self._g.add_node(name, node=node)
        self._plan = None
        return self

    def connect(self, src: str, dst: str, *, when: Condition | None = None) -> Self:
        """Wire outputs of one node to inputs of another; chainable.

        ``connect("a.x", "b.y")`` feeds output ``x`` of ``a`` to input ``y`` of
        ``b``; ``connect("a", "b")`` feeds every output of ``a`` to the input of
        ``b`` with the same name. With ``when=fn`` the edge is a router branch:
        ``fn(outputs_of_a) -> bool`` decides whether ``b`` runs, and the edge may
        carry no fields (``b`` then takes its inputs from elsewhere).
        """
        if when is not None and not callable(when):
            raise GraphError(f"when= must be a function of the source's outputs, got {when!r}")
        (a, x), (b, y) = self._endpoint(src), self._endpoint(dst)
        mappings = self._mappings(a, x, b, y, routed=when is not None)
        for sf, df in mappings:
            check_types(self.name, self._g, Source(node=a, field=sf), Source(node=b, field=df))
        if a == b or (b in self._g and nx.has_path(self._g, b, a)):
            raise GraphError(
                f"graph {self.name!r}: connecting {a!r} -> {b!r} would make a cycle; graphs "
                "must be acyclic (put loops inside a bounded Loop or agent node)"
            )
        self._add_edge(a, b, mappings, when)
        return self

    def _endpoint(self, text: str) -> tuple[str, str | None]:
        name, dot, field = text.partition(".")
        if name not in self._g:
            raise unknown_node(self.name, self._g, name)
        if dot and (not field or "." in field):
            raise GraphError(f"cannot read {text!r}: write 'node' or 'node.field'")
        return name, (field if dot else None)

    def _mappings(
        self, a: str, x: str | None, b: str, y: str | None, *, routed: bool
    ) -> list[tuple[str, str]]:
        outs, ins = node_of(self._g, a).outputs, node_of(self._g, b).inputs
        if x is not None or y is not None:
            sf, df = (x or y), (y or x)
            if sf not in outs:
                raise field_error(self.name, self._g, a, str(sf), output=True)
            if df not in ins:
                raise field_error(self.name, self._g, b, str(df), output=False)
            return [(str(sf), str(df))]
        matched = [(f, f) for f in outs if f in ins]
        if not matched and not routed:
            raise GraphError(
                f"graph {self.name!r}: connect({a!r}, {b!r}) found no output of {a!r} that "
                f"matches an input of {b!r} by name; {a!r} outputs: {', '.join(outs) or 'none'}; "
                f"{b!r} inputs: {', '.join(ins) or 'none'}; connect fields explicitly, "
                f"e.g. connect('{a}.<output>', '{b}.<input>')"
            )
        return matched

    def _add_edge(
        self, a: str, b: str, mappings: list[tuple[str, str]], when: Condition | None
    ) -> None:
        if self._g.has_edge(a, b):
            data = self._g.edges[a, b]
            if when is not None and data["when"] not in (None, when):
                raise GraphError(
                    f"graph {self.name!r}: the edge {a!r} -> {b!r} already has a condition; "
                    "an edge has one when=..."
                )
            data["when"] = when or data["when"]
            data["mappings"].extend(m for m in mappings if m not in data["mappings"])
        else:
            self._edge_count += 1
            self._g.add_edge(a, b, mappings=list(mappings), when=when, order=self._edge_count)
        self._plan = None

    def children(self) -> Iterator[tuple[str, Node]]:
        """The nodes by name, in the order they were added."""
        for name in self._g.nodes:
            yield name, node_of(self._g, name)

    # -- validation and fields --------------------------------------------

    def validate(self) -> Self:
        """Check the wiring now (it is otherwise checked on first use); chainable.

        Raises:
            GraphError: Naming the node or field at fault and the valid choices.
        """
        self.plan()
        return self

    def plan(self) -> Plan:
        """The validated, compiled execution plan: what every run of this graph executes.

        Built (and the wiring checked) on first use, then kept and returned as
        the same object until the graph changes (:meth:`add`, :meth:`connect`),
        so a caller running many inputs (batch, serving, telemetry) may take it
        once. It is read-only. It holds:

        - ``name``: the graph's name;
        - ``order``: the node names in a topological order;
        - ``nodes``: per node a :class:`~rhizome.engine.graphs.plan.NodePlan`: the
          node object, the nodes it waits for, where each input comes from
          (feeding outputs in connection order, or the graph input of the same
          name), which inputs are required, the edge conditions (routers), and
          the inputs converted to their declared type on the way;
        - ``inputs``, ``optional_inputs``, ``outputs``: the graph's fields;
        - ``output_sources``: which node outputs give each graph output.

        Run a plan with :func:`rhizome.engine.graphs.scheduler.run_traced`, or the
        graph itself with :meth:`run`.

        Raises:
            GraphError: The wiring is invalid (naming the node or field at fault).
        """
        if self._plan is None:
            self._plan = build_plan(
                self.name, self._g, inputs=self._declared_inputs, outputs=self._declared_outputs
            )
        return self._plan

    @property
    def nodes(self) -> dict[str, Node]:
        """The nodes by name, in the order they were added."""
        return {name: node_of(self._g, name) for name in self._g.nodes}

    @property
    def edges(self) -> list[tuple[str, str, list[tuple[str, str]], Condition | None]]:
        """``(src, dst, [(src_field, dst_field), ...], when)`` for each edge."""
        return [(a, b, list(d["mappings"]), d["when"]) for a, b, d in self._g.edges(data=True)]

    @property
    def inputs(self) -> Mapping[str, Field]:
        """The graph inputs by name (declared or inferred)."""
        return dict(self.plan().inputs)

    @property
    def optional_inputs(self) -> frozenset[str]:
        """Graph inputs every node taking them has a default for."""
        return self.plan().optional_inputs

    @property
    def outputs(self) -> Mapping[str, Field]:
        """The graph outputs by name (declared or inferred from sink nodes)."""
        return dict(self.plan().outputs)

    # -- running -----------------------------------------------------------

    async def run(
        self,
        inputs: Mapping[str, Any] | None = None,
        /,
        *,
        lm: LM | None = None,
        trace: Trace | None = None,
        checkpoint: CheckpointStore | str | Path | None = None,
        run_id: str | None = None,
        durability: Durability = "safe",
        **fields: Any,
    ) -> Prediction:
        """Run the graph once and return its outputs with the run's trace.

        Args:
            inputs: Input values as a mapping (an Example works); merged with ``fields``.
                Inputs named like this method's keywords (``lm``, ``trace``,
                ``checkpoint`` ...) can only be given this way.
            lm: The default LM for nodes not bound to one, for this run.
            trace: Record the run into this trace (the prediction's ``trace``) rather
                than a new one. It keeps what ran even when the run fails, with
                ``trace.error`` set, so a caller can report a failed run's calls.
            checkpoint: Record each finished node in this store (a
                :class:`~rhizome.engine.graphs.checkpoint.CheckpointStore`, or the
                path of an SQLite file), so that running again with the same
                ``run_id`` resumes: finished nodes are restored, not run. See
                :mod:`rhizome.engine.graphs.durable`.
            run_id: Names the checkpointed run (required with ``checkpoint``).
                Inputs may be left out when continuing a recorded run.
            durability: ``"safe"`` (each record written before the next node
                starts) or ``"batched"`` (written about once a second: faster,
                but a crash loses up to the last second of work).
            **fields: Input values by name.

        When the application set a global OpenTelemetry tracer provider, the
        run emits spans (see :mod:`rhizome.telemetry`); otherwise tracing costs
        one dictionary lookup.

        Raises:
            GraphError: A required input is missing (the message lists them).
            NodeError: A node failed; the original error is its ``__cause__``.
            RunWaiting: (checkpointed runs) a node asked a question with
                ``interrupt``; continue with :meth:`resume`.
        """
        values = {**dict(inputs or {}), **fields}
        trace = Trace() if trace is None else trace
        if checkpoint is None and run_id is None:
            return await self._run_once(values, trace, lm=lm)
        if checkpoint is None:
            raise ConfigError("run_id= names a checkpointed run: pass checkpoint=... too")
        return await _durable.run_checkpointed(
            self,
            values,
            store=checkpoint,
            run_id=run_id,
            durability=durability,
            trace=trace,
            start=functools.partial(self._run_once, lm=lm),
        )

    async def _run_once(
        self, values: Mapping[str, Any], trace: Trace, *, lm: LM | None
    ) -> Prediction:
        if "opentelemetry.trace" in sys.modules:  # only then can a tracer provider be set
            from rhizome.telemetry import global_telemetry

            telemetry = global_telemetry()
            if telemetry is not None:
                return await telemetry.run(self, values, lm=lm, trace=trace)
        return await run_traced(self.plan(), values, trace=trace, lm=lm)

    def alone(self, lm: LM | None = None) -> Graph:
        """The graph itself: what runs when it is called (``graph(...)``, ``graph.acall(...)``)."""
        return self

    def events(
        self,
        inputs: Mapping[str, Any] | None = None,
        /,
        *,
        lm: LM | None = None,
        tokens: bool = True,
        **fields: Any,
    ) -> EventStream:
        """Run the graph once, yielding what happens as it happens (an async iterator).

        Node started/finished (nested graphs included, by path), LM calls with
        their usage, retries, tool calls, and, where the LM streams, the tokens
        of each output field; the last event is
        :class:`~rhizome.engine.events.RunFinished` with the outputs. A failed run
        raises its error after its events. See :mod:`rhizome.engine.events` and
        :mod:`rhizome.engine.graphs.streaming`.

        Args:
            inputs: Input values, as for :meth:`run`; merged with ``fields``.
            lm: The default LM for nodes not bound to one, for this run.
            tokens: Ask LMs that can stream for their replies token by token.
            **fields: Input values by name.
        """
        values = {**dict(inputs or {}), **fields}
        return EventStream(functools.partial(self.run, values, lm=lm), tokens=tokens)

    async def resume(
        self,
        run_id: str,
        answer: Any,
        *,
        checkpoint: CheckpointStore | str | Path,
        lm: LM | None = None,
        trace: Trace | None = None,
        durability: Durability = "safe",
    ) -> Prediction:
        """Answer the question a checkpointed run is waiting on, and continue it.

        Everything the run finished is restored from ``checkpoint``; the node
        that asked runs again, and its ``interrupt(...)`` returns ``answer``
        (JSON data). Takes what :meth:`run` takes.

        Raises:
            ConfigError: ``checkpoint`` has no such run, the run is not waiting,
                or it was written by a different program.
            RunWaiting: The run asked another question.
        """
        return await _durable.resume_run(
            self,
            run_id,
            answer,
            store=checkpoint,
            durability=durability,
            trace=Trace() if trace is None else trace,
            start=functools.partial(self._run_once, lm=lm),
        )

    async def forward(self, **inputs: Any) -> dict[str, Any]:
        """Run as a node of an enclosing graph, recording into the enclosing trace."""
        path = current_path()
        prefix = f"{path}." if path else ""
        return await execute(
            self.plan(), inputs, prefix=prefix, entry_parents=[path] if path else []
        )

    async def batch(
        self,
        examples: Iterable[Example | Mapping[str, Any]],
        *,
        concurrency: int = 16,
        lm: LM | None = None,
        progress: bool | None = None,
        run_dir: str | Path | None = None,
    ) -> list[BatchResult]:
        """Run many examples concurrently; results in input order, failures recorded.

        With ``run_dir``, each finished result is journaled there and a rerun on
        the same directory skips the examples already done (resume). See
        :func:`rhizome.engine.batches.batch.run_batch`.
        """
        return await _batch.run_batch(
            self, examples, concurrency=concurrency, lm=lm, progress=progress, run_dir=run_dir
        )

    def stream(
        self,
        examples: Iterable[Example | Mapping[str, Any]],
        *,
        concurrency: int = 16,
        lm: LM | None = None,
        progress: bool | None = None,
        run_dir: str | Path | None = None,
    ) -> AsyncGenerator[BatchResult, None]:
        """Like :meth:`batch`, yielding each result as it finishes.

        With ``run_dir``, results already journaled there come first. See
        :func:`rhizome.engine.batches.batch.stream_batch`.
        """
        return _batch.stream_batch(
            self, examples, concurrency=concurrency, lm=lm, progress=progress, run_dir=run_dir
        )

    # -- parameters ----------------------------------------------------------

    def named_parameters(self) -> dict[str, Any]:
        """Every tunable slot, at every depth, by name (``"answer.instruction"``, ``"search.k"``).

        The slots are those each node declares (instruction, demos,
        temperature and LM of every predictor; ``k`` of retrieval nodes; any
        slot a custom node declares); see :mod:`rhizome.engine.graphs.params`.
        """
        return _params.named_parameters(self)

    def set_parameters(self, values: Mapping[str, Any]) -> Self:
        """Set slots by the names :meth:`named_parameters` uses; chainable.

        Every name and value is checked before any is set.

        Raises:
            GraphError: A name is unknown (the message lists valid names) or a
                value has the wrong type.
        """
        _params.set_parameters(self, values, label=self.name)
        return self

    def with_parameters(self, values: Mapping[str, Any]) -> Self:
        """A copy of this graph with ``values`` set (this graph stays as it is)."""
        return self.copy().set_parameters(values)

    def copy(self) -> Self:
        """An independent copy: every node copied, so tuning it leaves this graph alone."""
        new = copy.copy(self)
        new._g = nx.DiGraph()
        copies: dict[int, Node] = {}
        for name in self._g.nodes:
            old = node_of(self._g, name)
            copies[id(old)] = old.copy()
            new._g.add_node(name, node=copies[id(old)])
        for a, b, data in self._g.edges(data=True):
            new._g.add_edge(a, b, **{**data, "mappings": list(data["mappings"])})
        new._plan = None
        # Subclasses often keep their nodes as attributes too; point those at the copies.
        for attr, value in list(vars(new).items()):
            if isinstance(value, Node) and id(value) in copies:
                setattr(new, attr, copies[id(value)])
        return new

    # -- saving and drawing --------------------------------------------------

    def save(self, path: str | Path, *, lms: Mapping[str, LM] | None = None) -> None:
        """Write every parameter to a JSON file (see :mod:`rhizome.engine.graphs.saving`).

        Args:
            path: Where to write.
            lms: Names for the LMs the graph's predictors are bound to; an LM
                not named here is saved under its ``name``.
        """
        _saving.save(self, path, lms=lms)

    def load(
        self,
        path: str | Path,
        *,
        strict: bool = True,
        lms: Mapping[str, LM] | None = None,
    ) -> Self:
        """Restore parameters saved from a graph of the same structure; chainable.

        Args:
            path: The JSON file written by :meth:`save`.
            strict: When False, restore the parameters whose path (and
                predictor signature) still match and ignore the rest of a
                changed structure.
            lms: The LMs the file refers to, by the names it saved them under
                (``{"small": lm1, "big": lm2}``); LMs already bound in the graph
                resolve by their ``name`` without this.

        Raises:
            SaveError: The file is malformed, too large, names an LM that
                ``lms`` does not give, or the structure changed.
        """
        _saving.load(self, path, strict=strict, lms=lms)
        return self

    def to_mermaid(self) -> str:
        """The graph as a Mermaid flowchart (paste into any Mermaid viewer)."""
        return to_mermaid(self)

    def __repr__(self) -> str:
        return f"Graph({self.name!r}, nodes=[{', '.join(self._g.nodes)}])"


register_graph_type(Graph)


def _declared_fields(declared: Declared) -> dict[str, Field] | None:
    if declared is None:
        return None
    if isinstance(declared, str):
        raise GraphError(f"inputs= takes a list of names, not the string {declared!r}")
    if not isinstance(declared, Mapping):
        return {name: Field(name, Any) for name in declared}
    fields: dict[str, Field] = {}
    for name, value in declared.items():
        fields[name] = value if isinstance(value, Field) else Field(name, value)
    return fields
