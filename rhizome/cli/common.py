"""What the ``rhizome`` sub-commands share: the LM options, the program, data files, output.

LM selection, in order: ``--local`` (the embedded model), else ``--base-url``
and ``--model`` (defaulting to ``$RHIZOME_BASE_URL`` and ``$RHIZOME_MODEL_NAME``)
for any OpenAI-compatible server, with the API key read from the variable
named by ``--api-key-env`` (``OPENAI_API_KEY``). With none of these the
program's nodes must be bound to their own LMs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rhizome.engine.errors import ConfigError
from rhizome.engine.example import Example
from rhizome.engine.trace import jsonable
from rhizome.telemetry import EXPORTERS, Telemetry, configure

if TYPE_CHECKING:
    from rhizome.engine.client.protocol import LM
    from rhizome.engine.graphs.graph import Graph
    from rhizome.optimizers.metrics import Metric

__all__ = (
    "RAW",
    "CommandError",
    "add_lm",
    "add_otel",
    "add_program",
    "format_value",
    "last_trace_path",
    "load_graph",
    "open_lm",
    "open_telemetry",
    "parse_inputs",
    "parse_metric",
    "positive",
    "print_json",
    "read_examples",
    "require_lm",
    "state_dir",
    "table",
)


LM_HINT = (
    "pass --base-url URL --model NAME (or set RHIZOME_BASE_URL and RHIZOME_MODEL_NAME) "
    "for an OpenAI-compatible server, or --local for the embedded model"
)
METRICS = ("exact_match", "token_f1", "numeric_match", "answer_in_passages", "retrieval_recall")

# Shorthands every command module uses to register its sub-parsers.
if TYPE_CHECKING:
    Sub = argparse._SubParsersAction[Any]
else:  # the class takes no type arguments at run time on Python 3.11
    Sub = argparse._SubParsersAction
RAW = argparse.RawDescriptionHelpFormatter


class CommandError(ConfigError):
    """A problem with what the command was asked to do, with a hint on how to fix it."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


def add_program(parser: argparse.ArgumentParser) -> None:
    """The PROGRAM argument and ``--params``."""
    parser.add_argument(
        "program",
        metavar="PROGRAM",
        help="MODULE:FACTORY returning a Graph, e.g. rhizome.examples:build or file.py:build",
    )
    parser.add_argument(
        "-p", "--params", type=Path, help="saved parameters (JSON from optimize or Graph.save)"
    )


def add_lm(parser: argparse.ArgumentParser) -> None:
    """The options choosing the default LM."""
    group = parser.add_argument_group("LM (default for nodes not bound to one)")
    group.add_argument("--base-url", help="OpenAI-compatible API root [$RHIZOME_BASE_URL]")
    group.add_argument("--model", help="model name sent to the server [$RHIZOME_MODEL_NAME]")
    group.add_argument(
        "--api-key-env", default="OPENAI_API_KEY", help="variable holding the API key"
    )
    group.add_argument("--local", action="store_true", help="use the embedded local model")
    group.add_argument("--cache", action="store_true", help="use the persistent response cache")
    group.add_argument(
        "--max-concurrency", type=int, default=32, help="requests in flight to the LM"
    )


def add_otel(parser: argparse.ArgumentParser) -> None:
    """``--otel``: export OpenTelemetry spans for runs, nodes and LM calls."""
    parser.add_argument(
        "--otel",
        choices=EXPORTERS,
        help="export spans: console (stderr) or otlp (OTEL_EXPORTER_OTLP_ENDPOINT)",
    )


def load_graph(args: argparse.Namespace) -> Graph:
    """The program named on the command line, with its saved parameters loaded."""
    from rhizome.engine.graphs.program import load_program

    return load_program(args.program, args.params)


@contextlib.contextmanager
def open_lm(args: argparse.Namespace) -> Iterator[LM | None]:
    """The LM the options ask for (started and stopped here for ``--local``), or None."""
    cache: Any = "default" if args.cache else None
    if args.local:
        from rhizome.tools.embedded.lm import local_lm

        with local_lm(n_parallel=min(args.max_concurrency, 4), cache=cache) as lm:
            yield lm
        return
    base_url = args.base_url or os.environ.get("RHIZOME_BASE_URL")
    model = args.model or os.environ.get("RHIZOME_MODEL_NAME")
    if not base_url and not model:
        yield None
        return
    if not base_url or not model:
        missing = "--base-url (or RHIZOME_BASE_URL)" if not base_url else "--model"
        raise CommandError(
            f"an LM needs both a base URL and a model; {missing} is not set", hint=LM_HINT
        )
    from rhizome.engine.client.openai import OpenAILM

    yield OpenAILM(
        model,
        base_url=base_url,
        api_key_env=args.api_key_env,
        cache=cache,
        max_concurrency=args.max_concurrency,
    )


