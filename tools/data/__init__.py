"""Data files shipped with rhizome.tools: the all-MiniLM-L6-v2 tokenizer (see NOTICE)."""

__all__: tuple[str, ...] = ()
