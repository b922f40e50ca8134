"""Counters of a serving process, written in the Prometheus text format.

One :class:`ServeMetrics` belongs to one app (no process-wide registry): HTTP
requests by route and status, request latency as a histogram, graph runs and
their failures by error type, LM calls, cache hits, tokens and cost from the
runs' traces, and the requests in flight. Every update happens on the event
loop, but a lock keeps a scrape from reading a half-applied update.
"""

from __future__ import annotations

import bisect
import threading
from collections import Counter, defaultdict
from collections.abc import Mapping

__all__ = ("CONTENT_TYPE", "ServeMetrics")


BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ServeMetrics:
    """What a server did since it started; :meth:`render` gives the Prometheus text."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, str, int]] = Counter()
        self.latency_buckets: dict[str, list[int]] = {}
        self.latency_sum: defaultdict[str, float] = defaultdict(float)
        self.latency_count: Counter[str] = Counter()
        self.runs: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.usage: defaultdict[str, float] = defaultdict(float)
        self.in_flight = 0

    def request_started(self) -> None:
        """Count a request entering the app."""
        with self._lock:
            self.in_flight += 1

    def request_finished(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count a finished request and its latency (streaming time included)."""
        with self._lock:
            self.in_flight -= 1
            self.requests[(method, route, status)] += 1
            buckets = self.latency_buckets.setdefault(route, [0] * len(BUCKETS))
            index = bisect.bisect_left(BUCKETS, seconds)
            for i in range(index, len(BUCKETS)):
                buckets[i] += 1
            self.latency_sum[route] += seconds
            self.latency_count[route] += 1

    def run_finished(self, usage: Mapping[str, float], error: str | None) -> None:
        """Count one graph run with its LM usage; ``error`` is the error type if it failed."""
        with self._lock:
            self.runs["error" if error else "ok"] += 1
            if error:
                self.errors[error] += 1
            for key in ("calls", "cache_hits", "prompt_tokens", "completion_tokens", "cost"):
                self.usage[key] += usage.get(key, 0)

    def render(self) -> str:
        """The Prometheus text exposition of every metric."""
        with self._lock:
            lines: list[str] = []
            self._render_requests(lines)
            self._render_runs(lines)
            return "\n".join(lines) + "\n"

    def _render_requests(self, lines: list[str]) -> None:
        _head(lines, "rhizome_http_requests_total", "counter", "HTTP requests answered.")
        for (method, route, status), n in sorted(self.requests.items()):
            labels = _labels(method=method, route=route, status=str(status))
            lines.append(f"rhizome_http_requests_total{labels} {n}")
        name = "rhizome_http_request_duration_seconds"
        _head(lines, name, "histogram", "Time from request to the end of the response.")
        for route, buckets in sorted(self.latency_buckets.items()):
            for bound, n in zip(BUCKETS, buckets, strict=True):
                lines.append(f"{name}_bucket{_labels(route=route, le=repr(bound))} {n}")
            count = self.latency_count[route]
            lines.append(f"{name}_bucket{_labels(route=route, le='+Inf')} {count}")
            lines.append(f"{name}_sum{_labels(route=route)} {self.latency_sum[route]:.6f}")
            lines.append(f"{name}_count{_labels(route=route)} {count}")
        _head(lines, "rhizome_http_requests_in_flight", "gauge", "Requests being answered.")
        lines.append(f"rhizome_http_requests_in_flight {self.in_flight}")

    def _render_runs(self, lines: list[str]) -> None:
        _head(lines, "rhizome_runs_total", "counter", "Graph runs, by outcome.")
        for outcome in ("ok", "error"):
            lines.append(f"rhizome_runs_total{_labels(outcome=outcome)} {self.runs[outcome]}")
        _head(lines, "rhizome_run_errors_total", "counter", "Failed graph runs, by error type.")
        for kind, n in sorted(self.errors.items()):
            lines.append(f"rhizome_run_errors_total{_labels(type=kind)} {n}")
        _head(lines, "rhizome_lm_calls_total", "counter", "LM calls made by graph runs.")
        lines.append(f"rhizome_lm_calls_total {self.usage['calls']:.0f}")
        _head(lines, "rhizome_lm_cache_hits_total", "counter", "LM calls served from cache.")
        lines.append(f"rhizome_lm_cache_hits_total {self.usage['cache_hits']:.0f}")
        _head(lines, "rhizome_lm_tokens_total", "counter", "LM tokens, by kind.")
        for kind, key in (("prompt", "prompt_tokens"), ("completion", "completion_tokens")):
            lines.append(f"rhizome_lm_tokens_total{_labels(kind=kind)} {self.usage[key]:.0f}")
        _head(lines, "rhizome_lm_cost_total", "counter", "LM cost (needs prices on the LM).")
        lines.append(f"rhizome_lm_cost_total {self.usage['cost']:.6f}")


def _head(lines: list[str], name: str, kind: str, help_text: str) -> None:
    lines.append(f"# HELP {name} {help_text}")
    lines.append(f"# TYPE {name} {kind}")


def _labels(**labels: str) -> str:
    body = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    return "{" + body + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
