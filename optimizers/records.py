"""Run records: a directory per evaluation or optimization saying what was tried and what it cost.

Layout of a run directory::

    run.json        kind, start time, configuration, seed, status, summary
    results.jsonl   one line per evaluated example (evaluations)
    trials.jsonl    one line per trial (optimizations): parameters tried, score, usage
    traces.jsonl    a sample of traces
    program.json    the final program (optimizations)
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rhizome.engine.trace import jsonable

if TYPE_CHECKING:
    from rhizome.engine.graphs.graph import Graph

__all__ = ("RunRecorder", "read_jsonl")


TRACE_SAMPLE = 20


class RunRecorder:
    """Writes one run directory; every write is flushed so an interrupted run leaves a record."""

    def __init__(self, path: Path, *, kind: str, config: dict[str, Any]) -> None:
        self.path = path
        self.path.mkdir(parents=True, exist_ok=True)
        self._meta: dict[str, Any] = {
            "kind": kind,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "config": jsonable(config),
            "status": "running",
        }
        self._t0 = time.perf_counter()
        self._write_meta()

    @classmethod
    def create(
        cls, run_dir: str | Path | None, *, kind: str, config: dict[str, Any]
    ) -> RunRecorder | None:
        """A recorder for ``run_dir``, or None when no directory was asked for."""
        if run_dir is None:
            return None
        return cls(Path(run_dir), kind=kind, config=config)

    def _write_meta(self) -> None:
        tmp = self.path / "run.json.tmp"
        tmp.write_text(json.dumps(self._meta, indent=2, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, self.path / "run.json")

    def append(self, name: str, row: dict[str, Any]) -> None:
        """Append one JSON line to ``name`` (``trials.jsonl`` ...)."""
        with open(self.path / name, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(jsonable(row), ensure_ascii=False) + "\n")

    def keep_rows(self, name: str, rows: Iterable[dict[str, Any]]) -> None:
        """Replace ``name`` with ``rows`` (what :func:`read_jsonl` read back), atomically.

        A resumed run calls it first, so that a line torn by a killed process
        does not glue itself to the next line appended.
        """
        tmp = self.path / f"{name}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(jsonable(row), ensure_ascii=False) + "\n")
        os.replace(tmp, self.path / name)

    def write_results(self, results: Iterable[Any]) -> None:
        """Write per-example results and a sample of their traces, replacing earlier ones.

        A resumed evaluation writes all its results again, so the files are
        started afresh rather than appended to.
        """
        for name in ("results.jsonl", "traces.jsonl"):
            (self.path / name).unlink(missing_ok=True)
        sampled = 0
        for r in results:
            self.append(
                "results.jsonl",
                {
                    "index": r.index,
                    "score": r.score,
                    "passed": r.passed,
                    "error": r.error,
                    "example": r.example.to_dict(),
                    "prediction": r.prediction.to_dict() if r.prediction is not None else None,
                    **_feedback(r),
                },
            )
            if r.trace is not None and sampled < TRACE_SAMPLE:
                self.append("traces.jsonl", {"index": r.index, "trace": r.trace.to_dict()})
                sampled += 1

    def write_program(self, program: Graph) -> None:
        """Save the final program as ``program.json`` (see :meth:`Graph.save`)."""
        program.save(self.path / "program.json")

    def finish(self, summary: dict[str, Any], *, status: str = "finished") -> None:
        """Record the summary, status and wall time."""
        self._meta.update(
            status=status,
            summary=jsonable(summary),
            wall_time=time.perf_counter() - self._t0,
            finished=time.strftime("%Y-%m-%dT%H:%M:%S"),
        )
        self._write_meta()


def _feedback(result: Any) -> dict[str, Any]:
    """A result's metric feedback, when it has any (kept out of the line otherwise)."""
    out: dict[str, Any] = {}
    if getattr(result, "feedback", ""):
        out["feedback"] = result.feedback
    if getattr(result, "node_feedback", None):
        out["node_feedback"] = dict(result.node_feedback)
    return out


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read a JSONL file, skipping a torn last line left by an interrupted write."""
    rows: list[dict[str, Any]] = []
    if not path.exists():
        return rows
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows
