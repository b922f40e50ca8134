"""Running a predictor: the one place a predictor's LM call happens.

:func:`run_predictor` renders the call with the predictor's adapter
(:mod:`rhizome.engine.adapters`), sends it, parses the reply, makes one repair
attempt when it does not parse, and logs an :class:`LMCall` into the current
node record for every request.
"""

from __future__ import annotations

import dataclasses
import inspect
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import anyio

from rhizome.engine.context import resolve_lm, settings
from rhizome.engine.errors import ParseError, SignatureError
from rhizome.engine.lm import LM, Capabilities, LMRequest, LMResponse, Usage
from rhizome.engine.signature import Signature
from rhizome.engine.trace import LMCall, current_record, log_call

if TYPE_CHECKING:
    from rhizome.engine.adapters import Adapter, RenderedPrompt
    from rhizome.engine.predictor import Predictor


async def run_predictor(
    predictor: Predictor, inputs: Mapping[str, Any], n: int = 1
) -> list[dict[str, Any]]:
    """Make ``predictor``'s LM call for ``inputs`` and return the samples that parsed.

    A reply that does not parse gets one repair attempt: the bad reply is sent
    back with a message saying what was wrong. Every request is logged as an
    :class:`LMCall` in the current node record (``attempt`` 0 or 1).

    Raises:
        SignatureError: An input field is missing.
        ConfigError: No LM is bound or set for the run.
        ParseError: No sample parsed, even after the repair attempt.
        LMError: The LM could not answer.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    call = _Call.start(predictor, inputs)
    prompt = call.adapter.render(
        predictor, call.inputs, demos=await _select_demos(predictor, call.inputs)
    )
    request = LMRequest(
        messages=prompt.messages,
        temperature=predictor.temperature,
        max_tokens=predictor.max_tokens,
        n=n,
        response_format=_response_format(prompt, call.lm.capabilities, predictor.signature),
    )
    first = await call.attempt(request, attempt=0)
    if not isinstance(first, ParseError):
        return first
    second = await call.attempt(call.repair_request(request, first), attempt=1)
    if not isinstance(second, ParseError):
        return second
    raise ParseError(
        f"predictor {call.path!r}: the reply did not parse, even after one repair "
        f"attempt: {second}",
        raw=second.raw,
        field=second.field,
    ) from second


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Call:
    """One logical predictor call: where it logs, which LM and adapter it uses."""

    predictor: Predictor
    path: str
    inputs: dict[str, Any]
    lm: LM
    adapter: Adapter

    @classmethod
    def start(cls, predictor: Predictor, inputs: Mapping[str, Any]) -> _Call:
        record = current_record()
        role = predictor.role
        if record is None:
            path = role or "predictor"
        else:
            path = f"{record.node}.{role}" if role else record.node
        values = _checked_inputs(predictor.signature, inputs, path)
        lm = resolve_lm(predictor.lm, node=path)
        adapter = predictor.adapter or _default_adapter(lm)
        return cls(predictor=predictor, path=path, inputs=values, lm=lm, adapter=adapter)

    def repair_request(self, request: LMRequest, error: ParseError) -> LMRequest:
        """The follow-up request: the bad reply, then what was wrong with it."""
        fix = self.adapter.repair_message(self.predictor.signature, error)
        messages = (
            *request.messages,
            {"role": "assistant", "content": error.raw},
            {"role": "user", "content": fix},
        )
        return dataclasses.replace(request, messages=messages, n=1)

    async def attempt(
        self, request: LMRequest, *, attempt: int
    ) -> list[dict[str, Any]] | ParseError:
        """Parsed samples of one request, or the first parse error when none parsed."""
        parsed: list[dict[str, Any]] = []
        errors: list[ParseError] = []
        for response in await self._complete(request, attempt):
            ok, bad = self._parse(response)
            self._log(request, attempt, response=response, outputs=ok, errors=bad)
            parsed += ok
            errors += bad
        return parsed or errors[0]

    def _parse(self, response: LMResponse) -> tuple[list[dict[str, Any]], list[ParseError]]:
        if not response.choices:
            return [], [ParseError("the LM returned no choices", raw="")]
        ok, bad = [], []
        for choice in response.choices:
            try:
                ok.append(self.adapter.parse(self.predictor.signature, choice.text))
            except ParseError as exc:
                bad.append(exc)
        return ok, bad

    async def _complete(self, request: LMRequest, attempt: int) -> list[LMResponse]:
        """One request, or ``n`` single-sample requests when the LM cannot sample ``n``."""
        sample = settings().sample
        if request.n == 1 or self.lm.capabilities.n:
            return [await self._send(request, sample, attempt)]
        single = dataclasses.replace(request, n=1)
        results: list[LMResponse | Exception] = []

        async def one(index: int) -> None:
            try:
                results.append(await self._send(single, sample * request.n + index, attempt))
            except Exception as exc:
                results.append(exc)

        async with anyio.create_task_group() as group:
            for index in range(request.n):
                group.start_soon(one, index)
        for result in results:
            if isinstance(result, Exception):
                raise result
        return [r for r in results if isinstance(r, LMResponse)]

    async def _send(self, request: LMRequest, sample: int, attempt: int) -> LMResponse:
        started = time.perf_counter()
        try:
            return await self.lm.complete(request, sample=sample)
        except Exception as exc:
            self._log(request, attempt, error=f"{type(exc).__name__}: {exc}", started=started)
            raise

    def _log(
        self,
        request: LMRequest,
        attempt: int,
        *,
        response: LMResponse | None = None,
        outputs: Sequence[dict[str, Any]] = (),
        errors: Sequence[ParseError] = (),
        error: str | None = None,
        started: float = 0.0,
    ) -> None:
        if error is None and not outputs and errors:
            error = f"ParseError: {errors[0]}"
        latency = response.latency if response else time.perf_counter() - started
        log_call(
            LMCall(
                predictor=self.path,
                model=(response.model if response else "") or self.lm.name,
                started=time.time() - latency,
                inputs=dict(self.inputs),
                outputs=dict(outputs[0]) if outputs else {},
                messages=list(request.messages),
                reply=response.text if response else "",
                usage=response.usage if response else Usage(),
                cached=response.cached if response else False,
                latency=latency,
                cost=response.cost if response else 0.0,
                error=error,
                attempt=attempt,
            )
        )


def _checked_inputs(signature: Signature, inputs: Mapping[str, Any], path: str) -> dict[str, Any]:
    """The signature's inputs taken from ``inputs``; a missing one is an error naming it."""
    missing = [name for name in signature.inputs if name not in inputs]
    if missing:
        names = ", ".join(repr(m) for m in missing)
        expected = ", ".join(signature.inputs) or "(none)"
        raise SignatureError(
            f"predictor {path!r} is missing input {names}; its inputs are: {expected}"
        )
    return {name: inputs[name] for name in signature.inputs}


def _response_format(
    prompt: RenderedPrompt, caps: Capabilities, signature: Signature
) -> dict[str, Any] | None:
    """The adapter's schema if the server honours it; plain JSON mode if it reorders keys."""
    if prompt.response_format is None or not caps.json_schema:
        return None
    if not caps.json_key_order and len(signature.outputs) > 1:
        return {"type": "json_object"}
    return prompt.response_format


async def _select_demos(predictor: Predictor, inputs: Mapping[str, Any]) -> list[Any] | None:
    """Per-input demos from the predictor's ``demo_selector`` (kNN), else None for its own."""
    selector = predictor.demo_selector
    if selector is None:
        return None
    chosen = selector(dict(inputs))
    return list(await chosen if inspect.isawaitable(chosen) else chosen)


def _default_adapter(lm: LM) -> Adapter:
    # imported here: the adapters module re-exports run_predictor from this one
    from rhizome.engine.adapters import default_adapter

    return default_adapter(lm)
