"""ReAct: an agent that thinks, calls tools, reads what they return, and finishes.

Each step the ``step`` predictor sees the task's inputs and the trajectory so
far, and gives a ``thought``, a ``tool_name`` and ``tool_args``. Arguments are
validated against the tool's schema; a bad call, or a tool that raises, turns
into error text the model reads as the observation, so it can correct itself.
The special ``finish`` action takes the task's outputs as its arguments and
ends the loop. After ``max_steps`` steps without finishing, the ``extract``
predictor produces the outputs from the trajectory.

Two protocols, one prompt:

- *text*: the reply holds the three fields in the adapter's format;
- *native*: the request also carries the tools (and ``finish``) as OpenAI
  function definitions, and a function call in the reply is the action.

Both make the ``step`` predictor's call through the one predictor call path
(:func:`~rhizome.engine.call.run.run_predictor`): the same tuned instruction and
demos (or its ``demo_selector``), the same repair of an unreadable reply, retry
of a reply cut by the token limit, and logged fields; and both read a reply in
either form, so demos bootstrapped under one protocol serve the other. The
trajectory (thought, tool, args, observation per step) is the node's
``trajectory`` output.

With native function calling a model may call several tools in one turn: the
calls run concurrently (at most ``max_parallel_tools`` at once), and the next
request replays that turn as chat messages, the assistant's ``tool_calls``
followed by one ``tool`` message per call holding its observation under its
``tool_call_id``; earlier steps stay in the trajectory text.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import anyio

from rhizome.engine import events
from rhizome.engine.call.adapters import outputs_schema
from rhizome.engine.call.parsing import coerce_json, format_value
from rhizome.engine.call.predictor import Predictor
from rhizome.engine.call.run import ToolUse, run_predictor
from rhizome.engine.call.signature import Field, Signature
from rhizome.engine.context import resolve_lm
from rhizome.engine.errors import ConfigError, ParseError
from rhizome.engine.graphs.durable import checkpointed_step, typed
from rhizome.engine.graphs.node import Node
from rhizome.engine.graphs.scheduler import current_path
from rhizome.engine.trace import current_record
from rhizome.tools.agent.tool import Tool, tool

if TYPE_CHECKING:
    from rhizome.engine.call.adapters import Adapter
    from rhizome.engine.client.protocol import LM, Choice, ToolCall

__all__ = ("ReAct", "format_trajectory")


FINISH = "finish"
TRAJECTORY = "trajectory"
Protocol = Literal["auto", "native", "text"]
_NATIVE_NOTE = (
    "Or act with a function call instead: call the tool (or finish) directly, and write "
    "your thought as the message text."
)
_TRAJECTORY_DESC = "the steps taken so far: thought, tool, arguments and what the tool returned"


@dataclasses.dataclass(frozen=True)
class _Action:
    """One action the model chose; ``error`` is set when its reply could not be read."""

    thought: str
    tool: str
    args: Any
    error: str | None = None
    call: ToolCall | None = None

    @classmethod
    def of(cls, out: dict[str, Any]) -> _Action:
        return cls(str(out["thought"]), str(out["tool_name"]), out["tool_args"])

    @classmethod
    def unreadable(cls, exc: ParseError) -> _Action:
        message = f"Error: your reply could not be read: {exc}. Follow the reply format."
        return cls("", "", None, message)


class ReAct(Node):
    """A tool-using agent loop, bounded by ``max_steps``.

    Args:
        signature: The task (``"question -> answer"``).
        tools: The tools the agent may call (:class:`~rhizome.tools.agent.tool.Tool`
            objects, or typed functions, wrapped with ``@tool``). Shared, not
            copied, by :meth:`copy`.
        max_steps: Tool calls at most before ``extract`` answers from the trajectory.
        protocol: ``"native"`` function calling, ``"text"``, or ``"auto"``
            (native when the LM's capabilities say it supports tools).
        lm: Bind both predictors to one LM instead of the run's default.
        max_observation_chars: Longer tool results are cut to this many characters.
        max_parallel_tools: Tool calls of one model turn that run at once.
        timeout: Seconds the whole agent may run, None for the run's default.

    Attributes:
        step: The predictor choosing each action (role ``"step"``).
        extract: The predictor answering from the trajectory (role ``"extract"``).
        tools: The tools by name.

    Outputs are the task's outputs plus ``trajectory``, a list of
    ``{"thought", "tool", "args", "observation"}`` dicts.
    """

    kind = "ReAct"

    def __init__(
        self,
        signature: str | Signature | type[Signature],
        tools: Sequence[Tool | Callable[..., Any]],
        *,
        max_steps: int = 6,
        protocol: Protocol = "auto",
        lm: LM | None = None,
        max_observation_chars: int = 4000,
        max_parallel_tools: int = 4,
        timeout: float | None = None,
    ) -> None:
        super().__init__(timeout=timeout)
        for name, value in (("max_steps", max_steps), ("max_parallel_tools", max_parallel_tools)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"ReAct needs {name} >= 1, got {value!r}")
        if protocol not in ("auto", "native", "text"):
            raise ConfigError(f"protocol must be 'auto', 'native' or 'text', got {protocol!r}")
        self._base = Signature.coerce(signature)
        if TRAJECTORY in {f.name for f in self._base.fields}:
            raise ConfigError(
                f"ReAct adds a {TRAJECTORY!r} field; the signature {self._base.spec()!r} "
                "already has one; rename it"
            )
        self.tools = _tools_by_name(tools)
        self.max_steps = max_steps
        self.protocol = protocol
        self.max_observation_chars = max_observation_chars
        self.max_parallel_tools = max_parallel_tools
        self.step = Predictor(self._step_signature(), role="step", lm=lm)
        self.extract = Predictor(
            self._base.append_input(TRAJECTORY, str, _TRAJECTORY_DESC).with_instruction(
                f"{self._base.instruction}\n\nAn agent worked on this task; its steps and "
                "what its tools returned are in the trajectory. Give the final outputs."
            ),
            role="extract",
            lm=lm,
        )

    def _step_signature(self) -> Signature:
        names = (*self.tools, FINISH)
        sig = self._base.append_input(TRAJECTORY, str, _TRAJECTORY_DESC)
        fields = [
            *sig.inputs.values(),
            Field("thought", str, "reason about what to do next", is_input=False),
            Field(
                "tool_name",
                Literal[names],
                f"the tool to call next, or {FINISH!r} when the outputs are known",
                is_input=False,
            ),
            Field("tool_args", dict[str, Any], "the tool's arguments as a JSON object", False),
        ]
        return Signature(fields=fields, instruction=self._step_instruction())

    def _step_instruction(self) -> str:
        outs = ", ".join(f"{f.name} ({f.type_name})" for f in self._base.outputs.values())
        lines = [
            self._base.instruction,
            "",
            "You are an agent working in steps. In each step, write a thought, then choose "
            "one tool and its arguments (a JSON object). What the tool returns is added to "
            f"the trajectory. When you know the outputs, choose {FINISH!r} with the outputs "
            f"as its arguments: {outs}.",
            "",
            "Tools:",
        ]
        for i, t in enumerate(self.tools.values(), 1):
            lines.append(f"({i}) {t.name}: {t.description or '(no description)'}")
            lines.append("    " + t.describe_parameters().replace("\n", "\n    "))
        lines.append(f"({len(self.tools) + 1}) {FINISH}: end the task; arguments: {outs}")
        return "\n".join(lines)

    @property
    def inputs(self) -> Mapping[str, Field]:
        """The task's inputs."""
        return self._base.inputs

    @property
    def outputs(self) -> Mapping[str, Field]:
        """The task's outputs plus ``trajectory``."""
        return {
            **self._base.outputs,
            TRAJECTORY: Field(TRAJECTORY, list[dict[str, Any]], _TRAJECTORY_DESC, False),
        }

    # ---------------------------------------------------------------- running

    async def forward(self, **inputs: Any) -> dict[str, Any]:
        """Run the agent loop and return the outputs and the trajectory."""
        task = {name: inputs[name] for name in self._base.inputs if name in inputs}
        native = self._native()
        trajectory: list[dict[str, Any]] = []
        replay: tuple[dict[str, Any], ...] = ()  # the last turn's tool calls, as messages
        for index in range(self.max_steps):
            # A checkpointed run records each step (its trajectory entries, the turn to
            # replay, and the outputs once finished), so a resumed agent repeats no LM
            # or tool call.
            step = functools.partial(self._step, task, trajectory, native, replay)
            done = await checkpointed_step(index, step)
            trajectory.extend(done["steps"])
            if done["final"] is not None:
                return {**typed(self._base.outputs, done["final"]), TRAJECTORY: trajectory}
            replay = tuple(done["replay"])
        final = await self.extract(**task, **{TRAJECTORY: format_trajectory(trajectory)})
        return {**final, TRAJECTORY: trajectory}

    async def _step(
        self,
        task: dict[str, Any],
        trajectory: list[dict[str, Any]],
        native: bool,
        replay: tuple[dict[str, Any], ...],
    ) -> dict[str, Any]:
        """One model turn after ``trajectory``: its action(s) and what they returned.

        Returns the turn's trajectory entries, the task's outputs once ``finish``
        succeeded (else None), and the turn as chat messages for the next request
        (``replay``; empty under the text protocol).
        """
        # Steps replayed as messages (one per tool message) are left out of the text.
        shown = trajectory[: len(trajectory) - len(replay) + 1] if replay else trajectory
        step_inputs = {**task, TRAJECTORY: format_trajectory(shown)}
        if native:
            actions = await self._native_step(step_inputs, replay)
        else:
            actions = await self._text_step(step_inputs)
        final, entries = await self._act(actions, len(trajectory))
        turn = list(_replay(actions, entries)) if final is None else []
        return {"steps": entries, "final": final, "replay": turn}

    async def _act(
        self, actions: Sequence[_Action], first: int = 0
    ) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        """Carry out one turn's actions, up to its first ``finish``; tool calls run concurrently.

        Returns the task's outputs when ``finish`` succeeded (else None) and a
        trajectory entry per action taken, in the model's order.
        """
        ends = [i for i, a in enumerate(actions) if a.error is None and a.tool == FINISH]
        taken = actions[: ends[0] + 1] if ends else actions
        entries = [{"thought": a.thought, "tool": a.tool, "args": a.args} for a in taken]
        limiter = anyio.CapacityLimiter(self.max_parallel_tools)
        final: dict[str, Any] | None = None

        async def observe(entry: dict[str, Any], action: _Action, step: int) -> None:
            async with limiter:
                entry["observation"] = await self._reported(action, step)

        try:
            async with anyio.create_task_group() as group:
                for index, (entry, action) in enumerate(zip(entries, taken, strict=True)):
                    if action.error is not None:
                        entry["observation"] = action.error
                    elif action.tool == FINISH:
                        final, problem = self._finish(action.args)
                        entry["observation"] = "done" if final is not None else problem
                    else:
                        group.start_soon(observe, entry, action, first + index)
        except BaseExceptionGroup as group_error:
            # Tool failures are observations already; what escapes is a signal (a tool
            # asking a person, a cancellation): pass on the first one as itself.
            raise _first_leaf(group_error) from None
        return final, entries


    def _native(self) -> bool:
        if self.protocol != "auto":
            return self.protocol == "native"
        return resolve_lm(self.step.lm, node=_path(self.step)).capabilities.tools

    async def _text_step(self, inputs: dict[str, Any]) -> list[_Action]:
        try:
            out = await self.step(**inputs)
        except ParseError as exc:
            return [_Action.unreadable(exc)]
        return [_Action.of(out)]

    async def _native_step(
        self, inputs: dict[str, Any], replay: tuple[dict[str, Any], ...] = ()
    ) -> list[_Action]:
        """One step with the tools in the request; each function call is an action.

        It is the ``step`` predictor's call like any other (demos, selector,
        repair, logging); only the reply may be function calls instead of text.
        ``replay`` (the last turn's calls and observations) follows the prompt.
        """
        offer = ToolUse(
            tools=(*(t.openai_schema() for t in self.tools.values()), self._finish_schema()),
            read=_call_outputs,
            hint=_NATIVE_NOTE,
            turns=replay,
        )
        try:
            (sample,) = await run_predictor(self.step, inputs, tools=offer)
        except ParseError as exc:
            return [_Action.unreadable(exc)]
        if not sample.tool_calls:
            return [_Action.of(sample.outputs)]
        thought = str(sample.outputs["thought"])
        return [
            _Action(thought, c.name, _decode_args(c.arguments), call=c) for c in sample.tool_calls
        ]

    def _finish_schema(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {
                "name": FINISH,
                "description": "End the task, giving its outputs as the arguments.",
                "parameters": outputs_schema(self._base),
            },
        }

    def _finish(self, args: Any) -> tuple[dict[str, Any] | None, str]:
        """The validated outputs from ``finish``'s arguments, or an error for the model."""
        if not isinstance(args, dict):
            return (
                None,
                f"Error: {FINISH} takes a JSON object with: {', '.join(self._base.outputs)}",
            )
        final, problems = {}, []
        for name, field in self._base.outputs.items():
            if name not in args:
                problems.append(f"missing {name!r} ({field.type_name})")
                continue
            try:
                final[name] = coerce_json(field, args[name])
            except (ValueError, TypeError) as exc:
                first = str(exc).splitlines()
                problems.append(f"{name!r} is not a valid {field.type_name}: {first[-1]}")
        if problems:
            return None, f"Error: invalid arguments for {FINISH}: " + "; ".join(problems)
        return final, ""

    async def _reported(self, action: _Action, step: int) -> str:
        """:meth:`_observe`, reported to the run's listener as a tool call and its result."""
        if not events.active():
            return await self._observe(action.tool, action.args)
        path = current_path() or ""
        events.emit(events.ToolCall(path=path, tool=action.tool, args=action.args, step=step))
        started = time.perf_counter()
        observation = await self._observe(action.tool, action.args)
        latency = time.perf_counter() - started
        result = events.ToolResult(
            path=path, tool=action.tool, observation=observation, step=step, latency=latency
        )
        events.emit(result)
        return observation

    async def _observe(self, name: str, args: Any) -> str:
        """What the tool returned, or error text the model can act on."""
        found = self.tools.get(name)
        if found is None:
            known = ", ".join([*self.tools, FINISH])
            return f"Error: there is no tool {name!r}; the tools are: {known}"
        if isinstance(args, str | dict):
            text = await found.observe(args)
        else:
            text = f"Error: the arguments must be a JSON object.\n{found.describe_parameters()}"
        limit = self.max_observation_chars
        return text if len(text) <= limit else text[:limit] + " …(cut)"

    def __repr__(self) -> str:
        return f"ReAct({self._base.spec()!r}, tools=[{', '.join(self.tools)}])"


def format_trajectory(trajectory: Sequence[dict[str, Any]]) -> str:
    """The steps so far as prompt text, one block per step."""
    if not trajectory:
        return "(no steps yet)"
    blocks = []
    for i, entry in enumerate(trajectory, 1):
        blocks.append(
            f"[step {i}]\nthought: {entry.get('thought', '')}\ntool: {entry.get('tool', '')}\n"
            f"args: {format_value(entry.get('args'))}\n"
            f"observation: {entry.get('observation', '')}"
        )
    return "\n\n".join(blocks)


def _tools_by_name(tools: Sequence[Tool | Callable[..., Any]]) -> dict[str, Tool]:
    if isinstance(tools, Tool) or callable(tools):
        raise ConfigError("ReAct takes a list of tools, e.g. tools=[search, calculator]")
    by_name: dict[str, Tool] = {}
    for item in tools:
        t = item if isinstance(item, Tool) else tool(item)
        if t.name == FINISH:
            raise ConfigError(f"a tool cannot be named {FINISH!r}: ReAct uses that name to finish")
        if t.name in by_name:
            raise ConfigError(f"two tools are named {t.name!r}; tool names must be unique")
        by_name[t.name] = t
    return by_name


def _path(predictor: Predictor) -> str:
    """The parameter path LM calls of ``predictor`` are logged under in this node."""
    record = current_record()
    if record is None:
        return predictor.role or "predictor"
    return f"{record.node}.{predictor.role}" if predictor.role else record.node


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first exception inside ``group``, looking into nested groups."""
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


def _replay(
    actions: Sequence[_Action], entries: Sequence[dict[str, Any]]
) -> tuple[dict[str, Any], ...]:
    """A turn of function calls as messages: the calls, then each observation by call id.

    Empty when the turn was not made of function calls (the text protocol).
    """
    calls = [a.call for a in actions[: len(entries)] if a.call is not None]
    if not calls or len(calls) != len(entries):
        return ()
    listed = [
        {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
        for c in calls
    ]
    thought = entries[0]["thought"] or None
    results = [
        {"role": "tool", "tool_call_id": c.id, "content": str(e["observation"])}
        for c, e in zip(calls, entries, strict=True)
    ]
    return ({"role": "assistant", "content": thought, "tool_calls": listed}, *results)


def _decode_args(arguments: str) -> Any:
    """A function call's arguments as a dict, or the raw text when it is not JSON."""
    try:
        return json.loads(arguments) if arguments.strip() else {}
    except json.JSONDecodeError:
        return arguments


def _call_outputs(choice: Choice, adapter: Adapter) -> dict[str, Any]:
    """The step's output fields for a reply that called tools (its first call)."""
    first = choice.tool_calls[0]
    return {
        "thought": _thought_of(adapter, choice.text),
        "tool_name": first.name,
        "tool_args": _decode_args(first.arguments),
    }


def _thought_of(adapter: Adapter, text: str) -> str:
    """The thought in a reply that also made function calls (tagged or plain)."""
    if not text.strip():
        return ""
    try:
        return str(adapter.parse(_THOUGHT_ONLY, text)["thought"])
    except ParseError:
        return text.strip()


_THOUGHT_ONLY = Signature("trajectory -> thought")
