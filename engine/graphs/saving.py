"""Saving and loading a graph's parameters as readable JSON.

A saved program holds every parameter of :meth:`Graph.named_parameters`
(instructions, demos, temperatures, LM choices, retrieval ``k``, custom slots),
grouped by the path of the predictor or node that owns them, plus a readable
summary of the graph's structure and its sha256 fingerprint::

    {"format": 2, "graph": "rag", "fingerprint": "…", "structure": {…},
     "lms": ["small"],
     "parameters": {"answer": {"instruction": "…", "demos": […],
                               "temperature": 0.7, "lm": "small"},
                    "hops.search": {"k": 4}}}

An LM choice is saved as a reference name, never as a key or URL: the name
given in ``save(path, lms={"small": lm})``, else the LM's ``name``. Loading
resolves each reference from ``load(path, lms={"small": lm})``, else from the
LMs the graph is already bound to (by ``name``); a reference that resolves to
nothing is an error that lists the names the file needs. ``null`` means the
run's default LM.

Loading restores the parameters onto the same code-defined graph; when the
structure changed, loading fails with a list of the differences. Files from
before format 2 (no ``"format"`` key; no LM or ``k``) load when their LM nodes
still match. Files are read with :mod:`json` only (never pickle or eval) and
size-limited.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rhizome.engine.errors import SaveError
from rhizome.engine.graphs import params as _params
from rhizome.engine.graphs.walk import graphs, join, walk

if TYPE_CHECKING:
    from rhizome.engine.client.protocol import LM
    from rhizome.engine.graphs.graph import Graph
    from rhizome.engine.slots import Slot

__all__ = (
    "FORMAT",
    "MAX_BYTES",
    "fingerprint",
    "load",
    "program_fingerprint",
    "rhizome_version",
    "save",
    "structure",
)


MAX_BYTES = 50 * 1024 * 1024
FORMAT = 2
"""The saved-file format written by :func:`save`; format 1 files are read too."""


def rhizome_version() -> str:
    """The installed rhizome version, or ``"unknown"`` when not installed."""
    try:
        return importlib.metadata.version("rhizome")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def structure(graph: Graph) -> dict[str, Any]:
    """What the fingerprint covers: nodes, predictors, parameter names, edges, fields.

    Everything nested is included (sub-graphs, loop bodies, wrapped nodes): a
    node that shares its container's path appears as ``"BestOfN > Predict"``.
    """
    nodes: dict[str, str] = {}
    for path, node in walk(graph):
        nodes[path] = f"{nodes[path]} > {node.kind}" if path in nodes else node.kind
    edges: list[str] = []
    for path, inner in graphs(graph):
        for a, b, mappings, when in inner.edges:
            fields = ", ".join(f"{x}->{y}" for x, y in mappings)
            routed = " (when)" if when is not None else ""
            edges.append(f"{join(path, a)} -> {join(path, b)} [{fields}]{routed}")
    return {
        "nodes": nodes,
        "predictors": {path: p.signature.spec() for path, p in graph.named_predictors()},
        "parameters": list(_params.named_slots(graph)),
        "edges": sorted(edges),
        "inputs": sorted(graph.inputs),
        "outputs": sorted(graph.outputs),
    }


def fingerprint(summary: Mapping[str, Any]) -> str:
    """The sha256 of a structure summary, in canonical JSON."""
    text = json.dumps(summary, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def program_fingerprint(graph: Graph, summary: Mapping[str, Any] | None = None) -> str:
    """What results of ``graph`` depend on: its structure and its tunable parameters.

    Batch journals and run checkpoints refuse results written under another
    value. ``summary`` is :func:`structure` of ``graph``, when already at hand.
    """
    parameters = _params.json_parameters(graph, lambda lm: lm.name)
    summary = structure(graph) if summary is None else summary
    return fingerprint({"structure": summary, "parameters": parameters})


def save(graph: Graph, path: str | Path, *, lms: Mapping[str, LM] | None = None) -> None:
    """Write ``graph``'s parameters to ``path`` (atomically: a crash leaves the old file).

    Raises:
        SaveError: Two different LMs would be saved under one name, or an LM's
            name looks like a URL; name them with ``lms={"name": lm}``.
    """
    summary = structure(graph)
    refs = _references(_params.named_slots(graph), lms)
    flat = _params.json_parameters(graph, lambda lm: refs[id(lm)])
    data = {
        "format": FORMAT,
        "rhizome_version": rhizome_version(),
        "graph": graph.name,
        "fingerprint": fingerprint(summary),
        "structure": summary,
        "lms": sorted(set(refs.values())),
        "parameters": _grouped(flat),
    }
    target = Path(path)
    text = json.dumps(data, indent=2, ensure_ascii=False)
    fd, tmp = tempfile.mkstemp(dir=target.parent or ".", prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text + "\n")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _references(slots: Mapping[str, Slot], lms: Mapping[str, LM] | None) -> dict[int, str]:
    """The reference name of every LM bound in the graph, by the LM's id."""
    given = {id(lm): name for name, lm in (lms or {}).items()}
    refs: dict[int, str] = {}
    owners: dict[str, str] = {}
    for name, slot in slots.items():
        lm = slot.get() if slot.kind == "lm" else None
        if lm is None or id(lm) in refs:
            continue
        ref = given.get(id(lm), lm.name)
        if "://" in ref or not ref.strip():
            raise SaveError(
                f"the LM of {name!r} is named {ref!r}, which cannot be saved as a reference; "
                f"name it: save(path, lms={{'my-model': lm}})"
            )
        if ref in owners:
            raise SaveError(
                f"two different LMs ({owners[ref]!r} and {name!r}) are both named {ref!r}; "
                "give them distinct names: save(path, lms={'small': lm1, 'big': lm2})"
            )
        refs[id(lm)], owners[ref] = ref, name
    return refs


