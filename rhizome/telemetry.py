"""OpenTelemetry spans for runs, nodes and LM calls (optional: a no-op without opentelemetry).

:class:`Telemetry` runs a graph inside a ``rhizome.run`` span and, once the run
ends, adds one child span per node execution (``rhizome.node``) and one per LM
call under its node (``rhizome.lm``), built from the run's
:class:`~rhizome.engine.trace.Trace` with the times it recorded. Spans carry the
node's path and kind, and LM spans follow the OpenTelemetry GenAI semantic
conventions: ``gen_ai.operation.name`` (``chat``), ``gen_ai.request.model`` (the
model the predictor's LM asked for, when known), ``gen_ai.response.model`` (the
model the server says answered) and ``gen_ai.usage.input_tokens`` /
``gen_ai.usage.output_tokens``, so traces show up in Jaeger, Tempo, Honeycomb
and the like.

Only ``opentelemetry-api`` is needed to emit spans; they go to the tracer
provider passed in, else to the globally configured one (a no-op unless the
application or ``opentelemetry-instrument`` set one up). :func:`configure`
builds a provider with a console or OTLP exporter for the command line
(``--otel console|otlp``); it needs ``opentelemetry-sdk``.

Plain runs are traced too: ``graph(...)`` and ``await graph.run(...)`` go
through :func:`global_telemetry`, which finds a real global tracer provider
when the application set one. It costs one dictionary lookup when
opentelemetry was never imported, and a provider check (about a microsecond)
when it was but no provider is set; spans are then not built at all.

LM calls do not record their start time, so an LM span starts where the
previous call of its node ended (exact for nodes that call one at a time).
"""

from __future__ import annotations

import contextlib
import functools
import sys
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from rhizome.engine.context import settings
from rhizome.engine.errors import ConfigError
from rhizome.engine.graphs.scheduler import run_traced
from rhizome.engine.trace import LMCall, NodeRecord, Trace

if TYPE_CHECKING:
    from rhizome.engine.client.protocol import LM
    from rhizome.engine.example import Prediction
    from rhizome.engine.graphs.graph import Graph

__all__ = ("EXPORTERS", "Telemetry", "configure", "global_telemetry", "request_models")


EXPORTERS = ("console", "otlp")


def _otel() -> Any:
    try:
        from opentelemetry import trace as otel_trace
    except ImportError:
        return None
    return otel_trace


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


def global_telemetry() -> Telemetry | None:
    """Telemetry for the global tracer provider, or None when no real one is set.

    None, at the cost of one dictionary lookup, when opentelemetry was never
    imported (then no provider can have been set); None too while the global
    provider is opentelemetry's default proxy or no-op provider.
    """
    otel = sys.modules.get("opentelemetry.trace")
    if otel is None:
        return None
    provider = otel.get_tracer_provider()
    if isinstance(provider, otel.ProxyTracerProvider | otel.NoOpTracerProvider):
        return None
    return _telemetry_for(provider)


@functools.lru_cache(maxsize=4)
def _telemetry_for(provider: Any) -> Telemetry:
    return Telemetry(tracer_provider=provider)


def request_models(graph: Graph, lm: LM | None = None) -> dict[str, str]:
    """The model each predictor of ``graph`` asks for, by predictor path.

    A predictor bound to an LM asks for that LM's model; the others for the
    model of ``lm``, else of the LM set with ``rhizome.context(lm=...)``.
    Predictors with no LM at all are left out.
    """
    default = lm if lm is not None else settings().lm
    models: dict[str, str] = {}
    for path, predictor in graph.named_predictors():
        chosen = predictor.lm if predictor.lm is not None else default
        if chosen is not None:
            models[path] = chosen.name
    return models


class Telemetry:
    """Emit spans for graph runs; every method is a cheap no-op when disabled.

    Args:
        tracer_provider: Where spans go; None uses the global provider.
        enabled: False turns spans off even when opentelemetry is installed.
    """

    def __init__(self, *, tracer_provider: Any = None, enabled: bool = True) -> None:
        otel = _otel() if enabled else None
        self._otel = otel
        self._tracer = otel.get_tracer("rhizome", tracer_provider=tracer_provider) if otel else None

    @property
    def enabled(self) -> bool:
        """True when spans are emitted (opentelemetry is importable and not turned off)."""
        return self._tracer is not None

    async def run(
        self,
        graph: Graph,
        inputs: Mapping[str, Any],
        *,
        lm: LM | None = None,
        trace: Trace | None = None,
        attributes: Mapping[str, Any] | None = None,
    ) -> Prediction:
        """Run ``graph`` once inside a run span; node and LM spans are added when it ends.

        Args:
            graph: The graph to run.
            inputs: Its input values.
            lm: The default LM for the run.
            trace: A trace to record into (it keeps what ran even when the run fails).
            attributes: Extra attributes for the run span (e.g. the request id).

        Raises:
            Whatever :meth:`Graph.run <rhizome.engine.graphs.graph.Graph.run>` raises; the
            span is then marked as failed.
        """
        trace = trace if trace is not None else Trace()
        plan = graph.plan()
        if self._tracer is None:
            return await run_traced(plan, inputs, trace=trace, lm=lm)
        models = request_models(graph, lm)
        with self._run_span(graph.name, attributes) as span:
            try:
                return await run_traced(plan, inputs, trace=trace, lm=lm)
            finally:
                self.record(trace, span, request_models=models)

    def emit(
        self, name: str, trace: Trace, *, request_models: Mapping[str, str] | None = None
    ) -> None:
        """Emit the spans of a run that already happened (a batch result's trace).

        The run span covers its node records; a failed run (``trace.error``) is
        marked as such. ``request_models`` (from :func:`request_models`) gives
        the LM spans their ``gen_ai.request.model``.
        """
        if self._tracer is None or self._otel is None:
            return
        records = trace.records
        start = min((r.started for r in records if r.started), default=time.time())
        end = max((r.started + r.latency for r in records if r.started), default=start)
        span = self._tracer.start_span(
            f"rhizome.run {name}", attributes={"rhizome.graph": name}, start_time=_ns(start)
        )
        if trace.error:
            span.set_status(self._otel.Status(self._otel.StatusCode.ERROR, trace.error))
        self.record(trace, span, request_models=request_models)
        span.end(end_time=_ns(end))

    @contextlib.contextmanager
    def _run_span(self, name: str, attributes: Mapping[str, Any] | None) -> Iterator[Any]:
        assert self._tracer is not None  # checked by the caller
        attrs = {"rhizome.graph": name, **dict(attributes or {})}
        with self._tracer.start_as_current_span(f"rhizome.run {name}", attributes=attrs) as span:
            yield span

    def record(
        self, trace: Trace, parent: Any, *, request_models: Mapping[str, str] | None = None
    ) -> None:
        """Add node and LM-call spans for ``trace`` under ``parent``, plus usage totals.

        ``request_models`` maps predictor paths to the model each asked for.
        """
        if self._tracer is None or not parent.is_recording():
            return
        models = request_models or {}
        usage = trace.usage()
        parent.set_attribute("rhizome.usage.calls", int(usage["calls"]))
        parent.set_attribute("rhizome.usage.cache_hits", int(usage["cache_hits"]))
        parent.set_attribute("gen_ai.usage.input_tokens", int(usage["prompt_tokens"]))
        parent.set_attribute("gen_ai.usage.output_tokens", int(usage["completion_tokens"]))
        parent.set_attribute("rhizome.usage.cost", float(usage["cost"]))
        spans: dict[str, Any] = {}
        for record in trace.records:
            owner = _parent_path(record.node, spans)
            span = self._node_span(record, spans[owner] if owner else parent, models)
            spans[record.node] = span

    def _node_span(self, record: NodeRecord, parent: Any, models: Mapping[str, str]) -> Any:
        assert self._tracer is not None
        assert self._otel is not None
        attrs: dict[str, Any] = {"rhizome.node": record.node, "rhizome.node.kind": record.kind}
        if record.iteration is not None:
            attrs["rhizome.node.iteration"] = record.iteration
        start = record.started or time.time()
        span = self._tracer.start_span(
            f"rhizome.node {record.node}",
            context=self._otel.set_span_in_context(parent),
            attributes=attrs,
            start_time=_ns(start),
        )
        offset = start
        for call in record.calls:
            offset = self._lm_span(call, record, span, offset, models.get(call.predictor))
        if record.error:
            span.set_status(self._otel.Status(self._otel.StatusCode.ERROR, record.error))
        span.end(end_time=_ns(start + record.latency))
        return span

    def _lm_span(
        self, call: LMCall, record: NodeRecord, parent: Any, start: float, requested: str | None
    ) -> float:
        assert self._tracer is not None
        assert self._otel is not None
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            **_model_attributes(call, requested),
            "gen_ai.usage.input_tokens": call.usage.prompt_tokens,
            "gen_ai.usage.output_tokens": call.usage.completion_tokens,
            "rhizome.node": record.node,
            "rhizome.predictor": call.predictor,
            "rhizome.lm.cached": call.cached,
            "rhizome.lm.attempt": call.attempt,
            "rhizome.lm.cost": call.cost,
        }
        span = self._tracer.start_span(
            f"rhizome.lm {call.predictor or record.node}",
            context=self._otel.set_span_in_context(parent),
            kind=self._otel.SpanKind.CLIENT,
            attributes=attrs,
            start_time=_ns(start),
        )
        if call.error:
            span.set_status(self._otel.Status(self._otel.StatusCode.ERROR, call.error))
        end = start + call.latency
        span.end(end_time=_ns(end))
        return end


def _model_attributes(call: LMCall, requested: str | None) -> dict[str, str]:
    """``gen_ai.request.model`` and ``gen_ai.response.model`` of one call, where known.

    A call that got no reply records the LM's own model name, which is then
    the requested one; a reply records the model the server reported.
    """
    attrs: dict[str, str] = {}
    if call.error is not None and not call.reply:
        requested = requested or call.model
    elif call.model:
        attrs["gen_ai.response.model"] = call.model
    if requested:
        attrs["gen_ai.request.model"] = requested
    return attrs


def _parent_path(path: str, seen: Mapping[str, Any]) -> str | None:
    """The nearest enclosing node path already spanned (``"sub"`` for ``"sub.answer"``)."""
    parts = path.split(".")
    for size in range(len(parts) - 1, 0, -1):
        candidate = ".".join(parts[:size])
        if candidate in seen:
            return candidate
    return None


def configure(exporter: str, *, service_name: str = "rhizome") -> Any:
    """A tracer provider exporting to the console (stderr) or over OTLP/gRPC.

    The OTLP exporter reads the standard ``OTEL_EXPORTER_OTLP_*`` environment
    variables (endpoint, headers). Call ``provider.shutdown()`` at exit to flush.

    Raises:
        ConfigError: ``exporter`` is unknown or opentelemetry-sdk is not installed.
    """
    if exporter not in EXPORTERS:
        raise ConfigError(
            f"unknown OpenTelemetry exporter {exporter!r}; choose one of: {', '.join(EXPORTERS)}"
        )
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            ConsoleSpanExporter,
            SimpleSpanProcessor,
        )
    except ImportError:
        raise ConfigError(
            "OpenTelemetry export needs the SDK: pip install 'rhizome[otel]' "
            "(opentelemetry-sdk and opentelemetry-exporter-otlp)"
        ) from None
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    if exporter == "console":
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(out=sys.stderr)))
    else:
        provider.add_span_processor(BatchSpanProcessor(_otlp_exporter()))
    return provider


def _otlp_exporter() -> Any:
    try:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    except ImportError:
        raise ConfigError(
            "the OTLP exporter is not installed: pip install opentelemetry-exporter-otlp"
        ) from None
    return OTLPSpanExporter()
