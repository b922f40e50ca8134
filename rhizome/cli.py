"""The ``rhizome`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from rhizome.engine.errors import RhizomeError

DEMO_HELP = """\
Run the main job on the embedded defaults: build a chromadb index of the bundled
two-hop corpus, evaluate a two-hop RAG graph on the dev split with the local
model, optimize it with BootstrapFewShot, evaluate again, save the optimized
program as JSON, and print a before/after table. No API key, no network.

example:
  rhizome demo
  rhizome demo --dev-size 20 --out /tmp/demo
"""


def _demo_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo",
        help="evaluate, optimize and re-evaluate a two-hop RAG graph on the local model",
        description=DEMO_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", type=Path, default=Path("rhizome-demo"), help="output directory")
    p.add_argument("--model", default=None, help="a GGUF file instead of the embedded model")
    p.add_argument("--dev-size", type=int, default=40, help="dev questions (0: all)")
    p.add_argument("--train-size", type=int, default=40, help="training questions")
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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command."""
    parser = argparse.ArgumentParser(
        prog="rhizome", description="Programs made of LM calls: run, evaluate, optimize."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _demo_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: one clear line plus a hint on errors, never a traceback."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("rhizome: interrupted", file=sys.stderr)
        return 130
    except (RhizomeError, OSError) as exc:
        print(f"rhizome: error: {exc}", file=sys.stderr)
        print("hint: run with --help for usage and examples", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
