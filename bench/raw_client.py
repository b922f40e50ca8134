"""The floor: chat requests over raw asyncio streams, no HTTP library at all.

``floor``: sequential requests on one keep-alive connection, each carrying the
body of the last chat request the server received (so the floor of a
framework is measured right after it, with its own request: same bytes, same
server work); the time per call is what the server and the loopback cost,
subtracted from the framework's per-call time to get its overhead.
``throughput``: ``requests`` requests over ``concurrency`` keep-alive
connections; what a client that costs almost nothing reaches.

Usage: ``python bench/raw_client.py URL floor|throughput [requests] [concurrency]``
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
import urllib.request
from urllib.parse import urlsplit

from common import MODEL, Clock, emit, measure

_PROMPT = "Answer the question.\n\n<question>\nWhat is fact number 1?\n</question>"


def _request(host: str, port: int, path: str, index: int, body: bytes = b"") -> bytes:
    body = (
        body
        or json.dumps(
            {
                "model": MODEL,
                "messages": [
                    {"role": "system", "content": "Reply with <answer>, closed by its end tag."},
                    {"role": "user", "content": f"{_PROMPT} {index}\n\nReply with <answer>."},
                ],
            }
        ).encode()
    )
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes) -> int:
    writer.write(data)
    head = await reader.readuntil(b"\r\n\r\n")
    lower = head.lower()
    at = lower.find(b"content-length:")
    length = int(lower[at + 15 : lower.find(b"\r\n", at)])
    body = await reader.readexactly(length)
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"server answered {head[:40]!r} {body[:80]!r}")
    return len(body)


def last_body(url: str) -> bytes:
    """The body of the last chat request the server received."""
    parts = urlsplit(url)
    with urllib.request.urlopen(f"{parts.scheme}://{parts.netloc}/last", timeout=10) as reply:
        body: bytes = reply.read()
        return body


async def floor(url: str, requests: int, last: bytes, rounds: int = 5) -> dict[str, float]:
    """Microseconds per sequential request of ``last`` over one raw connection (median round)."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path.rstrip("/") + "/chat/completions"
    reader, writer = await asyncio.open_connection(host, port)
    payloads = [_request(host, port, path, i, last) for i in range(requests)]
    for data in payloads[:20]:  # warm up
        await _exchange(reader, writer, data)
    walls, cpus = [], []
    for _ in range(rounds):
        with Clock() as clock:
            for data in payloads:
                await _exchange(reader, writer, data)
        walls.append(clock.wall / requests * 1e6)
        cpus.append(clock.cpu / requests * 1e6)
    writer.close()
    return {
        "us_per_call": statistics.median(walls),
        "us_per_call_min": min(walls),
        "cpu_us_per_call": statistics.median(cpus),
        "request_bytes": len(payloads[0]),
    }


async def throughput(url: str, requests: int, concurrency: int) -> dict[str, float]:
    """Requests per second with ``concurrency`` raw connections in flight."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path.rstrip("/") + "/chat/completions"
    queue = [_request(host, port, path, i) for i in range(requests)]
    queue.reverse()

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        while queue:
            await _exchange(reader, writer, queue.pop())
        writer.close()

    with Clock() as clock:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {
        "requests": requests,
        "wall_s": clock.wall,
        "req_per_s": requests / clock.wall,
        "cpu_ms_per_request": clock.cpu / requests * 1e3,
    }


def main() -> None:
    """Command line entry (see the module docstring)."""
    url, mode = sys.argv[1], sys.argv[2]
    requests = int(sys.argv[3]) if len(sys.argv) > 3 else 300
    concurrency = int(sys.argv[4]) if len(sys.argv) > 4 else 256
    start = time.perf_counter()
    if mode == "floor":
        last = last_body(url)
        result = measure(lambda: asyncio.run(floor(url, requests, last)))
    else:
        result = measure(lambda: asyncio.run(throughput(url, requests, concurrency)))
    result["elapsed_s"] = time.perf_counter() - start
    emit(result)


if __name__ == "__main__":
    main()
