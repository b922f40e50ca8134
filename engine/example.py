"""Examples (labelled data) and predictions (what a run returns)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rhizome.engine.trace import Trace

__all__ = ("Example", "Prediction")


class Example(Mapping[str, Any]):
    """A read-only record of named fields, with optional tags for slicing scores.

    ``Example(question="...", answer="...")``. Which fields are inputs is decided
    by the graph that runs it (its declared inputs), or fixed with
    :meth:`with_inputs`. Tags (``tags=("bridge",)``) group examples when
    evaluation scores are sliced per sub-task.
    """

    __slots__ = ("_data", "_input_keys", "tags")

    def __init__(
        self,
        data: Mapping[str, Any] | None = None,
        /,
        *,
        tags: Iterable[str] = (),
        **fields: Any,
    ) -> None:
        self._data: dict[str, Any] = {**dict(data or {}), **fields}
        self._input_keys: tuple[str, ...] | None = None
        self.tags: tuple[str, ...] = tuple(tags)

    def with_inputs(self, *keys: str) -> Example:
        """Return a copy that marks ``keys`` as the input fields."""
        missing = [k for k in keys if k not in self._data]
        if missing:
            raise KeyError(
                f"example has no field(s) {missing}; its fields are {sorted(self._data)}"
            )
        new = Example(self._data, tags=self.tags)
        new._input_keys = tuple(keys)
        return new

    @property
    def input_keys(self) -> tuple[str, ...] | None:
        """The input field names if fixed with :meth:`with_inputs`, else None."""
        return self._input_keys

    def inputs(self, keys: Iterable[str] | None = None) -> dict[str, Any]:
        """The input fields: ``keys`` if given, else those fixed by :meth:`with_inputs`."""
        chosen = tuple(keys) if keys is not None else self._input_keys
        if chosen is None:
            return dict(self._data)
        return {k: self._data[k] for k in chosen if k in self._data}

    def labels(self) -> dict[str, Any]:
        """The fields that are not inputs."""
        keys = set(self._input_keys or ())
        return {k: v for k, v in self._data.items() if k not in keys}

    def to_dict(self) -> dict[str, Any]:
        """A plain dict copy of the fields."""
        return dict(self._data)

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __getattr__(self, key: str) -> Any:
        if key.startswith("_"):
            raise AttributeError(key)
        try:
            return self._data[key]
        except KeyError:
            raise AttributeError(
                f"example has no field {key!r}; its fields are {sorted(self._data)}"
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        body = ", ".join(f"{k}={v!r}" for k, v in self._data.items())
        return f"Example({body})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Example):
            return self._data == other._data
        if isinstance(other, Mapping):
            return self._data == dict(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(repr(sorted(self._data.items(), key=lambda kv: kv[0])))


class Prediction(Example):
    """The output fields of one run, with the run's trace attached.

    Attributes:
        trace: The :class:`~rhizome.engine.trace.Trace` of the run that made it, if recorded.
    """

    __slots__ = ("trace",)

    def __init__(
        self,
        data: Mapping[str, Any] | None = None,
        /,
        *,
        trace: Trace | None = None,
        **fields: Any,
    ) -> None:
        super().__init__(data, **fields)
        self.trace = trace

    def __repr__(self) -> str:
        body = ", ".join(f"{k}={v!r}" for k, v in self._data.items())
        return f"Prediction({body})"
