"""Fine-tuning data from successful runs, in the OpenAI chat fine-tuning format.

:func:`export_finetune_data` runs the graph over a trainset, keeps the runs
whose final prediction passes the metric, and writes every LM node's
successful calls from those runs as JSONL lines::

    {"messages": [{"role": "system", ...}, {"role": "user", ...}, {"role": "assistant", ...}]}

The prompt is what the node was sent (or, with ``zero_shot=True``, the same
call rendered without demos, which is what a fine-tuned model will be sent),
and the assistant message is the reply that parsed. Repeated lines are
written once.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rhizome.engine.call.adapters import Adapter, TextAdapter, default_adapter
from rhizome.engine.context import settings
from rhizome.engine.trace import jsonable
from rhizome.optimizers.base import as_examples
from rhizome.optimizers.metrics import Metric, call_metric

if TYPE_CHECKING:
    from rhizome.engine.call.predictor import Predictor
    from rhizome.engine.client.protocol import LM
    from rhizome.engine.example import Example
    from rhizome.engine.graphs.graph import Graph
    from rhizome.engine.trace import LMCall, Trace

__all__ = ("FinetuneExport", "export_finetune_data")


@dataclasses.dataclass(kw_only=True)
class FinetuneExport:
    """What :func:`export_finetune_data` wrote.

    Attributes:
        counts: Lines written per predictor path.
        files: The file written per predictor path (one shared file when not split).
        examples: Examples run.
        passed: Examples whose prediction passed the metric.
        failed: Examples whose run raised.
    """

    counts: dict[str, int]
    files: dict[str, Path]
    examples: int
    passed: int
    failed: int


async def export_finetune_data(
    graph: Graph,
    trainset: Sequence[Example | Mapping[str, Any]],
    metric: Metric,
    path: str | Path,
    *,
    threshold: float = 1.0,
    per_node: bool = True,
    zero_shot: bool = False,
    concurrency: int = 16,
    lm: LM | None = None,
) -> FinetuneExport:
    """Run ``graph`` on ``trainset`` and write the LM calls of passing runs as chat JSONL.

    Args:
        graph: The program to run.
        trainset: Examples with inputs and labels.
        metric: ``metric(example, prediction, trace) -> float | bool``.
        path: With ``per_node``, a directory receiving ``<predictor path>.jsonl``
            per LM node; else one JSONL file whose lines carry
            ``"metadata": {"node": path}`` beside ``"messages"``.
        threshold: A run passes when its score is at least this.
        per_node: One file per LM node (the format fine-tuning APIs take as is).
        zero_shot: Write the prompt as rendered without demos.
        concurrency: Examples in flight.
        lm: Default LM for the runs.

    Returns:
        Counts of lines per node, the files written, and how many runs passed.
    """
    examples = as_examples(trainset)
    results = await graph.batch(examples, concurrency=concurrency, lm=lm, progress=False)
    predictors = dict(graph.named_predictors())
    lines: dict[str, list[dict[str, Any]]] = {p: [] for p in predictors}
    seen: set[str] = set()
    passed = failed = 0
    for result in results:
        if result.prediction is None or result.trace is None:
            failed += 1
            continue
        score = await call_metric(metric, examples[result.index], result.prediction, result.trace)
        if score < threshold:
            continue
        passed += 1
        for call in _good_calls(result.trace):
            predictor = predictors.get(call.predictor)
            if predictor is None:
                continue
            line = {"messages": _messages(call, predictor, zero_shot=zero_shot, lm=lm)}
            key = call.predictor + json.dumps(line, sort_keys=True, ensure_ascii=False)
            if key not in seen:
                seen.add(key)
                lines[call.predictor].append(line)
    files = _write(Path(path), lines, per_node=per_node)
    counts = {p: len(v) for p, v in lines.items()}
    return FinetuneExport(
        counts=counts, files=files, examples=len(examples), passed=passed, failed=failed
    )


def _good_calls(trace: Trace) -> list[LMCall]:
    """Calls that parsed; a call repaired on its second attempt counts once, repaired."""
    return [c for c in trace.lm_calls() if c.error is None and c.outputs]


def _messages(
    call: LMCall, predictor: Predictor, *, zero_shot: bool, lm: LM | None
) -> list[dict[str, Any]]:
    if zero_shot:
        adapter = predictor.adapter or _adapter_for(predictor, lm)
        prompt = list(adapter.render(predictor, call.inputs, demos=[]).messages)
    elif call.repair:
        # A repaired call was sent the failed reply and a correction; train on the clean prompt.
        prompt = _first_attempt_prompt(call.messages)
    else:
        prompt = list(call.messages)
    reply = {"role": "assistant", "content": call.reply}
    return [_plain(m) for m in prompt] + [reply]


def _first_attempt_prompt(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return messages[:-2] if len(messages) >= 2 else messages


def _adapter_for(predictor: Predictor, lm: LM | None) -> Adapter:
    chosen = predictor.lm or lm or settings().lm
    return default_adapter(chosen, predictor.signature) if chosen is not None else TextAdapter()


def _plain(message: Mapping[str, Any]) -> dict[str, Any]:
    return {"role": message.get("role"), "content": jsonable(message.get("content"))}


def _write(
    root: Path, lines: dict[str, list[dict[str, Any]]], *, per_node: bool
) -> dict[str, Path]:
    if per_node:
        root.mkdir(parents=True, exist_ok=True)
        files = {p: root / f"{p}.jsonl" for p in lines}
        for p, rows in lines.items():
            _dump(files[p], rows)
        return files
    root.parent.mkdir(parents=True, exist_ok=True)
    rows = [{**row, "metadata": {"node": p}} for p, group in lines.items() for row in group]
    _dump(root, rows)
    return dict.fromkeys(lines, root)


def _dump(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
