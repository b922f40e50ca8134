"""Batch journals: a run directory that remembers every finished example of a batch.

``graph.batch(examples, run_dir="runs/dev")`` appends one JSON line per finished
example to ``runs/dev/results.jsonl`` and flushes it at once, so a run killed at
any moment (Ctrl-C, a crash, ``kill -9``) leaves every finished result on disk.
Started again on the same directory, the batch reads the journal back and runs
only the examples it does not hold a success for (failed examples run again).
:class:`~rhizome.optimizers.evaluate.Evaluate` and ``rhizome batch`` resume
through the same journal, so the rules below hold for every entry point.

The directory also holds ``batch.json``, naming the program (a fingerprint of
the graph's structure and tunable parameters) the results came from: resuming
with a changed program is refused rather than mixing results of two programs.
A torn last line (the process died half-way through a write) is cut off before
new lines are appended; an unreadable line is skipped with a warning and its
example runs again.

Lines are written with one ``write`` and a flush, inline on the event loop:
they are a few hundred bytes, and a write that cannot be interrupted by
cancellation half-way is what keeps the journal consistent.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import IO, Any

from rhizome.engine.errors import ConfigError

__all__ = ("META_FILE", "RESULTS_FILE", "Journal")


logger = logging.getLogger("rhizome.batch")

RESULTS_FILE = "results.jsonl"
META_FILE = "batch.json"


class Journal:
    """The ``results.jsonl`` of one batch run directory, opened for appending.

    Args:
        folder: The run directory; created when missing.
        program: The fingerprint of the program being run.

    Raises:
        ConfigError: The directory holds results of another program, or files
            that are not a batch journal.

    Attributes:
        rows: The rows already recorded, by example index (the last line wins).
    """

    def __init__(self, folder: str | os.PathLike[str], *, program: str) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._check_meta(program)
        self.rows: dict[int, dict[str, Any]] = {}
        self._read()
        self._file: IO[str] | None = open(self.path, "a", encoding="utf-8")

    @property
    def path(self) -> Path:
        """The ``results.jsonl`` file."""
        return self.folder / RESULTS_FILE

    def append(self, row: dict[str, Any]) -> None:
        """Write one row as a line and flush it to the operating system."""
        if self._file is None:
            raise ConfigError(f"the batch journal {self.path} is closed")
        self._file.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        """Close the file (rows already appended stay on disk)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_meta(self, program: str) -> None:
        meta_path = self.folder / META_FILE
        if not meta_path.exists():
            if (self.folder / RESULTS_FILE).exists():
                raise ConfigError(
                    f"{self.folder} holds a {RESULTS_FILE} but no {META_FILE}: it is not a batch "
                    "run directory (an evaluation's run record?); pass another run_dir"
                )
            meta = {"kind": "batch", "program": program}
            tmp = meta_path.with_name(META_FILE + ".tmp")
            tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
            os.replace(tmp, meta_path)  # atomic: a run killed here leaves no half file
            return
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read {meta_path} ({exc}); pass another run_dir") from None
        if not isinstance(meta, dict) or meta.get("kind") != "batch":
            raise ConfigError(f"{meta_path} does not describe a batch; pass another run_dir")
        if meta.get("program") != program:
            raise ConfigError(
                f"run_dir {str(self.folder)!r} holds results of a different program (its "
                "structure or tuned parameters changed since); pass a new run_dir, or delete "
                "this one to start over"
            )

    def _read(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            # The process died half-way through a line: drop the fragment so the
            # next append starts on a fresh line. That example simply runs again.
            with open(self.path, "r+b") as fh:
                fh.truncate(end)
        for number, line in enumerate(data[:end].splitlines(), start=1):
            row = _parse(line)
            if row is None:
                logger.warning(
                    "%s line %d is unreadable; its example will run again", self.path, number
                )
                continue
            self.rows[row["index"]] = row


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        row = json.loads(line)
    except ValueError:
        return None
    if not isinstance(row, dict) or type(row.get("index")) is not int or row["index"] < 0:
        return None
    return row
