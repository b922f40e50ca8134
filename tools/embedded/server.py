"""Run llama.cpp's OpenAI-compatible server for the embedded model in a child process.

xllamacpp embeds llama.cpp's C++ server in a Python extension (``xllamacpp.Server``):
creating one loads the model and starts the HTTP server on a background thread.
rhizome runs it in a *separate* Python process rather than in the caller's:

* a crash or an out-of-memory kill in native code cannot take the user's
  program down with it, and the model's memory is returned when it stops;
* Ctrl-C reaches only the user's process (the child has its own session), whose
  clean-up then stops the child — the child never dies half-way through a reply;
* the child's stdout and stderr (llama.cpp's log) go to a file that is shown
  when start-up fails.

The child cannot outlive its parent: it blocks reading its stdin, a pipe whose
write end only the parent holds, and exits when that pipe reaches end-of-file —
which happens on a clean :meth:`LocalServer.stop` and when the parent dies in any
way at all, even ``kill -9``.

The server has ``n_parallel`` slots served by continuous batching, and keeps each
slot's prompt in its KV cache (``cache_prompt``, plus ``--cache-reuse`` chunk
shifting and a small RAM cache of idle slots), so calls that share a long
prefix (instruction + demos) only pay for the new tokens.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from rhizome.engine.errors import ConfigError, LMConnectionError
from rhizome.tools.embedded.model import cache_dir, resolve_model_path

__all__ = ("LocalServer", "LocalServerConfig", "log_tail", "start_local_server", "usable_cores")


_LOG_TAIL_CHARS = 4000
_STOP_GRACE = 10.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class LocalServerConfig:
    """How to run the local llama.cpp server.

    Attributes:
        model_path: The GGUF file to load.
        alias: The model name the server reports; empty means the file's stem
            (``qwen2.5-coder-0.5b-instruct-q4_k_m`` for the embedded model).
        n_parallel: Request slots decoded together (continuous batching).
        ctx_size: Context tokens per slot (prompt plus reply); the server
            allocates ``ctx_size * n_parallel`` tokens of KV cache.
        threads: CPU threads for inference; None uses every usable core.
        port: TCP port on 127.0.0.1; None picks a free one.
        cache_reuse: Minimum chunk (tokens) llama.cpp may shift to reuse a
            cached prompt (``--cache-reuse``); 0 turns chunk reuse off.
        cache_ram_mib: Host RAM (MiB) for caching prompts of idle slots.
        startup_timeout: Seconds to wait for the model to load.
        log_path: File for the server's log; None puts it under the cache dir.
    """

    model_path: Path
    alias: str = ""
    n_parallel: int = 4
    ctx_size: int = 4096
    threads: int | None = None
    port: int | None = None
    cache_reuse: int = 256
    cache_ram_mib: int = 256
    startup_timeout: float = 180.0
    log_path: Path | None = None

    def __post_init__(self) -> None:
        for name in ("n_parallel", "ctx_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be at least 1 or None (all cores), got {self.threads}")
        if self.port is not None and not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be in 0..65535 or None (a free port), got {self.port}")

    @property
    def model_name(self) -> str:
        """The name the server reports for the model: ``alias`` or the file's stem."""
        return self.alias or self.model_path.stem


