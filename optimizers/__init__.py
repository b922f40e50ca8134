"""Evaluation, metrics and optimizers that tune every LM node of a graph."""

__all__: tuple[str, ...] = ()