def _grouped(flat: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{"answer.instruction": v}`` as ``{"answer": {"instruction": v}}``."""
    groups: dict[str, dict[str, Any]] = {}
    for name, value in flat.items():
        owner, _, slot = name.rpartition(".")
        groups.setdefault(owner, {})[slot] = value
    return groups


def load(
    graph: Graph, path: str | Path, *, strict: bool = True, lms: Mapping[str, LM] | None = None
) -> None:
    """Restore parameters saved by :func:`save` onto ``graph``; a failed load changes nothing.

    Raises:
        SaveError: The file is missing, too large, not JSON, has wrong types,
            names LMs that cannot be resolved, or (when ``strict``) was saved
            from a differently structured graph.
    """
    data = _read(Path(path))
    where = f"saved program {str(path)!r}"
    saved_structure, groups, version = _checked(data, where)
    current = structure(graph)
    if strict and version == FORMAT and data["fingerprint"] != fingerprint(current):
        raise SaveError(_mismatch(path, graph.name, saved_structure, current))
    if strict and version == 1:
        _check_old(where, graph.name, saved_structure, current)
    slots = _params.named_slots(graph)
    stale = _stale_owners(saved_structure, current) if not strict else set()
    resolver = _Resolver(lms, slots)
    values: dict[str, Any] = {}
    for owner, state in groups.items():
        for slot_name, raw in state.items():
            name = join(owner, slot_name)
            slot = slots.get(name)
            if slot is None or owner in stale:
                if strict:
                    raise SaveError(f"{where} sets {name!r}, which graph {graph.name!r} lacks")
                continue
            values[name] = _decoded(where, name, slot, raw, resolver)
    resolver.raise_missing(where)
    _params.set_parameters(graph, values, label=graph.name)


def _stale_owners(saved: Mapping[str, Any], now: Mapping[str, Any]) -> set[str]:
    """Predictor paths whose signature changed since the file was saved."""
    old, new = _as_dict(saved.get("predictors")), _as_dict(now.get("predictors"))
    return {p for p in old if p in new and old[p] != new[p]}


def _decoded(where: str, name: str, slot: Slot, raw: Any, resolver: _Resolver) -> Any:
    """A saved value checked by its slot; an LM reference resolved to an LM."""
    if slot.kind != "lm" or raw is None:
        problem = slot.check(raw)
        if problem is not None:
            raise SaveError(f"{where}: 'parameters.{name}' {problem}")
        return raw
    if not isinstance(raw, str):
        raise SaveError(f"{where}: 'parameters.{name}' must be an LM name (a string) or null")
    return resolver.resolve(name, raw, slot.get())


class _Resolver:
    """LM reference names to LMs: those given to ``load(lms=...)``, then the graph's own by name.

    Args:
        given: The ``lms=`` mapping.
        slots: The graph's slots, whose bound LMs resolve by ``name`` (a name
            two of them share resolves to neither).
    """

    def __init__(self, given: Mapping[str, LM] | None, slots: Mapping[str, Slot]) -> None:
        self.given = dict(given or {})
        found: dict[str, LM] = {}
        clashes: set[str] = set()
        for slot in slots.values():
            lm = slot.get() if slot.kind == "lm" else None
            if lm is not None and found.setdefault(lm.name, lm) is not lm:
                clashes.add(lm.name)
        self.bound = {name: lm for name, lm in found.items() if name not in clashes}
        self.missing: dict[str, str] = {}

    def resolve(self, name: str, ref: str, current: Any) -> Any:
        """The LM called ``ref``; when there is none, ``current`` (and ``ref`` is noted)."""
        lm = self.given.get(ref) or self.bound.get(ref)
        if lm is None:
            self.missing[name] = ref
            return current
        return lm

    def raise_missing(self, where: str) -> None:
        """Fail, listing every reference that resolved to nothing and how to pass them."""
        if not self.missing:
            return
        needed = sorted(set(self.missing.values()))
        example = ", ".join(f"{n!r}: <LM>" for n in needed)
        given = ", ".join(sorted(self.given)) or "none"
        uses = ", ".join(f"{p} -> {r!r}" for p, r in self.missing.items())
        raise SaveError(
            f"{where} chooses LMs that are not given: {', '.join(map(repr, needed))} ({uses}); "
            f"pass them by name: graph.load(path, lms={{{example}}}) (names given: {given})"
        )


def _check_old(where: str, name: str, saved: Mapping[str, Any], now: Mapping[str, Any]) -> None:
    """A format-1 file (its fingerprint covers less) fits when its LM nodes and nodes still do."""
    old, new = _as_dict(saved.get("predictors")), _as_dict(now.get("predictors"))
    missing = [n for n in _as_dict(saved.get("nodes")) if n not in _as_dict(now.get("nodes"))]
    if old == new and not missing:
        return
    lines = [f"node {n!r} is in the file but not in the graph" for n in missing]
    lines += _differences({"predictors": old}, {"predictors": new})
    body = "\n".join(f"  - {line}" for line in lines)
    raise SaveError(
        f"{where} was written by an older rhizome (file format 1) and does not fit graph "
        f"{name!r}:\n{body}\nrebuild the graph as it was when saved, or load with "
        "strict=False to restore what still fits; then save() again to write format 2"
    )


def _read(path: Path) -> Any:
    text = _read_text(path)
    try:
        return json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise SaveError(
            f"{str(path)!r} is not valid JSON (truncated or damaged?): {exc.msg} at line "
            f"{exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        raise SaveError(f"{str(path)!r} is nested too deeply to be a saved program") from None
    except ValueError as exc:  # NaN/Infinity, or an integer with thousands of digits
        raise SaveError(f"{str(path)!r} is not a saved program: {exc}") from None


def _read_text(path: Path) -> str:
    """The file's text, read through one handle with a size cap (devices and FIFOs refused)."""
    try:
        # Non-blocking, so that opening a FIFO does not wait for a writer.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise SaveError(f"{str(path)!r} is not a regular file")
            data = handle.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise SaveError(f"no saved program at {str(path)!r}") from None
    except OSError as exc:
        raise SaveError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from None
    if len(data) > MAX_BYTES:
        raise SaveError(
            f"{str(path)!r} is {info.st_size / 1e6:.1f} MB, over the {MAX_BYTES // 2**20} MiB "
            "limit for saved programs; is it the right file?"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SaveError(f"{str(path)!r} is not UTF-8 text: {exc}") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"it holds {name}, which JSON does not allow")


