"""ProgramOfThought: the model writes a Python program, a sandbox runs it, its output answers.

1. ``generate`` writes a program that prints the answer.
2. The program runs in a :class:`~rhizome.tools.agent.sandbox.PythonSandbox` (a
   separate, limited process).
3. If it fails (an exception, a limit, no output), ``regenerate`` sees the
   program and the error and writes a corrected one, up to ``max_retries`` times.
4. The printed output becomes the typed outputs: read directly when it parses
   (one output field: the printed value; several: a printed JSON object), else
   through the ``answer`` predictor.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from rhizome.engine.call.parsing import coerce_text, parse_json, strip_fence
from rhizome.engine.call.predictor import Predictor
from rhizome.engine.call.signature import Field, Signature
from rhizome.engine.errors import ConfigError, ParseError, RhizomeError
from rhizome.engine.graphs.node import Node
from rhizome.tools.agent.sandbox import PythonSandbox

if TYPE_CHECKING:
    from rhizome.engine.client.protocol import LM

__all__ = ("ProgramError", "ProgramOfThought")


CODE = "code"
_CODE_DESC = "a complete Python program (standard library only) that prints the answer"
_RULES = (
    "Write a Python program that computes the outputs ({outputs}) and prints {what}. "
    "Use only the standard library; do not read input, files or the network."
)


class ProgramError(RhizomeError, RuntimeError):
    """Every program the model wrote failed to run.

    Attributes:
        code: The last program.
        error: How it failed (the sandbox's report).
    """

    def __init__(self, message: str, *, code: str, error: str) -> None:
        super().__init__(message)
        self.code = code
        self.error = error


class ProgramOfThought(Node):
    """Answer by writing and running a Python program.

    Args:
        signature: The task (``"question -> answer: float"``).
        sandbox: Where programs run; the default limits are
            :class:`~rhizome.tools.agent.sandbox.PythonSandbox`'s.
        max_retries: Corrected programs to ask for after a failure.
        direct: Read the outputs from the printed text when it parses, saving
            the ``answer`` call; False always asks the ``answer`` predictor.
        lm: Bind the predictors to one LM instead of the run's default.
        timeout: Seconds the node may run, None for the run's default.

    Attributes:
        generate: Writes the first program (role ``"generate"``).
        regenerate: Fixes a failed program (role ``"regenerate"``).
        answer: Turns the printed output into the outputs (role ``"answer"``).

    Outputs are the task's outputs plus ``code``, the program that ran.

    Raises:
        ProgramError: (from forward) no program ran successfully.
    """

    kind = "ProgramOfThought"

    def __init__(
        self,
        signature: str | Signature | type[Signature],
        *,
        sandbox: PythonSandbox | None = None,
        max_retries: int = 2,
        direct: bool = True,
        lm: LM | None = None,
        timeout: float | None = None,
    ) -> None:
        super().__init__(timeout=timeout)
        base = Signature.coerce(signature)
        taken = {CODE, "previous_code", "error", "output"} & {f.name for f in base.fields}
        if taken:
            raise ConfigError(
                f"ProgramOfThought adds fields named {', '.join(sorted(taken))}; rename them "
                f"in {base.spec()!r}"
            )
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ConfigError(f"max_retries must be a whole number >= 0, got {max_retries!r}")
        self._base = base
        self.sandbox = sandbox if sandbox is not None else PythonSandbox()
        self.max_retries = max_retries
        self.direct = direct
        rules = _RULES.format(outputs=", ".join(base.outputs), what=_what_to_print(base))
        code_field = Field(CODE, str, _CODE_DESC, is_input=False)
        write = Signature(fields=[*base.inputs.values(), code_field])
        self.generate = Predictor(
            write.with_instruction(f"{base.instruction}\n\n{rules}"), role="generate", lm=lm
        )
        fix = write.append_input("previous_code", str, "the program that failed")
        fix = fix.append_input("error", str, "how it failed")
        self.regenerate = Predictor(
            fix.with_instruction(
                f"{base.instruction}\n\n{rules}\nThe previous program failed; write a "
                "corrected program."
            ),
            role="regenerate",
            lm=lm,
        )
        read = base.append_input(CODE, str, "the program").append_input(
            "output", str, "what the program printed"
        )
        self.answer = Predictor(
            read.with_instruction(
                f"{base.instruction}\n\nA program computed the answer; give the outputs "
                "from what it printed."
            ),
            role="answer",
            lm=lm,
        )

    @property
    def inputs(self) -> Mapping[str, Field]:
        """The task's inputs."""
        return self._base.inputs

    @property
    def outputs(self) -> Mapping[str, Field]:
        """The task's outputs plus ``code``."""
        return {**self._base.outputs, CODE: Field(CODE, str, "the program that ran", False)}

    async def forward(self, **inputs: Any) -> dict[str, Any]:
        """Write, run and, if needed, fix the program; return the outputs."""
        task = {name: inputs[name] for name in self._base.inputs if name in inputs}
        code = _program((await self.generate(**task))[CODE])
        printed, error = await self._execute(code)
        for _ in range(self.max_retries):
            if error is None:
                break
            fixed = await self.regenerate(**task, previous_code=code, error=error)
            code = _program(fixed[CODE])
            printed, error = await self._execute(code)
        if error is not None:
            raise ProgramError(
                f"the program still failed after {self.max_retries} retries: "
                f"{error.strip().splitlines()[-1] if error.strip() else error}",
                code=code,
                error=error,
            )
        return {**(await self._outputs(task, code, printed)), CODE: code}

    async def _execute(self, code: str) -> tuple[str, str | None]:
        """``(stdout, None)`` for a run that printed something, else ``("", error text)``."""
        if not code.strip():
            return "", "the reply held no program"
        result = await self.sandbox.run(code)
        if not result.ok:
            return "", result.to_text()
        if not result.stdout.strip():
            return "", "the program printed nothing; print the answer"
        return result.stdout, None

    async def _outputs(self, task: dict[str, Any], code: str, printed: str) -> dict[str, Any]:
        if self.direct:
            parsed = _read_directly(self._base, printed)
            if parsed is not None:
                return parsed
        return await self.answer(**task, code=code, output=printed)

    def __repr__(self) -> str:
        return f"ProgramOfThought({self._base.spec()!r})"


def _what_to_print(signature: Signature) -> str:
    outs = list(signature.outputs.values())
    if len(outs) == 1:
        return f"only the value of {outs[0].name} ({outs[0].type_name})"
    keys = ", ".join(f.name for f in outs)
    return f"one JSON object with the keys {keys}"


def _program(text: str) -> str:
    return strip_fence(str(text))


def _read_directly(signature: Signature, printed: str) -> dict[str, Any] | None:
    """The outputs read from the printed text, or None when it does not parse."""
    outs = signature.outputs
    if len(outs) == 1:
        (name, field), text = next(iter(outs.items())), printed.strip()
        try:
            return {name: coerce_text(field, text)}
        except (ValueError, TypeError):
            return None
    try:
        return parse_json(outs, printed)
    except ParseError:
        return None
