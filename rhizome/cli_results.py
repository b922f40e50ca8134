"""The results file of ``rhizome batch``: append as results arrive, resume, tidy at the end.

Each line is one JSON object with at least ``index`` and ``inputs``. Lines are
flushed as they are written, so an interrupted batch leaves every finished
result on disk. Resuming reads the file back: a torn last line (the process
died mid-write) is cut off, lines without an ``error`` count as done, and each
line's ``inputs`` must match the data file's line at its index, so a results
file is never silently resumed against different data. When the batch
finishes, the file is rewritten in index order with the last line per index.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import IO, Any

from rhizome.cli_common import CommandError


class ResultsFile:
    """Where batch results go: a file (resumable) or stdout.

    Args:
        path: The JSONL file, or None for stdout.
        overwrite: Start over, ignoring lines already in the file.
    """

    def __init__(self, path: Path | None, *, overwrite: bool = False) -> None:
        self.path = path
        self.overwrite = overwrite
        self._fh: IO[str] | None = None
        self._written = 0

    def resume(self, inputs: list[dict[str, Any]]) -> set[int]:
        """The indices already done; checks that the file belongs to these inputs."""
        if self.path is None or self.overwrite or not self.path.exists():
            return set()
        done: set[int] = set()
        for number, row in self._rows():
            index = row.get("index")
            if not isinstance(index, int) or not 0 <= index < len(inputs):
                raise CommandError(
                    f"{self.path}:{number} has index {index!r}, not a line of the data file",
                    hint="use a new --out, or --overwrite to start over",
                )
            if row.get("inputs") != inputs[index]:
                raise CommandError(
                    f"{self.path}:{number} holds results for different inputs than line "
                    f"{index + 1} of the data file",
                    hint="use a new --out for new data, or --overwrite to start over",
                )
            if row.get("error") is None:
                done.add(index)
            else:
                done.discard(index)
        return done

    def _rows(self) -> list[tuple[int, dict[str, Any]]]:
        """Read the file, cutting off a torn last line so appends start clean."""
        assert self.path is not None  # resume() checked
        data = self.path.read_bytes()
        rows: list[tuple[int, dict[str, Any]]] = []
        offset = 0
        for number, line in enumerate(data.splitlines(keepends=True), 1):
            try:
                row = json.loads(line) if line.endswith(b"\n") else None
            except json.JSONDecodeError:
                row = None
            if row is None and line.strip():
                if offset + len(line) < len(data):
                    raise CommandError(
                        f"{self.path}:{number} is not valid JSON",
                        hint="use --overwrite to start over",
                    )
                with self.path.open("r+b") as fh:
                    fh.truncate(offset)  # the torn tail of an interrupted write
                break
            if isinstance(row, dict):
                rows.append((number, row))
            offset += len(line)
        return rows

    def write(self, row: dict[str, Any]) -> None:
        """Append one result line and flush it."""
        if self._fh is None:
            self._fh = self._open()
        self._fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._fh.flush()
        self._written += 1

    def _open(self) -> IO[str]:
        if self.path is None:
            return sys.stdout
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return self.path.open("w" if self.overwrite else "a", encoding="utf-8")

    def finish(self) -> None:
        """Close the file and rewrite it sorted by index, one line per index."""
        if self._fh is None or self.path is None:
            return
        self._fh.close()
        self._fh = None
        rows: dict[int, dict[str, Any]] = {}
        for _, row in self._rows():
            rows[int(row["index"])] = row
        text = "".join(json.dumps(rows[i], ensure_ascii=False) + "\n" for i in sorted(rows))
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
