"""Tests for the Python sandbox: each limit is checked with the escape a real script would try."""

from __future__ import annotations

import dis
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from rhizome.engine.errors import ConfigError
from rhizome.tools.agent import _sandbox_runner as runner
from rhizome.tools.agent.sandbox import PythonSandbox, SandboxResult, make_python_sandbox_tool

pytestmark = pytest.mark.skipif(os.name != "posix", reason="the sandbox needs POSIX")

FAST = PythonSandbox(wall_time=5, cpu_time=2, memory_mb=256)
HOOK_ONLY = PythonSandbox(wall_time=5, cpu_time=2, memory_mb=256, namespaces=False)
BOTH = pytest.mark.parametrize("sandbox", [FAST, HOOK_ONLY], ids=["namespaces", "hook-only"])


def refused(result: SandboxResult) -> bool:
    return result.returncode == 1 and "PermissionError: sandbox:" in result.stderr


@pytest.fixture
def home_secret() -> Iterator[Path]:
    """A secret file in the real home directory (or in a temp dir if home is read-only)."""
    try:
        handle = tempfile.NamedTemporaryFile(
            "w", dir=Path.home(), prefix=".rhizome-secret-", delete=False
        )
    except OSError:
        pytest.skip("home directory is not writable")
    with handle:
        handle.write("home-secret-value")
    path = Path(handle.name)
    yield path
    path.unlink(missing_ok=True)


async def test_normal_code_runs_and_writes_inside_its_directory() -> None:
    code = (
        "import os, json, pathlib\n"
        "open('data.txt', 'w').write('hello')\n"
        "os.mkdir('sub'); pathlib.Path('sub/x.json').write_text(json.dumps([1, 2]))\n"
        "print(open('data.txt').read(), json.loads(pathlib.Path('sub/x.json').read_text()))\n"
        "print(sorted(os.listdir('.')))\n"
        "os.remove('data.txt'); print(os.getcwd())\n"
    )
    result = await FAST.run(code)
    assert result.ok, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "hello [1, 2]"
    assert lines[1] == "['data.txt', 'sub']"
    workdir = anyio.Path(lines[2])
    assert workdir.name.startswith("rhizome-sandbox-")
    assert not await workdir.exists(), "the temporary directory is removed after the run"
    assert {"process", "rlimits", "audit-hooks"} <= set(result.isolation)
    assert not result.timed_out
    assert result.killed_reason is None


async def test_errors_come_back_as_tracebacks() -> None:
    result = await FAST.run("def f():\n    return 1 / 0\nf()\n")
    assert result.returncode == 1
    assert "ZeroDivisionError: division by zero" in result.stderr
    assert 'File "<sandbox>", line 2, in f' in result.stderr
    assert "_sandbox_runner" not in result.stderr
    syntax = await FAST.run("def broken(:\n")
    assert syntax.returncode == 1
    assert "SyntaxError" in syntax.stderr


@BOTH
async def test_cannot_read_etc_passwd(sandbox: PythonSandbox) -> None:
    for attempt in (
        "print(open('/etc/passwd').read())",
        "import os; print(os.read(os.open('/etc/passwd', os.O_RDONLY), 100))",
        "import pathlib; print(pathlib.Path('/proc/self/root/etc/passwd').read_text())",
        "print(open('../' * 20 + 'etc/passwd').read())",
        "import shutil; shutil.copy('/etc/passwd', 'copy'); print(open('copy').read())",
    ):
        result = await sandbox.run(attempt)
        assert refused(result), (attempt, result)
        assert "root:" not in result.stdout


@BOTH
async def test_cannot_read_files_in_home_or_elsewhere(
    sandbox: PythonSandbox, home_secret: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other-secret.txt"
    other.write_text("other-secret-value")
    for path in (home_secret, other):
        result = await sandbox.run(f"print(open({str(path)!r}).read())")
        assert refused(result)
        assert "secret-value" not in result.stdout
    listing = await sandbox.run(f"import os; print(os.listdir({str(Path.home())!r}))")
    assert refused(listing)
    assert home_secret.name not in listing.stdout


@BOTH
async def test_cannot_write_outside_its_directory(sandbox: PythonSandbox, tmp_path: Path) -> None:
    target = tmp_path / "escaped.txt"
    for attempt in (
        f"open({str(target)!r}, 'w').write('x')",
        f"import os; os.mkdir({str(tmp_path / 'escaped-dir')!r})",
        f"open('a', 'w').close(); import os; os.rename('a', {str(target)!r})",
        f"import os; os.symlink({str(target)!r}, 'link'); open('link', 'w').write('x')",
        f"import tempfile; tempfile.mkstemp(dir={str(tmp_path)!r})",
        "import os; open(os.__file__, 'a').write('# tampered')",
    ):
        result = await sandbox.run(attempt)
        assert refused(result), (attempt, result.stderr)
    assert os.listdir(tmp_path) == []


@BOTH
async def test_no_network_connection_arrives(sandbox: PythonSandbox) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(5)
        listener.setblocking(False)
        port = listener.getsockname()[1]
        for attempt in (
            f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=1)",
            f"import socket; s = socket.socket(); s.connect(('127.0.0.1', {port}))",
            f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{port}/')",
        ):
            result = await sandbox.run(attempt)
            assert result.returncode != 0
            assert "network access is not allowed" in result.stderr, result.stderr
        with pytest.raises(BlockingIOError):
            listener.accept()


