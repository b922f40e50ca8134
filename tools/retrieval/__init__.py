"""Retrieval.

The retriever protocol and the in-memory retriever, chromadb, ColBERTv2, the
offline MiniLM embeddings and document indexing.
"""

__all__: tuple[str, ...] = ()
