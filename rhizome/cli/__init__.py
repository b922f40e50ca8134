"""The ``rhizome`` command line.

Sub-commands: ``run``, ``batch``, ``eval``, ``optimize``, ``serve``, ``runs``,
``inspect``, ``graph`` and ``demo``; each has ``--help`` with an example. A
failure prints one line and a hint on stderr and exits 1 (2 for a bad command
line), never a traceback; set ``RHIZOME_DEBUG=1`` to see the traceback.

Environment: ``RHIZOME_BASE_URL`` and ``RHIZOME_MODEL_NAME`` pick the default
OpenAI-compatible LM (``--base-url``/``--model``), ``OPENAI_API_KEY`` (or the
variable named by ``--api-key-env``) holds its key, ``RHIZOME_SERVE_TOKEN`` the
server's bearer token, ``RHIZOME_STATE_DIR`` where the last run's trace is kept.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from rhizome.engine.errors import RhizomeError

__all__ = ("build_parser", "main")


DEMO_HELP = """\
Run the main job on the embedded defaults: build a chromadb index of the bundled
two-hop corpus, evaluate a two-hop RAG graph on the dev split with the local
model, optimize it with BootstrapFewShot, evaluate again, save the optimized
program as JSON, and print a before/after table. No API key, no network.

example:
  rhizome demo
  rhizome demo --dev-size 20 --out /tmp/demo
"""


def _demo_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "demo",
        help="evaluate, optimize and re-evaluate a two-hop RAG graph on the local model",
        description=DEMO_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", type=Path, default=Path("rhizome-demo"), help="output directory")
    p.add_argument("--model", default=None, help="a GGUF file instead of the embedded model")
    p.add_argument("--dev-size", type=int, default=40, help="dev questions (0: all)")
    p.add_argument("--train-size", type=int, default=80, help="training questions")
    p.add_argument("--demos", type=int, default=3, help="bootstrapped demos per LM node")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    p.add_argument("--cache", action="store_true", help="use the persistent response cache")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from rhizome.demo import DemoOptions, run_demo

    run_demo(
        DemoOptions(
            out=args.out,
            model_path=args.model,
            dev_size=args.dev_size,
            train_size=args.train_size,
            demos=args.demos,
            concurrency=args.concurrency,
            cache=args.cache,
        )
    )
    return 0


EPILOG = """\
environment:
  RHIZOME_BASE_URL     default --base-url: an OpenAI-compatible API root (http://host:port/v1)
  RHIZOME_MODEL_NAME   default --model: the model name sent to that server
  OPENAI_API_KEY       its API key (another variable with --api-key-env)
  RHIZOME_SERVE_TOKEN  bearer token `rhizome serve` requires (another with --token-env)
  RHIZOME_STATE_DIR    where `rhizome run` keeps the last trace for `rhizome inspect`
  RHIZOME_DEBUG=1      show tracebacks instead of one-line errors

run `rhizome COMMAND --help` for each command's options and an example
"""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line and a hint."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        print(f"hint: run `{self.prog} --help` for usage and examples", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command."""
    from rhizome.cli import eval as cli_eval
    from rhizome.cli import run as cli_run
    from rhizome.cli import runs as cli_runs
    from rhizome.cli import serve as cli_serve

    parser = _Parser(
        prog="rhizome",
        description="Programs made of LM calls: run, evaluate, optimize, serve.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )
    cli_run.add_parsers(sub)
    cli_eval.add_parsers(sub)
    cli_serve.add_parsers(sub)
    cli_runs.add_parsers(sub)
    _demo_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: one clear line plus a hint on errors, never a traceback."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("rhizome: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if os.environ.get("RHIZOME_DEBUG"):
            raise
        _report(exc)
        return 1


def _report(exc: Exception) -> None:
    from rhizome.cli.common import CommandError

    message = str(exc).strip() or type(exc).__name__
    lines = message.splitlines()
    if isinstance(exc, RhizomeError | OSError):
        first = lines[0]
    else:
        first = f"unexpected {type(exc).__name__}: {lines[0]}"
    hint = exc.hint if isinstance(exc, CommandError) and exc.hint else None
    print(f"rhizome: error: {first}", file=sys.stderr)
    for line in lines[1:]:  # multi-line messages list the details (changed structure ...)
        print(f"  {line.strip()}", file=sys.stderr)
    if hint is None:
        hint = "run the command with --help for usage and examples"
        if not isinstance(exc, RhizomeError | OSError):
            hint = "set RHIZOME_DEBUG=1 to see the traceback"
    print(f"hint: {hint}", file=sys.stderr)
