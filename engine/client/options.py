"""Grouped configuration objects built from the flat keywords users already write.

Constructors such as :class:`~rhizome.engine.client.openai.OpenAILM` and
:class:`~rhizome.optimizers.joint.JointSearch` take frozen option groups
(``retry=RetryPolicy(...)``) and, for the forms written before the groups
existed, the same options as flat keywords (``max_retries=3``). A flat keyword
left at None is not given; :func:`grouped` merges the given ones into the
group's defaults, and refuses a group given together with one of its keywords.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

from rhizome.engine.errors import ConfigError

__all__ = ("grouped",)

G = TypeVar("G")


def grouped(owner: str, keyword: str, group: G | None, default: G, flat: Mapping[str, Any]) -> G:
    """The option group to use: ``group`` itself, or ``default`` with the given flat keywords.

    Args:
        owner: The class taking the options, for messages (``"OpenAILM"``).
        keyword: The keyword the group is passed as (``"retry"``).
        group: The group as passed, or None.
        default: The group of defaults (a frozen dataclass instance).
        flat: The group's flat keywords as passed; None means not given.

    Raises:
        ConfigError: Both the group and some of its flat keywords were given,
            or a flat value is refused by the group's own checks.
    """
    given = {name: value for name, value in flat.items() if value is not None}
    if group is None:
        return dataclasses.replace(default, **given) if given else default  # type: ignore[type-var]
    if given:
        names = ", ".join(f"{name}=" for name in given)
        raise ConfigError(
            f"{owner}() got both {keyword}={type(group).__name__}(...) and {names}; "
            f"pass these options once, either inside {keyword}= or as keywords, not both"
        )
    return group
