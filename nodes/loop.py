"""Loop: a bounded repetition of a sub-graph, for multi-hop patterns.

Graphs are acyclic; repetition lives inside a :class:`Loop` node. Each
iteration runs the body graph nested in the enclosing run (its node records go
into the same trace, under ``<loop>.<node>``, with ``iteration`` set), then
feeds some of its outputs into the next iteration::

    hop = Graph("hop")
    hop.add("query", Predict("context: list[str], question -> query"))
    hop.add("search", Retrieve(retriever, k=2, exclude="context"))
    hop.connect("query", "search")

    program = Graph("multihop")
    program.add("hops", Loop(hop, max_iters=3, accumulate={"passages": "context"}))
    program.add("answer", ChainOfThought("context: list[str], question -> answer"))
    program.connect("hops.context", "answer.context")

``accumulate={"passages": "context"}`` appends each iteration's ``passages`` to
the ``context`` input of the next (without duplicates) and returns the whole
collection as the ``context`` output; ``carry={"query": "previous_query"}``
feeds an output straight into an input of the next iteration; ``until`` stops
early when it returns true for an iteration's outputs.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar

from rhizome.engine.call.signature import Field
from rhizome.engine.errors import ConfigError
from rhizome.engine.graphs.durable import checkpointed_step
from rhizome.engine.graphs.graph import Graph
from rhizome.engine.graphs.node import Node
from rhizome.engine.graphs.scheduler import current_path
from rhizome.engine.trace import current_trace

__all__ = ("Loop",)


class Loop(Node):
    """Run a body graph up to ``max_iters`` times, feeding outputs forward.

    Args:
        body: The graph run once per iteration.
        max_iters: The most iterations (at least 1).
        until: ``until(outputs) -> bool`` on the merged outputs after each
            iteration; true stops the loop. None runs all ``max_iters``.
        carry: ``{body output: body input}`` fed into the next iteration.
        accumulate: ``{body output: body input}`` whose values are collected
            across iterations (lists extended, duplicates dropped) and fed into
            the next iteration; the collection is also an output under the
            input's name. The accumulating input is optional (default empty).
        timeout: Seconds the whole loop may run, None for the run's default.

    Attributes:
        body: The body graph; its nodes' parameters are named
            ``<loop>.<inner path>.<slot>``.
    """

    kind = "Loop"
    # Routers inside the body may skip the node producing an output.
    may_omit_outputs: ClassVar[bool] = True

    def __init__(
        self,
        body: Graph,
        *,
        max_iters: int,
        until: Callable[[dict[str, Any]], bool] | None = None,
        carry: Mapping[str, str] | None = None,
        accumulate: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> None:
        super().__init__(timeout=timeout)
        if not isinstance(body, Graph):
            raise ConfigError(
                f"Loop needs a Graph as its body, got {type(body).__name__}; wrap a single "
                "node with Graph('body').add('step', node)"
            )
        if isinstance(max_iters, bool) or not isinstance(max_iters, int) or max_iters < 1:
            raise ConfigError(f"Loop needs max_iters >= 1, got {max_iters!r}")
        if until is not None and not callable(until):
            raise ConfigError("until= takes a function outputs -> bool")
        self.body = body
        self.max_iters = max_iters
        self.until = until
        self.carry = dict(carry or {})
        self.accumulate = dict(accumulate or {})
        self._check_mapping("carry", self.carry)
        self._check_mapping("accumulate", self.accumulate)

    def _check_mapping(self, what: str, mapping: dict[str, str]) -> None:
        outs, ins = self.body.outputs, self.body.inputs
        for src, dst in mapping.items():
            if src not in outs:
                raise ConfigError(
                    f"Loop {what}: the body graph {self.body.name!r} has no output {src!r}; "
                    f"its outputs are: {', '.join(outs) or 'none'}"
                )
            if dst not in ins:
                raise ConfigError(
                    f"Loop {what}: the body graph {self.body.name!r} has no input {dst!r}; "
                    f"its inputs are: {', '.join(ins) or 'none'}"
                )

    @property
    def inputs(self) -> Mapping[str, Field]:
        """The body's inputs (those fed by ``accumulate`` are optional)."""
        return self.body.inputs

    @property
    def optional_inputs(self) -> frozenset[str]:
        """Accumulating inputs, and the body's own optional inputs."""
        return frozenset(self.accumulate.values()) | self.body.optional_inputs

    @property
    def outputs(self) -> Mapping[str, Field]:
        """The body's outputs plus one list output per accumulated input."""
        fields = dict(self.body.outputs)
        for dst in self.accumulate.values():
            annotation = self.body.inputs[dst].annotation
            fields[dst] = Field(dst, annotation, f"everything collected into {dst}", False)
        return fields

    async def forward(self, **inputs: Any) -> dict[str, Any]:
        """Run the iterations and return the last outputs plus the collections."""
        values = dict(inputs)
        collected = {dst: _as_list(values.get(dst)) for dst in self.accumulate.values()}
        outputs: dict[str, Any] = {}
        for iteration in range(self.max_iters):
            values.update(collected)
            with _tag_records(iteration):  # checkpointed runs record each iteration
                step = functools.partial(self.body.forward, **values)
                produced = await checkpointed_step(iteration, step, fields=self.body.outputs)
            for src, dst in self.accumulate.items():
                collected[dst] = _merge(collected[dst], produced.get(src))
            for src, dst in self.carry.items():
                if src in produced:
                    values[dst] = produced[src]
            outputs = {**produced, **collected}
            if self.until is not None and await _stop(self.until, outputs):
                break
        return outputs

    def children(self) -> Iterator[tuple[str, Node]]:
        """The body graph, sharing the loop's path: its nodes are ``<loop>.<node>``."""
        yield "", self.body

    def __repr__(self) -> str:
        return f"Loop({self.body!r}, max_iters={self.max_iters})"


@contextlib.contextmanager
def _tag_records(iteration: int) -> Iterator[None]:
    """Set ``iteration`` on the records the block adds to the current trace.

    Records of nested loops keep their own (innermost) iteration.
    """
    trace = current_trace()
    start = len(trace.records) if trace is not None else 0
    path = current_path()
    prefix = f"{path}." if path else ""
    try:
        yield
    finally:
        if trace is not None:
            for record in trace.records[start:]:
                # Sibling nodes of the loop append records concurrently; skip theirs.
                if record.iteration is None and record.node.startswith(prefix):
                    record.iteration = iteration


async def _stop(until: Callable[[dict[str, Any]], Any], outputs: dict[str, Any]) -> bool:
    result = until(dict(outputs))
    if inspect.isawaitable(result):
        result = await result
    return bool(result)


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return list(value)
    return [value]


def _key(value: Any) -> str:
    if isinstance(value, str):
        return " ".join(value.split())
    return repr(value)


def _merge(collected: list[Any], new: Any) -> list[Any]:
    """``collected`` extended by ``new`` (a value or a list), without duplicates."""
    seen = {_key(v) for v in collected}
    out = list(collected)
    for value in _as_list(new):
        key = _key(value)
        if key not in seen:
            seen.add(key)
            out.append(value)
    return out
