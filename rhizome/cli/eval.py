"""``rhizome eval`` and ``rhizome optimize``."""

from __future__ import annotations

import argparse
import functools
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from rhizome.cli.common import (
    RAW,
    CommandError,
    Sub,
    add_lm,
    add_otel,
    add_program,
    load_graph,
    open_lm,
    open_telemetry,
    parse_metric,
    positive,
    print_json,
    read_examples,
    require_lm,
    table,
)
from rhizome.cli.scale import add_ray, check_ray_args, ray_executor
from rhizome.optimizers.evaluate import Evaluate, EvaluationResult
from rhizome.report import write_report
from rhizome.telemetry import request_models

if TYPE_CHECKING:
    from rhizome.engine.client.protocol import LM
    from rhizome.engine.example import Example
    from rhizome.engine.graphs.graph import Graph
    from rhizome.optimizers.base import Optimizer
    from rhizome.optimizers.metrics import Metric

__all__ = ("add_parsers", "cmd_eval", "cmd_optimize")


OPTIMIZERS = ("bootstrap", "labeled", "random", "joint", "copro", "reflect")

EVAL_HELP = """\
Score the program on a JSONL dev set with a metric: the mean score with a 95%
interval, failures, LM calls and time, and per-slice scores (--tag-field).

metrics: exact_match, token_f1, numeric_match, answer_in_passages, retrieval_recall,
each with an optional :FIELD (exact_match:answer; retrieval_recall:supporting names the
field listing supporting titles), or MODULE:FUNCTION(example, prediction, trace).

example:
  rhizome eval rhizome.examples:build dev.jsonl --metric exact_match:answer --run-dir runs/qa-eval
  rhizome eval rhizome.examples:build dev.jsonl -p program.json --json
  rhizome eval myapp:build dev.jsonl --base-url http://host:8000/v1 --model m --ray auto
"""

OPTIMIZE_HELP = """\
Tune the program's instructions and demos on a JSONL trainset, score it before and
after on the dev set (or the trainset), and write the optimized parameters, a run
directory (run.json, trials.jsonl, before/, after/) and report.html with a chart of
the score per trial.

optimizers:
  bootstrap  demos from the program's own successful runs (BootstrapFewShot)
  labeled    demos copied from the trainset (LabeledFewShot)
  random     several bootstrapped candidates, best kept (RandomSearch; --trials)
  joint      instructions and demos searched together with TPE (JointSearch; --trials,
             --propose to let the LM write candidate instructions)
  copro      instructions rewritten by the LM, coordinate ascent (COPRO)
  reflect    instructions rewritten by the LM from the metric's feedback on failing
             runs, a Pareto pool of programs (Reflect, GEPA-style; --trials steps)

example:
  rhizome optimize rhizome.examples:build train.jsonl --dev dev.jsonl --metric exact_match \\
      --optimizer random --trials 6 --run-dir runs/qa --out qa.json
  rhizome serve rhizome.examples:build -p qa.json
"""


def add_parsers(sub: Sub) -> None:
    """Register ``eval`` and ``optimize``."""
    p = sub.add_parser(
        "eval", help="score a program on a dev set", description=EVAL_HELP, formatter_class=RAW
    )
    add_program(p)
    p.add_argument("data", type=Path, metavar="DEV.jsonl", help="examples with inputs and labels")
    _add_scoring(p)
    p.add_argument("--run-dir", type=Path, help="write a run record (and report.html) here")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_lm(p)
    add_otel(p)
    add_ray(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "optimize",
        help="tune a program's prompts and demos",
        description=OPTIMIZE_HELP,
        formatter_class=RAW,
    )
    add_program(p)
    p.add_argument("data", type=Path, metavar="TRAIN.jsonl", help="training examples")
    p.add_argument("--dev", type=Path, help="dev set to score on (default: the trainset)")
    _add_scoring(p)
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="bootstrap", help="how to tune")
    trials_help = "random: candidates; joint: trials; reflect: steps"
    p.add_argument("--trials", type=positive, default=8, help=trials_help)
    p.add_argument("--demos", type=int, default=3, help="bootstrapped demos per LM node")
    p.add_argument(
        "--labeled",
        type=int,
        default=0,
        help="labelled demos fill each node's demos up to this many (labeled: 4 demos)",
    )
    p.add_argument("--propose", action="store_true", help="joint: LM proposes instructions")
    p.add_argument(
        "--budget-calls", type=positive, help="joint, reflect: at most this many LM calls in all"
    )
    p.add_argument("--seed", type=int, default=0, help="makes the run repeatable")
    p.add_argument("--run-dir", type=Path, help="run directory (default: runs/NAME-OPTIMIZER-TIME)")
    p.add_argument("-o", "--out", type=Path, help="optimized program JSON (default: in run dir)")
    p.add_argument("--no-eval", action="store_true", help="skip the before/after evaluations")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_lm(p)
    p.set_defaults(func=cmd_optimize)


