"""Reading the JSONL files shipped in ``rhizome/datasets/data``."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from rhizome.engine.errors import ConfigError

SPLITS = ("train", "dev", "test")


def check_split(dataset: str, split: str) -> None:
    """Raise a helpful error unless ``split`` is one of :data:`SPLITS`."""
    if split not in SPLITS:
        raise ConfigError(f"{dataset} has no split {split!r}; choose one of: {', '.join(SPLITS)}")


def read_jsonl(name: str) -> list[dict[str, Any]]:
    """Rows of the shipped data file ``name`` (for example ``"gsm_dev.jsonl"``)."""
    resource = resources.files("rhizome.datasets").joinpath("data", name)
    try:
        text = resource.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"dataset file {name!r} is missing from the installed rhizome package; "
            f"reinstall rhizome (the wheel ships rhizome/datasets/data/*.jsonl)"
        ) from None
    return [json.loads(line) for line in text.splitlines() if line.strip()]
