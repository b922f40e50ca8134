"""A persistent response cache: one SQLite file shared by tasks, threads and processes.

The cache maps a request key (a hash the client computes from the endpoint,
the full request body and the sample index) to the reply as JSON text. The file
uses WAL journaling and a busy timeout, so several processes may share it.
Each thread gets its own connection; lookups and writes are single-row
statements on a primary key, microseconds long, so they run inline.

A corrupt file never stops a program: it is moved aside to
``<name>.corrupt-<timestamp>``, a fresh cache is created and a
:class:`RuntimeWarning` says so — when the cache is opened, or when a lookup
or write finds the file damaged half-way through a run. Any other failing
lookup is a miss and a failing write is skipped, with a logged warning.

Switches: ``OpenAILM(cache=None)`` turns caching off for one client; the
environment variable ``RHIZOME_CACHE=0`` turns the default cache off, and
``RHIZOME_CACHE_DIR`` moves it.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import warnings
from pathlib import Path

import platformdirs

__all__ = ("ResponseCache", "default_cache", "default_cache_path")


logger = logging.getLogger("rhizome.cache")

_OFF = {"0", "false", "no", "off"}
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS responses ("
    "key TEXT PRIMARY KEY, value TEXT NOT NULL, created REAL NOT NULL)"
)


def default_cache_path() -> Path:
    """Where the default cache lives: ``$RHIZOME_CACHE_DIR`` or the user cache dir."""
    folder = os.environ.get("RHIZOME_CACHE_DIR") or platformdirs.user_cache_dir("rhizome")
    return Path(folder) / "responses.sqlite"


def default_cache() -> ResponseCache | None:
    """The cache a client gets by default, or None when ``RHIZOME_CACHE=0``."""
    if os.environ.get("RHIZOME_CACHE", "1").strip().lower() in _OFF:
        return None
    return ResponseCache()


class ResponseCache:
    """LM replies stored in an SQLite file, keyed by request hash.

    Args:
        path: The SQLite file; created with its folder when missing. None means
            :func:`default_cache_path`. Nothing touches the disk until first use.
        busy_timeout: Seconds a write waits for another process's lock.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *, busy_timeout: float = 5.0):
        self.path = Path(path) if path is not None else default_cache_path()
        self._busy_timeout = busy_timeout
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._prepared = False
        self._inode: int | None = None
        self._generation = 0  # bumped each time a corrupt file is set aside mid-run

    def __repr__(self) -> str:
        return f"ResponseCache({str(self.path)!r})"

    async def get(self, key: str) -> str | None:
        """The stored value for ``key``, or None on a miss (or an unreadable cache)."""
        return self.get_sync(key)

    async def put(self, key: str, value: str) -> None:
        """Store ``value`` (JSON text) under ``key``, replacing any older value."""
        self.put_sync(key, value)

    def get_sync(self, key: str) -> str | None:
        """Blocking form of :meth:`get`."""
        try:
            row = self._execute("SELECT value FROM responses WHERE key = ?", (key,)).fetchone()
        except sqlite3.Error as exc:
            logger.warning("response cache %s: lookup failed (%s); treating as a miss", self, exc)
            return None
        return None if row is None else str(row[0])

    def put_sync(self, key: str, value: str) -> None:
        """Blocking form of :meth:`put`."""
        try:
            self._execute(
                "INSERT OR REPLACE INTO responses (key, value, created) VALUES (?, ?, ?)",
                (key, value, time.time()),
            )
        except sqlite3.Error as exc:
            logger.warning("response cache %s: write failed (%s); reply not cached", self, exc)

    def __len__(self) -> int:
        row = self._connection().execute("SELECT COUNT(*) FROM responses").fetchone()
        return int(row[0])

    def clear(self) -> None:
        """Delete every stored reply."""
        self._connection().execute("DELETE FROM responses")

    def close(self) -> None:
        """Close every connection this object opened (it reopens on next use)."""
        with self._lock:
            connections, self._connections = self._connections, []
            self._local = threading.local()
        for connection in connections:
            connection.close()

    # ---- connections ----------------------------------------------------

    def _execute(self, sql: str, parameters: tuple[object, ...]) -> sqlite3.Cursor:
        """Run one statement; if the file turns out corrupt, set it aside and run it afresh."""
        generation = self._generation
        try:
            return self._connection().execute(sql, parameters)
        except sqlite3.DatabaseError as exc:
            if not _is_corrupt(exc):
                raise
            self._recover(generation, exc)
            return self._connection().execute(sql, parameters)

    def _recover(self, generation: int, exc: sqlite3.DatabaseError) -> None:
        """Move a file found corrupt mid-run aside, once, whichever thread finds it first."""
        moved = None
        with self._lock:
            if generation != self._generation:
                return  # another thread already recovered: a fresh file is in place
            self._generation += 1
            connections, self._connections = self._connections, []
            self._local = threading.local()
            for connection in connections:
                connection.close()
            if _inode(self.path) == self._inode:  # else another process already replaced it
                moved = self._quarantine()
            self._prepared = False
        if moved is not None:
            self._warn_moved(exc, moved)

    def _connection(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            with self._lock:
                if not self._prepared:
                    self._prepare()
                connection = self._open()
                self._connections.append(connection)
            self._local.connection = connection
        return connection

    def _open(self) -> sqlite3.Connection:
        connection = sqlite3.connect(
            self.path,
            timeout=self._busy_timeout,
            isolation_level=None,
            check_same_thread=False,
        )
        try:
            connection.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error:
            connection.close()
            raise
        return connection

    def _prepare(self) -> None:
        """Create the file and table, moving a corrupt file aside first."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._create()
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError):
                raise  # locked, or no permission: not corruption; the caller logs it
            moved = self._quarantine()
            self._create()
            self._warn_moved(exc, moved)
        self._inode = _inode(self.path)
        self._prepared = True

    def _warn_moved(self, exc: Exception, moved: Path) -> None:
        warnings.warn(
            f"response cache {self.path} was unreadable ({exc}); moved it to {moved} "
            "and started an empty cache",
            RuntimeWarning,
            stacklevel=4,
        )

    def _create(self) -> None:
        connection = sqlite3.connect(self.path, timeout=self._busy_timeout, isolation_level=None)
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute(_SCHEMA)
            connection.execute("SELECT key FROM responses LIMIT 1").fetchall()
        finally:
            connection.close()

    def _quarantine(self) -> Path:
        moved = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time() * 1000)}")
        self.path.replace(moved)
        for suffix in ("-wal", "-shm"):
            side = self.path.with_name(self.path.name + suffix)
            if side.exists():
                side.replace(moved.with_name(moved.name + suffix))
        return moved


def _is_corrupt(exc: sqlite3.DatabaseError) -> bool:
    """True for "database disk image is malformed" and "file is not a database"."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:
        return type(exc) is sqlite3.DatabaseError
    return code & 0xFF in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


def _inode(path: Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None
