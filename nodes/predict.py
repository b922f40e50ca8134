"""LM nodes: one predictor call per run of the node.

``Predict("question -> answer")`` asks the LM for the outputs directly;
``ChainOfThought("question -> answer")`` first asks for a ``reasoning`` field,
which stays in the node's outputs so traces and demos keep it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from rhizome.engine.call.predictor import Predictor
from rhizome.engine.call.signature import Signature
from rhizome.engine.errors import SignatureError
from rhizome.engine.graphs.node import Node

if TYPE_CHECKING:
    from rhizome.engine.call.adapters import Adapter
    from rhizome.engine.call.signature import Field
    from rhizome.engine.client.protocol import LM

__all__ = ("REASONING_DESC", "ChainOfThought", "Predict")


REASONING_DESC = "Think step by step to work out the answer; write your reasoning here."


class Predict(Node):
    """A node that makes one LM call shaped by a signature.

    Args:
        signature: The call's signature (``"context, question -> answer"``, a
            Signature subclass or instance).
        instruction: Overrides the signature's instruction.
        demos: Initial few-shot demos (dicts of signature fields).
        lm: Bind this node to one LM instead of the run's default.
        temperature: Sampling temperature, None for the LM default.
        max_tokens: Completion token limit, None for the LM default.
        adapter: How to render and parse, None to choose by the LM's capabilities.
        timeout: Seconds the node may run, None for the run's default.

    Attributes:
        predictor: The tunable predictor (instruction, demos, temperature).
    """

    kind = "Predict"

    def __init__(
        self,
        signature: str | Signature | type[Signature],
        *,
        instruction: str | None = None,
        demos: list[dict[str, Any]] | None = None,
        lm: LM | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        adapter: Adapter | None = None,
        timeout: float | None = None,
    ) -> None:
        super().__init__(timeout=timeout)
        self.predictor = Predictor(
            self._signature(Signature.coerce(signature)),
            instruction=instruction,
            demos=demos,
            lm=lm,
            temperature=temperature,
            max_tokens=max_tokens,
            adapter=adapter,
        )

    def _signature(self, signature: Signature) -> Signature:
        """The signature the predictor uses (subclasses extend it)."""
        return signature

    @property
    def signature(self) -> Signature:
        """The predictor's signature."""
        return self.predictor.signature

    @property
    def inputs(self) -> Mapping[str, Field]:
        """The signature's input fields."""
        return self.predictor.signature.inputs

    @property
    def outputs(self) -> Mapping[str, Field]:
        """The signature's output fields."""
        return self.predictor.signature.outputs

    async def forward(self, **inputs: Any) -> dict[str, Any]:
        """Call the LM and return the parsed output fields."""
        return await self.predictor(**inputs)

    def __repr__(self) -> str:
        return f"{self.kind}({self.signature.spec()!r})"


class ChainOfThought(Predict):
    """A :class:`Predict` whose LM writes a ``reasoning`` field before the outputs.

    Takes the same arguments as :class:`Predict`. ``reasoning`` is one of the
    node's outputs, so it is recorded in traces and kept in bootstrapped demos.
    """

    kind = "ChainOfThought"

    def _signature(self, signature: Signature) -> Signature:
        if "reasoning" in signature.outputs:
            return signature
        if "reasoning" in signature.inputs:
            raise SignatureError(
                f"ChainOfThought adds a 'reasoning' output, but {signature.spec()!r} already "
                "has an input named 'reasoning'; rename that input"
            )
        return signature.prepend_output("reasoning", str, REASONING_DESC)
