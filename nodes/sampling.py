"""Sampling nodes: try a step several times and keep what a check or reward prefers.

- :class:`BestOfN` draws ``n`` fresh attempts and keeps the one with the
  highest reward, stopping early once a reward reaches ``threshold``.
- :class:`Refine` runs runtime assertions on each attempt: when a check fails,
  the step runs again with its previous attempt and the failure message shown
  to the model (two extra input fields, rendered only on retries), a bounded
  number of times.

Both wrap either a signature (they then own one predictor, role ``""``) or a
node (its predictors are theirs, under the same roles). Attempts after the
first run with a fresh sample index, so a cache never replays one reply.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

import anyio.to_thread

from rhizome.engine.call.predictor import Predictor
from rhizome.engine.call.signature import Field, Signature
from rhizome.engine.context import context, settings
from rhizome.engine.errors import ConfigError, NodeError, SignatureError
from rhizome.engine.graphs.node import Node
from rhizome.engine.trace import current_record, jsonable
from rhizome.nodes.compare import field_lines
from rhizome.nodes.predict import Predict

if TYPE_CHECKING:
    from rhizome.engine.client.protocol import LM

__all__ = ("BestOfN", "Refine", "RefineError")


Target: TypeAlias = Node | str | Signature | type[Signature]
Reward = Callable[[dict[str, Any], dict[str, Any]], float | Awaitable[float]]
Check = Callable[[dict[str, Any], dict[str, Any]], Any]

PREVIOUS = "previous_attempt"
FEEDBACK = "feedback"
_PREVIOUS_DESC = "your previous attempt, which failed a check"
_FEEDBACK_DESC = "why the previous attempt failed; fix this in the new attempt"
_SAMPLE_STRIDE = 1000  # attempt i > 0 of a run at sample index s uses s * stride + i
_CONFIG_ERRORS = (ConfigError, SignatureError)


class _Wrapped(Node):
    """Shared plumbing: a signature's predictor or a wrapped node, run per attempt."""

    def __init__(self, target: Target, *, lm: LM | None, timeout: float | None) -> None:
        super().__init__(timeout=timeout)
        self.predictor: Predictor | None = None
        self.node: Node | None = None
        if isinstance(target, Node):
            self.node = target
        elif isinstance(target, str | Signature) or (
            isinstance(target, type) and issubclass(target, Signature)
        ):
            self.predictor = Predictor(target, lm=lm)
        else:
            raise ConfigError(
                f"{type(self).__name__} wraps a signature or a node, got {type(target).__name__}"
            )

    @property
    def inputs(self) -> Mapping[str, Field]:
        """The wrapped step's inputs."""
        if self.node is not None:
            return self.node.inputs
        return self._own().signature.inputs

    @property
    def outputs(self) -> Mapping[str, Field]:
        """The wrapped step's outputs."""
        if self.node is not None:
            return self.node.outputs
        return self._own().signature.outputs

    @property
    def optional_inputs(self) -> frozenset[str]:
        """The wrapped node's optional inputs."""
        return frozenset(getattr(self.node, "optional_inputs", frozenset()))

    def _own(self) -> Predictor:
        if self.predictor is None:
            raise ConfigError(f"this {type(self).__name__} wraps a node, not a signature")
        return self.predictor

    def children(self) -> Iterator[tuple[str, Node]]:
        """The wrapped node, sharing this node's path (its predictors keep their roles)."""
        if self.node is not None:
            yield "", self.node

    async def _run_once(
        self, inputs: Mapping[str, Any], sample: int, step: Node | Predictor | None = None
    ) -> dict[str, Any]:
        """One attempt with sample index ``sample`` (0 keeps the run's own index)."""
        runner = step if step is not None else (self.node or self._own())
        base = settings().sample
        with context(sample=base if sample == 0 else base * _SAMPLE_STRIDE + sample):
            if isinstance(runner, Predictor):
                return await runner(**inputs)
            return dict(await runner.forward(**inputs))


