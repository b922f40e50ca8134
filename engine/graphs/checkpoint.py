"""Checkpoint stores: where a checkpointed run keeps what it has finished.

``graph.run(..., checkpoint=store, run_id="r1")`` records every finished
node's outputs (and each loop iteration, agent step, fan-out item and answer
to an interrupt) in a store, so a run stopped by a crash, Ctrl-C or a question
for a person continues where it stopped (see :mod:`rhizome.engine.graphs.durable`).
A store keeps, per run id, one *meta* document (the program's fingerprint,
the inputs, the status) and *entries* by key. Both are JSON data, encoded the
way the batch journal encodes its lines (:func:`json.dumps`, UTF-8, values made
JSON-ready with :func:`~rhizome.engine.trace.jsonable`); nothing is pickled.

Stores:

- :class:`SQLiteCheckpoint` (the default; ``checkpoint="runs.sqlite"`` opens
  one): one file, WAL journaling, each write one transaction. A committed write
  survives the process being killed; ``":memory:"`` keeps runs in the process.
- :class:`DirectoryCheckpoint`: one folder per run holding ``run.json`` (the
  meta, replaced atomically) and ``entries.jsonl`` (one line per entry,
  appended and flushed; a torn last line is dropped), readable with any editor.
- Anything else implementing :class:`CheckpointStore` (three methods).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from rhizome.engine.errors import ConfigError

__all__ = (
    "CheckpointStore",
    "DirectoryCheckpoint",
    "SQLiteCheckpoint",
    "Saved",
    "check_run_id",
    "open_store",
)


logger = logging.getLogger("rhizome.checkpoint")

_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
Entries = Sequence[tuple[str, Any]]


@dataclasses.dataclass(kw_only=True)
class Saved:
    """What a store holds for one run.

    Attributes:
        meta: The run's meta document (program fingerprint, inputs, status ...).
        entries: The recorded entries by key, each a JSON object.
    """

    meta: dict[str, Any]
    entries: dict[str, Any]


@runtime_checkable
class CheckpointStore(Protocol):
    """Where checkpointed runs are kept. Values are JSON data (dicts, lists, text, numbers).

    A store may be called from the event loop: keep each call short (a local
    file or database write), or buffer and write elsewhere.
    """

    def read(self, run_id: str) -> Saved | None:
        """The run's meta and entries, or None when the store has no such run."""
        ...

    def write(
        self, run_id: str, *, meta: Mapping[str, Any] | None = None, entries: Entries = ()
    ) -> None:
        """Add (or replace) ``entries`` and, when given, replace the meta; all or nothing."""
        ...

    def delete(self, run_id: str) -> None:
        """Forget the run (nothing happens when there is none)."""
        ...


def check_run_id(run_id: Any) -> str:
    """``run_id`` when it is a usable run id (it becomes a file name in directory stores).

    Raises:
        ConfigError: It is not a string of 1 to 128 letters, digits, ``_ . : -``
            starting with a letter or digit.
    """
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
        raise ConfigError(
            f"run_id {run_id!r} is not usable: give a string of 1 to 128 letters, digits, "
            "'_', '.', ':' or '-' that starts with a letter or digit (e.g. 'order-1234')"
        )
    return run_id


def open_store(store: CheckpointStore | str | os.PathLike[str]) -> CheckpointStore:
    """``store`` itself, or an :class:`SQLiteCheckpoint` on the file a path names."""
    if isinstance(store, str | os.PathLike):
        return SQLiteCheckpoint(store)
    if not isinstance(store, CheckpointStore):
        raise ConfigError(
            f"checkpoint= takes a path (an SQLite file), SQLiteCheckpoint(path), "
            f"DirectoryCheckpoint(folder) or another CheckpointStore; got {type(store).__name__}"
        )
    return store


