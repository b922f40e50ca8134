"""Ensemble: run several programs on the same input and combine their outputs.

An :class:`Ensemble` is itself a graph: one node per program (``p0``,
``p1`` ...) and a ``combine`` node fed by all of them, so it runs, traces,
batches, saves and optimizes like any graph (its predictors are
``p0.answer``, ``p1.answer`` ...). A program that fails is left out of the
vote instead of failing the ensemble; its error stays in the trace.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from rhizome.engine.call.signature import Field
from rhizome.engine.errors import ConfigError
from rhizome.engine.graphs.graph import Graph
from rhizome.engine.graphs.node import Node
from rhizome.engine.trace import jsonable

__all__ = ("Ensemble", "majority")


Reducer = Callable[[list[dict[str, Any]]], Mapping[str, Any]]


def _vote_key(value: Any, normalize: Callable[[Any], Any] | None) -> str:
    value = normalize(value) if normalize is not None else value
    return json.dumps(jsonable(value), sort_keys=True, ensure_ascii=False)


def majority(values: Sequence[Any], normalize: Callable[[Any], Any] | None = None) -> Any:
    """The most common value (compared after ``normalize``); ties go to the earliest."""
    counts: dict[str, int] = {}
    first: dict[str, Any] = {}
    for value in values:
        key = _vote_key(value, normalize)
        counts[key] = counts.get(key, 0) + 1
        first.setdefault(key, value)
    best = max(counts, key=lambda k: counts[k])  # max keeps the first of equal counts
    return first[best]


class _Member(Node):
    """One program of an ensemble: its failures give no outputs instead of an error."""

    kind = "EnsembleMember"
    may_omit_outputs = True

    def __init__(self, program: Node) -> None:
        super().__init__(timeout=program.timeout)
        self.program = program

    @property
    def inputs(self) -> Mapping[str, Field]:
        """The program's inputs."""
        return self.program.inputs

    @property
    def outputs(self) -> Mapping[str, Field]:
        """The program's outputs."""
        return self.program.outputs

    async def forward(self, **inputs: Any) -> dict[str, Any]:
        """The program's outputs, or none when it fails (the trace keeps its error)."""
        try:
            return await self.program.forward(**inputs)
        except Exception:  # a failed member is out of the vote; its records hold the error
            return {}

    def children(self) -> Iterator[tuple[str, Node]]:
        """The program, sharing the member's path (``p0.answer``)."""
        yield "", self.program

    def describe(self) -> str:
        """The wrapped program's description."""
        return self.program.describe()


class _Combine(Node):
    """Takes ``p<i>_<field>`` from every member and reduces them to the fields."""

    kind = "EnsembleCombine"

    def __init__(
        self,
        size: int,
        fields: dict[str, Field],
        *,
        reduce: str | Reducer,
        vote_field: str | None,
        normalize: Callable[[Any], Any] | None,
    ) -> None:
        super().__init__()
        self.size = size
        self.fields = fields
        self.reduce = reduce
        self.vote_field = vote_field
        self.normalize = normalize

    @property
    def inputs(self) -> Mapping[str, Field]:
        """``p<i>_<field>`` for every member and field."""
        return {
            f"p{i}_{name}": Field(f"p{i}_{name}", f.annotation, f.desc, True)
            for i in range(self.size)
            for name, f in self.fields.items()
        }

    @property
    def optional_inputs(self) -> frozenset[str]:
        """Every input: a failed member simply sends nothing."""
        return frozenset(self.inputs)

    @property
    def outputs(self) -> Mapping[str, Field]:
        """The combined fields."""
        return dict(self.fields)

    async def forward(self, **inputs: Any) -> dict[str, Any]:
        """Reduce the members' outputs to one value per field."""
        answers = []
        for i in range(self.size):
            got = {n: inputs[f"p{i}_{n}"] for n in self.fields if f"p{i}_{n}" in inputs}
            if got:
                answers.append(got)
        if not answers:
            raise RuntimeError(
                "every program of the ensemble failed; their errors are in the trace"
            )
        if callable(self.reduce):
            return dict(self.reduce(answers))
        if self.vote_field is not None:
            voters = [a for a in answers if self.vote_field in a]
            winner = majority([a[self.vote_field] for a in voters], self.normalize)
            key = _vote_key(winner, self.normalize)
            return next(a for a in voters if _vote_key(a[self.vote_field], self.normalize) == key)
        return {
            name: majority([a[name] for a in answers if name in a], self.normalize)
            for name in self.fields
            if any(name in a for a in answers)
        }


class Ensemble(Graph):
    """Several programs run on the same input, their outputs combined.

    Example:
        >>> ens = Ensemble([prog_a, prog_b, prog_c])  # doctest: +SKIP
        >>> prediction = await ens.run(question="...")  # doctest: +SKIP

    Args:
        programs: Graphs (or nodes) with the same output fields.
        reduce: ``"vote"`` for the majority value of each output field, or a
            function ``(list of output dicts) -> dict of output fields``.
        vote_field: With ``"vote"``, vote on this field only and return every
            field of the first program that gave the winning value (keeps each
            answer consistent with its own reasoning).
        normalize: With ``"vote"``, compare values after this function
            (e.g. :func:`~rhizome.optimizers.metrics.normalize_text`).
        name: The graph's name.
    """

    def __init__(
        self,
        programs: Sequence[Node],
        *,
        reduce: str | Reducer = "vote",
        vote_field: str | None = None,
        normalize: Callable[[Any], Any] | None = None,
        name: str = "ensemble",
    ) -> None:
        super().__init__(name)
        fields = _shared_outputs(programs)
        if not callable(reduce) and reduce != "vote":
            raise ConfigError(f"Ensemble(reduce={reduce!r}): use 'vote' or a function")
        if vote_field is not None and vote_field not in fields:
            raise ConfigError(
                f"Ensemble(vote_field={vote_field!r}): the programs' shared outputs are "
                f"{', '.join(fields)}"
            )
        for i, program in enumerate(programs):
            self.add(f"p{i}", _Member(program))
        combine = _Combine(
            len(programs), fields, reduce=reduce, vote_field=vote_field, normalize=normalize
        )
        self.add("combine", combine)
        for i in range(len(programs)):
            for field in fields:
                self.connect(f"p{i}.{field}", f"combine.p{i}_{field}")


def _shared_outputs(programs: Sequence[Node]) -> dict[str, Field]:
    if not programs:
        raise ConfigError("Ensemble needs at least one program")
    for p in programs:
        if not isinstance(p, Node):
            raise ConfigError(
                f"Ensemble takes graphs or nodes, got {type(p).__name__}; wrap functions "
                "with FunctionNode"
            )
    first = programs[0].outputs
    shared = {n: f for n, f in first.items() if all(n in p.outputs for p in programs[1:])}
    if not shared:
        raise ConfigError(
            "the programs of an Ensemble share no output field; their outputs are: "
            + "; ".join(", ".join(p.outputs) for p in programs)
        )
    return shared
