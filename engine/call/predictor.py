"""Predictor: one tunable LM call pattern (signature + instruction + demos + LM).

Nodes own predictors; optimizers tune them. A predictor renders its signature,
instruction, demos and inputs into chat messages through an adapter, calls the
LM, parses the reply into typed fields (with one repair attempt), and logs an
:class:`~rhizome.engine.trace.LMCall` into the current node record.

Tunable slots (the parameter names are ``<node path>[.<role>].<slot>``):

- ``instruction``: the task instruction (defaults to the signature's).
- ``demos``: few-shot examples, dicts holding every field of the signature.
- ``temperature``: sampling temperature in [0, 2], None for the LM default.
- ``lm``: the LM bound to this predictor, None for the run's default.

The slots are declared by :meth:`Predictor.parameter_slots`; every way a slot
is set (the constructor, assignment to ``temperature``,
``Graph.set_parameters``, loading a saved program) checks the value, so a
negative temperature or a demo that is not a dict never reaches an LM call.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from rhizome.engine.call.run import run_predictor
from rhizome.engine.call.signature import Signature
from rhizome.engine.errors import ConfigError
from rhizome.engine.slots import Slot, demos_problem, lm_problem, text_problem

if TYPE_CHECKING:
    from rhizome.engine.call.adapters import Adapter
    from rhizome.engine.client.protocol import LM

__all__ = ("Predictor", "temperature_problem")


DemoSelector = Callable[[dict[str, Any]], "Awaitable[list[dict[str, Any]]] | list[dict[str, Any]]"]

TEMPERATURE_RANGE = (0.0, 2.0)
"""The temperatures a predictor accepts: the range OpenAI-compatible servers take."""


def temperature_problem(value: Any) -> str | None:
    """Why ``value`` is not a valid temperature, or None when it is (None is: the LM default)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"must be a number or None, got {type(value).__name__} {value!r}"
    if not math.isfinite(value):
        return f"must be a finite number, got {value!r}"
    low, high = TEMPERATURE_RANGE
    if not low <= value <= high:
        return f"must be between {low:g} and {high:g} (0 for the most likely reply), got {value!r}"
    return None


class Predictor:
    """One LM call pattern with its tunable parameters.

    Args:
        signature: The call's signature (string, class or instance).
        role: Short name when a node owns several predictors (``"step"``), else ``""``.
        instruction: Overrides the signature's instruction.
        demos: Initial few-shot demos.
        lm: Bind this predictor to one LM instead of the run's default.
        temperature: Sampling temperature in [0, 2], None for the LM default.
        max_tokens: Completion token limit, None for the LM default.
        adapter: How to render and parse; None picks from the LM's capabilities.

    Raises:
        ConfigError: ``temperature`` is not a number in [0, 2] (or None).
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

    @property
    def temperature(self) -> float | None:
        """Sampling temperature in [0, 2], None for the LM default (checked when set)."""
        return self._temperature

    @temperature.setter
    def temperature(self, value: float | None) -> None:
        problem = temperature_problem(value)
        if problem is not None:
            raise ConfigError(
                f"the temperature of predictor {self.signature.spec()!r} {problem}; "
                "pass a number from 0 to 2, or None for the LM's default"
            )
        self._temperature = value

    def copy(self) -> Predictor:
        """An independent copy: demos deep-copied, LM and adapter shared."""
        new = copy.copy(self)
        new.demos = copy.deepcopy(self.demos)
        return new

    def parameter_slots(self) -> dict[str, Slot]:
        """The tunable slots, by slot name (see :mod:`rhizome.engine.graphs.params`)."""
        return {
            "instruction": Slot(self, "instruction", text_problem),
            "demos": Slot(self, "demos", demos_problem),
            "temperature": Slot(self, "temperature", temperature_problem),
            "lm": Slot(self, "lm", lm_problem, kind="lm"),
        }

    async def __call__(self, **inputs: Any) -> dict[str, Any]:
        """Run the LM call for ``inputs`` and return the parsed output fields."""
        return (await self.sample(inputs, n=1))[0]

    async def sample(self, inputs: dict[str, Any], *, n: int = 1) -> list[dict[str, Any]]:
        """Run the LM call and return ``n`` parsed samples."""
        return await run_predictor(self, inputs, n=n)

    def __repr__(self) -> str:
        return f"Predictor({self.signature.spec()!r}, role={self.role!r}, demos={len(self.demos)})"