async def test_network_namespace_is_reported_when_available() -> None:
    result = await FAST.run("print('ok')")
    hook_only = await HOOK_ONLY.run("print('ok')")
    assert "network-namespace" not in hook_only.isolation
    if "network-namespace" not in result.isolation:
        pytest.skip("this kernel does not let the sandbox create a network namespace")
    assert result.ok


async def test_cpu_burn_is_killed_at_the_cpu_limit() -> None:
    sandbox = PythonSandbox(wall_time=10, cpu_time=1)
    start = time.monotonic()
    result = await sandbox.run("while True:\n    pass\n")
    assert result.killed_reason == "cpu_time"
    assert not result.timed_out
    assert result.returncode < 0
    assert time.monotonic() - start < 8


async def test_memory_hog_is_stopped_at_the_memory_limit() -> None:
    sandbox = PythonSandbox(wall_time=10, cpu_time=5, memory_mb=128)
    big = await sandbox.run("x = bytearray(512 * 2**20)\nprint('allocated')")
    assert big.killed_reason == "memory"
    assert "allocated" not in big.stdout
    grow = await sandbox.run("chunks = []\nwhile True:\n    chunks.append(bytearray(10**7))\n")
    assert grow.killed_reason == "memory"
    assert "memory limit" in grow.to_text()


async def test_sleep_past_wall_time_is_killed() -> None:
    sandbox = PythonSandbox(wall_time=1.5, cpu_time=5)
    result = await sandbox.run("import time\nprint('start', flush=True)\ntime.sleep(60)")
    assert result.timed_out
    assert result.killed_reason == "wall_time"
    assert result.stdout == "start\n"
    assert result.duration < 4


