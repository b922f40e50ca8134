"""Predictor: one tunable LM call pattern (signature + instruction + demos + LM).

Nodes own predictors; optimizers tune them. A predictor renders its signature,
instruction, demos and inputs into chat messages through an adapter, calls the
LM, parses the reply into typed fields (with one repair attempt), and logs an
:class:`~rhizome.engine.trace.LMCall` into the current node record.

Tunable slots (the parameter names are ``<node path>[.<role>].<slot>``):

- ``instruction``: the task instruction (defaults to the signature's).
- ``demos``: few-shot examples, dicts holding every field of the signature.
- ``temperature``: sampling temperature, None for the LM default.
- ``lm``: the LM bound to this predictor, None for the run's default.
"""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from rhizome.engine.calling import run_predictor
from rhizome.engine.signature import Signature

if TYPE_CHECKING:
    from rhizome.engine.adapters import Adapter
    from rhizome.engine.lm import LM

DemoSelector = Callable[[dict[str, Any]], "Awaitable[list[dict[str, Any]]] | list[dict[str, Any]]"]

SLOTS = ("instruction", "demos", "temperature")


class Predictor:
    """One LM call pattern with its tunable parameters.

    Args:
        signature: The call's signature (string, class or instance).
        role: Short name when a node owns several predictors (``"step"``), else ``""``.
        instruction: Overrides the signature's instruction.
        demos: Initial few-shot demos.
        lm: Bind this predictor to one LM instead of the run's default.
        temperature: Sampling temperature, None for the LM default.
        max_tokens: Completion token limit, None for the LM default.
        adapter: How to render and parse; None picks from the LM's capabilities.
    """

    def __init__(
        self,
        signature: str | Signature | type[Signature],
        *,
        role: str = "",
        instruction: str | None = None,
        demos: list[dict[str, Any]] | None = None,
        lm: LM | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        adapter: Adapter | None = None,
    ) -> None:
        self.signature = Signature.coerce(signature)
        self.role = role
        self.instruction: str = instruction or self.signature.instruction
        self.demos: list[dict[str, Any]] = list(demos or [])
        self.lm = lm
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.adapter = adapter
        # Chooses demos per input at run time (kNN few-shot); shared by copies, never saved.
        self.demo_selector: DemoSelector | None = None

    def copy(self) -> Predictor:
        """An independent copy: demos deep-copied, LM and adapter shared."""
        new = copy.copy(self)
        new.demos = copy.deepcopy(self.demos)
        return new

    def dump_state(self) -> dict[str, Any]:
        """The tunable state as JSON-ready data."""
        from rhizome.engine.trace import jsonable

        return {
            "instruction": self.instruction,
            "demos": jsonable(self.demos),
            "temperature": self.temperature,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore state written by :meth:`dump_state` (unknown keys are ignored)."""
        if "instruction" in state:
            self.instruction = str(state["instruction"])
        if "demos" in state:
            self.demos = [dict(d) for d in state["demos"]]
        if "temperature" in state:
            self.temperature = state["temperature"]

    async def __call__(self, **inputs: Any) -> dict[str, Any]:
        """Run the LM call for ``inputs`` and return the parsed output fields."""
        return (await self.sample(inputs, n=1))[0]

    async def sample(self, inputs: dict[str, Any], *, n: int = 1) -> list[dict[str, Any]]:
        """Run the LM call and return ``n`` parsed samples."""
        return await run_predictor(self, inputs, n=n)

    def __repr__(self) -> str:
        return f"Predictor({self.signature.spec()!r}, role={self.role!r}, demos={len(self.demos)})"
