"""Child-process entry point of :class:`rhizome.tools.agent.sandbox.PythonSandbox`.

Run as ``python -I -B -u _sandbox_runner.py CONFIG_JSON`` with the user's code on
stdin and a fresh temporary directory as the working directory. It uses the
standard library only (``-I`` puts neither rhizome nor the script's folder on
``sys.path``). In order, it:

1. reads the code from stdin and points fd 0 at ``/dev/null``, and asks the kernel
   to kill it (and, through the PID namespace, the code) if its parent dies;
2. enters new user, network and PID namespaces when the kernel allows it (then the
   code runs in a grandchild that cannot see, signal or connect to anything outside);
3. sets resource limits (CPU, address space, file size, open files, no core dumps);
4. removes the few functions CPython does not audit that reach outside (``mknod``,
   ``mkfifo``, ``pidfd_open``, ``pidfd_send_signal``) and stubs ``_posixsubprocess``;
5. installs an audit hook (PEP 578) that cannot be removed and that refuses file
   access outside the working directory (read-only access to the Python installation
   excepted), sockets other than local socket pairs, process creation, signals,
   ctypes, sub-interpreters, tracing and raising limits;
6. writes one status line to stderr (the parent strips it) and runs the code.

The hook functions read nothing from module globals at call time: everything they
use is bound as a positional default when they are defined, so user code cannot
change their behaviour by monkeypatching modules or builtins.
"""

from __future__ import annotations

import json
import os
import pathlib
import resource
import signal
import stat
import sys
import traceback
import types
from typing import Any

STATUS_PREFIX = "\x1erhizome-sandbox "
MEMORY_EXIT = 75  # exit status for "the memory limit was hit" (kept in step with sandbox.py)
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_DEVICES = frozenset({"/dev/null", "/dev/zero", "/dev/urandom", "/dev/random"})
_BLOCKED_EVENTS = frozenset(
    {
        "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
        "os.kill", "os.killpg", "os.link", "os.symlink", "os.startfile", "subprocess.Popen",
        "signal.pthread_kill", "resource.setrlimit", "resource.prlimit", "sys.settrace",
        "sys.setprofile", "sys._current_frames", "sys._current_exceptions",
        "gc.get_objects", "gc.get_referrers", "gc.get_referents", "fcntl.ioctl",
        "cpython.PyInterpreterState_New", "sqlite3.load_extension",
        "sqlite3.enable_load_extension", "webbrowser.open",
    }
)  # fmt: skip
_BLOCKED_PREFIXES = ("ctypes.", "socket.", "winreg.", "_winapi.")
_BLOCKED_MODULES = frozenset(
    {
        # native code, processes, sub-interpreters: would step around the hook
        "ctypes", "_ctypes", "_posixsubprocess", "_xxsubinterpreters", "_xxinterpchannels",
        "_testcapi", "_testinternalcapi", "_testmultiphase", "_testimportmultiple",
        "_testbuffer", "_testsinglephase",
        # open files by name in C, where the "open" event never fires
        "_sqlite3", "_gdbm", "_dbm", "readline", "_tkinter", "_posixshmem", "ossaudiodev",
        # read the account databases (/etc/passwd, /etc/group) through libc
        "pwd", "grp", "spwd",
    }
)  # fmt: skip
_FUNCTION_SLOTS = frozenset({"__code__", "__defaults__", "__kwdefaults__"})
# event -> ((path index, dir_fd index or -1), ...), writes?
_PATH_EVENTS = (
    ("os.listdir", ((0, -1),), False),
    ("os.scandir", ((0, -1),), False),
    ("os.getxattr", ((0, -1),), False),
    ("os.listxattr", ((0, -1),), False),
    ("os.mkdir", ((0, 2),), True),
    ("os.rmdir", ((0, 1),), True),
    ("os.remove", ((0, 1),), True),
    ("os.rename", ((0, 2), (1, 3)), True),
    ("os.chmod", ((0, 2),), True),
    ("os.chown", ((0, 3),), True),
    ("os.utime", ((0, 3),), True),
    ("os.truncate", ((0, -1),), True),
    ("os.chflags", ((0, -1),), True),
    ("os.lchflags", ((0, -1),), True),
    ("os.setxattr", ((0, -1),), True),
    ("os.removexattr", ((0, -1),), True),
    ("os.chdir", ((0, -1),), True),
)
_PATH_EVENT_NAMES = frozenset(name for name, _, _ in _PATH_EVENTS)