def _add_scoring(p: argparse.ArgumentParser) -> None:
    p.add_argument("-m", "--metric", default="exact_match", help="metric (default exact_match)")
    p.add_argument("--threshold", type=float, default=1.0, help="score that counts as a pass")
    p.add_argument("--tag-field", help="field whose value slices the scores (e.g. type)")
    p.add_argument("-c", "--concurrency", type=positive, default=8, help="examples in flight")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def _progress(args: argparse.Namespace) -> bool | None:
    return False if args.quiet else None


# ---- eval --------------------------------------------------------------------------


def cmd_eval(args: argparse.Namespace) -> int:
    """``rhizome eval``."""
    check_ray_args(args)
    graph = load_graph(args)
    metric = parse_metric(args.metric)
    dev = read_examples(args.data, tag_field=args.tag_field)
    with open_lm(args) as lm, open_telemetry(args) as telemetry:
        require_lm(graph, lm)
        with ray_executor(args, lm) as executor:
            run = functools.partial(_evaluate, executor=executor)
            result = anyio.run(run, graph, dev, metric, lm, args, args.run_dir)
        models = request_models(graph, lm)
        for example in result.results:
            if example.trace is not None:
                telemetry.emit(graph.name, example.trace, request_models=models)
    if args.run_dir is not None:
        write_report(args.run_dir, graph=graph)
    if args.json:
        print_json(result.summary())
    else:
        print(result.format())
        if args.run_dir is not None:
            print(f"run record: {args.run_dir}")
    return 0


async def _evaluate(
    graph: Graph,
    dev: list[Example],
    metric: Metric,
    lm: LM | None,
    args: argparse.Namespace,
    run_dir: Path | None,
    executor: Any = None,
) -> EvaluationResult:
    return await Evaluate(
        graph,
        dev,
        metric,
        concurrency=args.concurrency,
        threshold=args.threshold,
        lm=lm,
        progress=_progress(args),
        run_dir=run_dir,
        executor=executor,
    ).run()


# ---- optimize ----------------------------------------------------------------------


def cmd_optimize(args: argparse.Namespace) -> int:
    """``rhizome optimize``."""
    graph = load_graph(args)
    metric = parse_metric(args.metric)
    train = read_examples(args.data, tag_field=args.tag_field)
    dev = read_examples(args.dev, tag_field=args.tag_field) if args.dev else None
    run_dir = args.run_dir or Path("runs") / f"{graph.name}-{args.optimizer}-{_stamp()}"
    _check_run_dir(run_dir, args.optimizer)
    out = args.out or run_dir / "program.json"
    with open_lm(args) as lm:
        require_lm(graph, lm)
        writes_instructions = args.optimizer in ("copro", "reflect") or (
            args.optimizer == "joint" and args.propose
        )
        if writes_instructions and lm is None:
            raise CommandError(
                f"--optimizer {args.optimizer} needs an LM to write instructions",
                hint="pass --base-url and --model, or --local",
            )
        scores = anyio.run(_optimize, graph, train, dev, metric, lm, args, run_dir, out)
    report = write_report(run_dir, graph=graph)
    _print_optimize(args, scores, run_dir, out, report)
    return 0


def _check_run_dir(run_dir: Path, optimizer: str) -> None:
    """Refuse to mix two runs in one directory; a JointSearch or Reflect run resumes instead."""
    if not (run_dir / "run.json").exists():
        return
    if optimizer not in ("joint", "reflect"):
        raise CommandError(
            f"{run_dir} already holds a run record",
            hint="pass a new --run-dir (only --optimizer joint or reflect resumes a run)",
        )


def _stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