class BestOfN(_Wrapped):
    """Sample ``n`` attempts and keep the one with the highest reward.

    Args:
        target: A signature (one predictor) or a node to run ``n`` times.
        n: How many attempts at most.
        reward_fn: ``reward_fn(inputs, outputs) -> float`` (sync functions run
            in a worker thread; async ones are awaited).
        threshold: Stop as soon as an attempt's reward reaches this. Without it,
            a wrapped signature or Predict node asks for all ``n`` samples in one
            LM request (the LM's ``n``); other nodes run ``n`` times.
        lm: For a signature: bind its predictor to one LM.
        timeout: Seconds the node may run, None for the run's default.

    Attempts run one by one skip those that fail (a reply that does not parse,
    an LM error); when every attempt fails, the last error is raised. The rewards are written
    to the node record's ``details`` when it has one.
    """

    kind = "BestOfN"

    def __init__(
        self,
        target: Target,
        n: int,
        reward_fn: Reward,
        *,
        threshold: float | None = None,
        lm: LM | None = None,
        timeout: float | None = None,
    ) -> None:
        super().__init__(target, lm=lm, timeout=timeout)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"BestOfN needs n >= 1 attempts, got {n!r}")
        if not callable(reward_fn):
            raise ConfigError("BestOfN needs reward_fn(inputs, outputs) -> float")
        self.n = n
        self.reward_fn = reward_fn
        self.threshold = threshold

    async def forward(self, **inputs: Any) -> dict[str, Any]:
        """Run the attempts and return the best one's outputs."""
        single = self._single_predictor()
        if single is not None and self.threshold is None:
            candidates = await single.sample(inputs, n=self.n)
            rewards = [await self._reward(inputs, c) for c in candidates]
            _note(rewards=rewards)
            return candidates[max(range(len(rewards)), key=rewards.__getitem__)]
        return await self._sequential(inputs)

    def _single_predictor(self) -> Predictor | None:
        """The one predictor whose call is the whole step, when there is one."""
        if self.node is None:
            return self.predictor
        if isinstance(self.node, Predict):
            return self.node.predictor
        return None

    async def _sequential(self, inputs: dict[str, Any]) -> dict[str, Any]:
        best: tuple[float, dict[str, Any]] | None = None
        rewards: list[float | None] = []
        error: Exception | None = None
        for i in range(self.n):
            try:
                outputs = await self._run_once(inputs, i)
            except _CONFIG_ERRORS:
                raise
            except Exception as exc:
                error = exc
                rewards.append(None)
                continue
            reward = await self._reward(inputs, outputs)
            rewards.append(reward)
            if best is None or reward > best[0]:
                best = (reward, outputs)
            if self.threshold is not None and reward >= self.threshold:
                break
        _note(rewards=rewards)
        if best is None:
            raise RuntimeError(f"all {self.n} attempts failed; the last error: {error}") from error
        return best[1]

    async def _reward(self, inputs: dict[str, Any], outputs: dict[str, Any]) -> float:
        value = await _call_user(self.reward_fn, dict(inputs), dict(outputs))
        if isinstance(value, bool) or isinstance(value, int | float):
            return float(value)
        raise TypeError(f"reward_fn must return a number, got {type(value).__name__}: {value!r}")


class RefineError(NodeError):
    """A :class:`Refine` step still failed a check after its last attempt.

    Attributes:
        check: The name of the check that failed last.
        feedback: Its failure message.
        attempts: How many attempts were made.
        outputs: The last attempt's outputs.
    """

    def __init__(
        self,
        *,
        node: str,
        kind: str,
        check: str,
        feedback: str,
        attempts: int,
        outputs: dict[str, Any],
    ) -> None:
        super().__init__(
            f"check {check!r} still failed after {attempts} attempt(s): {feedback} "
            "(raise max_attempts, loosen the check, or pass strict=False to keep the last attempt)",
            node=node,
            kind=kind,
        )
        self.check = check
        self.feedback = feedback
        self.attempts = attempts
        self.outputs = outputs


