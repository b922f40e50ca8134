"""FanOut: map a node (or a whole graph) over a list input, each item its own branch.

The map step of map-reduce shapes (summarise each passage, research each
sub-question, then combine)::

    per_doc = Predict("question, passage -> note")
    g = Graph("research")
    g.add("notes", FanOut(per_doc, over="passages", item="passage", concurrency=4))
    g.add("answer", Predict("question, note: list[str] -> answer"))
    g.connect("notes.note", "answer.note")

The ``over`` input is the list; each item goes to the node's ``item`` input,
every other input is shared by all items. Each output of the node becomes a
list with one value per item, in the items' order whatever order they finish
in. A failing item does not stop the others: its values are None and
``errors[i]`` describes what went wrong (``capture_errors=False`` makes the
first failure fail the node instead). At most ``concurrency`` items run at
once. In a checkpointed run each finished item is recorded (``"notes[3]"``), so
a resumed run runs only the items that had not finished.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator, Mapping
from typing import Any

import anyio

from rhizome.engine.call.signature import Field
from rhizome.engine.errors import ConfigError, describe
from rhizome.engine.graphs.durable import InterruptSignal, checkpointed_step
from rhizome.engine.graphs.graph import Graph
from rhizome.engine.graphs.node import Node
from rhizome.engine.trace import jsonable

__all__ = ("FanOut",)


ERRORS = "errors"


@dataclasses.dataclass
class _Gathered:
    """What the items left: outputs in order, captured failures, a question, a failure."""

    outputs: list[dict[str, Any] | None]
    errors: list[dict[str, Any] | None]
    asked: dict[int, InterruptSignal] = dataclasses.field(default_factory=dict)
    failed: tuple[int, Exception] | None = None


class FanOut(Node):
    """Run ``node`` once per item of the list input ``over``; gather the outputs in order.

    Args:
        node: The node or graph run per item.
        over: The name of the list input (a new input of this node).
        item: The node's input each item goes to; by default its only input.
        concurrency: Items run at once.
        capture_errors: True: a failed item gives None values and an entry in
            ``errors``; False: the first failure fails the node.
        timeout: Seconds the whole fan-out may run, None for the run's default.

    Outputs: each output of ``node`` as a list (one value per item, None for a
    failed item), and ``errors`` (per item: None, or the failure described).
    """

    kind = "FanOut"

    def __init__(
        self,
        node: Node,
        *,
        over: str,
        item: str | None = None,
        concurrency: int = 8,
        capture_errors: bool = True,
        timeout: float | None = None,
    ) -> None:
        super().__init__(timeout=timeout)
        if not isinstance(node, Node):
            raise ConfigError(
                f"FanOut needs a node or graph to run per item, got {type(node).__name__}; "
                "wrap a function with FunctionNode(fn)"
            )
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigError(f"FanOut needs concurrency >= 1, got {concurrency!r}")
        self.node = node
        self.item = _item_input(node, item)
        if not isinstance(over, str) or not over.isidentifier():
            raise ConfigError(f"FanOut over= must name the list input, got {over!r}")
        if over in node.inputs and over != self.item:
            raise ConfigError(
                f"FanOut over={over!r}: the node already has an input {over!r}; name the list "
                "input differently"
            )
        if ERRORS in node.outputs:
            raise ConfigError(
                f"FanOut adds an output {ERRORS!r}, which the node already has; rename it"
            )
        self.over = over
        self.concurrency = concurrency
        self.capture_errors = capture_errors

    @property
    def inputs(self) -> Mapping[str, Field]:
        """The node's inputs, its ``item`` input replaced by the list ``over``."""
        fields = {n: f for n, f in self.node.inputs.items() if n != self.item}
        annotation = self.node.inputs[self.item].annotation
        fields[self.over] = Field(
            self.over, _list_of(annotation), f"the items, one {self.item} each"
        )
        return fields

    @property
    def optional_inputs(self) -> frozenset[str]:
        """The node's optional inputs (the list is required)."""
        return frozenset(getattr(self.node, "optional_inputs", ())) - {self.item}

    @property
    def outputs(self) -> Mapping[str, Field]:
        """Each node output as a list (None for failed items), and ``errors``."""
        fields = {
            name: Field(name, _list_of(_optional(f.annotation)), f"{name} of each item", False)
            for name, f in self.node.outputs.items()
        }
        fields[ERRORS] = Field(ERRORS, list[dict[str, Any] | None], "None, or why it failed", False)
        return fields

    async def forward(self, **inputs: Any) -> dict[str, Any]:
        """Run every item (at most ``concurrency`` at once); outputs in the items' order."""
        items = inputs.get(self.over)
        if not isinstance(items, list | tuple):
            raise TypeError(
                f"FanOut input {self.over!r} must be a list of items, got {type(items).__name__}"
            )
        shared = {n: v for n, v in inputs.items() if n != self.over and n in self.node.inputs}
        gathered = _Gathered(outputs=[None] * len(items), errors=[None] * len(items))
        limiter = anyio.CapacityLimiter(self.concurrency)
        async with anyio.create_task_group() as tg:
            for index, value in enumerate(items):
                one = functools.partial(self._one, {**shared, self.item: value})
                tg.start_soon(self._item, index, one, limiter, gathered, tg.cancel_scope)
        if gathered.failed is not None:
            index, exc = gathered.failed
            raise RuntimeError(
                f"item {index} of {self.over!r} failed: {type(exc).__name__}: {exc}"
            ) from exc
        if gathered.asked:  # items that finished are recorded; ask the first question
            raise gathered.asked[min(gathered.asked)]
        return {
            **{
                name: [None if out is None else out.get(name) for out in gathered.outputs]
                for name in self.node.outputs
            },
            ERRORS: gathered.errors,
        }

    async def _item(
        self,
        index: int,
        one: Any,
        limiter: anyio.CapacityLimiter,
        gathered: _Gathered,
        scope: anyio.CancelScope,
    ) -> None:
        async with limiter:
            try:
                gathered.outputs[index] = await checkpointed_step(
                    index, one, fields=self.node.outputs
                )
            except InterruptSignal as signal:
                gathered.asked[index] = signal
            except Exception as exc:
                gathered.errors[index] = jsonable(describe(exc))
                if not self.capture_errors and gathered.failed is None:
                    gathered.failed = (index, exc)
                    scope.cancel()

    async def _one(self, inputs: dict[str, Any]) -> dict[str, Any]:
        if isinstance(self.node, Graph):
            return await self.node.forward(**inputs)
        with anyio.fail_after(self.node.timeout):
            outputs = await self.node.forward(**inputs)
        missing = [name for name in self.node.outputs if name not in outputs]
        if missing:
            raise ValueError(f"the node returned no value for output(s) {', '.join(missing)}")
        return {name: outputs[name] for name in self.node.outputs}

    def children(self) -> Iterator[tuple[str, Node]]:
        """The node run per item, sharing the fan-out's path (``"notes.instruction"``)."""
        yield "", self.node

    def __repr__(self) -> str:
        return f"FanOut({self.node!r}, over={self.over!r}, item={self.item!r})"


def _item_input(node: Node, item: str | None) -> str:
    names = list(node.inputs)
    if item is None:
        if len(names) != 1:
            raise ConfigError(
                f"FanOut: say which input of the node takes one item with item=...; its "
                f"inputs are: {', '.join(names) or 'none'}"
            )
        return names[0]
    if item not in node.inputs:
        raise ConfigError(
            f"FanOut item={item!r}: the node has no such input; its inputs are: "
            f"{', '.join(names) or 'none'}"
        )
    return item


def _list_of(annotation: Any) -> Any:
    return list[annotation]


def _optional(annotation: Any) -> Any:
    try:
        return annotation | None
    except TypeError:  # a forward reference or another form that does not take |
        return Any
