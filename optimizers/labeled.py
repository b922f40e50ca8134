"""LabeledFewShot: demos straight from labelled examples."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from rhizome.optimizers.base import as_examples, labeled_demos, shuffled

if TYPE_CHECKING:
    from rhizome.engine.example import Example
    from rhizome.engine.graphs.graph import Graph

__all__ = ("LabeledFewShot",)


class LabeledFewShot:
    """Give every LM node up to ``k`` demos taken from the trainset's labelled fields.

    A node gets a labelled demo only when the example holds at least one of
    its inputs and one of its outputs (an answerer whose ``context`` comes from
    retrieval still learns the question -> answer mapping).

    Args:
        k: Demos per predictor.
        seed: Shuffle seed; ``None`` keeps trainset order.
    """

    def __init__(self, k: int = 8, *, seed: int | None = 0) -> None:
        self.k = k
        self.seed = seed

    async def optimize(
        self, graph: Graph, trainset: Sequence[Example | Mapping[str, Any]]
    ) -> Graph:
        """Return a copy of ``graph`` with labelled demos in every predictor."""
        examples = as_examples(trainset)
        if self.seed is not None:
            examples = shuffled(examples, self.seed)
        return graph.with_parameters(
            {
                f"{path}.demos": labeled_demos(predictor, examples)[: self.k]
                for path, predictor in graph.named_predictors()
            }
        )
