"""The rhizome engine: signatures, adapters, LM clients, graphs, traces."""

__all__: tuple[str, ...] = ()