async def _optimize(
    graph: Graph,
    train: list[Example],
    dev: list[Example] | None,
    metric: Metric,
    lm: LM | None,
    args: argparse.Namespace,
    run_dir: Path,
    out: Path,
) -> dict[str, float | None]:
    valset = dev or train
    scores: dict[str, float | None] = {"before": None, "after": None}
    if not args.no_eval:
        scores["before"] = _finished_score(run_dir / "before")
        if scores["before"] is None:
            _say(args, f"evaluating the program as given on {len(valset)} examples")
            before = await _evaluate(graph, valset, metric, lm, args, run_dir / "before")
            scores["before"] = before.score
    _say(args, f"optimizing with {args.optimizer} on {len(train)} examples")
    optimizer = _optimizer(args, metric, lm, dev, run_dir)
    optimized = await optimizer.optimize(graph, train)
    if args.optimizer == "labeled":
        _record_labeled(run_dir, args)
    out.parent.mkdir(parents=True, exist_ok=True)
    optimized.save(out)
    if not args.no_eval:
        _say(args, "evaluating the optimized program")
        if (run_dir / "after").is_dir():  # left by an interrupted or resumed run: score afresh
            shutil.rmtree(run_dir / "after")
        after = await _evaluate(optimized, valset, metric, lm, args, run_dir / "after")
        scores["after"] = after.score
    return scores


def _finished_score(run_dir: Path) -> float | None:
    """The score of a finished evaluation already in ``run_dir`` (a resumed run), else None."""
    from rhizome.runs import is_run_dir, read_run

    if not is_run_dir(run_dir):
        return None
    info = read_run(run_dir)
    if info.status != "finished":
        shutil.rmtree(run_dir)
        return None
    return info.score


def _say(args: argparse.Namespace, message: str) -> None:
    """A progress line on stderr (unless ``--quiet``)."""
    if not args.quiet:
        print(f"[rhizome optimize {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr)


def _optimizer(
    args: argparse.Namespace,
    metric: Metric,
    lm: LM | None,
    dev: list[Example] | None,
    run_dir: Path,
) -> Optimizer:
    from rhizome.optimizers import (
        bootstrap,
        joint,
        labeled,
        propose,
        random_search,
        reflect,
        trials,
    )

    common: dict[str, Any] = {"concurrency": args.concurrency, "lm": lm, "run_dir": run_dir}
    common["threshold"] = args.threshold
    if args.optimizer == "labeled":
        return labeled.LabeledFewShot(args.labeled or 4, seed=args.seed)
    if args.optimizer == "bootstrap":
        return bootstrap.BootstrapFewShot(
            metric,
            max_bootstrapped_demos=args.demos,
            max_labeled_demos=args.labeled,
            seed=args.seed,
            progress=_progress(args),
            **common,
        )
    if args.optimizer == "random":
        return random_search.RandomSearch(
            metric,
            num_candidates=max(args.trials - 3, 0),
            max_bootstrapped_demos=args.demos,
            max_labeled_demos=args.labeled,
            valset=dev,
            seed=args.seed,
            **common,
        )
    if args.optimizer == "copro":
        assert lm is not None  # checked by cmd_optimize
        return propose.COPRO(metric, prompt_lm=lm, valset=dev, seed=args.seed, **common)
    budget = trials.Budget(calls=args.budget_calls) if args.budget_calls else None
    if args.optimizer == "reflect":
        return reflect.Reflect(
            metric,
            reflection_lm=lm,
            max_iterations=args.trials,
            valset=dev,
            budget=budget,
            seed=args.seed,
            **common,
        )
    return joint.JointSearch(
        metric,
        num_trials=args.trials,
        prompt_lm=lm if args.propose else None,
        max_bootstrapped_demos=args.demos,
        max_labeled_demos=args.labeled,
        valset=dev,
        budget=budget,
        seed=args.seed,
        **common,
    )


def _record_labeled(run_dir: Path, args: argparse.Namespace) -> None:
    """LabeledFewShot keeps no run record of its own; write one so `rhizome runs` sees it."""
    from rhizome.optimizers.records import RunRecorder

    config = {"optimizer": "labeled", "k": args.labeled or 4, "seed": args.seed}
    RunRecorder(run_dir, kind="labeled", config=config).finish({})


def _print_optimize(
    args: argparse.Namespace,
    scores: dict[str, float | None],
    run_dir: Path,
    out: Path,
    report: Path,
) -> None:
    summary = {**scores, "program": str(out), "run_dir": str(run_dir), "report": str(report)}
    if args.json:
        print_json(summary)
        return
    if scores["before"] is not None:
        rows = [["", "score"], ["before", f"{scores['before']:.3f}"]]
        rows.append(["after", f"{scores['after']:.3f}"])
        print(table(rows, right=[False, True]))
    print(f"optimized program: {out}")
    print(f"run record: {run_dir}")
    print(f"report: {report}")
    print(f"serve it: rhizome serve {args.program} --params {out}")