def main() -> None:
    """Set up the isolation described in the module docstring, then run the code."""
    config: dict[str, Any] = json.loads(sys.argv[1])
    code = sys.stdin.buffer.read().decode("utf-8", "replace")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    libc = _libc()
    _die_with(libc, int(config.get("parent_pid") or 0))  # no orphan if rhizome is killed
    isolation = ["process"]
    if config.get("namespaces", True):
        isolation += _enter_namespaces(libc)
    _set_limits(config)
    isolation.append("rlimits")
    if "pid-namespace" in isolation:
        _fork_into_namespace(libc)  # returns only in the grandchild that runs the code
    del libc
    _forget_ctypes()
    workdir = os.path.realpath(os.getcwd())
    _stub_process_spawning()
    _disarm_unaudited()
    _install_guard(workdir, _read_roots(workdir))
    isolation.append("audit-hooks")
    sys.stderr.write(STATUS_PREFIX + json.dumps({"isolation": isolation}) + "\n")
    sys.stderr.flush()
    _run(code)


def _libc() -> Any:
    """The C library through ctypes (None without it); dropped before the code runs."""
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True)
    except (ImportError, OSError):
        return None


def _forget_ctypes() -> None:
    """Unload ctypes from ``sys.modules``: the code must import it afresh (the hook refuses)."""
    for name in [m for m in sys.modules if m == "ctypes" or m.startswith("ctypes.")]:
        del sys.modules[name]
    sys.modules.pop("_ctypes", None)


def _die_with(libc: Any, parent: int) -> None:
    """Have the kernel SIGKILL this process when its parent dies (Linux ``PR_SET_PDEATHSIG``).

    Without it, killing rhizome with SIGKILL would leave the code running until
    its CPU limit (the wall-time limit is enforced by the parent). ``parent`` is
    the pid this process was started by: if it is already gone, exit now.
    """
    try:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except AttributeError:
        return  # no ctypes, or no prctl() in this C library
    if parent and os.getppid() != parent:
        os._exit(1)


def _enter_namespaces(libc: Any) -> list[str]:
    """Unshare user+net+pid namespaces, or a net namespace alone; report what worked."""
    uid, gid = os.geteuid(), os.getegid()
    try:
        if libc.unshare(CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWPID) == 0:
            _write_id_maps(uid, gid)
            return ["user-namespace", "network-namespace", "pid-namespace"]
        if libc.unshare(CLONE_NEWNET) == 0:
            return ["network-namespace"]
        return []
    except (OSError, AttributeError):
        return []  # no ctypes, or no unshare() in this C library


def _write_id_maps(uid: int, gid: int) -> None:
    """Map our own uid/gid into the new user namespace so files keep their owner."""
    for path, text in (
        ("/proc/self/setgroups", "deny"),
        ("/proc/self/uid_map", f"{uid} {uid} 1"),
        ("/proc/self/gid_map", f"{gid} {gid} 1"),
    ):
        try:
            with open(path, "w") as handle:
                handle.write(text)
        except OSError:
            pass  # old kernels lack setgroups; an unmapped id still runs code


def _set_limits(config: dict[str, Any]) -> None:
    cpu = int(config["cpu_seconds"])
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    for name, key in (
        ("RLIMIT_AS", "memory_bytes"),
        ("RLIMIT_FSIZE", "file_bytes"),
        ("RLIMIT_NOFILE", "open_files"),
        ("RLIMIT_NPROC", "processes"),
    ):
        if config.get(key) is not None:
            value = int(config[key])
            resource.setrlimit(getattr(resource, name), (value, value))


