"""A built-in search tool over any retriever, for agents."""

from __future__ import annotations

from rhizome.tools.agent.tool import FunctionTool, tool
from rhizome.tools.retrieval.retrievers import Retriever

__all__ = ("make_search_tool",)


def make_search_tool(
    retriever: Retriever,
    *,
    k: int = 3,
    name: str = "search",
    description: str = "Search the knowledge base and return the most relevant passages.",
) -> FunctionTool:
    """A tool that searches ``retriever`` and returns the top passages as numbered text.

    Args:
        retriever: Any :class:`~rhizome.tools.retrieval.retrievers.Retriever`
            (chromadb, ColBERTv2 ...).
        k: Passages returned per search.
        name: The tool's name as the model sees it.
        description: The tool's description as the model sees it.
    """

    async def search(query: str) -> str:
        """Search the knowledge base.

        Args:
            query: What to look for, a few keywords or a question.
        """
        passages = await retriever.search(query, k)
        if not passages:
            return "No passages found."
        return "\n".join(f"[{i}] {p.text}" for i, p in enumerate(passages, 1))

    return tool(name=name, description=description)(search)