@BOTH
async def test_processes_cannot_be_started(sandbox: PythonSandbox, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    for attempt in (
        f"import os; os.system('touch {marker}')",
        f"import subprocess; subprocess.run(['touch', {str(marker)!r}])",
        f"import os; os.execv('/bin/touch', ['touch', {str(marker)!r}])",
        "import os; os.fork()",
        f"import os; os.posix_spawn('/bin/touch', ['touch', {str(marker)!r}], {{}})",
        "import os; os.kill(os.getppid(), 9)",
    ):
        result = await sandbox.run(attempt)
        assert refused(result), (attempt, result.stderr)
    assert not marker.exists()


@BOTH
async def test_native_escape_hatches_are_closed(sandbox: PythonSandbox) -> None:
    for attempt, message in (
        ("import ctypes", "importing ctypes is not allowed"),
        ("import sys; sys.settrace(lambda *a: None)", "sys.settrace is not allowed"),
        ("import gc; gc.get_objects()", "gc.get_objects is not allowed"),
        ("import resource; resource.setrlimit(resource.RLIMIT_CPU, (99, 99))", "setrlimit"),
        ("import _xxsubinterpreters", "not allowed"),
    ):
        result = await sandbox.run(attempt)
        assert result.returncode == 1, (attempt, result.stderr)
        assert message in result.stderr, (attempt, result.stderr)


@BOTH
async def test_monkeypatching_does_not_weaken_the_hook(sandbox: PythonSandbox) -> None:
    code = (
        "import builtins, os, posix, pathlib\n"
        "os.lstat = posix.lstat = lambda p: None\n"
        "pathlib.PurePath.__fspath__ = lambda self: 'ok.txt'\n"
        "try:\n"
        "    open('/etc/passwd')\n"
        "except PermissionError as exc:\n"
        "    tb = exc.__traceback__\n"
        "    while tb.tb_next: tb = tb.tb_next\n"
        "    for value in list(tb.tb_frame.f_locals.values()):\n"
        "        if callable(value) and getattr(value, '__defaults__', None):\n"
        "            try:\n"
        "                value.__defaults__ = (None,) * len(value.__defaults__)\n"
        "            except PermissionError:\n"
        "                print('refused')\n"
        "builtins.type = lambda x: int\n"
        "print(open('/etc/passwd').read())\n"
    )
    result = await sandbox.run(code)
    assert "refused" in result.stdout
    assert "root:" not in result.stdout
    assert result.returncode == 1


async def test_planted_secret_is_not_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-planted")
    result = await FAST.run(
        "import os\nprint(dict(os.environ))\nprint(os.getenv('OPENAI_API_KEY'))"
    )
    assert result.ok, result.stderr
    assert "sk-test-planted" not in result.stdout
    assert result.stdout.splitlines()[-1] == "None"
    assert "PATH" in result.stdout


async def test_output_is_capped() -> None:
    sandbox = PythonSandbox(wall_time=5, max_output_bytes=1000)
    result = await sandbox.run("print('x' * 100_000)")
    assert result.ok
    assert result.truncated
    assert result.stdout.startswith("x" * 1000)
    assert "more bytes not shown" in result.stdout
    assert len(result.stdout) < 1100


async def test_common_libraries_still_work() -> None:
    code = (
        "import asyncio, decimal, fractions, statistics, subprocess, tempfile\n"
        "print(asyncio.run(asyncio.sleep(0, 'async')))\n"
        "print(statistics.mean([1, 2, 3]), fractions.Fraction(1, 3) * 3)\n"
        "with tempfile.NamedTemporaryFile('w') as handle: handle.write('ok')\n"
    )
    result = await FAST.run(code)
    assert result.ok, result.stderr
    assert result.stdout.splitlines() == ["async", "2 1"]


async def test_python_sandbox_tool() -> None:
    sandbox_tool = make_python_sandbox_tool(PythonSandbox(wall_time=5, cpu_time=2))
    assert sandbox_tool.name == "python_sandbox"
    assert sandbox_tool.parameters_schema["required"] == ["code"]
    assert (await sandbox_tool({"code": "print(6 * 7)"})).text == "stdout:\n42"
    failure = (await sandbox_tool({"code": "open('/etc/passwd')"})).text
    assert "PermissionError: sandbox" in failure
    assert failure.endswith("exit status 1")


def test_config_is_validated() -> None:
    with pytest.raises(ConfigError, match="wall_time"):
        PythonSandbox(wall_time=0)
    with pytest.raises(ConfigError, match="memory_mb"):
        PythonSandbox(memory_mb=4)
    with pytest.raises(TypeError):
        PythonSandbox(5)  # type: ignore[misc]


def test_hook_functions_read_no_globals() -> None:
    """The hook's helpers take everything from bound defaults, nothing from globals."""
    for function in (runner._hook, runner._check, runner._resolve, runner._as_text):
        assert function.__code__.co_freevars == ()
        globals_read = [
            ins.argval
            for ins in dis.get_instructions(function)
            if ins.opname in ("LOAD_GLOBAL", "LOAD_NAME", "LOAD_DEREF")
        ]
        assert globals_read == [], (function.__name__, globals_read)


_PARENT_SCRIPT = """
import anyio
from rhizome.tools.agent.sandbox import PythonSandbox

sandbox = PythonSandbox(wall_time=120, cpu_time=60, namespaces={namespaces})
anyio.run(sandbox.run, "open('running', 'w').close()\\nimport time\\ntime.sleep(120)")
"""


def _descendants(root: int) -> set[int]:
    """Live (non-zombie) processes below ``root``, read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize("namespaces", [True, False], ids=["namespaces", "hook-only"])
def test_sandboxed_code_dies_with_a_killed_parent(namespaces: bool) -> None:
    """SIGKILL the process that started the sandbox: the code must not keep running.

    The parent can run no clean-up, and the wall-time limit is the parent's job,
    so only the kernel (PR_SET_PDEATHSIG, PID namespace teardown) can stop it.
    """
    parent = subprocess.Popen([sys.executable, "-c", _PARENT_SCRIPT.format(namespaces=namespaces)])
    workdir = None
    try:
        deadline = time.monotonic() + 30
        while (workdir := _code_workdir(parent.pid)) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert workdir is not None
        sandboxed = _descendants(parent.pid)
        assert len(sandboxed) == (3 if namespaces and "pid-namespace" in _isolation() else 1)
        parent.kill()
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while any(map(_alive, sandboxed)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(map(_alive, sandboxed))
    finally:
        parent.kill()
        parent.wait(timeout=10)
        if workdir is not None:  # the killed parent could not remove it
            shutil.rmtree(workdir, ignore_errors=True)


def _code_workdir(parent: int) -> Path | None:
    """The sandbox's directory once the code has written ``running`` in it, else None."""
    for pid in _descendants(parent):
        try:
            workdir = Path(f"/proc/{pid}/cwd").resolve(strict=True)
        except OSError:
            continue
        if (workdir / "running").exists():
            return workdir
    return None


def _isolation() -> tuple[str, ...]:
    """What isolation the sandbox reaches on this machine (namespaces may be refused)."""
    result = anyio.run(FAST.run, "pass")
    return result.isolation
