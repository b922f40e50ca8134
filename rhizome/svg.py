"""An optimization's progress as an inline SVG chart (no renderer, no network).

:func:`trial_chart` draws an optimization's progress — each trial's score as a
point, the best score so far as a step line, and what each trial spent as bars
underneath. It returns an ``<svg>`` element to embed in HTML or save as a
``.svg`` file; hovering a mark shows its ``<title>``. Graph drawings live in
:mod:`rhizome.drawing`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from html import escape

from rhizome.runs import TrialPoint

__all__ = ("trial_chart",)


WIDTH = 760
LEFT, RIGHT, TOP = 56, 24, 28
SCORE_H, GAP, COST_H = 240, 44, 90


def _fmt(value: float) -> str:
    return f"{value:.1f}"


def _score_range(points: Sequence[TrialPoint]) -> tuple[float, float]:
    scores = [p.score for p in points]
    lo, hi = min(scores), max(scores)
    if 0.0 <= lo and hi <= 1.0:
        return 0.0, 1.0
    pad = (hi - lo) * 0.1 or 1.0
    return lo - pad, hi + pad


def _amount(value: float, unit: str) -> str:
    return f"{value:.4g}" if unit == "cost" else f"{value:,.0f} tokens"


def trial_chart(points: Sequence[TrialPoint], *, unit: str = "tokens") -> str:
    """Score per trial with the best so far, and cost per trial, as one SVG."""
    height = TOP + SCORE_H + GAP + COST_H + 34
    plot_w = WIDTH - LEFT - RIGHT
    n = len(points)

    def x_of(i: int) -> float:
        return LEFT + (plot_w / 2 if n == 1 else plot_w * i / (n - 1))

    lo, hi = _score_range(points) if points else (0.0, 1.0)

    def y_of(score: float) -> float:
        return TOP + SCORE_H * (1 - (score - lo) / (hi - lo))

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {WIDTH} {height}" '
        f'width="{WIDTH}" height="{height}" role="img" aria-label="score per trial">',
        _CHART_STYLE,
    ]
    parts += _score_axis(lo, hi, y_of)
    parts.append(_best_line(points, x_of, y_of))
    parts += [_point(p, x_of(i), y_of(p.score), unit) for i, p in enumerate(points)]
    parts += _cost_bars(points, x_of, unit)
    parts += _x_axis(n, x_of, height)
    parts.append(_legend(unit))
    parts.append("</svg>")
    return "\n".join(parts)


_CHART_STYLE = """<style>
.chart text{font:11px system-ui,sans-serif;fill:#444}
.chart .grid{stroke:#e6e6e6}
.chart .best{fill:none;stroke:#d9480f;stroke-width:2}
.chart .trial{fill:#1c7ed6;fill-opacity:.8}
.chart .full{fill:#2b8a3e}
.chart .cost{fill:#adb5bd}
</style>"""


def _score_axis(lo: float, hi: float, y_of: Callable[[float], float]) -> list[str]:
    parts = []
    for k in range(5):
        value = lo + (hi - lo) * k / 4
        y = y_of(value)
        parts.append(
            f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{_fmt(y)}" y2="{_fmt(y)}"/>'
        )
        parts.append(f'<text x="{LEFT - 6}" y="{_fmt(y + 4)}" text-anchor="end">{value:.2f}</text>')
    parts.append(f'<text x="{LEFT}" y="{TOP - 10}">score</text>')
    return parts


def _best_line(
    points: Sequence[TrialPoint], x_of: Callable[[int], float], y_of: Callable[[float], float]
) -> str:
    if not points:
        return ""
    coords: list[str] = []
    best = -math.inf
    for i, p in enumerate(points):
        x = x_of(i)
        if coords:
            coords.append(f"{_fmt(x)},{_fmt(y_of(best))}")
        best = max(best, p.score)
        coords.append(f"{_fmt(x)},{_fmt(y_of(best))}")
    return (
        f'<polyline class="best" points="{" ".join(coords)}"><title>best so far</title></polyline>'
    )


def _point(p: TrialPoint, x: float, y: float, unit: str) -> str:
    kind = "full evaluation" if p.full else f"trial {p.x}"
    title = escape(f"{kind}: score {p.score:.3f}, {_amount(p.cost, unit)}; {p.label}")
    if p.full:
        d = f"M{_fmt(x)},{_fmt(y - 6)} l6,6 l-6,6 l-6,-6 z"
        return f'<path class="point full" d="{d}"><title>{title}</title></path>'
    return (
        f'<circle class="point trial" cx="{_fmt(x)}" cy="{_fmt(y)}" r="4.5">'
        f"<title>{title}</title></circle>"
    )


def _cost_bars(points: Sequence[TrialPoint], x_of: Callable[[int], float], unit: str) -> list[str]:
    base = TOP + SCORE_H + GAP + COST_H
    top = max((p.cost for p in points), default=0.0) or 1.0
    slot = (WIDTH - LEFT - RIGHT) / max(len(points), 1)
    width = max(2.0, min(18.0, slot * 0.6))
    label = "cost per trial" if unit == "cost" else "tokens per trial"
    parts = [f'<text x="{LEFT}" y="{base - COST_H - 8}">{label} (max {_amount(top, unit)})</text>']
    parts.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{base}" y2="{base}"/>')
    for i, p in enumerate(points):
        h = COST_H * p.cost / top
        x = x_of(i) - width / 2
        parts.append(
            f'<rect class="cost bar" x="{_fmt(x)}" y="{_fmt(base - h)}" width="{_fmt(width)}" '
            f'height="{_fmt(h)}"><title>{escape(_amount(p.cost, unit))}</title></rect>'
        )
    return parts


def _x_axis(n: int, x_of: Callable[[int], float], height: int) -> list[str]:
    step = max(1, math.ceil(n / 12))
    y = height - 16
    parts = [
        f'<text x="{_fmt(x_of(i))}" y="{y}" text-anchor="middle">{i}</text>'
        for i in range(0, n, step)
    ]
    axis = "trials, in the order they finished"
    parts.append(f'<text x="{WIDTH - RIGHT}" y="{height - 2}" text-anchor="end">{axis}</text>')
    return parts


def _legend(unit: str) -> str:
    x = WIDTH - RIGHT - 330
    return (
        f'<g transform="translate({x},{TOP - 18})">'
        '<circle class="trial" cx="0" cy="-4" r="4"/><text x="8" y="0">trial</text>'
        '<path class="full" d="M52,-10 l6,6 l-6,6 l-6,-6 z"/><text x="62" y="0">full eval</text>'
        '<line class="best" x1="128" x2="148" y1="-4" y2="-4"/>'
        '<text x="153" y="0">best so far</text>'
        f'<rect class="cost" x="228" y="-9" width="9" height="9"/><text x="241" y="0">{unit}</text>'
        "</g>"
    )