def _checked(data: Any, where: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]], int]:
    """The structure, the parameter groups and the format, after checking their shapes."""
    if not isinstance(data, dict):
        raise SaveError(f"{where} must hold a JSON object, found {type(data).__name__}")
    version = data.get("format", 1)
    if version not in (1, FORMAT) or isinstance(version, bool):
        raise SaveError(
            f"{where} has file format {version!r}; this rhizome reads formats 1 and {FORMAT} "
            "(was it written by a newer rhizome? upgrade rhizome to load it)"
        )
    for key, kind in (
        ("fingerprint", str),
        ("structure", dict),
        ("parameters", dict),
    ):
        if key not in data:
            raise SaveError(f"{where} has no {key!r} key; was it written by Graph.save()?")
        if not isinstance(data[key], kind):
            raise SaveError(f"{where}: {key!r} must be a {_json_name(kind)}")
    for owner, state in data["parameters"].items():
        if not isinstance(state, dict):
            raise SaveError(
                f"{where}: 'parameters.{owner}' must be an object, got {type(state).__name__}"
            )
    predictors = data["structure"].get("predictors", {})
    if not isinstance(predictors, dict):
        raise SaveError(f"{where}: 'structure.predictors' must be an object")
    return data["structure"], data["parameters"], version


def _json_name(kind: type) -> str:
    names: dict[type, str] = {str: "string", dict: "object", list: "list"}
    return names.get(kind, kind.__name__)