def _encode(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class SQLiteCheckpoint:
    """Checkpoints in one SQLite file (created with its folder on first use).

    Args:
        path: The database file, or ``":memory:"`` for runs kept in this process.
        busy_timeout: Seconds a write waits for another process's lock.

    Each :meth:`write` is one transaction: committed, it survives the process
    being killed (WAL with ``synchronous=NORMAL``; a power loss may undo the
    last transactions).
    """

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = 5.0) -> None:
        self.path = str(path)
        self._busy_timeout = busy_timeout
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    def __repr__(self) -> str:
        return f"SQLiteCheckpoint({self.path!r})"

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(
                self.path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False
            )
            if self.path != ":memory:":
                db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS runs "
                "(run_id TEXT PRIMARY KEY, meta TEXT NOT NULL, updated REAL NOT NULL)"
            )
            db.execute(
                "CREATE TABLE IF NOT EXISTS entries (run_id TEXT NOT NULL, key TEXT NOT NULL, "
                "value TEXT NOT NULL, PRIMARY KEY (run_id, key))"
            )
            self._db = db
        return self._db

    @contextlib.contextmanager
    def _locked(self) -> Iterator[sqlite3.Connection]:
        """The connection, under the lock; a damaged file is a ConfigError saying so."""
        with self._lock:
            try:
                yield self._connection()
            except sqlite3.DatabaseError as exc:
                if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
                    raise
                raise ConfigError(
                    f"the checkpoint database {self.path!r} cannot be used ({exc}); is it an "
                    "SQLite file written by rhizome? Move it aside or pass another checkpoint="
                ) from exc

    def read(self, run_id: str) -> Saved | None:
        """The run's meta and entries, or None."""
        with self._locked() as db:
            row = db.execute("SELECT meta FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            if row is None:
                return None
            rows = db.execute("SELECT key, value FROM entries WHERE run_id = ?", (run_id,))
            entries = {str(key): json.loads(value) for key, value in rows}
        return Saved(meta=json.loads(row[0]), entries=entries)

    def write(
        self, run_id: str, *, meta: Mapping[str, Any] | None = None, entries: Entries = ()
    ) -> None:
        """Write the meta and entries in one transaction."""
        rows = [(run_id, key, _encode(value)) for key, value in entries]
        with self._locked() as db:
            db.execute("BEGIN")
            try:
                if meta is not None:
                    db.execute(
                        "INSERT OR REPLACE INTO runs (run_id, meta, updated) VALUES (?, ?, ?)",
                        (run_id, _encode(dict(meta)), time.time()),
                    )
                db.executemany(
                    "INSERT OR REPLACE INTO entries (run_id, key, value) VALUES (?, ?, ?)", rows
                )
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def delete(self, run_id: str) -> None:
        """Forget the run."""
        with self._locked() as db:
            db.execute("DELETE FROM entries WHERE run_id = ?", (run_id,))
            db.execute("DELETE FROM runs WHERE run_id = ?", (run_id,))

    def close(self) -> None:
        """Close the database (it reopens on next use)."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


class DirectoryCheckpoint:
    """Checkpoints as readable files: ``<folder>/<run_id>/run.json`` and ``entries.jsonl``.

    Args:
        folder: The folder holding one sub-folder per run; created on first write.

    ``run.json`` is replaced atomically; entry lines are appended with one
    ``write`` and a flush each, so a killed process leaves every entry
    written before it (a torn last line is dropped when read back).
    """

    META = "run.json"
    ENTRIES = "entries.jsonl"

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)

    def __repr__(self) -> str:
        return f"DirectoryCheckpoint({str(self.folder)!r})"

    def _run(self, run_id: str) -> Path:
        return self.folder / check_run_id(run_id)

    def read(self, run_id: str) -> Saved | None:
        """The run's meta and entries, or None."""
        folder = self._run(run_id)
        try:
            meta = json.loads((folder / self.META).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise ConfigError(f"{folder / self.META} is not readable JSON ({exc})") from None
        return Saved(meta=meta, entries=self._entries(folder / self.ENTRIES))

    def _entries(self, path: Path) -> dict[str, Any]:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return {}
        end = data.rfind(b"\n") + 1
        if end < len(data):  # the process died half-way through a line: drop it
            with open(path, "r+b") as handle:
                handle.truncate(end)
        entries: dict[str, Any] = {}
        for number, line in enumerate(data[:end].splitlines(), start=1):
            try:
                row = json.loads(line)
                entries[str(row["key"])] = row["value"]
            except (ValueError, KeyError, TypeError):
                logger.warning("%s line %d is unreadable; that step will run again", path, number)
        return entries

    def write(
        self, run_id: str, *, meta: Mapping[str, Any] | None = None, entries: Entries = ()
    ) -> None:
        """Append the entries, then replace the meta."""
        folder = self._run(run_id)
        folder.mkdir(parents=True, exist_ok=True)
        if entries:
            text = "".join(_encode({"key": k, "value": v}) + "\n" for k, v in entries)
            with open(folder / self.ENTRIES, "a", encoding="utf-8") as handle:
                handle.write(text)
        if meta is not None:
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=".run.", suffix=".tmp")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as handle:
                    handle.write(json.dumps(dict(meta), indent=2, ensure_ascii=False) + "\n")
                os.replace(tmp, folder / self.META)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise

    def delete(self, run_id: str) -> None:
        """Remove the run's folder."""
        shutil.rmtree(self._run(run_id), ignore_errors=True)
