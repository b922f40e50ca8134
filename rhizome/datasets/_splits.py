"""Helpers shared by the dataset generation scripts (used only when regenerating the data)."""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any


def grouped_split(
    groups: Mapping[str, Sequence[dict[str, Any]]],
    sizes: Mapping[str, int],
    *,
    seed: int,
) -> dict[str, list[dict[str, Any]]]:
    """Assign whole groups to splits so no group straddles two splits.

    Groups are shuffled with ``seed`` and each goes to the first split (in the
    order of ``sizes``) that still has room for all of it; groups that fit
    nowhere are dropped. Raises if a split ends up short.
    """
    rng = random.Random(seed)
    keys = sorted(groups)
    rng.shuffle(keys)
    out: dict[str, list[dict[str, Any]]] = {name: [] for name in sizes}
    for key in keys:
        items = list(groups[key])
        for name, size in sizes.items():
            if len(out[name]) + len(items) <= size:
                out[name].extend(items)
                break
    for name, size in sizes.items():
        if len(out[name]) != size:
            raise SystemExit(f"split {name!r} has {len(out[name])} items, wanted {size}")
        rng.shuffle(out[name])
    return out


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write rows as UTF-8 JSON lines with sorted keys; return the row count."""
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", encoding="utf-8", newline="\n") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
            count += 1
    return count
