"""The retrieval node: a query in, the texts of the best passages out.

``Retrieve(retriever, k=3)`` reads ``query`` and writes ``passages``. In
multi-hop programs the passages found by earlier hops can be fed back in
(``exclude="context"``): those are skipped and the search reaches further, so
every hop adds ``k`` new passages. The ids, titles and scores of what was
found are written to the node's trace record when the record has a
``details`` dict, so retrieval metrics can name a missed document.

Besides the texts, a node can output the ids (``ids_output=``) or the whole
typed passages (``typed_output=``: :class:`~rhizome.tools.retrieval.retrievers.Passage`
records with id, text, score and metadata, the title included).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import anyio

from rhizome.engine.call.signature import Field
from rhizome.engine.errors import ConfigError
from rhizome.engine.graphs.node import Node
from rhizome.engine.slots import Slot, count_problem
from rhizome.engine.trace import current_record
from rhizome.tools.retrieval.retrievers import Passage, Retriever, check_k

__all__ = ("Retrieve",)


_MAX_ROUNDS = 3  # searches per query when duplicates eat into the k wanted


def _norm(text: str) -> str:
    return " ".join(text.split())


def _detail(p: Passage) -> dict[str, Any]:
    row: dict[str, Any] = {"id": p.id, "score": p.score}
    if p.title:
        row["title"] = p.title
    if p.metadata.get("doc_id"):
        row["doc_id"] = str(p.metadata["doc_id"])
    return row


class Retrieve(Node):
    """A node that searches a retriever.

    Args:
        retriever: Where to search (:class:`~rhizome.tools.retrieval.chroma.ChromaRetriever`,
            :class:`~rhizome.tools.retrieval.colbert.ColBERTv2`, ...). Shared, not copied,
            by :meth:`copy`.
        k: Passages to return; tunable.
        query: Name of the input holding one query string.
        queries: Name of an input holding a list of queries instead; their
            results are merged, each passage ranked by its best score.
        output: Name of the output listing the passage texts.
        ids_output: Also output the passage ids under this name.
        typed_output: Also output the passages as typed
            :class:`~rhizome.tools.retrieval.retrievers.Passage` records (id,
            text, score, metadata) under this name.
        exclude: Name of an input listing passages (texts) to skip, such as the
            context gathered by earlier hops.
        where: Metadata filter passed to every search.
        dedupe: Drop passages whose text was excluded or already returned.
        timeout: Seconds the node may run, None for the run's default.

    Attributes:
        k: How many passages each run returns (an optimizer may change it).
        where: The metadata filter.
    """

    kind = "Retrieve"

    def __init__(
        self,
        retriever: Retriever,
        *,
        k: int = 3,
        query: str = "query",
        queries: str | None = None,
        output: str = "passages",
        ids_output: str | None = None,
        typed_output: str | None = None,
        exclude: str | None = None,
        where: dict[str, Any] | None = None,
        dedupe: bool = True,
        timeout: float | None = None,
    ) -> None:
        super().__init__(timeout=timeout)
        if not callable(getattr(retriever, "search", None)):
            raise ConfigError(
                f"Retrieve needs a retriever with an async search(query, k) method; "
                f"got {type(retriever).__name__}"
            )
        self.retriever = retriever
        self.k = check_k(k)
        self.where = where
        self.dedupe = dedupe
        self._query = queries or query
        self._many = queries is not None
        self._exclude = exclude
        self._output = output
        self._ids_output = ids_output
        self._typed_output = typed_output
        names = [
            n for n in (self._query, exclude, output, ids_output, typed_output) if n is not None
        ]
        if len(set(names)) != len(names):
            raise ConfigError(f"Retrieve field names must differ; got {', '.join(names)}")

    def parameter_slots(self) -> dict[str, Slot]:
        """``k``, the number of passages (a whole number >= 1)."""
        return {"k": Slot(self, "k", count_problem)}

    @property
    def inputs(self) -> Mapping[str, Field]:
        """The query (or queries) input and, if set, the exclude input."""
        fields = {
            self._query: Field(
                self._query,
                list[str] if self._many else str,
                "search queries" if self._many else "the search query",
            )
        }
        if self._exclude is not None:
            fields[self._exclude] = Field(self._exclude, list[str], "passages to skip")
        return fields

    @property
    def optional_inputs(self) -> frozenset[str]:
        """The exclude input may be left unfed (nothing is skipped then)."""
        return frozenset({self._exclude} if self._exclude is not None else ())

    @property
    def outputs(self) -> Mapping[str, Field]:
        """The passage texts and, if set, their ids and the typed passages."""
        fields = {self._output: Field(self._output, list[str], "retrieved passages", False)}
        if self._ids_output is not None:
            fields[self._ids_output] = Field(
                self._ids_output, list[str], "ids of the retrieved passages", False
            )
        if self._typed_output is not None:
            fields[self._typed_output] = Field(
                self._typed_output, list[Passage], "the retrieved passages, typed", False
            )
        return fields

    async def forward(self, **inputs: Any) -> dict[str, Any]:
        """Search and return the top ``k`` new passages."""
        k = check_k(self.k)
        value = inputs[self._query]
        queries = [str(q) for q in value] if self._many else [str(value)]
        excluded = inputs.get(self._exclude) if self._exclude is not None else None
        skip = {_norm(str(t)) for t in excluded or []} if self.dedupe else set()
        found = await self._gather(queries, k, skip) if queries else []
        record = current_record()
        details = getattr(record, "details", None)
        if isinstance(details, dict):
            details["retrieved"] = [_detail(p) for p in found]
        out: dict[str, Any] = {self._output: [p.text for p in found]}
        if self._ids_output is not None:
            out[self._ids_output] = [p.id for p in found]
        if self._typed_output is not None:
            out[self._typed_output] = found
        return out

    async def _gather(self, queries: list[str], k: int, skip: set[str]) -> list[Passage]:
        fetch = k + len(skip)
        for _ in range(_MAX_ROUNDS):
            results = await self._search_all(queries, fetch)
            found = self._select(results, k, skip)
            exhausted = all(len(r) < fetch for r in results)
            if len(found) >= k or exhausted or not self.dedupe:
                return found
            fetch *= 2
        return found

    async def _search_all(self, queries: list[str], fetch: int) -> list[list[Passage]]:
        if len(queries) == 1:
            return [await self.retriever.search(queries[0], fetch, where=self.where)]
        results: list[list[Passage]] = [[] for _ in queries]

        async def one(i: int, q: str) -> None:
            results[i] = await self.retriever.search(q, fetch, where=self.where)

        try:
            async with anyio.create_task_group() as tg:
                for i, q in enumerate(queries):
                    tg.start_soon(one, i, q)
        except ExceptionGroup as group:
            # One search failing cancels the rest; report that failure, not a group.
            raise group.exceptions[0] from None
        return results

    def _select(self, results: list[list[Passage]], k: int, skip: set[str]) -> list[Passage]:
        best: dict[str, Passage] = {}
        for passages in results:
            for p in passages:
                if p.id not in best or p.score > best[p.id].score:
                    best[p.id] = p
        ranked = (
            sorted(best.values(), key=lambda p: -p.score)
            if len(results) > 1
            else [p for p in results[0] if best[p.id] is p]
        )
        if not self.dedupe:
            return ranked[:k]
        chosen, seen = [], set(skip)
        for p in ranked:
            key = _norm(p.text)
            if key not in seen:
                seen.add(key)
                chosen.append(p)
            if len(chosen) == k:
                break
        return chosen
