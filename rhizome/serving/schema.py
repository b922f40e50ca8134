"""Request bodies typed by the program's inputs, and readable validation errors.

The served graph's inputs become a pydantic model (required unless every node
taking them has a default; unknown fields refused), so FastAPI validates
bodies against the program's signature and the OpenAPI docs show its fields.
Fields are stored under internal names with the real names as aliases, so an
input called ``json`` or ``model_id`` cannot clash with pydantic's own names.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import pydantic

from rhizome.engine.errors import ConfigError

if TYPE_CHECKING:
    from rhizome.engine.graphs.graph import Graph

__all__ = (
    "ERROR_RESPONSES",
    "ErrorBody",
    "ErrorDetail",
    "body_type",
    "check_inputs",
    "class_name",
    "dump_inputs",
    "field_errors",
    "inputs_model",
    "outputs_model",
    "request_models",
    "response_model",
)


def class_name(name: str, suffix: str) -> str:
    """A model class name from a graph name (``"two hop"``, ``"Inputs"``: ``TwoHopInputs``)."""
    words = re.split(r"[^0-9A-Za-z]+", name)
    return "".join(w[:1].upper() + w[1:] for w in words if w) + suffix


def inputs_model(graph: Graph) -> type[pydantic.BaseModel]:
    """A model of the graph's inputs: required ones required, extra fields refused."""
    optional = graph.optional_inputs
    fields: dict[str, Any] = {}
    for i, (name, field) in enumerate(graph.inputs.items()):
        default: Any = None if name in optional else ...
        annotation = field.annotation if name not in optional else field.annotation | None
        fields[f"f{i}"] = (
            annotation,
            pydantic.Field(default, alias=name, description=field.desc or None),
        )
    config = pydantic.ConfigDict(extra="forbid", populate_by_name=False)
    model: type[pydantic.BaseModel] = pydantic.create_model(
        class_name(graph.name, "Inputs"), __config__=config, **fields
    )
    return model


class ErrorDetail(pydantic.BaseModel):
    """What went wrong; failed runs add ``node``, ``kind`` and ``cause``."""

    model_config = pydantic.ConfigDict(extra="allow")

    type: str
    message: str
    fields: list[dict[str, str]] | None = None


class ErrorBody(pydantic.BaseModel):
    """The body of every error response."""

    error: ErrorDetail


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in (
        (401, "Missing or wrong bearer token"),
        (413, "Request body over the size limit"),
        (422, "Body not valid for the program's inputs (the message names the field)"),
        (500, "The program failed"),
        (502, "The LM endpoint failed"),
        (503, "At the concurrency limit with a full queue; retry later"),
        (504, "The run took longer than the server's timeout"),
    )
}


def outputs_model(graph: Graph) -> type[pydantic.BaseModel]:
    """A model of the graph's outputs (typed; each may be missing when a branch did not run)."""
    fields: dict[str, Any] = {
        f"f{i}": (field.annotation | None, pydantic.Field(None, alias=name))
        for i, (name, field) in enumerate(graph.outputs.items())
    }
    model: type[pydantic.BaseModel] = pydantic.create_model(
        class_name(graph.name, "Outputs"), **fields
    )
    return model


def response_model(graph: Graph) -> type[pydantic.BaseModel]:
    """The ``/v1/predict`` reply for ``graph``: its outputs (typed), usage and latency."""
    outputs = outputs_model(graph)
    model: type[pydantic.BaseModel] = pydantic.create_model(
        class_name(graph.name, "PredictResponse"),
        outputs=(outputs, ...),
        usage=(dict[str, float], pydantic.Field(description="LM calls, tokens, cost")),
        latency=(float, pydantic.Field(description="Seconds the run took")),
        trace=(dict[str, Any] | None, None),
    )
    return model


def request_models(graph: Graph, *, max_batch: int) -> tuple[Any, Any]:
    """The ``/v1/predict`` and ``/v1/batch`` body models for ``graph``."""
    inputs = inputs_model(graph)
    config = pydantic.ConfigDict(extra="forbid")
    predict = pydantic.create_model(
        class_name(graph.name, "PredictRequest"),
        __config__=config,
        inputs=(inputs, pydantic.Field(description="The program's input fields.")),
        trace=(bool, pydantic.Field(False, description="Include the run's trace.")),
    )
    batch = pydantic.create_model(
        class_name(graph.name, "BatchRequest"),
        __config__=config,
        examples=(
            list[inputs],  # type: ignore[valid-type]
            pydantic.Field(
                min_length=1, max_length=max_batch, description="One object of inputs per run."
            ),
        ),
        trace=(bool, pydantic.Field(False, description="Include each run's trace.")),
    )
    return predict, batch


def field_errors(
    errors: Iterable[Mapping[str, Any]], *, inputs: Iterable[str] = ()
) -> list[dict[str, str]]:
    """Validation errors as ``{"field": "inputs.question", "message": ...}``.

    Args:
        errors: pydantic's error dicts (``loc``, ``msg``, ``type``).
        inputs: The program's input names, listed when a field is unknown.
    """
    names = ", ".join(inputs) or "none"
    out = []
    for error in errors:
        loc = [str(p) for p in error.get("loc", ())]
        if loc and loc[0] == "body":
            loc = loc[1:]
        field = ".".join(loc) or "body"
        message = str(error.get("msg", "invalid"))
        if error.get("type") == "json_invalid":
            field, message = (
                "body",
                f"not valid JSON ({error.get('ctx', {}).get('error', message)})",
            )
        if error.get("type") == "extra_forbidden":
            nested = len(loc) > 1 and loc[0] in ("inputs", "examples")
            message = (
                f"unknown field; the program's inputs are: {names}"
                if nested
                else "unknown field; the body takes 'inputs' (or 'examples') and 'trace'"
            )
        out.append({"field": field, "message": message})
    return out


def check_inputs(graph: Graph, values: Mapping[str, Any]) -> dict[str, Any]:
    """Validate ``values`` against the graph's inputs; ConfigError names each bad field."""
    model = inputs_model(graph)
    try:
        checked = model.model_validate(dict(values))
    except pydantic.ValidationError as exc:
        problems = field_errors(
            [{**e, "loc": ("inputs", *e["loc"])} for e in exc.errors()], inputs=graph.inputs
        )
        text = "; ".join(f"{p['field'].removeprefix('inputs.')}: {p['message']}" for p in problems)
        raise ConfigError(f"invalid input for {graph.name!r}: {text}") from None
    return checked.model_dump(by_alias=True, exclude_unset=True)


_Handler = TypeVar("_Handler", bound=Callable[..., Awaitable[Any]])


def body_type(model: Any) -> Callable[[_Handler], _Handler]:
    """Give a handler's ``body`` parameter a model built at run time.

    With postponed annotations FastAPI would read ``body: model`` as a string it
    cannot resolve, so the annotation is set on the function object instead.
    """

    def mark(fn: _Handler) -> _Handler:
        fn.__annotations__["body"] = model
        return fn

    return mark


def dump_inputs(model: pydantic.BaseModel) -> dict[str, Any]:
    """A request's inputs model as the plain dict a run takes (only the fields sent)."""
    return model.model_dump(by_alias=True, exclude_unset=True)
