"""A planted API key appears in no output: traces, logs, history, files, errors.

The key is set in an environment variable and sent to a server that echoes it
back in error bodies and in a malformed reply, as misconfigured proxies and
some providers do. Then every output a user or a log collector could see is
searched for it.
"""

from __future__ import annotations

import json
import logging
import traceback
import uuid
from pathlib import Path
from typing import Any

import pytest

from rhizome.engine.batches.batch import BatchResult
from rhizome.engine.client.cache import ResponseCache
from rhizome.engine.client.openai import OpenAILM
from rhizome.engine.client.protocol import LMRequest
from rhizome.engine.errors import LMError, describe
from rhizome.engine.graphs.graph import Graph
from rhizome.nodes.predict import Predict
from rhizome.optimizers.evaluate import Evaluate
from rhizome.optimizers.joint import JointSearch
from rhizome.optimizers.metrics import exact_match
from tests.reliability.faults import echo_answer, question_tag
from tests.server import OpenAIServer, Reply

SECRET = f"sk-planted-{uuid.uuid4().hex}"
KEY_ENV = "RHIZOME_PLANTED_API_KEY"


def leaky_server(body: dict[str, Any]) -> str | Reply:
    """Echo answers, except for tags 1-5, which fail with the key in the body."""
    tag = question_tag(body)
    leaks = {
        "1": Reply(status=401, text=f"Incorrect API key provided: {SECRET}."),
        "2": Reply(status=500, text=f"upstream failed for Authorization: Bearer {SECRET}"),
        "3": Reply(raw_body=f"<html>proxy error, key={SECRET}</html>"),
        "4": Reply(status=429, text=f"rate limit for key {SECRET}", headers={"Retry-After": "0"}),
        "5": Reply(drop=True),
    }
    return leaks.get(tag, echo_answer(body))


def text_of(path: Path) -> str:
    return path.read_bytes().decode("utf-8", errors="replace")


def files_under(*folders: Path) -> dict[str, str]:
    return {str(p): text_of(p) for folder in folders for p in folder.rglob("*") if p.is_file()}


def error_texts(exc: BaseException) -> list[str]:
    texts = [str(exc), repr(exc), json.dumps(describe(exc)), *traceback.format_exception(exc)]
    if isinstance(exc, LMError):
        texts.append(str(getattr(exc, "body", "")))
    return texts


def batch_texts(results: list[BatchResult]) -> list[str]:
    texts = []
    for r in results:
        texts.append(json.dumps(r.error))
        if r.trace is not None:
            texts += [r.trace.to_json(), r.trace.format()]
    return texts


@pytest.mark.slow
async def test_a_planted_api_key_appears_in_no_output(
    server: OpenAIServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)
    caplog.set_level(logging.DEBUG)  # every logger, httpx's included
    server.responder = leaky_server
    cache = ResponseCache(tmp_path / "cache" / "responses.sqlite")
    lm = OpenAILM(
        "test-model",
        base_url=server.url,
        api_key_env=KEY_ENV,
        cache=cache,
        max_retries=1,
        backoff=0.001,
        max_wait=0.01,
        timeout=2.0,
    )
    graph = Graph("qa").add("answer", Predict("question -> answer"))
    data = [
        {"question": f"Repeat the tag of question #{i}#.", "answer": f"echo {i}"} for i in range(12)
    ]
    shown: dict[str, str] = {}

    prediction = await graph.run(data[0], lm=lm)
    assert prediction.trace is not None
    shown["trace"] = prediction.trace.to_json() + prediction.trace.format()

    results = await graph.batch(data, lm=lm, progress=True, run_dir=tmp_path / "batch")
    assert [r.ok for r in results[:7]] == [True, False, False, False, False, False, True]
    for i, text in enumerate(batch_texts(results)):
        shown[f"batch result {i}"] = text

    for tag in "12345":
        request = LMRequest(messages=({"role": "user", "content": f"#{tag}# direct"},))
        with pytest.raises(LMError) as caught:
            await lm.complete(request)
        for i, text in enumerate(error_texts(caught.value)):
            shown[f"error {tag}.{i}"] = text

    evaluation = await Evaluate(graph, data, exact_match(), lm=lm, run_dir=tmp_path / "eval")
    shown["evaluation"] = evaluation.format() + json.dumps(evaluation.summary(), default=str)
    search = JointSearch(
        exact_match(),
        num_trials=3,
        num_demo_sets=1,
        max_bootstrapped_demos=1,
        max_labeled_demos=1,
        minibatch_size=4,
        full_eval_every=3,
        lm=lm,
        run_dir=tmp_path / "search",
    )
    best = await search.optimize(graph, data)
    best.save(tmp_path / "program.json")
    shown["search"] = repr(search.history) + repr(search.pareto)

    for i, entry in enumerate(lm.inspect_history(1000)):
        shown[f"history {i}"] = entry.format() + repr(entry)
    shown["client"] = repr(lm) + repr(lm.usage) + repr(cache)
    await lm.aclose()
    cache.close()
    out, err = capsys.readouterr()
    shown["stdout"], shown["stderr"] = out, err
    shown["log"] = caplog.text + "\n".join(
        f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records
    )
    shown["request bodies"] = json.dumps(server.requests)
    shown |= files_under(tmp_path)  # run records, journals, program, the cache file

    # The test means something only if the key was really used and really echoed back.
    assert server.request_headers[0]["authorization"] == f"Bearer {SECRET}"
    assert any("HTTP 401" in text for text in shown.values())
    assert any(name.endswith("results.jsonl") for name in shown)
    assert any(name.endswith("trials.jsonl") for name in shown)
    assert any(name.endswith(".sqlite") for name in shown)
    leaked = [name for name, text in shown.items() if SECRET in text]
    assert leaked == [], f"the API key appears in: {leaked}"
