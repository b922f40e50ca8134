"""Reading run records back: what each run scored, spent and took, and its trials.

Evaluations and optimizations write a run directory
(:mod:`rhizome.optimizers.records`); ``rhizome optimize`` adds ``before/`` and
``after/`` evaluations inside the optimizer's directory. :func:`read_run`
turns one directory into a :class:`RunInfo` whatever its kind, and
:func:`trial_points` reads an optimization's trials as chart points.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from rhizome.engine.errors import ConfigError
from rhizome.optimizers.records import read_jsonl

__all__ = ("RunInfo", "TrialPoint", "find_runs", "is_run_dir", "read_run", "trial_points")


RUN_FILE = "run.json"


@dataclasses.dataclass(kw_only=True)
class RunInfo:
    """One run directory, summarised.

    Attributes:
        path: The directory.
        kind: ``evaluate``, ``bootstrap``, ``random_search``, ``joint_search``, ``copro`` ...
        status: ``running`` (or interrupted) or ``finished``.
        started: Start time as written (local ISO time).
        score: The evaluation's score; for optimizations, the score after
            (``after/``) or else the best the optimizer reported.
        before: For optimizations evaluated before, that score.
        ci95: The evaluation's 95% interval, when known.
        n: Examples evaluated.
        failures: Examples that failed.
        calls: LM calls spent.
        tokens: Prompt plus completion tokens spent.
        cost: Cost spent (0 without prices).
        wall_time: Seconds the run took.
        trials: Trials recorded (optimizations).
        slices: Score per tag.
        config: The run's configuration.
    """

    path: Path
    kind: str
    status: str
    started: str = ""
    score: float | None = None
    before: float | None = None
    ci95: tuple[float, float] | None = None
    n: int | None = None
    failures: int | None = None
    calls: float = 0.0
    tokens: float = 0.0
    cost: float = 0.0
    wall_time: float | None = None
    trials: int = 0
    slices: dict[str, float] = dataclasses.field(default_factory=dict)
    config: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data."""
        data = dataclasses.asdict(self)
        data["path"] = str(self.path)
        data["ci95"] = list(self.ci95) if self.ci95 else None
        return data


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrialPoint:
    """One trial of an optimization, for charts.

    Attributes:
        x: Trial number in the order recorded (0-based).
        score: Its score.
        cost: What it spent: cost when priced, else tokens.
        label: A short description (configuration, candidate, instruction).
        full: True for a full-set evaluation (JointSearch checkpoints).
    """

    x: int
    score: float
    cost: float
    label: str
    full: bool = False


def is_run_dir(path: Path) -> bool:
    """True when ``path`` holds a ``run.json``."""
    return (path / RUN_FILE).is_file()


def find_runs(roots: Iterable[Path], *, depth: int = 4) -> list[Path]:
    """Run directories at or under ``roots`` (up to ``depth`` levels), sorted by path."""
    found: set[Path] = set()
    for root in roots:
        if not root.exists():
            raise ConfigError(f"no such directory: {root}")
        found.update(p.parent for p in _walk(root, depth))
    return sorted(found)


def _walk(root: Path, depth: int) -> Iterable[Path]:
    if (root / RUN_FILE).is_file():
        yield root / RUN_FILE
    if depth > 0 and root.is_dir():
        for child in sorted(root.iterdir()):
            if child.is_dir() and not child.name.startswith("."):
                yield from _walk(child, depth - 1)


def _load(path: Path) -> dict[str, Any]:
    try:
        data = json.loads((path / RUN_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path} is not a run directory (no {RUN_FILE})") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path / RUN_FILE} is not valid JSON: {exc.msg}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path / RUN_FILE} must hold a JSON object")
    return data


