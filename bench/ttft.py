"""Time to first token through ``rhizome serve`` against the embedded model.

Starts ``rhizome serve PROGRAM --local`` (a real subprocess: uvicorn, the
program, the llama.cpp server of the embedded model), then for each question,
one after another:

- ``POST /v1/stream``: seconds until the first ``token`` event of the answer
  reaches the client, and until ``run_finished``;
- ``POST /v1/predict`` on a different question of the same shape: seconds until
  the whole answer, the wait a client has without streaming.

Two programs: ``qa`` is ``rhizome.examples:build`` (an answer of a few
words, so the first token is nearly the whole answer), ``explain`` is
:func:`build_explain` below (a few sentences, up to 200 tokens), where
streaming matters. The response cache is off (``rhizome serve`` uses none
unless ``--cache``), and every question is asked once, so no reply comes from
a cache. Figures go to stdout and to ``bench/results_ttft.json``::

    RHIZOME_CACHE_DIR=/work/rhizome-cache python bench/ttft.py --program explain --questions 8
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
PROGRAMS = {"qa": "rhizome.examples:build", "explain": f"{Path(__file__).resolve()}:build_explain"}
TOPICS = [
    "rain", "a bicycle", "photosynthesis", "a compass", "tides", "a refrigerator",
    "volcanoes", "bread rising", "rainbows", "a lighthouse", "snowflakes", "a battery",
    "earthquakes", "a microwave oven", "thunder", "a sailboat",
]  # fmt: skip
CAPITALS = [
    "France", "Japan", "Peru", "Kenya", "Norway", "Chile", "Egypt", "Canada", "Spain",
    "Italy", "Ghana", "Nepal", "Cuba", "Iran", "Iraq", "Laos", "Mali", "Oman", "Chad",
    "Fiji", "Togo", "Peru", "Niger", "Qatar", "Yemen", "Sudan", "Gabon", "Benin",
]  # fmt: skip


def build_explain() -> Any:
    """One LM node answering in a few sentences (served by ``--program explain``)."""
    from rhizome import Graph, Predict

    node = Predict(
        "question -> answer",
        instruction="Answer with an explanation of two or three full sentences.",
        max_tokens=200,
    )
    return Graph("explain", outputs=["answer"]).add("answer", node)


def question(program: str, i: int) -> str:
    """Question ``i`` for ``program``: a capital for ``qa``, a how-it-works for ``explain``."""
    if program == "qa":
        return f"What is the capital of {CAPITALS[i % len(CAPITALS)]}? ({i})"
    return f"Explain how {TOPICS[i % len(TOPICS)]} works."


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(program: str, port: int) -> subprocess.Popen[bytes]:
    """``rhizome serve`` of ``program`` on the embedded model, as a subprocess."""
    command = [sys.executable, "-m", "rhizome.cli", "serve", PROGRAMS[program], "--local"]
    command += ["--port", str(port), "--log-level", "warning"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(command, cwd=ROOT, env=env)


def wait_ready(url: str, process: subprocess.Popen[bytes], limit: float = 300.0) -> float:
    """Seconds until ``/healthz`` answers (the model loaded)."""
    start = time.perf_counter()
    while time.perf_counter() - start < limit:
        if process.poll() is not None:
            raise RuntimeError("rhizome serve exited before it was ready")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return time.perf_counter() - start
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"rhizome serve was not ready within {limit:g} s")


def streamed(client: httpx.Client, url: str, question: str) -> dict[str, Any]:
    """One ``/v1/stream`` run: first token, last event, tokens, the answer."""
    body = {"inputs": {"question": question}}
    start = time.perf_counter()
    first: float | None = None
    tokens, pieces, name = 0, [], ""
    outputs: dict[str, Any] = {}
    with client.stream("POST", f"{url}/v1/stream", json=body) as reply:
        reply.raise_for_status()
        for line in reply.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: ") and name in ("lm_call_started", "retry"):
                pieces = []  # a new attempt writes the answer again from the start
            elif line.startswith("data: ") and name == "token":
                first = first if first is not None else time.perf_counter() - start
                tokens += 1
                pieces.append(json.loads(line[6:])["text"])
            elif line.startswith("data: ") and name == "run_finished":
                outputs = json.loads(line[6:])["outputs"]
            elif line.startswith("data: ") and name == "error":
                raise RuntimeError(f"the run failed: {line[6:]}")
    total = time.perf_counter() - start
    if first is None or "".join(pieces) != outputs.get("answer"):
        raise RuntimeError(f"tokens {pieces!r} do not make the answer {outputs!r}")
    return {"first_token": first, "total": total, "token_events": tokens, "answer": outputs}


def predicted(client: httpx.Client, url: str, question: str) -> float:
    """Seconds one ``/v1/predict`` takes, to the whole answer."""
    start = time.perf_counter()
    reply = client.post(f"{url}/v1/predict", json={"inputs": {"question": question}})
    reply.raise_for_status()
    return time.perf_counter() - start


def summary(values: list[float]) -> dict[str, float]:
    """Median, min, max and count of ``values``."""
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def main() -> None:
    """Measure and write ``bench/results_ttft.json``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=int, default=8, help="questions per endpoint")
    parser.add_argument("--program", choices=sorted(PROGRAMS), default="explain")
    args = parser.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = start_server(args.program, port)
    try:
        ready = wait_ready(url, process)
        with httpx.Client(timeout=600) as client:
            predicted(client, url, "What is the capital of Germany?")  # warm-up: load, caches
            runs, whole = [], []
            for i in range(args.questions):
                a, b = question(args.program, 2 * i), question(args.program, 2 * i + 1)
                runs.append(streamed(client, url, a))
                whole.append(predicted(client, url, b))
    finally:
        process.terminate()
        process.wait(60)
    result = {
        "command": f"python bench/ttft.py --program {args.program} --questions {args.questions}",
        "program": PROGRAMS[args.program].replace(str(ROOT) + "/", ""),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "load_average": os.getloadavg(),
        "server_ready_s": ready,
        "stream_first_token_s": summary([r["first_token"] for r in runs]),
        "stream_total_s": summary([r["total"] for r in runs]),
        "predict_total_s": summary(whole),
        "token_events": summary([float(r["token_events"]) for r in runs]),
        "answers": [r["answer"] for r in runs],
    }
    path = ROOT / "bench" / "results_ttft.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results[args.program] = result
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "answers"}, indent=2))


if __name__ == "__main__":
    main()
