"""Node kinds: LM reasoning patterns, retrieval, tools, functions, routers and loops."""
