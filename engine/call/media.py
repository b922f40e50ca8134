"""Inputs that are not text: a conversation so far (:class:`History`) and pictures (:class:`Image`).

Both are pydantic models, so they validate like any typed input, travel as
readable JSON (saved demos, traces, ``rhizome serve`` bodies) and come back as
the same objects. The adapters (:mod:`rhizome.engine.call.adapters`) give them
their own place in the request instead of writing them into the prompt text:

- a :class:`History` becomes earlier chat turns, before the message that asks
  the question (and each demo's history before that demo's own turns);
- an :class:`Image` becomes an ``image_url`` content part of the user message,
  between its field's tags, as OpenAI-compatible vision endpoints take it.

In a signature string they are written by name: ``"history: History, question
-> answer"``, ``"photo: Image, question -> answer"``, ``"pages: list[Image] -> summary"``.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Self

import pydantic

__all__ = ("MAX_IMAGE_BYTES", "ROLES", "History", "Image", "image_parts", "is_turn")


MAX_IMAGE_BYTES = 20 * 1024 * 1024
"""The largest image accepted (decoded bytes): what the common vision endpoints take."""

ROLES = frozenset({"user", "assistant", "system"})
"""The roles a chat-style history turn may have."""

_FORMATS: tuple[tuple[str, tuple[bytes, ...]], ...] = (
    ("image/png", (b"\x89PNG\r\n\x1a\n",)),
    ("image/jpeg", (b"\xff\xd8\xff",)),
    ("image/gif", (b"GIF87a", b"GIF89a")),
)
_DATA_URL = re.compile(r"^data:([^;,]*)((?:;[^;,]*)*),(.*)$", re.DOTALL)
_SUPPORTED = "PNG, JPEG, GIF or WebP"


def _image_type(data: bytes) -> str | None:
    """The MIME type the leading bytes of ``data`` show, among those sent; else None."""
    for mime, magics in _FORMATS:
        if data.startswith(magics):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def _checked_bytes(data: bytes, what: str, max_bytes: int) -> str:
    """The MIME type of image bytes, after checking their size and format."""
    if not data:
        raise ValueError(f"{what} is empty")
    if len(data) > max_bytes:
        raise ValueError(
            f"{what} is {len(data) / 2**20:.1f} MiB, over the {max_bytes / 2**20:.0f} MiB "
            "limit for images; scale it down or pass a URL the server can fetch"
        )
    mime = _image_type(data)
    if mime is None:
        start = data[:8].hex(" ")
        raise ValueError(
            f"{what} is not a {_SUPPORTED} image (it starts with bytes {start}); "
            "convert it to one of those formats"
        )
    return mime


def _data_url(data: bytes, what: str, max_bytes: int) -> str:
    mime = _checked_bytes(data, what, max_bytes)
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _checked_url(url: str, max_bytes: int = MAX_IMAGE_BYTES) -> str:
    """``url`` if it is an http(s) URL or a data URL of a supported image; else ValueError."""
    text = url.strip()
    if text.startswith(("http://", "https://")):
        return text
    match = _DATA_URL.match(text)
    if match is None:
        raise ValueError(
            f"an image must be an http(s) URL or a data: URL, got {text[:60]!r}; for a file "
            "use Image.from_path(path), for bytes Image.from_bytes(data)"
        )
    declared, params, payload = match.groups()
    if ";base64" not in params:
        raise ValueError("an image data: URL must be base64-encoded (data:image/png;base64,...)")
    try:
        data = base64.b64decode(payload, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"the image data: URL is not valid base64 ({exc})") from None
    mime = _checked_bytes(data, "the image in the data: URL", max_bytes)
    if declared and declared != mime:
        raise ValueError(f"the image data: URL says {declared} but holds {mime} data")
    return text


class Image(pydantic.BaseModel):
    """A picture given to a vision model, kept as a URL (http(s)) or a data URL.

    Build one with :meth:`from_path`, :meth:`from_bytes` or :meth:`from_url`
    (or ``Image(url=...)``). Bytes and files are checked (PNG, JPEG, GIF or
    WebP by their leading bytes; at most :data:`MAX_IMAGE_BYTES`) and stored as
    a data URL, so the image saves and serves as plain JSON. Where a value is
    validated as an image (a signature input, a request to ``rhizome serve``),
    a URL string, a ``pathlib.Path`` or bytes also work; a plain string is
    never read as a file path, so a request body cannot make a server read its
    own files.

    Attributes:
        url: An ``http(s)://`` URL or a ``data:image/...;base64,`` URL.
        detail: The ``detail`` hint vision endpoints take, None to leave it out.
    """

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    url: str = pydantic.Field(description="An http(s) URL, or a base64 data: URL of the image")
    detail: Literal["auto", "low", "high"] | None = None

    @pydantic.model_validator(mode="before")
    @classmethod
    def _lenient(cls, value: Any) -> Any:
        if isinstance(value, Path):
            return {"url": _data_url(_read(value, MAX_IMAGE_BYTES), str(value), MAX_IMAGE_BYTES)}
        if isinstance(value, bytes | bytearray):
            return {"url": _data_url(bytes(value), "the image bytes", MAX_IMAGE_BYTES)}
        if isinstance(value, str):
            return {"url": value}
        return value

    @pydantic.field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _checked_url(value)

    @classmethod
    def from_path(
        cls,
        path: str | Path,
        *,
        detail: Literal["auto", "low", "high"] | None = None,
        max_bytes: int = MAX_IMAGE_BYTES,
    ) -> Self:
        """An image read from a file, checked and kept as a data URL.

        Raises:
            ValueError: The file is missing, empty, too large, or not PNG, JPEG, GIF or WebP.
        """
        target = Path(path)
        url = _data_url(_read(target, max_bytes), str(target), max_bytes)
        return cls.model_construct(url=url, detail=detail)

    @classmethod
    def from_bytes(
        cls,
        data: bytes,
        *,
        detail: Literal["auto", "low", "high"] | None = None,
        max_bytes: int = MAX_IMAGE_BYTES,
    ) -> Self:
        """An image from its encoded bytes (a PNG file's contents ...), kept as a data URL.

        Raises:
            ValueError: The bytes are empty, too many, or not PNG, JPEG, GIF or WebP.
        """
        url = _data_url(bytes(data), "the image bytes", max_bytes)
        return cls.model_construct(url=url, detail=detail)

    @classmethod
    def from_url(cls, url: str, *, detail: Literal["auto", "low", "high"] | None = None) -> Self:
        """An image the LM server fetches itself (``https://...``), or a data URL.

        Raises:
            ValueError: ``url`` is neither, or the data URL holds no supported image.
        """
        return cls(url=url, detail=detail)

    def part(self) -> dict[str, Any]:
        """The ``image_url`` content part sent to an OpenAI-compatible endpoint."""
        image: dict[str, Any] = {"url": self.url}
        if self.detail is not None:
            image["detail"] = self.detail
        return {"type": "image_url", "image_url": image}

    def __repr__(self) -> str:
        shown = self.url if len(self.url) <= 60 else f"{self.url[:48]}…({len(self.url)} chars)"
        return f"Image(url={shown!r})"

    __str__ = __repr__


def _read(path: Path, max_bytes: int) -> bytes:
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise ValueError(
                f"{str(path)!r} is {size / 2**20:.1f} MiB, over the {max_bytes / 2**20:.0f} MiB "
                "limit for images; scale it down or pass a URL the server can fetch"
            )
        return path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read the image {str(path)!r}: {exc.strerror or exc}") from None


def is_turn(message: Mapping[str, Any]) -> bool:
    """True for a chat-style history turn (``{"role": ..., "content": ...}``)."""
    return "role" in message


class History(pydantic.BaseModel):
    """The conversation so far, for multi-turn programs.

    Each message is either a chat turn, ``{"role": "user" | "assistant" |
    "system", "content": "..."}``, sent as it is, or an earlier exchange of the
    same program keyed by its field names, ``{"question": "...", "answer":
    "..."}``, sent as a user turn (the inputs, in the prompt's own format) and
    an assistant turn (the rest, in the reply format). Either way the turns come
    before the message that holds the current inputs, as real chat messages.
    A plain list of messages validates as a history too.

    Attributes:
        messages: The turns, oldest first.
    """

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    messages: list[dict[str, Any]] = pydantic.Field(
        default_factory=list,
        description=(
            'The conversation, oldest first: {"role": "user"|"assistant"|"system", '
            '"content": "..."} turns, or objects keyed by the program\'s field names'
        ),
    )

    @pydantic.model_validator(mode="before")
    @classmethod
    def _lenient(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return {"messages": list(value)}
        return value

    @pydantic.field_validator("messages")
    @classmethod
    def _turns(cls, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for i, message in enumerate(messages):
            if not message:
                raise ValueError(f"message {i} of the history is empty")
            if not is_turn(message):
                continue
            extra = set(message) - {"role", "content"}
            if message["role"] not in ROLES or not isinstance(message.get("content"), str):
                raise ValueError(
                    f"message {i} of the history needs a role of {', '.join(sorted(ROLES))} "
                    f"and text content, got {message!r:.120}"
                )
            if extra:
                raise ValueError(
                    f"message {i} of the history has keys {sorted(extra)} besides role and "
                    "content; give chat turns as {'role': ..., 'content': ...} only"
                )
        return messages


def image_parts(value: Any) -> list[dict[str, Any]] | None:
    """The ``image_url`` parts of an input value that is an image or a list of them; else None."""
    if isinstance(value, Image):
        return [value.part()]
    if isinstance(value, list | tuple) and value and all(isinstance(v, Image) for v in value):
        return [v.part() for v in value]
    return None
