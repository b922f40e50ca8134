"""LLM-as-judge: a metric that asks an LM whether a prediction meets criteria.

The judge is a small graph of its own — one Predict node
``question, gold_answer, predicted_answer -> rationale, verdict: bool`` — so it
can be run, traced, cached and even optimized like any program. Calling the
metric is a coroutine: ``await judge(example, prediction)``. Evaluations and
optimizers await metric results that are awaitable, and an evaluation's usage
counts the judge's own LM calls (each verdict's trace is reported with
:func:`~rhizome.optimizers.metrics.report_trace`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from rhizome.engine.call.parsing import format_value
from rhizome.engine.context import context
from rhizome.engine.errors import ConfigError
from rhizome.engine.graphs.graph import Graph
from rhizome.engine.graphs.scheduler import run_traced
from rhizome.engine.trace import Trace
from rhizome.nodes.predict import Predict
from rhizome.optimizers.metrics import report_trace

if TYPE_CHECKING:
    from rhizome.engine.client.protocol import LM

__all__ = ("LLMJudge", "llm_judge")


JUDGE_SIGNATURE = "question, gold_answer, predicted_answer -> rationale, verdict: bool"
JUDGE_INSTRUCTION = (
    "You grade answers. Decide whether the predicted answer to the question meets the "
    "criteria below, using the gold answer as the reference. Explain your reasoning "
    "briefly in the rationale, then give the verdict: true if it meets the criteria, "
    "false otherwise.\n\nCriteria: {criteria}"
)


class LLMJudge:
    """A metric ``await judge(example, prediction, trace) -> float | bool``.

    Args:
        criteria: What a good answer must do, in words.
        lm: The judging LM; None uses the LM of the surrounding run.
        samples: Verdicts sampled per prediction; the score is the fraction of ``True``.
        threshold: When set, return ``score >= threshold`` (a bool) instead of the fraction.
        question_field: Example field holding the question (None: every input field).
        gold_field: Example field holding the reference answer.
        answer_field: Prediction field holding the answer to judge.

    Attributes:
        graph: The judge's own graph (one node, ``"judge"``); tune it like any program.

    Example:
        >>> metric = llm_judge("names the same person as the gold answer")  # doctest: +SKIP
        >>> result = await Evaluate(graph, devset, metric)  # doctest: +SKIP
    """

    def __init__(
        self,
        criteria: str,
        *,
        lm: LM | None = None,
        samples: int = 1,
        threshold: float | None = None,
        question_field: str | None = "question",
        gold_field: str = "answer",
        answer_field: str = "answer",
    ) -> None:
        if not criteria.strip():
            raise ConfigError("llm_judge needs criteria, e.g. 'the answer is factually correct'")
        if samples < 1:
            raise ConfigError(f"llm_judge(samples={samples}) must be at least 1")
        self.criteria = criteria
        self.lm = lm
        self.samples = samples
        self.threshold = threshold
        self.question_field = question_field
        self.gold_field = gold_field
        self.answer_field = answer_field
        instruction = JUDGE_INSTRUCTION.format(criteria=criteria.strip())
        self.graph = Graph("judge").add("judge", Predict(JUDGE_SIGNATURE, instruction=instruction))
        self.__name__ = f"llm_judge({criteria[:40]!r})"

    def judge_inputs(
        self, example: Mapping[str, Any], prediction: Mapping[str, Any]
    ) -> dict[str, str]:
        """The judge node's inputs for one example and prediction."""
        if self.answer_field not in prediction:
            fields = ", ".join(prediction) or "none"
            raise KeyError(
                f"prediction has no field {self.answer_field!r} to judge; its fields are: "
                f"{fields} (pass answer_field=...)"
            )
        return {
            "question": self._question(example),
            "gold_answer": format_value(example.get(self.gold_field, "(none given)")),
            "predicted_answer": format_value(prediction[self.answer_field]),
        }

    def _question(self, example: Mapping[str, Any]) -> str:
        if self.question_field is not None and self.question_field in example:
            return format_value(example[self.question_field])
        inputs = getattr(example, "inputs", None)
        values = inputs() if callable(inputs) else dict(example)
        shown = {k: v for k, v in values.items() if k != self.gold_field}
        return "\n".join(f"{k}: {format_value(v)}" for k, v in shown.items())

    async def verdicts(
        self, example: Mapping[str, Any], prediction: Mapping[str, Any]
    ) -> list[tuple[bool, str]]:
        """``(verdict, rationale)`` for each sample (sample ``i`` uses sample index ``i``)."""
        inputs = self.judge_inputs(example, prediction)
        plan = self.graph.plan()
        out = []
        for i in range(self.samples):
            trace = Trace()
            try:
                with context(sample=i):
                    result = await run_traced(plan, inputs, trace=trace, lm=self.lm)
            finally:
                report_trace(trace)  # the evaluation counts the judge's calls, failed ones too
            out.append((bool(result["verdict"]), str(result.get("rationale", ""))))
        return out

    async def __call__(
        self,
        example: Mapping[str, Any],
        prediction: Mapping[str, Any],
        trace: Trace | None = None,
    ) -> float | bool:
        """Judge ``prediction``: the fraction of sampled verdicts that are true."""
        verdicts = await self.verdicts(example, prediction)
        score = sum(v for v, _ in verdicts) / len(verdicts)
        return score if self.threshold is None else score >= self.threshold


llm_judge = LLMJudge
"""The LLM-as-judge metric factory: ``llm_judge(criteria, ...)`` builds an :class:`LLMJudge`."""
