"""``rhizome runs`` (list and compare run records) and ``rhizome graph`` (draw a program)."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from rhizome.cli.common import RAW, CommandError, Sub, add_program, load_graph, print_json, table
from rhizome.runs import RunInfo, find_runs, is_run_dir, read_run

if TYPE_CHECKING:
    from rhizome.engine.graphs.graph import Graph

__all__ = ("add_parsers", "cmd_graph", "cmd_runs", "compare_table", "list_table")


FORMATS = ("mermaid", "svg", "png", "json")

RUNS_HELP = """\
List the run records (from eval and optimize) under the given folders, with score,
LM calls, tokens, cost and time; --compare puts runs side by side, slices included.

example:
  rhizome runs                       # everything under ./runs
  rhizome runs runs/qa --report      # also write report.html for each run
  rhizome runs --compare runs/qa/before runs/qa/after
"""

GRAPH_HELP = """\
Draw the program: Mermaid text (paste into any Mermaid viewer, GitHub renders it),
a standalone SVG drawn by rhizome, a PNG (needs mermaid-cli's `mmdc` or librsvg's
`rsvg-convert`), or the structure as JSON.

example:
  rhizome graph rhizome.examples:build_two_step
  rhizome graph rhizome.examples:build_two_step --format svg --out qa.svg