def require_lm(graph: Graph, lm: LM | None) -> None:
    """Fail early when LM nodes have no LM to call."""
    if lm is not None:
        return
    unbound = [path for path, p in graph.named_predictors() if p.lm is None]
    if unbound:
        raise CommandError(
            f"the program's LM node(s) {', '.join(unbound)} have no LM", hint=LM_HINT
        )


@contextlib.contextmanager
def open_telemetry(args: argparse.Namespace) -> Iterator[Telemetry]:
    """Telemetry for ``--otel`` (flushed at the end), else spans to the global provider."""
    exporter = getattr(args, "otel", None)
    if exporter is None:
        yield Telemetry()
        return
    provider = configure(exporter)
    try:
        yield Telemetry(tracer_provider=provider)
    finally:
        provider.shutdown()


def parse_inputs(text: str) -> dict[str, Any]:
    """``--input``: a JSON object, ``@file.json``, or ``-`` for stdin."""
    if text == "-":
        text = sys.stdin.read()
    elif text.startswith("@"):
        text = Path(text[1:]).read_text(encoding="utf-8")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CommandError(
            f"--input is not valid JSON ({exc.msg} at column {exc.colno})",
            hint='quote it for the shell: --input \'{"question": "..."}\'',
        ) from None
    if not isinstance(value, dict):
        raise CommandError(
            f"--input must be a JSON object, got {type(value).__name__}",
            hint='e.g. --input \'{"question": "..."}\'',
        )
    return value


def read_examples(path: Path, *, tag_field: str | None = None) -> list[Example]:
    """Examples from a JSONL file: one object per line; tags from ``tag_field``.

    A line's ``tag_field`` value (a string or list of strings) becomes the
    example's tags, which slice evaluation scores.
    """
    if not path.is_file():
        raise CommandError(f"no data file at {str(path)!r}", hint="data files are JSONL")
    examples = []
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CommandError(
                    f"{path}:{number} is not valid JSON ({exc.msg})",
                    hint="a data file holds one JSON object per line (JSONL)",
                ) from None
            if not isinstance(row, dict):
                raise CommandError(f"{path}:{number} must be a JSON object")
            examples.append(Example(row, tags=_tags(row.get(tag_field) if tag_field else None)))
    if not examples:
        raise CommandError(f"{path} holds no examples")
    return examples


def _tags(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, list):
        return tuple(str(v) for v in value)
    return (str(value),)


def parse_metric(spec: str) -> Metric:
    """``--metric``: ``exact_match``, ``token_f1:answer``, or ``module:function``."""
    from rhizome.optimizers import metrics

    name, _, field = spec.partition(":")
    if name in METRICS:
        factory = getattr(metrics, name)
        return factory(field) if field else factory()  # type: ignore[no-any-return]
    if field:
        from rhizome.engine.graphs.program import import_module

        module = import_module(name)
        fn = getattr(module, field, None)
        if callable(fn):
            return fn  # type: ignore[no-any-return]
        raise CommandError(f"module {name!r} has no function {field!r}")
    raise CommandError(
        f"unknown metric {spec!r}; built in: {', '.join(METRICS)} (optionally NAME:FIELD), "
        "or MODULE:FUNCTION taking (example, prediction, trace)"
    )


def print_json(value: Any) -> None:
    """Write ``value`` as indented JSON on stdout."""
    print(json.dumps(jsonable(value), indent=2, ensure_ascii=False))


def format_value(value: Any) -> str:
    """A field value as one readable string."""
    return value if isinstance(value, str) else json.dumps(jsonable(value), ensure_ascii=False)


def state_dir() -> Path:
    """Where the CLI keeps the last run's trace: ``$RHIZOME_STATE_DIR`` or the user state dir."""
    import platformdirs

    return Path(os.environ.get("RHIZOME_STATE_DIR") or platformdirs.user_state_dir("rhizome"))


def last_trace_path() -> Path:
    """The file ``rhizome run`` writes its trace to, for ``rhizome inspect``."""
    return state_dir() / "last-trace.json"


def positive(text: str) -> int:
    """An argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def table(rows: Sequence[Sequence[str]], *, right: Sequence[bool] | None = None) -> str:
    """Rows of cells as aligned text; the first row is the header."""
    if not rows:
        return ""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    align = right or [False] * len(widths)
    lines = []
    for n, row in enumerate(rows):
        cells = [
            c.rjust(w) if a else c.ljust(w) for c, w, a in zip(row, widths, align, strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
