"""What the retrieval nodes of one run found, read back from its trace.

Retrieval metrics use this to say *which* supporting passage was missed and
*by which* retrieval node. A :class:`~rhizome.nodes.retrieve.Retrieve` node
writes the id, title and score of every passage it returned to its trace
record (``details["retrieved"]``); the texts are its list output. A node that
outputs typed passages (:class:`~rhizome.tools.retrieval.retrievers.Passage`
objects or dicts with ``text``) is read from that output instead, so custom
retrieval nodes work too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from rhizome.engine.trace import NodeRecord, Trace

__all__ = ("Found", "Search", "read_passages", "searches", "short_list")


@dataclasses.dataclass(frozen=True)
class Found:
    """One passage a retrieval node returned.

    Attributes:
        text: The passage text.
        id: Its id in the store ("" when unknown).
        doc_id: The id of the document it was cut from (the ``doc_id``
            metadata :func:`~rhizome.tools.retrieval.indexing.index_documents`
            writes), else its own id.
        title: Its title: the ``title`` metadata, else the ``"Title | text"``
            prefix the indexer writes ("" when neither).
    """

    text: str
    id: str = ""
    title: str = ""
    doc_id: str = ""

    def __post_init__(self) -> None:
        if not self.doc_id:
            object.__setattr__(self, "doc_id", self.id)

    @property
    def name(self) -> str:
        """How to name the passage in feedback: its title, else its id, else its opening words."""
        return self.title or self.id or _opening(self.text)


@dataclasses.dataclass(kw_only=True)
class Search:
    """Everything one retrieval node found in a run (all its executions, in loops too).

    Attributes:
        node: The node's path (``"hop2"``, ``"loop/search"``).
        queries: The queries it searched with, in order.
        found: The passages it returned, in order.
        parents: Paths of the LM nodes that fed it (its query writers); other
            feeding nodes (an earlier retrieval, a function) are left out.
    """

    node: str
    queries: list[str] = dataclasses.field(default_factory=list)
    found: list[Found] = dataclasses.field(default_factory=list)
    parents: list[str] = dataclasses.field(default_factory=list)


def searches(trace: Trace, field: str | None = None) -> list[Search]:
    """The retrieval nodes of ``trace`` and what each found, in the order they first ran.

    Args:
        trace: The run's trace.
        field: Read only nodes with this output (a list of texts or typed
            passages); None reads every node that recorded what it retrieved.
    """
    out: dict[str, Search] = {}
    writers = {r.node for r in trace.records if r.calls}
    for record in trace.records:
        found = _found(record, field)
        if found is None:
            continue
        search = out.setdefault(record.node, Search(node=record.node))
        search.found += found
        search.queries += _queries(record)
        search.parents += [p for p in record.parents if p in writers and p not in search.parents]
    return list(out.values())


def read_passages(value: object) -> list[Found]:
    """Passages given as typed records (``Passage`` objects, dicts with ``text``) or texts."""
    return _typed(value) or _texts(None, value)


def _found(record: NodeRecord, field: str | None) -> list[Found] | None:
    if field is not None:
        if field not in record.outputs:
            return None
        return _typed(record.outputs[field]) or _texts(record, record.outputs[field])
    typed = next((t for v in record.outputs.values() if (t := _typed(v))), None)
    if typed:
        return typed
    if isinstance(record.details.get("retrieved"), list):
        lists = [v for v in record.outputs.values() if _strings(v)]
        return _texts(record, lists[0] if lists else [])
    return None


def _strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _typed(value: object) -> list[Found]:
    """Passages given as objects (``Passage``) or dicts with a ``text``; [] for anything else."""
    if not isinstance(value, list) or not value:
        return []
    out = []
    for item in value:
        if isinstance(item, Mapping):
            text, pid, meta = item.get("text"), item.get("id", ""), item.get("metadata") or {}
        else:
            text, pid, meta = (getattr(item, a, None) for a in ("text", "id", "metadata"))
        if not isinstance(text, str):
            return []
        meta = meta if isinstance(meta, Mapping) else {}
        title = meta.get("title") or (item.get("title") if isinstance(item, Mapping) else None)
        doc = str(meta.get("doc_id") or "")
        out.append(Found(text, str(pid or ""), str(title or "") or _prefix_title(text), doc))
    return out


def _texts(record: NodeRecord | None, value: object) -> list[Found]:
    texts = [str(v) for v in value] if isinstance(value, list | tuple) else [str(value)]
    details = record.details.get("retrieved") if record is not None else None
    rows: Sequence[Any] = details if isinstance(details, list) else []
    out = []
    for i, text in enumerate(texts):
        row = rows[i] if i < len(rows) and isinstance(rows[i], Mapping) else {}
        title = str(row.get("title") or "") or _prefix_title(text)
        out.append(Found(text, str(row.get("id") or ""), title, str(row.get("doc_id") or "")))
    return out


def _prefix_title(text: str) -> str:
    """The title of an indexed ``"Title | chunk"`` text, else ""."""
    head, sep, _ = text.partition(" | ")
    return head.strip() if sep and 0 < len(head) <= 120 else ""


def _queries(record: NodeRecord) -> list[str]:
    """The query a retrieval node searched with: its text input, else its first list input."""
    texts = [v for v in record.inputs.values() if isinstance(v, str)]
    if texts:
        return texts[:1]
    lists = [v for v in record.inputs.values() if _strings(v) and v]
    return [str(v) for v in lists[0]] if lists else []


def _opening(text: str, words: int = 8) -> str:
    parts = text.split()
    return " ".join(parts[:words]) + (" ..." if len(parts) > words else "")


def short_list(names: Sequence[str], limit: int = 5) -> str:
    """Quoted names, at most ``limit`` of them (``'A', 'B' and 2 more``); ``nothing`` if none."""
    if not names:
        return "nothing"
    shown = ", ".join(repr(n) for n in names[:limit])
    rest = len(names) - limit
    return f"{shown} and {rest} more" if rest > 0 else shown
