"""``rhizome serve``: the program behind an HTTP API (see :mod:`rhizome.serving.app`)."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio

from rhizome.cli.common import (
    CommandError,
    Sub,
    add_lm,
    add_otel,
    add_program,
    load_graph,
    open_lm,
    open_telemetry,
    positive,
    require_lm,
)

__all__ = ("add_parsers", "cmd_serve")


SERVE_HELP = """\
Serve the program over HTTP (FastAPI + uvicorn):

  POST /v1/predict   {"inputs": {...}}        -> {"outputs": {...}, "usage": {...}}
  POST /v1/batch     {"examples": [{...}]}    -> NDJSON lines as each example finishes
  POST /v1/runs      {"inputs": {...}}        -> {"run_id", "status": "finished" | "waiting", ...}
  POST /v1/runs/ID/resume {"answer": ...}     -> the waiting run continues (same reply)
  GET  /v1/runs/ID   the run's status, question or outputs (--checkpoints FILE keeps them)
  GET  /healthz      liveness (no auth)
  GET  /metrics      Prometheus text: requests, latency, runs, LM calls, tokens, errors
  GET  /docs         OpenAPI docs, bodies typed by the program's inputs

With --mcp the program is served as a Model Context Protocol server instead,
one tool named after the program and typed by its inputs: over stdin/stdout
(--mcp, or --mcp stdio: an MCP client starts this command) or streamable HTTP
at /mcp (--mcp http, on --host/--port, behind the same token). Needs
pip install 'rhizome[serve,mcp]'.

Set a bearer token in $RHIZOME_SERVE_TOKEN (or the variable named by --token-env)
to require `Authorization: Bearer <token>`. Ctrl-C or SIGTERM stops accepting
connections and finishes the requests in flight before exiting.

example:
  export RHIZOME_SERVE_TOKEN=$(openssl rand -hex 16)
  rhizome serve rhizome.examples:build -p runs/qa/program.json --port 8000 \\
      --base-url http://localhost:8080/v1 --model my-model
  curl -H "Authorization: Bearer $RHIZOME_SERVE_TOKEN" localhost:8000/v1/predict \\
      -d '{"inputs": {"question": "What is the capital of France?"}}'
  rhizome serve rhizome.examples:build -p runs/qa/program.json --mcp \\
      --base-url http://localhost:8080/v1 --model my-model
"""


def add_parsers(sub: Sub) -> None:
    """Register ``serve``."""
    p = sub.add_parser(
        "serve",
        help="serve a program over HTTP",
        description=SERVE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_program(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (0: any free port)")
    p.add_argument("--token-env", default="RHIZOME_SERVE_TOKEN", help="variable with the token")
    p.add_argument("-c", "--concurrency", type=positive, default=16, help="graph runs at once")
    p.add_argument("--max-queue", type=int, default=256, help="predicts waiting before 503")
    p.add_argument("--max-body-bytes", type=positive, default=1_048_576, help="413 above this")
    p.add_argument("--max-batch", type=positive, default=1000, help="examples per batch request")
    p.add_argument("--timeout", type=float, help="seconds one run may take (504 after)")
    p.add_argument(
        "--checkpoints", help="SQLite file keeping /v1/runs checkpoints (default: in memory)"
    )
    p.add_argument(
        "--graceful-timeout",
        type=float,
        default=30.0,
        help="seconds to finish in-flight requests on shutdown",
    )
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.add_argument(
        "--mcp",
        nargs="?",
        const="stdio",
        choices=("stdio", "http"),
        help="serve as an MCP server: over stdio (default) or streamable HTTP at /mcp",
    )
    add_lm(p)
    add_otel(p)
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    """``rhizome serve``."""
    if args.mcp:
        return _serve_mcp(args)
    try:
        from rhizome.serving.app import create_app
    except ImportError as exc:
        raise CommandError(
            f"serving needs FastAPI and uvicorn ({exc.name} is missing)",
            hint="pip install 'rhizome[serve]'",
        ) from None
    graph = load_graph(args)
    token = os.environ.get(args.token_env) or None
    _warn_exposure(args.host, token)
    config = _config(args, token)
    with open_lm(args) as lm, open_telemetry(args) as telemetry:
        require_lm(graph, lm)
        app = create_app(graph, lm=lm, config=config, telemetry=telemetry)
        auth = f"bearer token from ${args.token_env}" if token else "none"
        print(
            f"rhizome: serving {graph.name!r} from {_source(args)}; auth: {auth}; docs at /docs",
            file=sys.stderr,
        )
        _run_http(app, args)
    return 0


def _serve_mcp(args: argparse.Namespace) -> int:
    """``rhizome serve --mcp``: the program as one MCP tool, over stdio or streamable HTTP."""
    try:
        from rhizome.serving.mcp import create_mcp_server, mcp_http_app, serve_mcp_stdio
        from rhizome.tools.agent.mcp import require_mcp

        require_mcp("rhizome serve --mcp")
    except ImportError as exc:
        raise CommandError(str(exc), hint="pip install 'rhizome[serve,mcp]'") from None
    graph = load_graph(args)
    token = (os.environ.get(args.token_env) or None) if args.mcp == "http" else None
    config = _config(args, token)
    with open_lm(args) as lm, open_telemetry(args) as telemetry:
        require_lm(graph, lm)
        server = create_mcp_server(graph, lm=lm, config=config, telemetry=telemetry)
        where = "stdio" if args.mcp == "stdio" else f"http://{args.host}:{args.port}/mcp"
        print(
            f"rhizome: serving {graph.name!r} from {_source(args)} as MCP on {where}",
            file=sys.stderr,
        )
        if args.mcp == "stdio":
            anyio.run(serve_mcp_stdio, server)
            return 0
        _warn_exposure(args.host, token)
        app = mcp_http_app(server, config=config, host=args.host)
        _run_http(app, args)
    return 0


def _config(args: argparse.Namespace, token: str | None) -> Any:
    """The server's limits and token from the command line."""
    from rhizome.serving.app import ServeConfig

    return ServeConfig(
        token=token,
        max_body_bytes=args.max_body_bytes,
        max_batch=args.max_batch,
        concurrency=args.concurrency,
        max_queue=args.max_queue,
        timeout=args.timeout,
        checkpoints=args.checkpoints,
    )


def _run_http(app: Any, args: argparse.Namespace) -> None:
    """Serve ``app`` with uvicorn on ``--host``/``--port`` until a signal stops it."""
    from rhizome.serving.app import run_server

    with _sigterm_is_a_clean_exit():
        run_server(
            app,
            host=args.host,
            port=args.port,
            graceful_timeout=args.graceful_timeout,
            log_level=args.log_level,
        )


@contextlib.contextmanager
def _sigterm_is_a_clean_exit() -> Iterator[None]:
    """Exit 0 after a graceful SIGTERM shutdown.

    uvicorn handles SIGTERM itself (stop accepting, finish in-flight requests),
    then re-sends the signal to the handler that was installed before it; with
    the default handler the process would die by the signal (exit -15) after
    shutting down cleanly. A no-op handler here makes it return instead.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _warn_exposure(host: str, token: str | None) -> None:
    from rhizome.serving.middleware import exposure_warning

    warning = exposure_warning(host, token)
    if warning:
        print(f"rhizome: {warning}", file=sys.stderr)


def _source(args: argparse.Namespace) -> str:
    params: Path | None = args.params
    program: str = args.program
    return program + (f" with {params}" if params else "")
