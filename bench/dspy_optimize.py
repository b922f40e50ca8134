r"""DSPy's optimizers on rhizome's demo task: LM calls, wall time and dev score.

Runs in the DSPy venv (never imports rhizome); ``bench/optimizer_cost.py``
starts it as a subprocess::

    bench/.venv-dspy/bin/python bench/dspy_optimize.py --lm-url URL/v1 --model NAME \
        --tools-url URL --data data.json --out DIR [--threads 4] \
        [--optimizers bfrs,mipro] [--candidates 4] [--minibatch 10] [--seed 0] [--max-tokens N]

The program mirrors rhizome's demo graph: retrieve (k=2) on the question, a
``dspy.Predict`` that names what the question still needs, retrieve (k=2) on
that, skipping passages already found, and a ``dspy.Predict`` that answers.
Retrieval and the metric are the parent's ``POST /search`` and ``POST /score``,
so both frameworks use the same index and the same exact-match function.

Stages: the unoptimized program on dev; ``BootstrapFewShotWithRandomSearch``
then dev; ``MIPROv2(auto="light")`` then dev. A stage that raises keeps its row,
with ``"error"`` and what it had spent, and the next one still runs. In DSPy
3.4.1 ``auto="light"`` means 6 few-shot sets, 3 instructions per predictor, 20
trials and at most 100 validation examples; it minibatches only when more than
50 are left, so with a smaller valset ``--minibatch`` goes unused.

LM calls are counted where they leave the process: the LM talks to the server
through a small counting proxy in this process, so retries, the JSON-adapter
fallback and the calls of LM copies (MIPROv2's proposer) all count, and a
cached reply could not. DSPy's response cache is off. Progress goes to stderr
(DSPy's own prints too); stdout carries only the final ``RESULT {json}`` line.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import logging
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dspy
from dspy.utils.callback import BaseCallback

FOLLOW_UP = (
    "Name the one thing the question still needs: the town, company, river or person "
    "mentioned in the context that leads to the answer. Reply with just that name."
)
ANSWER = (
    "Answer the question using the passages. Reply with the answer only: "
    "a name, a place or a year, without a sentence."
)
MAX_ERRORS = 10**9  # a failed example scores 0 instead of aborting the optimizer
_LM_PATHS = ("/chat/completions", "/completions")


def say(message: str) -> None:
    """One progress line on stderr."""
    print(f"[dspy_optimize] {message}", file=sys.stderr, flush=True)


class Tally:
    """Thread-safe counters of what reached the LM server, and of DSPy's LM calls."""

    FIELDS = ("calls", "prompt_tokens", "completion_tokens", "failed_requests", "dspy_lm_calls")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(self.FIELDS, 0)

    def add(self, **amounts: int) -> None:
        """Add to the named counters."""
        with self._lock:
            for name, amount in amounts.items():
                self._counts[name] += amount

    def snapshot(self) -> dict[str, int]:
        """A copy of the counters now."""
        with self._lock:
            return dict(self._counts)


class _CountingCallback(BaseCallback):  # type: ignore[misc]
    """Counts LM calls as DSPy sees them (a cross-check on the proxy's count)."""

    def __init__(self, tally: Tally) -> None:
        self.tally = tally

    def on_lm_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        self.tally.add(dspy_lm_calls=1)


class _ProxyHandler(BaseHTTPRequestHandler):
    """Relays each request upstream on a fresh connection; counts the LM requests."""

    protocol_version = "HTTP/1.1"
    server: _CountingProxy

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a line per LM call would drown the progress lines

    def do_GET(self) -> None:
        self._relay("GET")

    def do_POST(self) -> None:
        self._relay("POST")

    def _relay(self, method: str) -> None:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            self._reply(411, b'{"error":{"message":"the proxy needs Content-Length"}}', None)
            return
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        skip = {"host", "connection", "keep-alive", "content-length", "accept-encoding"}
        headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
        counted = method == "POST" and self.path.endswith(_LM_PATHS)
        upstream = http.client.HTTPConnection(*self.server.upstream, timeout=900)
        sent = False
        try:
            upstream.request(method, self.path, body=body or None, headers=headers)
            sent = True
            response = upstream.getresponse()
            status, kind, data = (
                response.status,
                response.getheader("Content-Type"),
                response.read(),
            )
        except (OSError, http.client.HTTPException) as exc:
            if sent and counted:  # it reached the server; the reply did not come back
                self.server.tally.add(calls=1, failed_requests=1)
            message = json.dumps({"error": {"message": f"upstream failed: {exc}"}}).encode()
            self._reply(502, message, "application/json")
            return
        finally:
            upstream.close()
        if counted:
            self.server.tally.add(calls=1, **_usage(status, data))
        self._reply(status, data, kind)

    def _reply(self, status: int, data: bytes, kind: str | None) -> None:
        self.send_response(status)
        if kind:
            self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _usage(status: int, data: bytes) -> dict[str, int]:
    """The token counts of a reply body, or a failure mark for an error status."""
    if status >= 400:
        return {"failed_requests": 1}
    try:
        usage = json.loads(data).get("usage") or {}
        return {k: int(usage.get(k) or 0) for k in ("prompt_tokens", "completion_tokens")}
    except (ValueError, AttributeError, TypeError):
        return {}


