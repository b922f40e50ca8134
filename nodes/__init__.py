"""Node kinds: LM reasoning patterns, retrieval, tools, functions, routers and loops."""

__all__: tuple[str, ...] = ()
