r"""Run untrusted Python code in a separate, limited process.

:class:`PythonSandbox` runs code with ``python -I`` (isolated mode) in a fresh
temporary directory, with a minimal environment, and kills it when limits are hit::

    sandbox = PythonSandbox(wall_time=5, cpu_time=2, memory_mb=128)
    result = await sandbox.run("print(sum(range(10)))")
    result.stdout            # "45\n"

:data:`python_sandbox` is the same as a tool an agent can call.

Threat model — what is and is not guaranteed
--------------------------------------------
The sandbox is meant for code an LM wrote: usually benign, sometimes careless or
prompted into doing something harmful. It is defence in depth, not a security
boundary strong enough for a determined attacker with native-code exploits.

Enforced by the operating system (hold whatever the code does):

- a separate process in its own session; on the wall-time limit the parent kills the
  whole process group; if the parent itself is killed (even with SIGKILL), the kernel
  kills the child (``PR_SET_PDEATHSIG``) and, with a PID namespace, all it started;
- ``RLIMIT_CPU`` (SIGXCPU at the limit, SIGKILL a second later), ``RLIMIT_AS``
  (allocations fail: ``MemoryError``), ``RLIMIT_FSIZE`` (no file above the cap),
  ``RLIMIT_NOFILE``, no core dumps; ``RLIMIT_NPROC`` only if ``max_processes`` is set
  (it counts the user's processes and threads system-wide and does not bind root);
- an environment holding only ``PATH``, ``HOME``/``TMPDIR`` (the working directory) and
  ``LANG``: no API keys or other secrets of the parent;
- where the kernel lets an unprivileged process create namespaces (or when running as
  root), new **user, network and PID namespaces**: no network interface but a down
  loopback, so no connection can leave the process even through native code; no other
  process visible or signalable; no capabilities outside the namespace. Which barriers
  were set up is reported in :attr:`SandboxResult.isolation`.

Enforced by a PEP 578 audit hook in the child (cannot be removed from Python code, and
reads no state that Python code can monkeypatch), before the code starts:

- files: reading and writing only inside the temporary directory; reading (never
  writing) the Python installation so imports work; ``/dev/null`` and friends.
  Symlinks are resolved before checking; creating links is refused; directory fds
  outside the directory and device nodes are refused;
- sockets other than local ``socketpair``s, process creation (``subprocess``,
  ``os.system``, ``os.fork``, ``os.exec*``, ``posix_spawn``), ``os.kill``, ``ctypes``,
  native extensions from outside the installation, sub-interpreters, tracing hooks,
  ``gc`` introspection and raising resource limits;
- modules that open files by name inside C, where no audit event fires, cannot be
  imported: ``sqlite3``, ``dbm.gnu``/``dbm.ndbm``, ``readline``, ``tkinter``,
  ``multiprocessing.shared_memory``; nor can ``pwd``/``grp`` (account databases).
  The unaudited ``os.mknod``, ``os.mkfifo``, ``os.pidfd_open`` and
  ``signal.pidfd_send_signal`` are removed, and fresh copies of built-in modules
  cannot be created.

Not guaranteed:

- There is no mount namespace or chroot: the file rules above are the hook's alone,
  and the code runs with the parent's user id (mapped to itself in the user
  namespace). A bug in CPython or in a reachable native extension may bypass the
  hook; only the OS-level barriers above survive that. For a hard filesystem
  boundary, run the parent as an unprivileged user or inside a container.
- Operations CPython does not audit are not filtered: ``os.stat`` reveals whether
  any path exists; C code in third-party extensions (and ``ssl`` loading certificate
  files) may open files by name. A path object mutated by another thread between the
  check and the open is a residual race.
- Disk use is bounded per file (``max_file_bytes``), not in total.
- Linux only: :meth:`PythonSandbox.run` refuses other platforms.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread

from rhizome.engine.errors import ConfigError
from rhizome.tools.agent.tool import FunctionTool, tool

__all__ = ("PythonSandbox", "SandboxResult", "make_python_sandbox_tool")


_RUNNER = Path(__file__).with_name("_sandbox_runner.py")
_STATUS_PREFIX = "\x1erhizome-sandbox "  # in step with _sandbox_runner.STATUS_PREFIX
_MEMORY_EXIT = 75  # in step with _sandbox_runner.MEMORY_EXIT


@dataclasses.dataclass(frozen=True)
class SandboxResult:
    """How a sandboxed run ended.

    Attributes:
        stdout: What the code printed (decoded as UTF-8, truncated to the output cap).
        stderr: Its error output, tracebacks included.
        returncode: The exit status; negative for a death by signal (``-9`` is SIGKILL).
        timed_out: True when the wall-time limit was hit and the process was killed.
        killed_reason: ``"wall_time"``, ``"cpu_time"``, ``"memory"``, ``"signal SIGxxx"``
            or None when the code ended on its own.
        truncated: True when stdout or stderr went over ``max_output_bytes``.
        isolation: The barriers that were in place (``"audit-hooks"``, ``"rlimits"``,
            ``"network-namespace"`` ...); empty if the child died before reporting.
        duration: Wall-clock seconds the run took.
    """

    stdout: str
    stderr: str
    returncode: int
    timed_out: bool = False
    killed_reason: str | None = None
    truncated: bool = False
    isolation: tuple[str, ...] = ()
    duration: float = 0.0

    @property
    def ok(self) -> bool:
        """True when the code exited with status 0."""
        return self.returncode == 0 and self.killed_reason is None

    def to_text(self) -> str:
        """A summary for a model: the outputs and, unless it succeeded, how it ended."""
        parts = []
        if self.stdout:
            parts.append(f"stdout:\n{self.stdout.rstrip()}")
        if self.stderr:
            parts.append(f"stderr:\n{self.stderr.rstrip()}")
        if self.killed_reason and self.killed_reason.startswith("signal"):
            parts.append(f"killed by {self.killed_reason}")
        elif self.killed_reason:
            parts.append(f"killed: {self.killed_reason.replace('_', ' ')} limit reached")
        elif self.returncode != 0:
            parts.append(f"exit status {self.returncode}")
        return "\n".join(parts) or "(no output)"


@dataclasses.dataclass(frozen=True, kw_only=True)
class PythonSandbox:
    """Configuration of a sandboxed Python run; :meth:`run` executes code under it.

    Attributes:
        wall_time: Seconds of real time before the process group is killed.
        cpu_time: Seconds of CPU time (rounded up to whole seconds) before SIGXCPU.
        memory_mb: Address-space limit in MiB; None for no limit.
        max_output_bytes: How much of stdout and of stderr is kept (each).
        max_file_bytes: Largest file the code may write.
        max_open_files: Limit on open file descriptors.
        max_processes: ``RLIMIT_NPROC`` if set (see the module docstring); None by default.
        namespaces: Try to enter new user/network/PID namespaces (Linux).
        python: The interpreter to run; defaults to the current one.
    """

    wall_time: float = 10.0
    cpu_time: float = 5.0
    memory_mb: int | None = 256
    max_output_bytes: int = 64_000
    max_file_bytes: int = 16 * 2**20
    max_open_files: int = 64
    max_processes: int | None = None
    namespaces: bool = True
    python: str | None = None

    def __post_init__(self) -> None:
        for name in ("wall_time", "cpu_time", "max_output_bytes", "max_file_bytes"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"PythonSandbox.{name} must be positive")
        if self.memory_mb is not None and self.memory_mb < 32:
            raise ConfigError(
                "PythonSandbox.memory_mb must be at least 32 (the interpreter needs it)"
            )
        if self.max_open_files < 16:
            raise ConfigError("PythonSandbox.max_open_files must be at least 16")

    async def run(self, code: str) -> SandboxResult:
        """Run ``code`` in a fresh process and directory and return what happened.

        Raises:
            ConfigError: Not on Linux (the limits and namespaces are Linux features).
        """
        if not sys.platform.startswith("linux"):
            raise ConfigError(f"PythonSandbox runs on Linux only, not on {sys.platform}")
        workdir = await anyio.to_thread.run_sync(_make_workdir)
        try:
            return await self._run_in(code, workdir)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(lambda: shutil.rmtree(workdir, ignore_errors=True))

    def _command(self) -> list[str]:
        config = {
            "cpu_seconds": max(1, math.ceil(self.cpu_time)),
            "memory_bytes": None if self.memory_mb is None else self.memory_mb * 2**20,
            "file_bytes": self.max_file_bytes,
            "open_files": self.max_open_files,
            "processes": self.max_processes,
            "namespaces": self.namespaces,
            "parent_pid": os.getpid(),
        }
        python = self.python or sys.executable
        return [python, "-I", "-B", "-u", "-X", "utf8", str(_RUNNER), json.dumps(config)]

    def _environment(self, workdir: str) -> dict[str, str]:
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir}
        env["LANG"] = "C.UTF-8"
        # One thread per numeric library: thread stacks count against the memory limit.
        for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[name] = "1"
        return env

    async def _run_in(self, code: str, workdir: str) -> SandboxResult:
        start = time.monotonic()
        process = await anyio.open_process(
            self._command(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=workdir,
            env=self._environment(workdir),
            start_new_session=True,
        )
        out, err = _Capture(self.max_output_bytes), _Capture(self.max_output_bytes)
        timed_out = True
        try:
            with anyio.move_on_after(self.wall_time):
                async with anyio.create_task_group() as group:
                    group.start_soon(_feed, process, code.encode("utf-8", "surrogatepass"))
                    group.start_soon(out.drain, process.stdout)
                    group.start_soon(err.drain, process.stderr)
                await process.wait()
                timed_out = False
        finally:
            _kill_group(process.pid)
            with anyio.CancelScope(shield=True):
                await process.wait()
                await process.aclose()
        return self._result(process.returncode, out, err, timed_out, time.monotonic() - start)

    def _result(
        self, returncode: int | None, out: _Capture, err: _Capture, timed_out: bool, duration: float
    ) -> SandboxResult:
        code = returncode if returncode is not None else -signal.SIGKILL
        stderr, isolation = _split_status(err.text())
        return SandboxResult(
            stdout=out.text(),
            stderr=stderr,
            returncode=code,
            timed_out=timed_out,
            killed_reason=_killed_reason(code, timed_out),
            truncated=out.dropped > 0 or err.dropped > 0,
            isolation=isolation,
            duration=duration,
        )


class _Capture:
    """Keeps the first ``limit`` bytes of a stream and counts (and drains) the rest."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.chunks: list[bytes] = []
        self.kept = 0
        self.dropped = 0

    async def drain(self, stream: anyio.abc.ByteReceiveStream | None) -> None:
        if stream is None:
            return
        async for chunk in stream:
            room = self.limit - self.kept
            if room > 0:
                self.chunks.append(chunk[:room])
                self.kept += min(room, len(chunk))
            self.dropped += max(0, len(chunk) - max(room, 0))

    def text(self) -> str:
        text = b"".join(self.chunks).decode("utf-8", "replace")
        if self.dropped:
            text += f"\n[... {self.dropped} more bytes not shown]"
        return text


