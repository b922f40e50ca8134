"""Batches.

Running many examples at once, the resume journal, progress lines and the
garbage-collector scope of a batch.
"""

__all__: tuple[str, ...] = ()
