"""The rhizome engine: signatures, adapters, LM clients, graphs, traces."""