async def _feed(process: anyio.abc.Process, data: bytes) -> None:
    if process.stdin is None:
        return
    try:
        await process.stdin.send(data)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        pass  # the child exited before reading all of its code
    finally:
        await process.stdin.aclose()


def _make_workdir() -> str:
    return os.path.realpath(tempfile.mkdtemp(prefix="rhizome-sandbox-"))


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # already gone


def _split_status(stderr: str) -> tuple[str, tuple[str, ...]]:
    if not stderr.startswith(_STATUS_PREFIX):
        return stderr, ()
    line, _, rest = stderr.partition("\n")
    try:
        status: dict[str, Any] = json.loads(line[len(_STATUS_PREFIX) :])
    except json.JSONDecodeError:
        return rest, ()
    return rest, tuple(str(item) for item in status.get("isolation", ()))


def _killed_reason(returncode: int, timed_out: bool) -> str | None:
    if timed_out:
        return "wall_time"
    if returncode == _MEMORY_EXIT:
        return "memory"
    if returncode in (-signal.SIGXCPU, -signal.SIGKILL):
        return "cpu_time"  # SIGKILL we did not send is the CPU hard limit
    if returncode == -signal.SIGXFSZ:
        return "file_size"
    if returncode < 0:
        return f"signal {signal.Signals(-returncode).name}"
    return None


def make_python_sandbox_tool(
    sandbox: PythonSandbox | None = None, *, name: str = "python_sandbox"
) -> FunctionTool:
    """A tool that runs Python code in ``sandbox`` and returns its output as text."""
    box = sandbox or PythonSandbox()

    async def run_python(code: str) -> str:
        """Run a Python 3 program in an isolated sandbox and return its output.

        The program runs in a fresh empty directory, without network access and
        without access to files outside that directory. Print what you want to see.

        Args:
            code: The complete program, e.g. "print(2 ** 10)".
        """
        return (await box.run(code)).to_text()

    return tool(run_python, name=name)


python_sandbox: FunctionTool = make_python_sandbox_tool()
"""A ``python_sandbox`` tool with the default :class:`PythonSandbox` limits."""