def _fork_into_namespace(libc: Any) -> None:
    """Become pid 1 of the new PID namespace, then fork the process that runs the code.

    Pid 1 ignores signals it has no handler for, so the code runs in its child
    (pid 2), where CPU-limit signals act normally. The outer process relays how the
    code ended: a death by signal is sent through a pipe and re-raised on itself.
    """
    read_end, write_end = os.pipe()
    init = os.fork()
    if init:
        os.close(write_end)
        _relay(init, read_end)
    # The death signal is not inherited: pid 1 dies with the outer process, and when
    # pid 1 dies the kernel kills everything else in the namespace. (Its parent is
    # outside the namespace, so getppid() says 0 here: there is no pid to check.)
    _die_with(libc, 0)
    os.close(read_end)
    worker = os.fork()
    if worker == 0:
        os.close(write_end)
        return
    _, status = os.waitpid(worker, 0)
    if os.WIFSIGNALED(status):
        os.write(write_end, str(os.WTERMSIG(status)).encode())
        os._exit(1)
    os._exit(os.waitstatus_to_exitcode(status))


def _relay(child: int, read_end: int) -> None:
    _, status = os.waitpid(child, 0)
    reported = os.read(read_end, 16)
    if reported:
        sig = int(reported)
        if sig not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    os._exit(os.waitstatus_to_exitcode(status) if not os.WIFSIGNALED(status) else 1)


def _stub_process_spawning() -> None:
    """Stand in for ``_posixsubprocess`` so ``subprocess`` and ``asyncio`` still import.

    Its real ``fork_exec`` is not audited, so the real module must never load (the
    hook refuses to import it); the stub refuses to start processes.
    """

    def fork_exec(*args: Any) -> Any:
        raise PermissionError("sandbox: starting processes is not allowed")

    stub = types.ModuleType("_posixsubprocess", "Sandbox stand-in: cannot start processes.")
    stub.fork_exec = fork_exec  # type: ignore[attr-defined]
    sys.modules["_posixsubprocess"] = stub


def _disarm_unaudited() -> None:
    """Remove functions CPython does not audit and that reach outside the directory.

    ``mknod``/``mkfifo`` create files anywhere; ``pidfd_open`` plus
    ``pidfd_send_signal`` can signal any process of the same user. Built-in modules
    are imported now and ``_imp.create_builtin`` is removed, so a fresh copy of
    ``posix`` with the functions back cannot be made later.
    """
    import _imp
    import importlib

    for name in sys.builtin_module_names:
        if name not in sys.modules and name not in _BLOCKED_MODULES:
            try:
                importlib.import_module(name)
            except ImportError:
                pass
    for module, names in (
        (os, ("mknod", "mkfifo", "pidfd_open")),
        (sys.modules["posix"], ("mknod", "mkfifo", "pidfd_open")),
        (signal, ("pidfd_send_signal",)),
        (sys.modules["_signal"], ("pidfd_send_signal",)),
        (_imp, ("create_builtin",)),
    ):
        for attr in names:
            if hasattr(module, attr):
                delattr(module, attr)


def _read_roots(workdir: str) -> tuple[str, ...]:
    """The Python installation: readable (never writable) so imports keep working."""
    candidates = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    candidates.update(p for p in sys.path if os.path.isabs(p) and os.path.exists(p))
    roots = {os.path.realpath(p) for p in candidates}
    roots.discard("/")
    return tuple(sorted(r + "/" for r in roots if r != workdir))


def _install_guard(workdir: str, roots: tuple[str, ...]) -> None:
    """Add the audit hook; it lives for the life of the interpreter.

    The hook and its helpers are rebuilt from the module-level functions with empty
    globals and every input bound as a positional default (a tuple, so immutable):
    a global lookup would fail rather than read something user code replaced.
    """
    resolve = _bind(_resolve)
    as_text = _bind(_as_text)
    check = _bind(_check, _ws=workdir, _roots=roots, _as_text=as_text, _resolve=resolve)
    own = (check, resolve, as_text)
    sys.addaudithook(_bind(_hook, _check=check, _resolve=resolve, _roots=roots, _own=own))


