"""The last LM calls as readable text: ``rhizome inspect`` and :func:`inspect_history`.

Both print calls the same way: a header with the node, its kind, the tokens
and whether the cache answered, then every message by role, the reply and any
error. Images in a message show as one short line, not as their base64 data.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import IO, Any

from rhizome.engine.client.protocol import readable_content
from rhizome.engine.trace import recent_calls

__all__ = ("format_call", "inspect_history")


def format_call(call: Mapping[str, Any]) -> str:
    """One LM call (as a trace file holds it, with ``node`` and ``kind``) as readable text."""
    usage = call.get("usage") or {}
    tokens = f"{usage.get('prompt_tokens', 0)}+{usage.get('completion_tokens', 0)} tokens"
    flags = " · cached" if call.get("cached") else ""
    head = f"── {call.get('predictor') or call['node']} ({call['kind']}) · {tokens}{flags} ──"
    lines = [head]
    for message in call.get("messages", []):
        lines.append(f"[{message.get('role', '?')}]")
        lines.append(readable_content(message.get("content")))
        for tool_call in message.get("tool_calls") or ():
            function = tool_call.get("function") or {}
            lines.append(
                f"(calls {function.get('name', '?')} {function.get('arguments', '')} "
                f"as {tool_call.get('id', '?')})"
            )
    lines.append("[reply]")
    lines.append(call.get("reply", ""))
    if call.get("error"):
        lines.append(f"[error] {call['error']}")
    return "\n".join(lines) + "\n"


def inspect_history(n: int = 1, *, file: IO[str] | None = None) -> None:
    """Print the last ``n`` LM calls made anywhere in this process, oldest first.

    Every predictor call counts, inside a graph run or not, whatever its LM;
    ``lm.inspect_history(n)`` is the view of one LM's requests. At most
    :data:`rhizome.engine.trace.RECENT_CALLS` calls are kept.

    Args:
        n: How many calls to show.
        file: Where to print; standard output by default.
    """
    out = file if file is not None else sys.stdout
    calls = recent_calls(n)
    if not calls:
        print("(no LM calls yet in this process)", file=out)
    for call in calls:
        print(format_call(call), file=out)
