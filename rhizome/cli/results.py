"""The results file of ``rhizome batch``: lines as results arrive, tidied at the end.

Each line is one JSON object with ``index``, ``inputs``, ``outputs``, ``error``
and ``usage``. Lines are flushed as they are written; when the batch finishes
the file is rewritten in index order. The file is a view, rebuilt by every run:
what a rerun resumes from is the batch journal next to it (see
:func:`journal_dir` and :mod:`rhizome.engine.batches.journal`), the one journal that
``graph.batch``, ``graph.stream`` and evaluations resume from too.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import IO, Any

__all__ = ("JOURNAL_SUFFIX", "ResultsFile", "journal_dir")

JOURNAL_SUFFIX = ".journal"
"""Appended to the results file's name to name its journal directory."""


def journal_dir(out: Path | None) -> Path | None:
    """The batch journal kept next to the results file ``out`` (None for stdout)."""
    return None if out is None else out.with_name(out.name + JOURNAL_SUFFIX)


class ResultsFile:
    """Where batch results go: a file or stdout.

    Args:
        path: The JSONL file, or None for stdout.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._fh: IO[str] | None = None
        self._rows: dict[int, dict[str, Any]] = {}

    def write(self, row: dict[str, Any]) -> None:
        """Write one result line and flush it."""
        if self._fh is None:
            self._fh = self._open()
        self._fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._fh.flush()
        self._rows[int(row["index"])] = row

    def _open(self) -> IO[str]:
        if self.path is None:
            return sys.stdout
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return self.path.open("w", encoding="utf-8")

    def finish(self) -> None:
        """Close the file and rewrite it sorted by index."""
        if self._fh is None or self.path is None:
            return
        self._fh.close()
        self._fh = None
        rows = self._rows
        text = "".join(json.dumps(rows[i], ensure_ascii=False) + "\n" for i in sorted(rows))
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