class _CountingProxy(ThreadingHTTPServer):
    """A loopback HTTP server in front of the LM server at ``upstream``."""

    daemon_threads = True

    def __init__(self, upstream: str, tally: Tally) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname:
            raise SystemExit(f"--lm-url must look like http://127.0.0.1:8080/v1, not {upstream!r}")
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.upstream = (parts.hostname, parts.port or 80)
        self.url = f"http://127.0.0.1:{self.server_address[1]}{parts.path.rstrip('/')}"
        self.tally = tally


@contextlib.contextmanager
def counting_proxy(upstream: str, tally: Tally) -> Iterator[str]:
    """Serve the proxy in a background thread; yield its base URL."""
    proxy = _CountingProxy(upstream, tally)
    thread = threading.Thread(target=proxy.serve_forever, name="lm-proxy", daemon=True)
    thread.start()
    try:
        yield proxy.url
    finally:
        proxy.shutdown()
        proxy.server_close()


@dataclass(frozen=True)
class Tools:
    """The parent's retrieval and scoring endpoints."""

    url: str

    def _post(self, endpoint: str, payload: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(
            f"{self.url.rstrip('/')}/{endpoint}",
            data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return dict(json.loads(response.read()))
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            raise RuntimeError(f"tools server /{endpoint} answered {exc.code}: {detail}") from exc

    def search(self, query: str, k: int, exclude: list[str] | None = None) -> list[str]:
        """Passages for ``query``, skipping those in ``exclude``."""
        found = self._post("search", {"query": query, "k": k, "exclude": exclude or []})
        return [str(p) for p in found["passages"]]

    def metric(self, example: Any, pred: Any, trace: Any = None) -> bool:
        """Rhizome's exact match of ``pred.answer`` against the example's gold answer."""
        answer = getattr(pred, "answer", None)
        if not answer:
            return False
        return bool(self._post("score", {"id": example["id"], "answer": str(answer)})["ok"])


class TwoHop(dspy.Module):  # type: ignore[misc]
    """Two-hop RAG: search, name the missing link, search again, answer."""

    def __init__(self, tools: Tools) -> None:
        super().__init__()
        self.tools = tools
        self.follow_up = dspy.Predict(
            dspy.Signature("question: str, context: list[str] -> query: str", FOLLOW_UP)
        )
        self.answer = dspy.Predict(
            dspy.Signature("passages: list[str], question: str -> answer: str", ANSWER)
        )

    def forward(self, question: str) -> Any:
        """The answer prediction for ``question``."""
        context = self.tools.search(question, k=2)
        query = self.follow_up(question=question, context=context).query
        more = self.tools.search(str(query or ""), k=2, exclude=context)
        return self.answer(passages=context + more, question=question)


def load_data(path: Path) -> dict[str, list[Any]]:
    """The train/val/dev splits as ``dspy.Example`` with only ``question`` as input."""
    raw = json.loads(path.read_text())
    splits: dict[str, list[Any]] = {}
    for name in ("train", "val", "dev"):
        rows = raw.get(name) or []
        if not rows:
            raise SystemExit(f"{path}: split {name!r} is missing or empty (need train, val, dev)")
        splits[name] = [
            dspy.Example(id=str(r["id"]), question=r["question"], answer=r["answer"]).with_inputs(
                "question"
            )
            for r in rows
        ]
    return splits


@contextlib.contextmanager
def metered(tally: Tally, into: dict[str, Any], prefix: str) -> Iterator[None]:
    """Record the calls, tokens and seconds of the block as ``{prefix}_*`` keys of ``into``."""
    before, start = tally.snapshot(), time.perf_counter()
    try:
        yield
    finally:
        into[f"{prefix}_seconds"] = round(time.perf_counter() - start, 3)
        after = tally.snapshot()
        for name in Tally.FIELDS:
            into[f"{prefix}_{name}"] = after[name] - before[name]


def evaluate(
    program: Any, devset: list[Any], metric: Callable[..., bool], threads: int
) -> dict[str, Any]:
    """The fraction correct on ``devset`` and how many examples raised."""
    result = dspy.Evaluate(
        devset=devset,
        metric=metric,
        num_threads=threads,
        display_progress=True,
        max_errors=MAX_ERRORS,
    )(program)
    scores = [float(score) for _, _, score in result.results]
    failed = sum(1 for _, pred, _ in result.results if getattr(pred, "answer", None) is None)
    return {"score": round(sum(scores) / len(devset), 4), "eval_failed_examples": failed}


def evaluate_row(row: dict[str, Any], program: Any, ctx: Run) -> None:
    """Evaluate ``program`` on dev into ``row`` (score and eval_* figures)."""
    with metered(ctx.tally, row, "eval"):
        row.update(evaluate(program, ctx.data["dev"], ctx.tools.metric, ctx.args.threads))
    say(f"{row['stage']}: dev score {row['score']:.3f} ({row['eval_calls']} LM calls)")


@dataclass(frozen=True)
class Run:
    """What every stage needs."""

    args: argparse.Namespace
    lm: Any
    tools: Tools
    data: dict[str, list[Any]]
    tally: Tally


def run_unoptimized(row: dict[str, Any], ctx: Run) -> None:
    """The program as written, on dev, into ``row``."""
    evaluate_row(row, TwoHop(ctx.tools), ctx)


def run_bfrs(row: dict[str, Any], ctx: Run) -> None:
    """BootstrapFewShotWithRandomSearch, then dev, into ``row``."""
    args = ctx.args
    optimizer = dspy.BootstrapFewShotWithRandomSearch(
        metric=ctx.tools.metric,
        max_bootstrapped_demos=3,
        max_labeled_demos=0,
        num_candidate_programs=args.candidates,
        num_threads=args.threads,
        max_errors=MAX_ERRORS,
    )
    with metered(ctx.tally, row, "opt"):
        compiled = optimizer.compile(
            TwoHop(ctx.tools), trainset=ctx.data["train"], valset=ctx.data["val"]
        )
    candidates = getattr(compiled, "candidate_programs", [])
    row["programs_evaluated"] = len(candidates)
    row["val_scores"] = sorted((round(c["score"] / 100, 4) for c in candidates), reverse=True)
    say(f"BFRS: {row['opt_calls']} LM calls in {row['opt_seconds']:.0f} s")
    compiled.save(str(args.out / "dspy_bfrs.json"))
    evaluate_row(row, compiled, ctx)


class _SettingsLog(logging.Handler):
    """Catches MIPROv2's "AUTO RUN SETTINGS" log record and parses its lines."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.settings: dict[str, Any] = {}

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if "AUTO RUN SETTINGS" not in text:
            return
        for line in text.splitlines():
            key, sep, value = line.partition(":")
            if sep and value.strip():
                self.settings[key.strip().replace(" ", "_")] = _number(value.strip())


def _number(text: str) -> Any:
    if text in ("True", "False"):
        return text == "True"
    try:
        return int(text)
    except ValueError:
        return text


def _trials(compiled: Any) -> dict[str, Any]:
    """How many trials MIPROv2 ran, from the logs it attaches to the program."""
    logs = getattr(compiled, "trial_logs", None)
    if not isinstance(logs, dict):
        return {"trials": None}
    minibatch = sum(1 for t in logs.values() if "mb_score" in t)
    full = sum(1 for t in logs.values() if "full_eval_score" in t)
    # without minibatching every trial is a full evaluation, plus the default program's
    return {"trials": minibatch or max(full - 1, 0), "full_evaluations": full}


def run_mipro(row: dict[str, Any], ctx: Run) -> None:
    """MIPROv2(auto="light"), then dev, into ``row``."""
    args, lm = ctx.args, ctx.lm
    optimizer = dspy.MIPROv2(
        metric=ctx.tools.metric,
        prompt_model=lm,
        task_model=lm,
        auto="light",
        num_threads=args.threads,
        seed=args.seed,
        max_bootstrapped_demos=3,
        max_labeled_demos=0,
        max_errors=MAX_ERRORS,
    )
    catcher = _SettingsLog()
    logger = logging.getLogger("dspy.teleprompt.mipro_optimizer_v2")
    logger.addHandler(catcher)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        with metered(ctx.tally, row, "opt"):
            compiled = optimizer.compile(
                TwoHop(ctx.tools),
                trainset=ctx.data["train"],
                valset=ctx.data["val"],
                minibatch_size=min(args.minibatch, len(ctx.data["val"])),
            )
    finally:
        logger.removeHandler(catcher)
        logger.setLevel(level)
        row["auto_settings"] = catcher.settings
    row.update(_trials(compiled))
    if isinstance(getattr(compiled, "score", None), int | float):
        row["val_score"] = round(compiled.score / 100, 4)
    say(f"MIPROv2: {row['opt_calls']} LM calls, {row['trials']} trials, {row['opt_seconds']:.0f} s")
    compiled.save(str(args.out / "dspy_mipro.json"))
    evaluate_row(row, compiled, ctx)


STEPS: dict[str, tuple[str, Callable[[dict[str, Any], Run], None]]] = {
    "bfrs": ("BootstrapFewShotWithRandomSearch", run_bfrs),
    "mipro": ("MIPROv2(light)", run_mipro),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lm-url", required=True, help="OpenAI-compatible base URL ending in /v1")
    parser.add_argument("--model", required=True)
    parser.add_argument("--tools-url", required=True, help="base URL of /search and /score")
    parser.add_argument("--data", type=Path, required=True, help='{"train","val","dev"} JSON')
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--optimizers", default=",".join(STEPS))
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument("--minibatch", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--max-tokens", type=int, default=None, help="default: DSPy's (none sent to the server)"
    )
    parser.add_argument(
        "--budget-s", type=int, default=0, help="stop the stage running after this many seconds"
    )
    args = parser.parse_args(argv)
    args.optimizers = [x.strip() for x in args.optimizers.split(",") if x.strip()]
    unknown = sorted(set(args.optimizers) - set(STEPS))
    if unknown:
        parser.error(f"unknown --optimizers {unknown}; valid: {', '.join(STEPS)}")
    return args


def measure(args: argparse.Namespace, lm_url: str, tally: Tally) -> dict[str, Any]:
    """Every stage, in order; a stage that raises gets an ``error`` and the next still runs."""
    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)
    lm = dspy.LM(
        f"openai/{args.model}",
        api_base=lm_url,
        api_key="local",
        cache=False,
        temperature=0.0,
        max_tokens=args.max_tokens,
    )
    dspy.configure(lm=lm, callbacks=[_CountingCallback(tally)], max_errors=MAX_ERRORS)
    args.out.mkdir(parents=True, exist_ok=True)
    data = load_data(args.data)
    ctx = Run(args=args, lm=lm, tools=Tools(args.tools_url), data=data, tally=tally)
    rows: list[dict[str, Any]] = []
    stopped = ""
    for stage, step in [("unoptimized", run_unoptimized), *(STEPS[x] for x in args.optimizers)]:
        row: dict[str, Any] = {"stage": stage}
        rows.append(row)
        if stopped:
            row["error"] = f"not run: {stopped}"
            continue
        say(f"{stage}: starting")
        try:
            step(row, ctx)
        except OutOfTime as exc:  # the row keeps what was spent until the stop
            stopped = str(exc)
            say(f"{stage} stopped: {stopped}")
            row["error"] = f"unfinished: {stopped}"
        except Exception as exc:  # keep the other stages; the row keeps what was spent
            say(f"{stage} failed: {type(exc).__name__}: {exc}")
            row["error"] = f"{type(exc).__name__}: {exc}"
    return {"dspy_version": dspy.__version__, "settings": settings(args, data), "rows": rows}


def settings(args: argparse.Namespace, data: dict[str, list[Any]]) -> dict[str, Any]:
    """What the run used, for the record."""
    return {
        "model": args.model,
        "lm_url": args.lm_url,
        "temperature": 0.0,
        "max_tokens": args.max_tokens,
        "max_tokens_note": "None is DSPy 3.4.1's default: no max_tokens is sent",
        "dspy_cache": False,
        "threads": args.threads,
        "optimizers": args.optimizers,
        "candidates": args.candidates,
        "minibatch": args.minibatch,
        "seed": args.seed,
        "max_errors": MAX_ERRORS,
        "sizes": {name: len(rows) for name, rows in data.items()},
        "lm_calls_counted": "HTTP chat requests relayed to the server by an in-process proxy",
    }


class OutOfTime(BaseException):
    """The time budget ran out or the process was asked to stop (SIGTERM).

    A BaseException, like KeyboardInterrupt, so that DSPy's handlers of
    failing examples do not swallow it.
    """


def _stop(signum: int, frame: Any) -> None:
    reason = "time budget reached" if signum == signal.SIGALRM else "stopped by SIGTERM"
    raise OutOfTime(reason)


def main(argv: list[str] | None = None) -> None:
    """Command line entry: run the stages, print ``RESULT {json}`` on stdout."""
    args = parse_args(argv)
    tally = Tally()
    stdout = sys.stdout
    signal.signal(signal.SIGTERM, _stop)
    if args.budget_s > 0:
        signal.signal(signal.SIGALRM, _stop)
        signal.alarm(args.budget_s)
    with counting_proxy(args.lm_url, tally) as lm_url, contextlib.redirect_stdout(sys.stderr):
        result = measure(args, lm_url, tally)
    signal.alarm(0)
    print("RESULT " + json.dumps(result), file=stdout, flush=True)
    # A stopped stage may leave DSPy's worker threads mid-request: do not wait for them.
    os._exit(0)


if __name__ == "__main__":
    main()
