"""AskHuman: a node that stops a checkpointed run to ask a person, then outputs the answer.

The node puts its prompt and inputs to whoever runs the program: the run
stops with status ``"waiting"`` and :class:`~rhizome.engine.graphs.durable.RunWaiting`
carries the question; ``graph.resume(run_id, answer, checkpoint=...)``
continues the run with the answer as the node's output::

    g = Graph("review")
    g.add("draft", Predict("topic -> draft"))
    g.add("review", AskHuman("Approve this draft? Answer yes or no.", inputs=["draft"],
                             output="verdict"))
    g.connect("draft", "review")

It is :func:`~rhizome.engine.graphs.durable.interrupt` as a node; call
``interrupt`` yourself inside a ``FunctionNode`` for anything more.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

from rhizome.engine.call.signature import Field
from rhizome.engine.errors import GraphError
from rhizome.engine.graphs.durable import interrupt
from rhizome.engine.graphs.node import Node

__all__ = ("AskHuman", "ask_human")


class AskHuman(Node):
    """Ask a person a question (the prompt and the node's inputs); output the answer.

    Args:
        prompt: The question to show.
        inputs: Input fields shown with the prompt (names, or names mapped to types).
        output: The name of the output holding the answer.
        answer_type: The answer's type; an answer that does not convert to it
            is asked for again, with the reason in the question's ``error``.
        timeout: Seconds the node may run (asking does not count: the run stops).

    The question is ``{"prompt": prompt, "inputs": {name: value, ...}}``.
    """

    kind = "AskHuman"

    def __init__(
        self,
        prompt: str,
        *,
        inputs: Iterable[str] | Mapping[str, Any] = (),
        output: str = "answer",
        answer_type: Any = str,
        timeout: float | None = None,
    ) -> None:
        super().__init__(timeout=timeout)
        if not isinstance(prompt, str):
            raise GraphError(f"AskHuman needs the question as text, got {type(prompt).__name__}")
        if isinstance(inputs, str):
            raise GraphError(f"AskHuman takes inputs=[...] (a list of names), not {inputs!r}")
        declared = inputs.items() if isinstance(inputs, Mapping) else ((n, Any) for n in inputs)
        fields = {}
        for name, annotation in declared:
            if not isinstance(name, str) or not name.isidentifier():
                raise GraphError(f"AskHuman input name {name!r} is not a Python identifier")
            fields[name] = Field(name, annotation)
        if not output.isidentifier():
            raise GraphError(f"AskHuman output name {output!r} is not a Python identifier")
        self.prompt = prompt
        self._inputs = MappingProxyType(fields)
        self._output = Field(output, answer_type, "the person's answer", is_input=False)

    @property
    def inputs(self) -> Mapping[str, Field]:
        """The fields shown with the prompt."""
        return self._inputs

    @property
    def outputs(self) -> Mapping[str, Field]:
        """The answer."""
        return {self._output.name: self._output}

    async def forward(self, **inputs: Any) -> dict[str, Any]:
        """Ask (the run stops until resumed), then return the answer converted to its type."""
        question: dict[str, Any] = {"prompt": self.prompt, "inputs": dict(inputs)}
        while True:
            answer = interrupt(question)
            try:
                return {self._output.name: self._output.convert(answer)}
            except TypeError as exc:
                question = {**question, "error": f"the answer {exc}; answer again"}

    def describe(self) -> str:
        """One line for drawings and errors."""
        return f"AskHuman({', '.join(self._inputs)} -> {self._output.name})"


def ask_human(
    prompt: str,
    *,
    inputs: Iterable[str] | Mapping[str, Any] = (),
    output: str = "answer",
    answer_type: Any = str,
) -> AskHuman:
    """Shorthand for :class:`AskHuman` (the same arguments but ``timeout``)."""
    return AskHuman(prompt, inputs=inputs, output=output, answer_type=answer_type)
