"""Agent tools.

``@tool`` and typed tools, the calculator, the Python sandbox, HTTP GET, and a
retriever wrapped as a search tool.
"""

__all__: tuple[str, ...] = ()
