"""Data files of rhizome.datasets (JSONL)."""

__all__: tuple[str, ...] = ()
