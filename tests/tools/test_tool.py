"""Tests for the Tool base class and the @tool decorator."""

from __future__ import annotations

import threading
from typing import Literal

import anyio
import anyio.lowlevel
import pydantic
import pytest

from rhizome.engine.errors import RhizomeError
from rhizome.tools.agent.tool import (
    FunctionTool,
    Tool,
    ToolArgumentError,
    ToolDefinitionError,
    ToolError,
    ToolResult,
    parse_docstring,
    tool,
)


@tool
def add(a: int, b: int = 0) -> int:
    """Add two whole numbers.

    Use it for sums.

    Args:
        a: The first number.
        b (int): The second number,
            which defaults to zero.

    Returns:
        The sum.
    """
    return a + b


@tool(name="lookup", description="Look a word up.")
async def find_word(word: str, mode: Literal["exact", "prefix"] = "exact") -> list[str]:
    """Ignored because a description is given.

    Args:
        word: The word to find.
        mode: How to match.
    """
    await anyio.lowlevel.checkpoint()
    return [word, mode]


def test_schema_comes_from_hints_and_docstring() -> None:
    entry = add.openai_schema()
    assert entry["type"] == "function"
    function = entry["function"]
    assert function["name"] == "add"
    assert function["description"] == "Add two whole numbers.\n\nUse it for sums."
    params = function["parameters"]
    assert params["type"] == "object"
    assert params["required"] == ["a"]
    assert params["additionalProperties"] is False
    assert params["properties"]["a"] == {"type": "integer", "description": "The first number."}
    assert params["properties"]["b"]["default"] == 0
    assert params["properties"]["b"]["description"] == "The second number, which defaults to zero."
    assert "title" not in params


def test_decorator_with_overrides_and_literal_enum() -> None:
    assert isinstance(find_word, FunctionTool)
    assert find_word.name == "lookup"
    assert find_word.description == "Look a word up."
    mode = find_word.parameters_schema["properties"]["mode"]
    assert mode["enum"] == ["exact", "prefix"]
    assert mode["description"] == "How to match."


def test_parse_docstring_sections() -> None:
    summary, args = parse_docstring(
        """Do a thing.

        Args:
            x: First.
            *rest: Others.

        Raises:
            ValueError: never an argument.
        """
    )
    assert summary == "Do a thing."
    assert args == {"x": "First.", "rest": "Others."}


async def test_sync_tool_runs_in_worker_thread() -> None:
    main = threading.get_ident()
    seen: list[int] = []

    @tool
    def where(n: int) -> int:
        """Record the thread.

        Args:
            n: A number.
        """
        seen.append(threading.get_ident())
        return n * 2

    result = await where({"n": 4})
    assert isinstance(result, ToolResult)
    assert result.value == 8
    assert result.text == "8"
    assert len(seen) == 1
    assert seen[0] != main


async def test_async_tool_and_json_text_arguments() -> None:
    result = await find_word('{"word": "rhizome", "mode": "prefix"}')
    assert result.value == ["rhizome", "prefix"]
    assert result.text == '["rhizome", "prefix"]'
    assert str(result) == result.text


async def test_keyword_call_and_lax_numbers() -> None:
    assert (await add(a=2, b="3")).value == 5
    assert (await add({"a": 1}, b=1)).value == 2


@pytest.mark.parametrize(
    ("arguments", "names", "fragments"),
    [
        ('{"a": "many"}', ("a",), ["argument 'a'", "valid integer", "'many'"]),
        ('{"b": 1}', ("a",), ["missing required argument 'a'", "integer"]),
        ('{"a": 1, "c": 2}', ("c",), ["unknown argument 'c'", "known arguments: a, b"]),
    ],
)
async def test_bad_arguments_are_actionable(
    arguments: str, names: tuple[str, ...], fragments: list[str]
) -> None:
    with pytest.raises(ToolArgumentError) as info:
        await add(arguments)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message
    # The schema's parameter list is part of every message.
    assert "a (integer, required): The first number." in message
    assert "b (integer, default 0)" in message
    assert info.value.tool == "add"
    assert info.value.arguments == names
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, RhizomeError)


@pytest.mark.parametrize("payload", ["{not json", "[1, 2]", '"text"'])
async def test_payload_that_is_not_a_json_object(payload: str) -> None:
    with pytest.raises(ToolArgumentError, match="tool 'add'") as info:
        await add(payload)
    assert "parameters of tool 'add'" in str(info.value)


async def test_wrong_literal_lists_choices() -> None:
    with pytest.raises(ToolArgumentError) as info:
        await find_word({"word": "x", "mode": "fuzzy"})
    assert "'exact'" in str(info.value)
    assert 'one of "exact", "prefix"' in str(info.value)


async def test_tool_exception_is_wrapped_with_tool_name() -> None:
    @tool
    def explode(reason: str) -> str:
        """Always fails.

        Args:
            reason: Why.
        """
        raise KeyError(reason)

    with pytest.raises(ToolError) as info:
        await explode({"reason": "boom"})
    assert info.value.tool == "explode"
    assert "tool 'explode' failed" in str(info.value)
    assert "KeyError" in str(info.value)
    assert isinstance(info.value.__cause__, KeyError)
    assert (await explode.observe({"reason": "x"})).startswith("Error: tool 'explode' failed")


async def test_observe_returns_argument_errors_as_text() -> None:
    text = await add.observe('{"a": "x"}')
    assert text.startswith("Error: invalid arguments for tool 'add'")
    assert await add.observe({"a": 1, "b": 2}) == "3"


async def test_cancellation_is_not_wrapped() -> None:
    @tool
    async def slow(seconds: float) -> str:
        """Sleep.

        Args:
            seconds: How long.
        """
        await anyio.sleep(seconds)
        return "done"

    with anyio.move_on_after(0.05) as scope:
        await slow({"seconds": 5})
    assert scope.cancelled_caught


def test_missing_annotation_fails_at_decoration() -> None:
    def untyped(a, b: int) -> int:  # type: ignore[no-untyped-def]
        return b

    with pytest.raises(ToolDefinitionError, match="parameter 'a' of tool 'untyped' has no type"):
        tool(untyped)


def test_var_args_and_bad_names_are_refused() -> None:
    def many(*items: int) -> int:
        return len(items)

    with pytest.raises(ToolDefinitionError, match=r"\*items"):
        tool(many)
    with pytest.raises(ToolDefinitionError, match="not allowed"):
        tool(name="has space")(add.fn)


class Point(pydantic.BaseModel):
    """A point on a grid."""

    x: int
    y: int


async def test_pydantic_model_parameter() -> None:
    @tool
    def norm(p: Point) -> int:
        """Manhattan norm.

        Args:
            p: The point.
        """
        return abs(p.x) + abs(p.y)

    schema = norm.parameters_schema
    assert schema["properties"]["p"]["$ref"] == "#/$defs/Point"
    assert schema["$defs"]["Point"]["required"] == ["x", "y"]
    assert (await norm({"p": {"x": -2, "y": 3}})).value == 5
    with pytest.raises(ToolArgumentError, match=r"argument 'p\.y'"):
        await norm({"p": {"x": 1}})


def test_unresolvable_annotation_is_a_definition_error() -> None:
    class Local(pydantic.BaseModel):
        x: int

    def uses_local(item: Local) -> int:
        return item.x

    with pytest.raises(ToolDefinitionError, match="cannot read the signature"):
        tool(uses_local)


async def test_subclassing_tool() -> None:
    class Echo(Tool):
        def __init__(self) -> None:
            model = pydantic.create_model("echo_arguments", text=(str, ...))
            super().__init__(name="echo", description="Echo text.", arguments_model=model)

        async def invoke(self, arguments: dict[str, object]) -> object:
            return arguments["text"]

    echo = Echo()
    assert (await echo({"text": "hi"})).text == "hi"
    assert echo.openai_schema()["function"]["parameters"]["required"] == ["text"]