def read_run(path: Path) -> RunInfo:
    """Summarise one run directory."""
    data = _load(path)
    summary = data.get("summary") or {}
    info = RunInfo(
        path=path,
        kind=str(data.get("kind", "?")),
        status=str(data.get("status", "?")),
        started=str(data.get("started", "")),
        wall_time=_number(data.get("wall_time")),
        config=dict(data.get("config") or {}),
    )
    if info.kind == "evaluate":
        _fill_evaluation(info, summary)
    else:
        _fill_optimization(info, summary, path)
    return info


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _fill_evaluation(info: RunInfo, summary: Mapping[str, Any]) -> None:
    info.score = _number(summary.get("score"))
    ci = summary.get("ci95")
    if isinstance(ci, list) and len(ci) == 2:
        info.ci95 = (float(ci[0]), float(ci[1]))
    n, failures = summary.get("n"), summary.get("failures")
    info.n = int(n) if isinstance(n, int) else None
    info.failures = int(failures) if isinstance(failures, int) else None
    _add_usage(info, summary.get("usage") or {})
    slices = summary.get("slices") or {}
    info.slices = {str(k): float(v.get("score", 0.0)) for k, v in slices.items()}


def _fill_optimization(info: RunInfo, summary: Mapping[str, Any], path: Path) -> None:
    rows = read_jsonl(path / "trials.jsonl")
    info.trials = len(rows)
    spent = summary.get("spent")
    if isinstance(spent, Mapping):
        info.calls = float(spent.get("calls", 0))
        info.tokens = float(spent.get("tokens", 0))
        info.cost = float(spent.get("cost", 0.0))
    else:
        for row in rows:
            _add_usage(info, row.get("usage") or row)
    info.score = _number(summary.get("best_score"))
    after, before = path / "after", path / "before"
    if is_run_dir(after):
        evaluated = read_run(after)
        info.score, info.ci95, info.n = evaluated.score, evaluated.ci95, evaluated.n
        info.slices = evaluated.slices
    if is_run_dir(before):
        info.before = read_run(before).score


def _add_usage(info: RunInfo, usage: Mapping[str, Any]) -> None:
    info.calls += float(usage.get("calls", 0) or 0)
    info.tokens += float(usage.get("prompt_tokens", 0) or 0)
    info.tokens += float(usage.get("completion_tokens", 0) or 0)
    info.cost += float(usage.get("cost", 0.0) or 0.0)


def trial_points(path: Path) -> tuple[list[TrialPoint], str]:
    """The scored trials of an optimization in the order recorded, and the cost unit.

    The unit is ``"cost"`` when any trial was priced, else ``"tokens"``.
    """
    rows = [
        r
        for r in read_jsonl(path / "trials.jsonl")
        if _number(r.get("score")) is not None and r.get("kind") != "setup"
    ]
    usages: list[Mapping[str, Any]] = [
        u if isinstance(u := r.get("usage"), Mapping) else r for r in rows
    ]
    unit = "cost" if any(float(u.get("cost", 0.0) or 0.0) > 0 for u in usages) else "tokens"
    points = []
    for x, (row, usage) in enumerate(zip(rows, usages, strict=True)):
        if unit == "cost":
            spent = float(usage.get("cost", 0.0) or 0.0)
        else:
            spent = float(usage.get("prompt_tokens", 0) or 0)
            spent += float(usage.get("completion_tokens", 0) or 0)
        points.append(
            TrialPoint(
                x=x,
                score=float(row["score"]),
                cost=spent,
                label=_label(row),
                full=row.get("kind") == "full",
            )
        )
    return points, unit


def _label(row: Mapping[str, Any]) -> str:
    if "description" in row:
        return str(row["description"])
    if "instruction" in row:
        return f"{row.get('path') or 'all'}: {row['instruction']}"
    if "tid" in row:
        kind = "full evaluation" if row.get("kind") == "full" else f"trial {row['tid']}"
        return f"{kind} {json.dumps(row.get('config', {}), sort_keys=True)}"
    if "kept" in row:
        return "kept" if row["kept"] else "dropped"
    return ""
