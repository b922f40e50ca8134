"""MultiChainComparison: several reasoned attempts, then one answer that weighs them.

The ``attempt`` predictor (a chain of thought: ``reasoning`` then the outputs)
is sampled ``m`` times in one request; the ``compare`` predictor reads every
attempt next to the inputs, writes a ``rationale`` saying which reasoning holds
up, and gives the final outputs. Both are tunable.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from rhizome.engine.call.predictor import Predictor
from rhizome.engine.call.signature import Field, Signature
from rhizome.engine.errors import ConfigError
from rhizome.engine.graphs.node import Node
from rhizome.engine.trace import jsonable

if TYPE_CHECKING:
    from rhizome.engine.client.protocol import LM

__all__ = ("MultiChainComparison", "field_lines", "format_attempt")


ATTEMPTS = "attempts"
RATIONALE = "rationale"
REASONING = "reasoning"
_REASONING_DESC = "Think step by step to work out the answer; write your reasoning here."
_ATTEMPTS_DESC = "independent attempts at this task, each with its reasoning and answer"
_RATIONALE_DESC = (
    "compare the attempts: which reasoning is sound, where they disagree and why; "
    "then settle on the answer"
)
_COMPARE_NOTE = (
    "Several independent attempts at this task are given. Compare their reasoning, "
    "find the mistakes, and give the single best answer (it may differ from all of them)."
)


class MultiChainComparison(Node):
    """``m`` chain-of-thought attempts compared by a second LM call into one answer.

    Args:
        signature: The task's signature (``"question -> answer"``).
        m: How many attempts to sample.
        lm: Bind both predictors to one LM instead of the run's default.
        attempt_temperature: Temperature for the attempts (None for the LM
            default); some variety is what makes comparing worthwhile.
        timeout: Seconds the node may run, None for the run's default.

    Attributes:
        attempt: The predictor writing each attempt (role ``"attempt"``).
        compare: The predictor comparing them (role ``"compare"``).

    Outputs are the signature's outputs plus ``rationale``.
    """

    kind = "MultiChainComparison"

    def __init__(
        self,
        signature: str | Signature | type[Signature],
        m: int = 3,
        *,
        lm: LM | None = None,
        attempt_temperature: float | None = 0.7,
        timeout: float | None = None,
    ) -> None:
        super().__init__(timeout=timeout)
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise ConfigError(f"MultiChainComparison needs m >= 1 attempts, got {m!r}")
        base = Signature.coerce(signature)
        taken = [n for n in (ATTEMPTS, RATIONALE, REASONING) if n in {f.name for f in base.fields}]
        if taken:
            raise ConfigError(
                f"MultiChainComparison adds the fields {ATTEMPTS}, {RATIONALE} and {REASONING}; "
                f"the signature {base.spec()!r} already has {', '.join(taken)}; rename them"
            )
        self.m = m
        self._base = base
        self.attempt = Predictor(
            base.prepend_output(REASONING, str, _REASONING_DESC),
            role="attempt",
            lm=lm,
            temperature=attempt_temperature,
        )
        compare_sig = base.append_input(ATTEMPTS, list[str], _ATTEMPTS_DESC).prepend_output(
            RATIONALE, str, _RATIONALE_DESC
        )
        self.compare = Predictor(
            compare_sig.with_instruction(f"{base.instruction}\n\n{_COMPARE_NOTE}"),
            role="compare",
            lm=lm,
        )

    @property
    def inputs(self) -> Mapping[str, Field]:
        """The task's inputs."""
        return self._base.inputs

    @property
    def outputs(self) -> Mapping[str, Field]:
        """``rationale`` then the task's outputs."""
        return self.compare.signature.outputs

    async def forward(self, **inputs: Any) -> dict[str, Any]:
        """Sample the attempts, then compare them into one answer."""
        attempts = await self.attempt.sample(inputs, n=self.m)
        texts = [format_attempt(i + 1, a) for i, a in enumerate(attempts)]
        return await self.compare(**inputs, **{ATTEMPTS: texts})

    def __repr__(self) -> str:
        return f"MultiChainComparison({self._base.spec()!r}, m={self.m})"


def format_attempt(number: int, outputs: Mapping[str, Any]) -> str:
    """One attempt as text: its reasoning and each output field on its own line."""
    return "\n".join([f"Attempt {number}:", *field_lines(outputs)])


def field_lines(outputs: Mapping[str, Any]) -> list[str]:
    """One ``name: value`` line per field: strings as they are, other values as JSON."""
    lines = []
    for name, value in outputs.items():
        text = value if isinstance(value, str) else json.dumps(jsonable(value), ensure_ascii=False)
        lines.append(f"{name}: {text}")
    return lines
