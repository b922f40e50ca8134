"""Tools for agents, built-in tools, retrievers, embeddings and the embedded local LM."""

__all__: tuple[str, ...] = ()
