"""Where a distributed batch's examples come from, and where its rows go.

Sources: any iterable of dicts or :class:`~rhizome.engine.example.Example`,
a JSONL file, a Parquet file, or a Ray Dataset. Sinks: a JSONL or Parquet file
chosen by the output path's suffix, written batch by batch as rows arrive.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from rhizome.engine.errors import ConfigError
from rhizome.engine.example import Example

__all__ = ("RowWriter", "examples_of")

Source = Iterable[Example | Mapping[str, Any]] | str | os.PathLike[str] | Any


def examples_of(source: Source) -> Iterator[dict[str, Any]]:
    """The examples of ``source`` as plain dicts, in order.

    Raises:
        ConfigError: A path that is not ``.jsonl``/``.json``/``.parquet``, a
            line that is not a JSON object, or a value that is not an example.
    """
    if isinstance(source, (str, os.PathLike)):
        yield from _file_rows(Path(source))
        return
    if hasattr(source, "iter_rows") and hasattr(source, "map_batches"):  # a Ray Dataset
        for row in source.iter_rows():
            yield dict(row)
        return
    for number, item in enumerate(source):
        if isinstance(item, Example):
            yield dict(item)
        elif isinstance(item, Mapping):
            yield dict(item)
        else:
            raise ConfigError(
                f"example {number} is a {type(item).__name__}; a batch takes dicts or "
                "Example objects (Example(question=...) or {'question': ...})"
            )


def _file_rows(path: Path) -> Iterator[dict[str, Any]]:
    if not path.is_file():
        raise ConfigError(f"no data file at {str(path)!r}")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches():
            yield from batch.to_pylist()
        return
    if suffix not in (".jsonl", ".json", ".ndjson"):
        raise ConfigError(f"{path} is neither JSONL (.jsonl) nor Parquet (.parquet)")
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise ConfigError(f"{path}:{number} is not valid JSON ({exc})") from None
            if not isinstance(row, dict):
                raise ConfigError(f"{path}:{number} must be a JSON object of inputs")
            yield row


class RowWriter:
    """Rows written to a ``.jsonl`` or ``.parquet`` file as they arrive.

    Parquet columns hold ``outputs``, ``error`` and ``inputs`` as JSON text, so
    every row has the same schema whatever its outputs are.

    Args:
        path: The output file; its suffix picks the format.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix not in (".jsonl", ".parquet"):
            raise ConfigError(f"output {str(path)!r} must end in .jsonl or .parquet")
        self.parquet = suffix == ".parquet"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._text = None if self.parquet else self.path.open("w", encoding="utf-8")
        self._table: Any = None

    def write(self, rows: list[dict[str, Any]]) -> None:
        """Append rows (each with index, inputs, outputs, error, usage, node)."""
        if self._text is not None:
            for row in rows:
                self._text.write(json.dumps(row, ensure_ascii=False) + "\n")
            self._text.flush()
            return
        if not rows:
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        columns = {
            "index": [r["index"] for r in rows],
            "inputs": [json.dumps(r["inputs"], ensure_ascii=False) for r in rows],
            "outputs": [_json_or_none(r["outputs"]) for r in rows],
            "error": [_json_or_none(r["error"]) for r in rows],
            "node": [r.get("node") for r in rows],
        }
        schema = pa.schema(
            [("index", pa.int64())]
            + [(n, pa.string()) for n in ("inputs", "outputs", "error", "node")]
        )
        table = pa.table(columns, schema=schema)
        if self._table is None:
            self._table = pq.ParquetWriter(self.path, schema)
        self._table.write_table(table)

    def close(self) -> None:
        """Finish the file."""
        if self._text is not None:
            self._text.close()
        if self._table is not None:
            self._table.close()


def _json_or_none(value: Any) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False)