class Refine(_Wrapped):
    """Retry a step until its outputs pass runtime checks.

    Args:
        target: A signature (one predictor) or a node.
        check: ``check(inputs, outputs)`` or a list of them. A check passes by
            returning None or True; it fails by returning a message (str), by
            returning False, or by raising (the exception text is the message).
            Sync checks run in a worker thread; async ones are awaited.
        max_attempts: Attempts in all, the first included.
        strict: After the last failed attempt, raise :class:`RefineError` (True)
            or return the last attempt's outputs (False).
        lm: For a signature: bind its predictor to one LM.
        timeout: Seconds the node may run, None for the run's default.

    On a retry every predictor the step holds directly (a wrapped Predict's,
    or the signature's) gets two extra inputs, ``previous_attempt`` and
    ``feedback``; its instruction and demos are the tuned ones, and its LM
    calls are logged under its own path.
    """

    kind = "Refine"

    def __init__(
        self,
        target: Target,
        check: Check | Sequence[Check],
        *,
        max_attempts: int = 3,
        strict: bool = True,
        lm: LM | None = None,
        timeout: float | None = None,
    ) -> None:
        super().__init__(target, lm=lm, timeout=timeout)
        checks = list(check) if isinstance(check, Sequence) else [check]
        if not checks or not all(callable(c) for c in checks):
            raise ConfigError("Refine needs check(inputs, outputs) -> str | None, or a list")
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
            raise ConfigError(f"Refine needs max_attempts >= 1, got {max_attempts!r}")
        clash = [n for n in (PREVIOUS, FEEDBACK) if n in self.inputs or n in self.outputs]
        if clash:
            raise ConfigError(
                f"Refine adds the inputs {PREVIOUS!r} and {FEEDBACK!r} on retries, but the "
                f"step already has field(s) {', '.join(clash)}; rename them"
            )
        self.checks = checks
        self.max_attempts = max_attempts
        self.strict = strict

    async def forward(self, **inputs: Any) -> dict[str, Any]:
        """Run the step, re-running it with feedback while a check fails."""
        outputs = await self._run_once(inputs, 0)
        failures: list[dict[str, str]] = []
        for attempt in range(1, self.max_attempts + 1):
            failed = await self._first_failure(inputs, outputs)
            if failed is None:
                _note(failures=failures)
                return outputs
            name, message = failed
            failures.append({"check": name, "feedback": message})
            if attempt == self.max_attempts:
                break
            step = self._with_feedback("\n".join(field_lines(outputs)), message)
            outputs = await self._run_once(inputs, attempt, step)
        _note(failures=failures)
        if not self.strict:
            return outputs
        record = current_record()
        raise RefineError(
            node=record.node if record is not None else self.kind,
            kind=self.kind,
            check=failures[-1]["check"],
            feedback=failures[-1]["feedback"],
            attempts=self.max_attempts,
            outputs=outputs,
        )

    async def _first_failure(
        self, inputs: dict[str, Any], outputs: dict[str, Any]
    ) -> tuple[str, str] | None:
        """``(check name, message)`` of the first check that fails, or None."""
        for check in self.checks:
            name = getattr(check, "__name__", type(check).__name__)
            try:
                verdict = await _call_user(check, dict(inputs), dict(outputs))
            except Exception as exc:
                return name, f"{type(exc).__name__}: {exc}"
            if verdict is None or verdict is True:
                continue
            if verdict is False:
                return name, f"the check {name!r} failed"
            return name, str(verdict)
        return None

    def _with_feedback(self, previous: str, feedback: str) -> Node | Predictor:
        """The step whose predictors also read the previous attempt and the feedback."""
        extra = {PREVIOUS: previous, FEEDBACK: feedback}
        if self.node is None:
            return _FeedbackPredictor(self._own(), extra)
        view = copy.copy(self.node)
        for attr, value in list(vars(view).items()):
            if isinstance(value, Predictor):
                setattr(view, attr, _FeedbackPredictor(value, extra))
        return view


class _FeedbackPredictor(Predictor):
    """A retry view of a predictor: its signature plus the feedback inputs.

    It shares the original's instruction, demos, LM and role, and adds the
    feedback values to whatever inputs the node passes.
    """

    def __init__(self, base: Predictor, extra: dict[str, str]) -> None:
        signature = base.signature.append_input(PREVIOUS, str, _PREVIOUS_DESC).append_input(
            FEEDBACK, str, _FEEDBACK_DESC
        )
        super().__init__(
            signature,
            role=base.role,
            instruction=base.instruction,
            lm=base.lm,
            temperature=base.temperature,
            max_tokens=base.max_tokens,
            adapter=base.adapter,
        )
        self.demos = base.demos
        self._extra = extra

    async def sample(self, inputs: dict[str, Any], *, n: int = 1) -> list[dict[str, Any]]:
        """The base call with the feedback inputs added."""
        return await super().sample({**inputs, **self._extra}, n=n)


async def _call_user(fn: Callable[..., Any], *args: Any) -> Any:
    """Call a user function: awaited if async, else in a worker thread."""
    if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - async callable objects
    ):
        return await fn(*args)
    result = await anyio.to_thread.run_sync(lambda: fn(*args))
    if inspect.isawaitable(result):
        return await result
    return result


def _note(**values: Any) -> None:
    """Add values to the current record's ``details`` dict, when records have one."""
    details = getattr(current_record(), "details", None)
    if isinstance(details, dict):
        details.update(jsonable(values))