"""


def add_parsers(sub: Sub) -> None:
    """Register ``runs`` and ``graph``."""
    p = sub.add_parser(
        "runs", help="list and compare run records", description=RUNS_HELP, formatter_class=RAW
    )
    p.add_argument("paths", nargs="*", type=Path, metavar="PATH", help="run dirs or folders")
    p.add_argument("--compare", action="store_true", help="side by side (each PATH is a run)")
    p.add_argument("--report", action="store_true", help="write report.html in each run")
    p.add_argument("--json", action="store_true", help="print the runs as JSON")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("graph", help="draw a program", description=GRAPH_HELP, formatter_class=RAW)
    add_program(p)
    p.add_argument("-f", "--format", choices=FORMATS, default="mermaid", help="what to draw")
    p.add_argument("-o", "--out", type=Path, help="write to a file (needed for png)")
    p.set_defaults(func=cmd_graph)


# ---- runs --------------------------------------------------------------------------


def cmd_runs(args: argparse.Namespace) -> int:
    """``rhizome runs``."""
    roots = args.paths or [Path("runs") if Path("runs").is_dir() else Path(".")]
    if args.compare:
        for path in roots:
            if not is_run_dir(path):
                raise CommandError(
                    f"{path} is not a run directory (no run.json)",
                    hint="--compare takes run directories; list them with `rhizome runs FOLDER`",
                )
        dirs = list(roots)
    else:
        dirs = find_runs(roots)
    if not dirs:
        raise CommandError(
            f"no run records under {', '.join(map(str, roots))}",
            hint="eval --run-dir DIR and optimize write them",
        )
    runs = [read_run(d) for d in dirs]
    if args.report:
        _reports(dirs)
    if args.json:
        print_json([r.to_dict() for r in runs])
    elif args.compare:
        print(compare_table(runs))
    else:
        print(list_table(runs))
    return 0


def _reports(dirs: list[Path]) -> None:
    from rhizome.report import write_report

    for d in dirs:
        print(f"report: {write_report(d)}", file=sys.stderr)


def _n(value: float | None, spec: str = ".3f") -> str:
    return "–" if value is None else format(value, spec)


def _time(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds:,.1f}s"


def list_table(runs: list[RunInfo]) -> str:
    """One line per run."""
    head = ["run", "kind", "status", "score", "before", "calls", "tokens", "cost", "time"]
    rows = [head]
    for r in runs:
        rows.append(
            [
                str(r.path),
                r.kind,
                r.status,
                _n(r.score),
                _n(r.before),
                _n(r.calls, ",.0f"),
                _n(r.tokens, ",.0f"),
                _n(r.cost, ".4g"),
                _time(r.wall_time),
            ]
        )
    return table(rows, right=[False, False, False, *[True] * 6])


def compare_table(runs: list[RunInfo]) -> str:
    """Runs side by side: one column per run, one row per measure and per slice."""
    first = runs[0].score
    rows = [["", *[str(r.path) for r in runs]]]
    rows.append(["kind", *[r.kind for r in runs]])
    scores = []
    for r in runs:
        delta = ""
        if r is not runs[0] and r.score is not None and first is not None:
            delta = f" ({r.score - first:+.3f})"
        scores.append(_n(r.score) + delta)
    rows.append(["score", *scores])
    rows.append(["95% CI", *[f"{r.ci95[0]:.2f}–{r.ci95[1]:.2f}" if r.ci95 else "–" for r in runs]])
    rows.append(["examples", *[_n(r.n, "d") if r.n is not None else "–" for r in runs]])
    rows.append(["failures", *[str(r.failures) if r.failures is not None else "–" for r in runs]])
    rows.append(["LM calls", *[_n(r.calls, ",.0f") for r in runs]])
    rows.append(["tokens", *[_n(r.tokens, ",.0f") for r in runs]])
    rows.append(["cost", *[_n(r.cost, ".4g") for r in runs]])
    rows.append(["time", *[_time(r.wall_time) for r in runs]])
    if any(r.trials for r in runs):
        rows.append(["trials", *[str(r.trials) for r in runs]])
    for tag in sorted({t for r in runs for t in r.slices}):
        rows.append([f"slice {tag}", *[_n(r.slices.get(tag)) for r in runs]])
    return table(rows, right=[False, *[True] * len(runs)])


# ---- graph -------------------------------------------------------------------------


def cmd_graph(args: argparse.Namespace) -> int:
    """``rhizome graph``."""
    graph = load_graph(args)
    if args.format == "png":
        if args.out is None:
            raise CommandError("--format png needs --out FILE.png")
        _png(graph, args.out)
        print(f"wrote {args.out}", file=sys.stderr)
        return 0
    if args.format == "json":
        from rhizome.engine.graphs.saving import structure

        text = _json_text(structure(graph))
    elif args.format == "svg":
        from rhizome.drawing import graph_svg

        text = graph_svg(graph) + "\n"
    else:
        text = graph.to_mermaid()
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.write_text(text, encoding="utf-8")
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def _json_text(value: object) -> str:
    import json

    return json.dumps(value, indent=2, ensure_ascii=False) + "\n"


def _png(graph: Graph, out: Path) -> None:
    """Render with mermaid-cli's ``mmdc``, else rasterise rhizome's SVG with ``rsvg-convert``."""
    mmdc, rsvg = shutil.which("mmdc"), shutil.which("rsvg-convert")
    if not mmdc and not rsvg:
        raise CommandError(
            "no PNG renderer found (looked for mmdc and rsvg-convert)",
            hint="install mermaid-cli (npm i -g @mermaid-js/mermaid-cli) or librsvg, or use "
            "--format svg, which needs no renderer",
        )
    with tempfile.TemporaryDirectory() as tmp:
        if mmdc:
            source = Path(tmp) / "graph.mmd"
            source.write_text(graph.to_mermaid(), encoding="utf-8")
            _render([mmdc, "-i", str(source), "-o", str(out)])
        else:
            from rhizome.drawing import graph_svg

            source = Path(tmp) / "graph.svg"
            source.write_text(graph_svg(graph), encoding="utf-8")
            _render([str(rsvg), "-o", str(out), str(source)])


def _render(command: list[str]) -> None:
    try:
        subprocess.run(command, check=True, capture_output=True, timeout=120)
    except subprocess.CalledProcessError as exc:
        detail = exc.stderr.decode(errors="replace").strip().splitlines()
        raise CommandError(
            f"{Path(command[0]).name} failed: {detail[-1] if detail else exc}"
        ) from None
    except subprocess.TimeoutExpired:
        raise CommandError(f"{Path(command[0]).name} took over 120 s") from None
