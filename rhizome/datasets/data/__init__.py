"""Data files of rhizome.datasets (JSONL)."""
