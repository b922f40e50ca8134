"""``--ray [ADDRESS]`` for ``rhizome batch`` and ``rhizome eval``: the same commands on Ray.

With ``--ray`` alone the command starts (or joins) a local Ray instance; with an
address (``auto``, ``HOST:6379`` or ``ray://HOST:10001``) it joins that
cluster. Workers rebuild the PROGRAM from its ``MODULE:FACTORY`` name and the
``--params`` JSON, and the LM from ``--base-url``/``--model``; the API key
reaches them through the variable ``--api-key-env`` names.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rhizome.cli.common import CommandError, open_lm, read_examples, require_lm
from rhizome.cli.results import ResultsFile, journal_dir
from rhizome.engine.client.protocol import LM
from rhizome.engine.errors import ConfigError
from rhizome.engine.graphs.graph import Graph
from rhizome.engine.trace import jsonable

__all__ = ("LOCAL", "add_ray", "batch_on_ray", "check_ray_args", "ray_executor")

LOCAL = "local"
"""The value of ``--ray`` given without an address: a local Ray instance."""


def add_ray(parser: argparse.ArgumentParser) -> None:
    """``--ray [ADDRESS]`` and ``--actors``."""
    group = parser.add_argument_group("Ray (pip install 'rhizome[ray]')")
    group.add_argument(
        "--ray",
        nargs="?",
        const=LOCAL,
        metavar="ADDRESS",
        help="run on Ray: a local instance, or the cluster at ADDRESS (auto, ray://host:10001)",
    )
    group.add_argument(
        "--actors", type=int, default=2, help="with --ray: worker actors (one LM client each)"
    )


def _options(args: argparse.Namespace) -> Any:
    from rhizome.scale import RayOptions

    address = None if args.ray == LOCAL else args.ray
    try:
        return RayOptions(address=address, actors=args.actors, concurrency=args.concurrency)
    except ConfigError as exc:
        raise CommandError(str(exc), hint="--actors and --concurrency take numbers >= 1") from None


def check_ray_args(args: argparse.Namespace) -> None:
    """Refuse ``--local`` with a remote ``--ray ADDRESS`` before anything starts.

    The embedded model serves on this machine's loopback address: the workers of
    a local Ray instance reach it, those of a cluster elsewhere cannot.
    """
    ray = getattr(args, "ray", None)
    if ray is not None and ray != LOCAL and args.local:
        raise CommandError(
            f"--local cannot be used with --ray {ray}: the embedded model serves on this "
            "machine's 127.0.0.1, which workers on other machines cannot reach",
            hint="use --ray alone (a local Ray instance), or serve a model over HTTP and "
            "pass --base-url and --model",
        )


@contextlib.contextmanager
def ray_executor(args: argparse.Namespace, lm: LM | None) -> Iterator[Any]:
    """A Ray actor pool for ``rhizome eval --ray``, or None without ``--ray``."""
    if getattr(args, "ray", None) is None:
        yield None
        return
    check_ray_args(args)
    from rhizome.scale import RayExecutor

    with RayExecutor(args.program, lm=lm, options=_options(args)) as executor:
        yield executor


def batch_on_ray(args: argparse.Namespace, graph: Graph) -> dict[str, int]:
    """``rhizome batch --ray``: the batch on a Ray cluster; the counts of the summary line."""
    from rhizome.scale import ray_batch

    check_ray_args(args)
    examples = read_examples(args.data)
    names = list(graph.inputs)
    journal = journal_dir(args.out)
    if journal is not None and args.overwrite:
        shutil.rmtree(journal, ignore_errors=True)
    with open_lm(args) as lm:
        require_lm(graph, lm)
        try:
            rows = ray_batch(
                args.program,
                [dict(e) for e in examples],
                parameters=args.params,
                lm=lm,
                options=_options(args),
                run_dir=journal,
                progress=False if args.quiet else None,
            )
        except ConfigError as exc:
            raise CommandError(
                str(exc), hint="use a new --out, or --overwrite to start over"
            ) from None
    return _write(args.out, rows, [jsonable(e.inputs(names)) for e in examples])


def _write(out: Path | None, rows: list[dict[str, Any]], inputs: list[Any]) -> dict[str, int]:
    results = ResultsFile(out)
    counts = {"ran": 0, "ok": 0, "failed": 0, "skipped": 0}
    for row in rows:
        index = row["index"]
        results.write({**row, "inputs": inputs[index]})
        if row["node"] is None:  # read back from the journal
            counts["skipped"] += 1
            continue
        counts["ran"] += 1
        counts["ok" if row["error"] is None else "failed"] += 1
    results.finish()
    return counts
