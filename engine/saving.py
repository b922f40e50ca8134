"""Saving and loading a graph's tunable state as readable JSON.

A saved program holds only parameters (instructions, demos, temperatures),
keyed by predictor path, plus a readable summary of the graph's structure and
its sha256 fingerprint. Loading restores the parameters onto the same
code-defined graph; when the structure changed, loading fails with a list of
the differences. Files are read with :mod:`json` only (never pickle or eval)
and size-limited.
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
from rhizome.engine.predictor import state_problem

if TYPE_CHECKING:
    from rhizome.engine.graph import Graph

MAX_BYTES = 50 * 1024 * 1024


def rhizome_version() -> str:
    """The installed rhizome version, or ``"unknown"`` when not installed."""
    try:
        return importlib.metadata.version("rhizome")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def structure(graph: Graph) -> dict[str, Any]:
    """A readable summary of what the fingerprint covers: nodes, predictors, edges, fields."""
    nodes: dict[str, str] = {}
    edges: list[str] = []
    _walk(graph, "", nodes, edges)
    return {
        "nodes": nodes,
        "predictors": {path: p.signature.spec() for path, p in graph.named_predictors()},
        "edges": sorted(edges),
        "inputs": sorted(graph.inputs),
        "outputs": sorted(graph.outputs),
    }


def _walk(graph: Graph, prefix: str, nodes: dict[str, str], edges: list[str]) -> None:
    from rhizome.engine.graph import Graph

    for name, node in graph.nodes.items():
        nodes[prefix + name] = node.kind
        if isinstance(node, Graph):
            _walk(node, f"{prefix}{name}.", nodes, edges)
    for a, b, mappings, when in graph.edges:
        fields = ", ".join(f"{x}->{y}" for x, y in mappings)
        routed = " (when)" if when is not None else ""
        edges.append(f"{prefix}{a} -> {prefix}{b} [{fields}]{routed}")


def fingerprint(summary: Mapping[str, Any]) -> str:
    """The sha256 of a structure summary, in canonical JSON."""
    text = json.dumps(summary, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def save(graph: Graph, path: str | Path) -> None:
    """Write ``graph``'s parameters to ``path`` (atomically: a crash leaves the old file)."""
    summary = structure(graph)
    data = {
        "rhizome_version": rhizome_version(),
        "graph": graph.name,
        "fingerprint": fingerprint(summary),
        "structure": summary,
        "parameters": {path: p.dump_state() for path, p in graph.named_predictors()},
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


def load(graph: Graph, path: str | Path, *, strict: bool = True) -> None:
    """Restore parameters saved by :func:`save` onto ``graph``.

    Raises:
        SaveError: The file is missing, too large, not JSON, has wrong types,
            or (when ``strict``) was saved from a differently structured graph.
    """
    data = _read(Path(path))
    saved_structure, parameters = _checked(data, path)
    predictors = dict(graph.named_predictors())
    if strict:
        current = structure(graph)
        if data["fingerprint"] != fingerprint(current):
            raise SaveError(_mismatch(path, graph.name, saved_structure, current))
    specs = saved_structure.get("predictors", {})
    for p_path, state in parameters.items():
        predictor = predictors.get(p_path)
        if predictor is None or specs.get(p_path, predictor.signature.spec()) != (
            predictor.signature.spec()
        ):
            continue  # only reachable when not strict: skip what no longer fits
        predictor.load_state(state, path=p_path)


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


def _checked(data: Any, path: str | Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    where = f"saved program {str(path)!r}"
    if not isinstance(data, dict):
        raise SaveError(f"{where} must hold a JSON object, found {type(data).__name__}")
    for key, kind in (
        ("fingerprint", str),
        ("structure", dict),
        ("parameters", dict),
    ):
        if key not in data:
            raise SaveError(f"{where} has no {key!r} key; was it written by Graph.save()?")
        if not isinstance(data[key], kind):
            raise SaveError(f"{where}: {key!r} must be a {_json_name(kind)}")
    for p_path, state in data["parameters"].items():
        _check_state(where, p_path, state)
    predictors = data["structure"].get("predictors", {})
    if not isinstance(predictors, dict):
        raise SaveError(f"{where}: 'structure.predictors' must be an object")
    return data["structure"], data["parameters"]


def _check_state(where: str, p_path: str, state: Any) -> None:
    """Types and ranges of one predictor's saved slots, named by their parameter path."""
    problem = state_problem(state, f"parameters.{p_path}")
    if problem is not None:
        raise SaveError(f"{where}: {problem}")


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
        "only the predictors whose path and signature still match"
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
    for key in ("edges", "inputs", "outputs"):
        old_set, new_set = set(_as_list(saved.get(key))), set(_as_list(now.get(key)))
        lines += [f"{key[:-1]} {e!r} was removed" for e in sorted(old_set - new_set)]
        lines += [f"{key[:-1]} {e!r} was added" for e in sorted(new_set - old_set)]
    return lines


def _as_dict(value: Any) -> dict[str, Any]:
    return {str(k): v for k, v in value.items()} if isinstance(value, dict) else {}


def _as_list(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []
