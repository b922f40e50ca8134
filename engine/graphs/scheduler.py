"""The scheduler: run a validated plan in one anyio task group.

Every node gets a task that waits for the nodes feeding it, decides whether
it runs or is skipped (routers), and runs it with its own node record
(:func:`~rhizome.engine.trace.open_record`) and its time limit. Independent nodes
therefore run concurrently, and each node starts as soon as its inputs exist.
The first node failure cancels the rest and comes out as one
:class:`~rhizome.engine.errors.NodeError`; cancellation from outside passes
through untouched.
"""

from __future__ import annotations

import contextvars
import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import anyio

from rhizome.engine.client.policy import applying, restore
from rhizome.engine.context import pop_settings, push_lm, settings
from rhizome.engine.errors import NodeError, NodeTimeoutError
from rhizome.engine.events import NodeStarted, active, emit, node_finished
from rhizome.engine.example import Prediction
from rhizome.engine.graphs.durable import active_run
from rhizome.engine.graphs.plan import check_inputs
from rhizome.engine.resources import close_scope, open_scope
from rhizome.engine.trace import (
    NodeRecord,
    Trace,
    close_record,
    open_record,
    start_recording,
    stop_recording,
)

if TYPE_CHECKING:
    from rhizome.engine.client.protocol import LM
    from rhizome.engine.graphs.plan import NodePlan, Plan, Source

__all__ = ("current_path", "execute", "run_traced")


_PATH: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "rhizome_node_path", default=None
)


def current_path() -> str | None:
    """The graph path of the node running in this task (``"sub.answer"``), if any."""
    return _PATH.get()


@dataclasses.dataclass(kw_only=True)
class _Run:
    """Mutable state of one plan execution."""

    plan: Plan
    inputs: dict[str, Any]
    prefix: str
    entry_parents: list[str]
    scope: anyio.CancelScope | None  # None when the nodes run one after another in one task
    done: dict[str, anyio.Event]
    outputs: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    error: NodeError | None = None

    def path(self, name: str) -> str:
        return self.prefix + name

    def fail(self, name: str, exc: Exception) -> None:
        """Keep the first failure as a NodeError and cancel the other nodes."""
        if self.error is None:
            self.error = _as_node_error(self.path(name), self.plan.nodes[name].node.kind, exc)
        if self.scope is not None:
            self.scope.cancel()


def _as_node_error(path: str, kind: str, exc: Exception) -> NodeError:
    # A NodeError raised for this node or one nested inside it already names the
    # innermost failing node; wrapping it again would hide that.
    if isinstance(exc, NodeError) and (exc.node == path or exc.node.startswith(path + ".")):
        return exc
    error = NodeError(f"{type(exc).__name__}: {exc}", node=path, kind=kind)
    error.__cause__ = exc
    error.__suppress_context__ = True
    return error


async def execute(
    plan: Plan,
    inputs: Mapping[str, Any],
    *,
    prefix: str = "",
    entry_parents: list[str] | None = None,
) -> dict[str, Any]:
    """Run every node of ``plan`` and return the graph outputs that were produced.

    Args:
        plan: The validated plan.
        inputs: Graph input values (already checked for presence).
        prefix: Prepended to node names in records and errors (``"sub."`` when nested).
        entry_parents: Parents recorded for nodes fed only by graph inputs.

    Raises:
        NodeError: The first node that failed; the original error is its ``__cause__``.
    """
    if plan.is_chain:
        return await _execute_in_order(plan, inputs, prefix, entry_parents)
    async with anyio.create_task_group() as tg:
        run = _Run(
            plan=plan,
            inputs=dict(inputs),
            prefix=prefix,
            entry_parents=list(entry_parents or []),
            scope=tg.cancel_scope,
            done={name: anyio.Event() for name in plan.order},
        )
        for name in plan.order:
            tg.start_soon(_node_task, run, name, name=f"rhizome node {prefix}{name}")
    if run.error is not None:
        raise run.error
    return _graph_outputs(run)


async def _execute_in_order(
    plan: Plan, inputs: Mapping[str, Any], prefix: str, entry_parents: list[str] | None
) -> dict[str, Any]:
    """Run a chain in this task: the same outcome as the task group, without its cost."""
    run = _Run(
        plan=plan,
        inputs=dict(inputs),
        prefix=prefix,
        entry_parents=list(entry_parents or []),
        scope=None,
        done={},
    )
    for name in plan.order:
        node_plan = plan.nodes[name]
        try:
            gathered = _gather(run, node_plan)
            if gathered is not None:
                run.outputs[name] = await _run_node(run, node_plan, *gathered)
        except Exception as exc:
            run.fail(name, exc)
            break
    if run.error is not None:
        raise run.error
    return _graph_outputs(run)


def _graph_outputs(run: _Run) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, sources in run.plan.output_sources.items():
        for s in sources:
            produced = run.outputs.get(s.node)
            if produced is not None and s.field in produced:
                result[name] = produced[s.field]
                break
    return result


async def _node_task(run: _Run, name: str) -> None:
    plan = run.plan.nodes[name]
    try:
        for pred in plan.preds:
            await run.done[pred].wait()
        gathered = _gather(run, plan)
        if gathered is not None:
            run.outputs[name] = await _run_node(run, plan, *gathered)
    except Exception as exc:
        run.fail(name, exc)
        return
    run.done[name].set()


def _active_sources(run: _Run, plan: NodePlan) -> dict[str, bool]:
    """For each feeding node: did it run, and does its edge's condition hold?"""
    active: dict[str, bool] = {}
    for src, when in plan.conditions.items():
        outputs = run.outputs.get(src)
        if outputs is None or when is None:
            active[src] = outputs is not None
            continue
        try:
            active[src] = bool(when(dict(outputs)))
        except Exception as exc:
            raise NodeError(
                f"the condition on the edge {run.path(src)!r} -> {run.path(plan.name)!r} "
                f"raised {type(exc).__name__}: {exc}",
                node=run.path(plan.name),
                kind=plan.node.kind,
            ) from exc
    return active


def _gather(run: _Run, plan: NodePlan) -> tuple[dict[str, Any], list[str]] | None:
    """The node's inputs and parents, or None when the node is skipped."""
    if not plan.conditions and not plan.feeds:  # fed by graph inputs alone: nothing to decide
        given = {f: run.inputs[f] for f in plan.from_graph if f in run.inputs}
        return given, list(dict.fromkeys(run.entry_parents))
    active = _active_sources(run, plan)
    routed = [src for src, when in plan.conditions.items() if when is not None]
    if routed and not any(active[src] for src in routed):
        return None
    inputs: dict[str, Any] = {}
    parents = [run.path(src) for src in routed if active[src]]
    for field, sources in plan.feeds.items():
        for s in sources:
            if active[s.node] and s.field in run.outputs[s.node]:
                value = run.outputs[s.node][s.field]
                if field in plan.converts:
                    value = _converted(run, plan, field, s, value)
                inputs[field] = value
                parents.append(run.path(s.node))
                break
        else:
            if field in plan.required:
                return None
    for field in plan.from_graph:
        if field in run.inputs:
            inputs[field] = run.inputs[field]
    if plan.from_graph or not parents:
        parents.extend(run.entry_parents)
    return inputs, list(dict.fromkeys(parents))


def _converted(run: _Run, plan: NodePlan, field: str, source: Source, value: Any) -> Any:
    """``value`` from ``source`` converted to the type of input ``field`` (see wiring)."""
    target = plan.converts[field]
    try:
        return target.convert(value)
    except TypeError as exc:
        produced = run.plan.nodes[source.node].node.outputs[source.field]
        src = f"{run.path(source.node)}.{source.field}"
        raise TypeError(
            f"input {field!r} expects {target.type_name}, but {src!r} "
            f"(declared {produced.type_name}) {exc}; make the two declarations agree: "
            f"declare {src!r} as {target.type_name} (for an LM output, 'name: type' in "
            f"the signature), or the input {field!r} as the type the value has, or "
            "convert the value in a FunctionNode between the two"
        ) from None


