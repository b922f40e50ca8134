"""Evaluation, metrics and optimizers that tune every LM node of a graph."""
