"""The embedded local model.

The GGUF model shipped in packages, the llama.cpp server on a loopback port, and
the client for it (``local_lm``).
"""

__all__: tuple[str, ...] = ()