def _bind(fn: Any, **values: Any) -> Any:
    code = fn.__code__
    names = code.co_varnames[: code.co_argcount]
    defaults = list(fn.__defaults__)
    first = len(names) - len(defaults)
    for key, value in values.items():
        defaults[names.index(key) - first] = value
    return types.FunctionType(code, {"__builtins__": {}}, fn.__name__, tuple(defaults))


def _resolve(
    path: str,
    base: str | None,
    _lstat: Any = os.lstat,
    _readlink: Any = os.readlink,
    _getcwd: Any = os.getcwd,
    _islink: Any = stat.S_ISLNK,
    _os_error: Any = OSError,
    _deny: Any = PermissionError,
) -> str:
    """Resolve ``path`` as the kernel would (symlinks, ``..``) with C functions only."""
    if not path.startswith("/"):
        path = (base if base is not None else _getcwd()) + "/" + path
    pending = path.split("/")[::-1]
    parts: list[str] = []
    hops = 0
    while pending:
        part = pending.pop()
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        candidate = "/" + "/".join([*parts, part])
        try:
            mode = _lstat(candidate).st_mode
        except _os_error:
            mode = 0
        if not _islink(mode):
            parts.append(part)
            continue
        hops += 1
        if hops > 40:
            raise _deny("sandbox: too many symbolic links in " + path)
        target = _readlink(candidate)
        if target.startswith("/"):
            parts = []
        pending.extend(target.split("/")[::-1])
    return "/" + "/".join(parts)


def _as_text(
    value: Any,
    _type: Any = type,
    _issubclass: Any = issubclass,
    _str: Any = str,
    _bytes: Any = bytes,
    _getattr: Any = getattr,
    _fspath: Any = os.fspath,
    _path_types: Any = (pathlib.PosixPath, pathlib.PurePosixPath),
    _originals: Any = (pathlib.PurePath.__fspath__, pathlib.PurePath.__str__),
) -> str | None:
    """A path argument as plain text, or None when it cannot be trusted."""
    kind = _type(value)
    text: str
    if _issubclass(kind, _str):
        text = _str.__str__(value)  # an exact copy, whatever a subclass overrides
        return text
    if _issubclass(kind, _bytes):
        text = _bytes.decode(value, "utf-8", "surrogateescape")
        return text
    if (
        kind in _path_types
        and _getattr(kind, "__fspath__") is _originals[0]
        and _getattr(kind, "__str__") is _originals[1]
    ):
        text = _fspath(value)
        return text if _type(text) is _str else None
    return None


def _check(
    event: str,
    value: Any,
    dir_fd: Any,
    write: bool,
    _ws: str = "",
    _roots: tuple[str, ...] = (),
    _as_text: Any = None,
    _resolve: Any = None,
    _devices: frozenset[str] = _DEVICES,
    _readlink: Any = os.readlink,
    _lstat: Any = os.lstat,
    _kinds: Any = (stat.S_ISBLK, stat.S_ISCHR, stat.S_ISDIR),
    _type: Any = type,
    _int: Any = int,
    _os_error: Any = OSError,
    _deny: Any = PermissionError,
) -> None:
    """Raise PermissionError unless the path is inside the sandbox (or readable)."""
    if value is None:
        value = "."
    if _type(value) is _int:
        value = _readlink(f"/proc/self/fd/{value}")
    text = _as_text(value)
    if text is None:
        raise _deny(f"sandbox: {event}: pass paths as str, bytes or pathlib.Path")
    base = None
    if _type(dir_fd) is _int and dir_fd >= 0 and not text.startswith("/"):
        base = _readlink(f"/proc/self/fd/{dir_fd}")
    real = _resolve(text, base)
    try:
        mode = _lstat(real).st_mode
    except _os_error:
        mode = 0
    if real in _devices:
        return
    device = _kinds[0](mode) or _kinds[1](mode)
    if (real == _ws or real.startswith(_ws + "/")) and not device:
        return
    if not write and real.startswith(_roots) and not (event == "open" and _kinds[2](mode)):
        return
    raise _deny(
        f"sandbox: {event} of {text!r} is not allowed; only files inside the working "
        f"directory {_ws} can be used (the Python installation is read-only)"
    )