async def _run_node(
    run: _Run, plan: NodePlan, inputs: dict[str, Any], parents: list[str]
) -> dict[str, Any]:
    node, path = plan.node, run.path(plan.name)
    timeout = node.timeout if node.timeout is not None else settings().node_timeout
    record = NodeRecord(node=path, kind=node.kind, inputs=dict(inputs), parents=parents)
    # The path and the record are set and reset inline: context managers per node cost.
    path_token, opened = _PATH.set(path), open_record(record)
    policy = applying(node.policy) if node.policy is not None else None
    if active():
        emit(NodeStarted(path=path, kind=node.kind, inputs=record.inputs))
    try:
        durable = active_run()  # a checkpointed run: restore the node if it finished before
        restored = durable.restore(path, node.outputs, record) if durable is not None else None
        if restored is not None:
            outputs = restored
        elif timeout is None:  # no cancel scope to enter and leave: they cost on every node
            outputs = await node.forward(**inputs)
        else:
            with anyio.move_on_after(timeout) as scope:
                outputs = await node.forward(**inputs)
            if scope.cancelled_caught:
                raise NodeTimeoutError(
                    f"ran past its timeout of {timeout:g} s; raise it with the node's "
                    "timeout=... or rhizome.context(node_timeout=...)",
                    node=path,
                    kind=node.kind,
                )
        checked = _check_outputs(plan, outputs)
        record.outputs = dict(checked)
        if durable is not None and restored is None:
            durable.save(path, checked)
    except BaseException as exc:
        record.error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        close_record(record, opened)
        if policy is not None:
            restore(policy)
        _PATH.reset(path_token)
        if active():
            emit(node_finished(record))
    return checked


def _check_outputs(plan: NodePlan, outputs: Any) -> dict[str, Any]:
    """Keep the declared outputs; a missing one is an error.

    Nodes with a true ``may_omit_outputs`` (graphs, whose routers may skip the
    node producing an output) may leave outputs out; consumers are then skipped.
    """
    declared = plan.node.outputs
    if type(outputs) is not dict and not isinstance(outputs, Mapping):
        raise TypeError(
            f"forward() returned {type(outputs).__name__}; it must return a dict with the "
            f"outputs: {', '.join(declared)}"
        )
    missing = [f for f in declared if f not in outputs]
    if missing and not getattr(plan.node, "may_omit_outputs", False):
        raise ValueError(
            f"forward() returned no value for output(s) {', '.join(missing)}; "
            f"it returned: {', '.join(map(str, outputs)) or 'nothing'}"
        )
    return {f: outputs[f] for f in declared if f in outputs}


async def run_traced(
    plan: Plan, values: Mapping[str, Any], *, trace: Trace, lm: LM | None = None
) -> Prediction:
    """Run ``plan`` as a top-level run, recording into ``trace``.

    The door for callers that hold a graph's compiled plan
    (:meth:`Graph.plan <rhizome.engine.graphs.graph.Graph.plan>`) and run it many
    times or inside spans of their own: batches and :mod:`rhizome.telemetry`.
    :meth:`Graph.run <rhizome.engine.graphs.graph.Graph.run>` is the same run plus the
    hook that opens spans for a global OpenTelemetry tracer provider.

    Args:
        plan: The validated plan.
        values: Input values; fields the graph does not take are ignored.
        trace: The trace to fill (its ``error`` is set when the run fails).
        lm: The default LM for this run, if given.
    """
    try:
        trace.inputs = check_inputs(plan, values)
        # Set and reset inline: two context managers per run cost more than the run's bookkeeping.
        trace_token, lm_token = start_recording(trace), push_lm(lm)
        scope_token = open_scope()  # tools' connections opened in this run close with it
        try:
            outputs = await execute(plan, trace.inputs)
        finally:
            pop_settings(lm_token)
            stop_recording(trace_token)
            await close_scope(scope_token)
    except Exception as exc:
        trace.error = f"{type(exc).__name__}: {exc}"
        raise
    trace.outputs = outputs
    return Prediction(outputs, trace=trace)
