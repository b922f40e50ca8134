"""Data safety: the response cache under concurrent writers and corruption; hostile saved programs.

Covered elsewhere and not repeated here: two processes sharing a cache and a
garbage cache file moved aside at start (tests/engine/test_cache.py); truncated,
too large (size limit patched), wrongly typed and non-object saved programs
(tests/engine/test_saving.py).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from rhizome.engine.client.cache import ResponseCache
from rhizome.engine.client.openai import OpenAILM
from rhizome.engine.errors import SaveError
from rhizome.engine.graphs import saving
from rhizome.engine.graphs.graph import Graph
from rhizome.nodes.predict import Predict
from tests.reliability.faults import echo_answer
from tests.server import OpenAIServer

WRITER_SCRIPT = """
import sys, anyio
from rhizome.engine.client.cache import ResponseCache
from rhizome.engine.client.openai import OpenAILM
from rhizome.engine.graphs.graph import Graph
from rhizome.nodes.predict import Predict

url, path, name = sys.argv[1], sys.argv[2], sys.argv[3]
cache = ResponseCache(path)
lm = OpenAILM("test-model", base_url=url, cache=cache, max_concurrency=16)
graph = Graph("echo").add("answer", Predict("question -> answer"))
shared = [{"question": f"shared question #{i}#"} for i in range(60)]
own = [{"question": f"question #{i}# of {name}"} for i in range(60)]
results = anyio.run(lambda: graph.batch(shared + own, concurrency=16, lm=lm))
assert all(r.ok for r in results), [r.error for r in results if not r.ok][:2]
print(lm.usage.calls, lm.usage.cache_hits)
"""


def cache_rows(path: Path) -> list[tuple[str, str]]:
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        return list(db.execute("SELECT key, value FROM responses"))
    finally:
        db.close()


@pytest.mark.slow
def test_four_processes_writing_one_cache_at_once(server: OpenAIServer, tmp_path: Path) -> None:
    server.responder = echo_answer
    path = tmp_path / "shared.sqlite"
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER_SCRIPT, server.url, str(path), f"p{i}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    outputs = [w.communicate(timeout=120) for w in writers]
    for writer, (_, err) in zip(writers, outputs, strict=True):
        assert writer.returncode == 0, err
        assert "failed" not in err, err  # no "lookup failed" / "write failed" warnings
    rows = cache_rows(path)
    assert len(rows) == 60 + 4 * 60  # the shared questions once, each process's own once
    cache = ResponseCache(path)
    for key, _ in rows:
        value = cache.get_sync(key)
        assert value is not None
        assert json.loads(json.loads(value)["choices"][0][0])["answer"].startswith("echo ")
    cache.close()
    # Every request the processes sent is in the cache; the rest were cache hits.
    calls = sum(int(out.split()[0]) for out, _ in outputs)
    assert calls == server.request_count >= len(rows)


async def test_cache_corrupted_mid_batch_is_set_aside_and_the_batch_finishes(
    server: OpenAIServer, tmp_path: Path
) -> None:
    server.responder = echo_answer
    path = tmp_path / "cache.sqlite"
    cache = ResponseCache(path)
    lm = OpenAILM("test-model", base_url=server.url, cache=cache, max_concurrency=8)
    graph = Graph("echo").add("answer", Predict("question -> answer"))
    padding = "background " * 300  # enough pages that truncating the file damages the table
    first = [{"question": f"question #{i}# {padding}"} for i in range(200)]
    assert all(r.ok for r in await graph.batch(first, concurrency=8, lm=lm))

    def corrupt_then_answer(body: dict[str, Any]) -> str:
        if server.request_count == 20:
            damage(path)
        return echo_answer(body)

    server.reset()
    server.responder = corrupt_then_answer
    second = [{"question": f"new question #{i}# {padding}"} for i in range(200)]
    with pytest.warns(RuntimeWarning, match="was unreadable .* moved it to .*corrupt"):
        results = await graph.batch(second + first, concurrency=8, lm=lm)
    await lm.aclose()
    cache.close()

    assert all(r.ok for r in results)
    assert [r.prediction["answer"] for r in results if r.prediction] == [
        f"echo {i}" for i in list(range(200)) * 2
    ]
    assert len(corrupt_copies(tmp_path)) == 1
    # The fresh cache works: what was answered after the switch is stored and readable.
    assert len(cache_rows(path)) > 100


def corrupt_copies(folder: Path) -> list[Path]:
    return list(folder.glob("cache.sqlite.corrupt-*"))


def damage(path: Path) -> None:
    """Checkpoint the WAL into the file, then cut the file to a third, as a bad disk might."""
    db = sqlite3.connect(path)
    try:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()
    with open(path, "r+b") as handle:
        handle.truncate(os.path.getsize(path) // 3)


# ---- saved programs --------------------------------------------------------


def program() -> Graph:
    return Graph("qa").add("answer", Predict("question -> answer"))


def saved(tmp_path: Path) -> dict[str, Any]:
    program().set_parameters({"answer.instruction": "Answer briefly."}).save(tmp_path / "ok.json")
    data: dict[str, Any] = json.loads((tmp_path / "ok.json").read_text())
    return data


def with_temperature(data: dict[str, Any], value: float) -> str:
    data["parameters"]["answer"]["temperature"] = value
    return json.dumps(data)


HOSTILE = {
    "deeply nested": ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    "deeply nested object": ('{"a":' * 100_000 + "1" + "}" * 100_000, "nested too deeply"),
    "huge integer": ('{"fingerprint": ' + "9" * 50_000 + "}", "not a saved program"),
    "NaN": (lambda d: with_temperature(d, float("nan")), "holds NaN"),
    "Infinity": (lambda d: with_temperature(d, float("inf")), "holds Infinity"),
    "overflowing float": (
        lambda d: json.dumps(d).replace('"temperature": null', '"temperature": 1e999'),
        "must be a finite number",
    ),
    "not UTF-8": (b"\xff\xfe{\x00}\x00", "not UTF-8 text"),
    "empty": ("", "not valid JSON"),
    "binary garbage": (bytes(range(256)) * 10, "not UTF-8 text|not valid JSON"),
    "string instead of object": ('"just a string"', "must hold a JSON object, found str"),
    "parameters as list": (lambda d: json.dumps({**d, "parameters": []}), "must be a object"),
    "demos not dicts": (
        lambda d: json.dumps(
            {**d, "parameters": {"answer": {"demos": ["__import__('os').system('x')"]}}}
        ),
        "demos' must be a list of objects",
    ),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_saved_program_is_a_clear_save_error(tmp_path: Path, case: str) -> None:
    content, message = HOSTILE[case]
    if callable(content):
        content = content(saved(tmp_path))
    path = tmp_path / "hostile.json"
    assert isinstance(content, str | bytes)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    graph = program()
    before = graph.named_parameters()
    with pytest.raises(SaveError, match=message):
        graph.load(path)
    assert graph.named_parameters() == before, "a failed load must change nothing"


def test_oversized_file_is_refused_without_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "huge.json"
    with open(path, "wb") as handle:
        handle.truncate(saving.MAX_BYTES + 1)  # sparse: no disk used
    with pytest.raises(SaveError, match="over the 50 MiB limit"):
        program().load(path)


@pytest.mark.parametrize("where", ["/dev/zero", "fifo", "directory"])
def test_devices_pipes_and_directories_are_refused(tmp_path: Path, where: str) -> None:
    path = Path(where)
    if where == "fifo":
        path = tmp_path / "pipe.json"
        os.mkfifo(path)  # opening it for reading would wait for a writer forever
    elif where == "directory":
        path = tmp_path
    with pytest.raises(SaveError, match=r"not a regular file|cannot read"):
        program().load(path)


def test_loading_never_executes_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    command = f"touch {marker}"
    data = saved(tmp_path)
    payloads: list[Any] = [
        {"py/reduce": [{"py/function": "os.system"}, {"py/tuple": [command]}]},
        {"__reduce__": ["os.system", [command]], "__class__": "subprocess.Popen"},
        {"py/object": "rhizome_canary_module.Canary", "!!python/object/apply:os.system": command},
    ]
    demo = {"question": f"__import__('os').system('{command}')", "answer": payloads}
    data["parameters"]["answer"]["demos"] = [demo, *payloads]
    data["parameters"]["answer"]["instruction"] = f"{{{{ ''.__class__ }}}} $( {command} )"
    path = tmp_path / "payloads.json"
    path.write_text(json.dumps(data), encoding="utf-8")

    graph = program().load(path)

    assert not marker.exists()
    assert "rhizome_canary_module" not in sys.modules
    # Everything came back as inert data, exactly as written.
    predictor = dict(graph.named_predictors())["answer"]
    assert predictor.demos == [demo, *payloads]
    assert predictor.instruction == data["parameters"]["answer"]["instruction"]