def _hook(
    event: str,
    args: tuple[Any, ...],
    _check: Any = None,
    _resolve: Any = None,
    _roots: tuple[str, ...] = (),
    _own: tuple[Any, ...] = (),
    _path_event_names: frozenset[str] = _PATH_EVENT_NAMES,
    _path_events: Any = _PATH_EVENTS,
    _blocked: frozenset[str] = _BLOCKED_EVENTS,
    _blocked_prefixes: tuple[str, ...] = _BLOCKED_PREFIXES,
    _blocked_modules: frozenset[str] = _BLOCKED_MODULES,
    _slots: frozenset[str] = _FUNCTION_SLOTS,
    _write_flags: int = _WRITE_FLAGS,
    _type: Any = type,
    _int: Any = int,
    _str: Any = str,
    _deny: Any = PermissionError,
    _no_import: Any = ImportError,
) -> None:
    """The audit hook: let an event through or raise PermissionError."""
    if event == "open":
        path, _, flags = args
        if _type(path) is not _int:  # an fd was checked when it was opened
            _check(event, path, -1, _type(flags) is _int and flags & _write_flags != 0)
    elif event in _path_event_names:
        for name, positions, write in _path_events:
            if name == event:
                for at, fd_at in positions:
                    _check(event, args[at], args[fd_at] if fd_at >= 0 else -1, write)
    elif event == "socket.__new__":
        if args[1] != 1:  # AF_UNIX: socketpair() for asyncio's self-pipe
            raise _deny("sandbox: network access is not allowed")
    elif event in _blocked or event.startswith(_blocked_prefixes):
        what = "network access" if event.startswith("socket.") else event
        raise _deny(f"sandbox: {what} is not allowed")
    elif event == "import":
        module, filename = args[0], args[1]
        if _type(module) is _str and module.partition(".")[0] in _blocked_modules:
            raise _no_import(f"sandbox: importing {module} is not allowed")
        if filename is not None and not _resolve(_str(filename), None).startswith(_roots):
            raise _deny("sandbox: native extensions load only from the Python installation")
    elif event == "object.__setattr__" and args[1] in _slots:
        if args[0] is _own[0] or args[0] is _own[1] or args[0] is _own[2]:
            raise _deny("sandbox: the sandbox's own functions cannot be changed")


def _run(code: str) -> None:
    """Run the code as ``__main__``; report a hit memory limit with a distinct status."""
    import builtins
    import linecache

    filename = "<sandbox>"
    linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
    module = types.ModuleType("__main__")
    module.__dict__["__builtins__"] = builtins
    sys.modules["__main__"] = module
    try:
        exec(compile(code, filename, "exec"), module.__dict__)
    except MemoryError:
        os.write(2, b"\nMemoryError: the sandbox's memory limit was reached\n")
        os._exit(MEMORY_EXIT)
    except SyntaxError as exc:
        _print_error(exc, skip_frames=False)
        sys.exit(1)
    except Exception as exc:
        _print_error(exc, skip_frames=True)
        sys.exit(1)


def _print_error(exc: BaseException, *, skip_frames: bool) -> None:
    tb = exc.__traceback__.tb_next if skip_frames and exc.__traceback__ else None
    lines = traceback.format_exception(type(exc), exc, tb if skip_frames else exc.__traceback__)
    sys.stderr.write("".join(lines))
    sys.stderr.flush()


if __name__ == "__main__":
    main()
