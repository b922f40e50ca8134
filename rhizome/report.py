"""A self-contained HTML report per run: summary, progress chart, slices, graph, settings.

``write_report(run_dir)`` writes ``run_dir/report.html``: one file with inline
CSS and inline SVG (no scripts, no fonts or styles from the network), so it
opens the same in any browser, offline, or attached to a ticket. For an
optimization it shows the score before and after, a chart of the score per
trial with the best so far and what each trial spent, the best trials, and
per-slice scores before and after; for an evaluation, its score, interval,
slices and failures.
"""

from __future__ import annotations

import json
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rhizome.optimizers.records import read_jsonl
from rhizome.runs import RunInfo, is_run_dir, read_run, trial_points
from rhizome.svg import trial_chart

if TYPE_CHECKING:
    from rhizome.engine.graphs.graph import Graph

__all__ = ("render_report", "summary_rows", "write_report")


REPORT_FILE = "report.html"

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;color:#212529;max-width:980px;margin:24px auto;
padding:0 16px}
h1{font-size:22px;margin-bottom:2px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid
#dee2e6;padding-bottom:4px}.muted{color:#6c757d}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:14px 0}.card{border:1px solid #dee2e6;
border-radius:8px;padding:8px 14px;min-width:110px}.card b{display:block;font-size:20px}
table{border-collapse:collapse;margin:8px 0}td,th{padding:4px 10px;border-bottom:1px solid
#eee;text-align:left;vertical-align:top}th{background:#f8f9fa}td.num{text-align:right;
font-variant-numeric:tabular-nums}.up{color:#2b8a3e}.down{color:#c92a2a}
pre{background:#f8f9fa;padding:10px;overflow:auto;font-size:12px}svg{max-width:100%;height:auto}
"""


def _num(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _card(label: str, value: str) -> str:
    return f'<div class="card"><span class="muted">{escape(label)}</span><b>{value}</b></div>'


def _cards(info: RunInfo) -> str:
    score = _num(info.score)
    if info.before is not None and info.score is not None:
        delta = info.score - info.before
        cls = "up" if delta > 0 else "down" if delta < 0 else "muted"
        score = f'{_num(info.before)} → {score} <span class="{cls}">({delta:+.3f})</span>'
    cards = [_card("score", score)]
    if info.ci95 is not None:
        cards.append(_card("95% CI", f"{info.ci95[0]:.2f}–{info.ci95[1]:.2f}"))
    if info.n is not None:
        cards.append(_card("examples", str(info.n)))
    if info.trials:
        cards.append(_card("trials", str(info.trials)))
    cards.append(_card("LM calls", f"{info.calls:,.0f}"))
    cards.append(_card("tokens", f"{info.tokens:,.0f}"))
    if info.cost:
        cards.append(_card("cost", f"{info.cost:.4g}"))
    if info.wall_time is not None:
        cards.append(_card("time", f"{info.wall_time:,.1f} s"))
    return '<div class="cards">' + "".join(cards) + "</div>"


def _table(head: list[str], rows: list[list[str]], numeric: set[int] | None = None) -> str:
    numeric = numeric or set()
    out = ["<table><tr>" + "".join(f"<th>{escape(h)}</th>" for h in head) + "</tr>"]
    for row in rows:
        cells = "".join(
            f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>"
            for i, c in enumerate(row)
        )
        out.append(f"<tr>{cells}</tr>")
    out.append("</table>")
    return "\n".join(out)


def _progress(run_dir: Path) -> str:
    points, unit = trial_points(run_dir)
    if not points:
        return ""
    best = sorted(points, key=lambda p: (-p.score, p.x))[:10]
    spent = "{:,.0f}" if unit == "tokens" else "{:.4g}"
    rows = [[str(p.x), _num(p.score), spent.format(p.cost), escape(p.label[:200])] for p in best]
    return (
        "<h2>Progress</h2>"
        f'<p class="muted">Score of each of the {len(points)} trials, the best so far, and the '
        f"{'cost' if unit == 'cost' else 'tokens'} each trial spent, in the order the trials "
        "finished (# below is that position).</p>"
        + trial_chart(points, unit=unit)
        + "<h2>Best trials</h2>"
        + _table(["#", "score", unit, "what was tried"], rows, numeric={0, 1, 2})
    )


def _slices(run_dir: Path, info: RunInfo) -> str:
    before = read_run(run_dir / "before").slices if is_run_dir(run_dir / "before") else {}
    after = info.slices
    tags = sorted(set(before) | set(after))
    if not tags:
        return ""
    if before:
        rows = [[escape(t), _num(before.get(t)), _num(after.get(t))] for t in tags]
        return "<h2>Scores by slice</h2>" + _table(["slice", "before", "after"], rows, {1, 2})
    rows = [[escape(t), _num(after.get(t))] for t in tags]
    return "<h2>Scores by slice</h2>" + _table(["slice", "score"], rows, {1})


def _failures(run_dir: Path) -> str:
    failed = [r for r in read_jsonl(run_dir / "results.jsonl") if r.get("error")][:20]
    if not failed:
        return ""
    rows = [
        [str(r.get("index")), escape(str((r.get("error") or {}).get("message", ""))[:300])]
        for r in failed
    ]
    return "<h2>Failures</h2>" + _table(["example", "error"], rows, {0})


def _config(info: RunInfo) -> str:
    text = json.dumps(info.config, indent=2, ensure_ascii=False, default=str)
    return f"<h2>Settings</h2><pre>{escape(text)}</pre>"


def render_report(run_dir: Path, *, graph: Graph | None = None) -> str:
    """The report of ``run_dir`` as one HTML document."""
    info = read_run(run_dir)
    title = f"{info.kind} · {run_dir.name}"
    sections = [
        f"<h1>{escape(title)}</h1>",
        f'<p class="muted">{escape(str(run_dir))} · started {escape(info.started)} · '
        f"{escape(info.status)}</p>",
        _cards(info),
        _progress(run_dir),
        _slices(run_dir, info),
        _failures(run_dir / "after" if is_run_dir(run_dir / "after") else run_dir),
    ]
    if graph is not None:
        from rhizome.drawing import graph_svg

        sections.append(f"<h2>Program: {escape(graph.name)}</h2>" + graph_svg(graph))
    sections.append(_config(info))
    body = "\n".join(s for s in sections if s)
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{_CSS}</style></head>\n<body>\n{body}\n"
        "</body></html>\n"
    )


def write_report(run_dir: str | Path, *, graph: Graph | None = None) -> Path:
    """Write ``run_dir/report.html`` and return its path."""
    path = Path(run_dir)
    target = path / REPORT_FILE
    target.write_text(render_report(path, graph=graph), encoding="utf-8")
    return target


def summary_rows(info: RunInfo) -> dict[str, Any]:
    """The headline numbers of a run, for printing."""
    return {
        "score": info.score,
        "before": info.before,
        "calls": info.calls,
        "tokens": info.tokens,
        "cost": info.cost,
        "trials": info.trials,
    }