def usable_cores() -> int:
    """The number of CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


class LocalServer:
    """A llama.cpp server for one GGUF model, running in a child process.

    Use it as a context manager, or call :meth:`start` and :meth:`stop`; a
    server still running when the interpreter exits is stopped by ``atexit``.

    Attributes:
        config: The configuration it runs with.
        log_path: The file receiving the server's log.
    """

    def __init__(self, config: LocalServerConfig) -> None:
        self.config = config
        self.log_path = config.log_path or _default_log_path()
        self._process: subprocess.Popen[bytes] | None = None
        self._url: str | None = None

    @property
    def url(self) -> str:
        """The server's root URL, ``http://127.0.0.1:<port>``."""
        if self._url is None:
            raise ConfigError("the local server is not running; call start() first")
        return self._url

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible base URL, ``http://127.0.0.1:<port>/v1``."""
        return self.url + "/v1"

    @property
    def pid(self) -> int | None:
        """The child process id while it runs, else None."""
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        """True while the child process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> LocalServer:
        """Start the child, wait until it answers ``GET /health``, and return self.

        Raises:
            LMConnectionError: The server exited or did not become healthy in
                time; the message ends with the tail of its log.
        """
        if self._process is not None:
            return self
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        ready_file = self.log_path.with_name(self.log_path.name + ".ready")
        ready_file.unlink(missing_ok=True)
        self._process = _spawn(self.config, self.log_path, ready_file)
        atexit.register(self.stop)
        try:
            self._url = self._wait_ready(ready_file)
        except BaseException:
            # Includes KeyboardInterrupt: never leave a half-started child behind.
            self.stop()
            raise
        finally:
            ready_file.unlink(missing_ok=True)
        return self

    def _wait_ready(self, ready_file: Path) -> str:
        deadline = time.monotonic() + self.config.startup_timeout
        url: str | None = None
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                code = None if self._process is None else self._process.returncode
                raise self._failure(f"the local model server exited with code {code}")
            if url is None and ready_file.exists():
                url = ready_file.read_text(encoding="utf-8").strip() or None
            if url is not None and _healthy(url):
                return url
            time.sleep(0.1)
        raise self._failure(
            f"the local model server did not become ready within "
            f"{self.config.startup_timeout:.0f} s (raise startup_timeout on a slow machine)"
        )

    def _failure(self, message: str) -> LMConnectionError:
        return LMConnectionError(
            f"{message}; model {str(self.config.model_path)!r}; server log {self.log_path}:\n"
            f"{log_tail(self.log_path)}"
        )

    def stop(self) -> None:
        """Stop the child: close its stdin pipe, then terminate, then kill if it lingers."""
        process, self._process, self._url = self._process, None, None
        atexit.unregister(self.stop)
        if process is None:
            return
        if process.stdin is not None:
            process.stdin.close()
        for action in (None, process.terminate, process.kill):
            if action is not None:
                action()
            try:
                process.wait(timeout=_STOP_GRACE)
                return
            except subprocess.TimeoutExpired:
                continue

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"running at {self._url}" if self.running else "stopped"
        return f"LocalServer({self.config.model_path.name}, {state})"


def start_local_server(
    model_path: str | os.PathLike[str] | None = None,
    *,
    alias: str = "",
    n_parallel: int = 4,
    ctx_size: int = 4096,
    threads: int | None = None,
    port: int | None = None,
    startup_timeout: float = 180.0,
    log_path: str | os.PathLike[str] | None = None,
) -> LocalServer:
    """Start a llama.cpp server on 127.0.0.1 and return it once it is healthy.

    Args:
        model_path: A GGUF file; None uses ``$RHIZOME_MODEL`` or the embedded
            Qwen2.5-Coder-0.5B-Instruct model.
        alias: The model name the server reports; empty means the file's stem.
        n_parallel: Request slots decoded together.
        ctx_size: Context tokens per slot.
        threads: CPU threads; None uses every usable core.
        port: TCP port; None picks a free one.
        startup_timeout: Seconds to wait for the model to load.
        log_path: Where the server log goes; None puts it under the cache dir.

    Returns:
        The running :class:`LocalServer`; stop it with ``stop()`` or ``with``.
    """
    config = LocalServerConfig(
        model_path=resolve_model_path(model_path),
        alias=alias,
        n_parallel=n_parallel,
        ctx_size=ctx_size,
        threads=threads,
        port=port,
        startup_timeout=startup_timeout,
        log_path=Path(log_path) if log_path is not None else None,
    )
    return LocalServer(config).start()


def log_tail(path: Path, limit: int = _LOG_TAIL_CHARS) -> str:
    """The last ``limit`` characters of a log file ('' when it does not exist)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - limit))
            return handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def _default_log_path() -> Path:
    return cache_dir() / "logs" / f"local-server-{os.getpid()}-{time.time_ns()}.log"


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def _spawn(config: LocalServerConfig, log_path: Path, ready_file: Path) -> subprocess.Popen[bytes]:
    settings = {
        "model_path": str(config.model_path),
        "alias": config.model_name,
        "n_parallel": config.n_parallel,
        "ctx_size": config.ctx_size,
        "threads": config.threads or usable_cores(),
        "port": config.port or 0,
        "cache_reuse": config.cache_reuse,
        "cache_ram_mib": config.cache_ram_mib,
        "ready_file": str(ready_file),
    }
    env = dict(os.environ)
    # llama.cpp's OpenMP threads spin at every barrier by default; on a machine
    # whose cores are busy with other work (tests, the user's program) spinning
    # threads steal each other's time slices and decoding slows ten-fold.
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "rhizome.tools.embedded.server", json.dumps(settings)],
            stdin=subprocess.PIPE,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )


# --- the child process -------------------------------------------------------


def _child_main(settings: dict[str, Any]) -> int:
    """Load the model, announce the address, and serve until stdin closes."""
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = settings["model_path"]
    params.model_alias = {settings["alias"]}
    params.n_parallel = settings["n_parallel"]
    params.n_ctx = settings["ctx_size"] * settings["n_parallel"]
    params.cpuparams.n_threads = settings["threads"]
    params.cpuparams_batch.n_threads = settings["threads"]
    params.hostnames = ["127.0.0.1"]
    params.port = settings["port"]
    params.cont_batching = True
    params.cache_prompt = True
    params.n_cache_reuse = settings["cache_reuse"]
    params.cache_ram_mib = settings["cache_ram_mib"]
    params.use_jinja = True
    server = xllamacpp.Server(params)
    ready = Path(settings["ready_file"])
    fd, tmp = tempfile.mkstemp(dir=ready.parent, prefix=f".{ready.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(server.listening_address)
    os.replace(tmp, ready)
    print(f"rhizome: server pid {os.getpid()} serving at {server.listening_address}", flush=True)
    # Blocks until the parent closes the pipe or dies.
    sys.stdin.buffer.read()
    print("rhizome: stdin closed, shutting down", flush=True)
    del server
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(json.loads(sys.argv[1])))