def _mismatch(path: str | Path, name: str, saved: Mapping[str, Any], now: Mapping[str, Any]) -> str:
    lines = _differences(saved, now) or [
        "the fingerprint does not match the file's own structure (was the file edited?)"
    ]
    body = "\n".join(f"  - {line}" for line in lines)
    return (
        f"saved program {str(path)!r} does not fit graph {name!r}; the structure changed:\n"
        f"{body}\nrebuild the graph as it was when saved, or load with strict=False to restore "
        "only the parameters whose path (and predictor signature) still match"
    )


def _differences(saved: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    lines: list[str] = []
    for key, noun in (("nodes", "node"), ("predictors", "predictor")):
        old, new = _as_dict(saved.get(key)), _as_dict(now.get(key))
        lines += [f"{noun} {k!r} is in the file but not in the graph" for k in old if k not in new]
        lines += [f"{noun} {k!r} is in the graph but not in the file" for k in new if k not in old]
        for k in old.keys() & new.keys():
            if old[k] != new[k]:
                what = "kind" if key == "nodes" else "signature"
                lines.append(f"{noun} {k!r} changed {what}: {old[k]!r} -> {new[k]!r}")
    for key in ("parameters", "edges", "inputs", "outputs"):
        old_set, new_set = set(_as_list(saved.get(key))), set(_as_list(now.get(key)))
        lines += [f"{key[:-1]} {e!r} was removed" for e in sorted(old_set - new_set)]
        lines += [f"{key[:-1]} {e!r} was added" for e in sorted(new_set - old_set)]
    return lines


def _as_dict(value: Any) -> dict[str, Any]:
    return {str(k): v for k, v in value.items()} if isinstance(value, dict) else {}


def _as_list(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []
