"""A calculator tool that evaluates arithmetic without ``eval``.

The expression is parsed with :mod:`ast` and only these nodes are evaluated:

- numbers (int and float literals, ``1_000`` included; no booleans, strings or complex);
- ``+ - * / // % **``, unary ``+``/``-``, and parentheses;
- calls of the functions in :data:`FUNCTIONS` with positional arguments
  (``sqrt``, ``log``, ``exp``, ``sin``, ``cos``, ``abs``, ``round``, ``min``, ``max`` ...);
- the constants ``pi``, ``e`` and ``tau``.

Everything else (other names, attribute access, subscripts, comprehensions, lambdas,
keyword arguments) is rejected with a :class:`CalculatorError` that says what is
allowed. Work is bounded: expressions over 1,000 characters or 200 nodes, integer
results over 10,000 bits (about 3,000 digits), ``factorial`` above 1,000 and
``round`` to more than 100 digits are refused *before* computing, so ``9**9**9**9``
fails at once instead of hanging.

Notation decisions, made for text an LM writes:

- ``^`` means power (``3^2`` is 9); bitwise xor is never wanted in arithmetic.
- ``×``, ``÷`` and the Unicode minus ``−`` mean ``*``, ``/`` and ``-``.
- Thousands separators are *not* accepted: ``2,000 + 3`` is ambiguous with function
  arguments (``max(100,200)``), so it is rejected with a hint to write ``2000``.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import Any

from rhizome.engine.errors import RhizomeError
from rhizome.tools.agent.tool import FunctionTool, tool

__all__ = ("CalculatorError", "calculator", "evaluate", "format_number")


MAX_LENGTH = 1_000
MAX_NODES = 200
MAX_INT_BITS = 10_000
MAX_FACTORIAL = 1_000
MAX_ROUND_DIGITS = 100

Number = int | float

CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e, "tau": math.tau}

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_SYMBOLS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//"}
_SYMBOLS |= {ast.Mod: "%", ast.Pow: "**"}


class CalculatorError(RhizomeError, ValueError):
    """An expression is not allowed, malformed, or its result is out of bounds."""


def _factorial(n: Number) -> int:
    if isinstance(n, float):
        if not n.is_integer():
            raise CalculatorError(f"factorial() needs a whole number, got {n}")
        n = int(n)
    if n > MAX_FACTORIAL:
        raise CalculatorError(f"factorial({n}) is too large; the limit is {MAX_FACTORIAL}")
    return math.factorial(n)


def _round(x: Number, ndigits: Number | None = None) -> Number:
    if ndigits is None:
        return round(x)
    if not isinstance(ndigits, int) or abs(ndigits) > MAX_ROUND_DIGITS:
        raise CalculatorError(f"round() takes a whole number of digits up to {MAX_ROUND_DIGITS}")
    return round(x, ndigits)


def _log(x: Number, base: Number | None = None) -> float:
    return math.log(x) if base is None else math.log(x, base)


FUNCTIONS: dict[str, Callable[..., Number]] = {
    "sqrt": math.sqrt,
    "exp": math.exp,
    "log": _log,
    "ln": math.log,
    "log10": math.log10,
    "log2": math.log2,
    "sin": math.sin,
    "cos": math.cos,
    "tan": math.tan,
    "asin": math.asin,
    "acos": math.acos,
    "atan": math.atan,
    "atan2": math.atan2,
    "sinh": math.sinh,
    "cosh": math.cosh,
    "tanh": math.tanh,
    "degrees": math.degrees,
    "radians": math.radians,
    "hypot": math.hypot,
    "floor": math.floor,
    "ceil": math.ceil,
    "factorial": _factorial,
    "abs": abs,
    "round": _round,
    "min": min,
    "max": max,
}


def evaluate(expression: str) -> Number:
    """Evaluate an arithmetic expression safely and return an int or a float.

    Raises:
        CalculatorError: The expression uses something not allowed, is malformed,
            or its result would exceed the bounds described in the module docstring.
    """
    text = _normalise(expression)
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise CalculatorError(
            f"cannot parse {expression!r}: {exc.msg}; write arithmetic such as '(2 + 3) * 4'"
        ) from None
    if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
        raise CalculatorError(f"expression is too complex (more than {MAX_NODES} parts)")
    return _eval(tree.body)


def format_number(value: Number) -> str:
    """Format a result for a model: whole floats without ``.0``, others to 15 digits."""
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "nan"
    return format(value, ".15g")


def _normalise(expression: str) -> str:
    if not isinstance(expression, str) or not expression.strip():
        raise CalculatorError("give an arithmetic expression as text, e.g. '2 * (3 + 4)'")
    if len(expression) > MAX_LENGTH:
        raise CalculatorError(f"expression is longer than {MAX_LENGTH} characters")
    text = expression.strip().replace("^", "**").replace("×", "*").replace("÷", "/")
    return text.replace("−", "-")


def _eval(node: ast.expr) -> Number:
    if isinstance(node, ast.Constant):
        return _constant(node.value)
    if isinstance(node, ast.Name):
        if node.id in CONSTANTS:
            return CONSTANTS[node.id]
        raise CalculatorError(
            f"unknown name {node.id!r}; allowed constants: {', '.join(CONSTANTS)}; "
            f"allowed functions: {', '.join(FUNCTIONS)}"
        )
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.UAdd | ast.USub):
        value = _eval(node.operand)
        return -value if isinstance(node.op, ast.USub) else +value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        return _binary(node.op, _eval(node.left), _eval(node.right))
    if isinstance(node, ast.Call):
        return _call(node)
    if isinstance(node, ast.Tuple):
        raise CalculatorError(
            "commas only separate function arguments; write numbers without thousands "
            "separators (2000, not 2,000)"
        )
    raise CalculatorError(
        f"{ast.unparse(node)!r} is not allowed; use numbers, + - * / // % ** (or ^), "
        f"parentheses, the constants {', '.join(CONSTANTS)} and the functions "
        f"{', '.join(FUNCTIONS)}"
    )


def _constant(value: Any) -> Number:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CalculatorError(f"{value!r} is not a number; only int and float literals are allowed")
    return value


def _binary(op: ast.operator, left: Number, right: Number) -> Number:
    if isinstance(op, ast.Pow):
        _check_power(left, right)
    try:
        result = _BINARY[type(op)](left, right)
    except ZeroDivisionError:
        raise CalculatorError(f"division by zero in {left} {_SYMBOLS[type(op)]} {right}") from None
    except OverflowError:
        raise CalculatorError("the result is too large to represent (overflow)") from None
    if isinstance(result, complex):
        raise CalculatorError(f"({left}) ** ({right}) has no real value")
    return _check_size(result)


def _check_power(base: Number, exponent: Number) -> None:
    if not isinstance(base, int) or not isinstance(exponent, int) or exponent <= 0:
        return
    if abs(base) > 1 and exponent * math.log2(abs(base)) > MAX_INT_BITS:
        raise CalculatorError(
            f"{base} ** {exponent} is too large (more than {MAX_INT_BITS} bits); "
            "use a float base such as 2.0 for an approximate value"
        )


def _check_size(value: Number) -> Number:
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise CalculatorError(f"the result is too large (more than {MAX_INT_BITS} bits)")
    if isinstance(value, float) and math.isinf(value):
        raise CalculatorError("the result is too large to represent (overflow)")
    return value


def _call(node: ast.Call) -> Number:
    if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
        called = ast.unparse(node.func)
        raise CalculatorError(
            f"function {called!r} is not allowed; allowed functions: {', '.join(FUNCTIONS)}"
        )
    name = node.func.id
    if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
        raise CalculatorError(f"{name}() takes positional arguments only, e.g. {name}(2)")
    args = [_eval(arg) for arg in node.args]
    try:
        result = FUNCTIONS[name](*args)
    except CalculatorError:
        raise
    except (TypeError, ValueError, ArithmeticError) as exc:
        shown = ", ".join(format_number(a) for a in args)
        raise CalculatorError(f"{name}({shown}) failed: {exc}") from None
    return _check_size(result)


def _calculator(expression: str) -> str:
    """Evaluate an arithmetic expression and return the result.

    Supports numbers, + - * / // % and ** (or ^), parentheses, the constants pi, e
    and tau, and the functions sqrt, log (natural, or log(x, base)), log10, log2, exp,
    sin, cos, tan, asin, acos, atan, atan2, sinh, cosh, tanh, degrees, radians, hypot,
    floor, ceil, factorial, abs, round, min and max. Write numbers without thousands
    separators.

    Args:
        expression: The arithmetic expression, e.g. "sqrt(2) * (3 + 4)^2".
    """
    return format_number(evaluate(expression))


calculator: FunctionTool = tool(_calculator, name="calculator")
"""The calculator as a :class:`~rhizome.tools.agent.tool.Tool` named ``calculator``."""
