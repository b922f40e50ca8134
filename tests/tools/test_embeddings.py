"""Tests of the embedders: the real offline MiniLM model and the hash fake."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from chromadb.utils.embedding_functions import known_embedding_functions

from rhizome.engine.errors import ConfigError
from rhizome.tools.retrieval.embeddings import (
    MODEL_PACKAGE,
    Embedder,
    HashEmbedder,
    MiniLMEmbedder,
    packaged_model_path,
    packaged_tokenizer_path,
)


@pytest.fixture(scope="module")
def minilm() -> MiniLMEmbedder:
    embedder = MiniLMEmbedder()
    embedder.load()
    return embedder


def cosine(a: list[float], b: list[float]) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_vectors_are_384_floats_of_unit_length(minilm: MiniLMEmbedder) -> None:
    vectors = minilm.embed(["A cat sat on the mat.", "", "Ünïcödé and emoji 🚀 text"])
    assert len(vectors) == 3
    assert all(len(v) == 384 for v in vectors)
    assert all(isinstance(x, float) for x in vectors[0])
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_similar_sentences_are_closer_than_unrelated(minilm: MiniLMEmbedder) -> None:
    eat, bread, stocks = minilm.embed(
        [
            "A man is eating food.",
            "A man is eating a piece of bread.",
            "The stock market fell sharply on Monday.",
        ]
    )
    assert cosine(eat, bread) > 0.6
    assert cosine(eat, stocks) < 0.2
    assert cosine(eat, bread) > cosine(eat, stocks) + 0.4


def test_padding_to_a_longer_batch_mate_does_not_change_a_vector(minilm: MiniLMEmbedder) -> None:
    alone = minilm.embed_array(["Paris is the capital of France."])
    with_long = minilm.embed_array(["Paris is the capital of France.", "word " * 400])
    np.testing.assert_allclose(alone[0], with_long[0], atol=1e-5)


def test_order_is_kept_across_small_sorted_batches() -> None:
    texts = ["a much longer sentence about rivers and mountains", "short", "medium length text"]
    one_by_one = np.vstack([MiniLMEmbedder().embed_array([t]) for t in texts])
    batched = MiniLMEmbedder(batch_size=2).embed_array(texts)
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)


def test_texts_are_truncated_at_max_length() -> None:
    embedder = MiniLMEmbedder(max_length=16)
    head = "the quick brown fox jumps over the lazy dog " * 3
    a, b = embedder.embed_array([head + "apples", head + "completely different ending"])
    np.testing.assert_allclose(a, b, atol=1e-6)
    # the default keeps 256 tokens, so the endings matter there
    c, d = MiniLMEmbedder().embed_array([head + "apples", head + "completely different ending"])
    assert not np.allclose(c, d, atol=1e-3)


def test_very_long_text_is_embedded(minilm: MiniLMEmbedder) -> None:
    (vector,) = minilm.embed(["token " * 5000])
    assert len(vector) == 384


def test_empty_input_gives_no_vectors(minilm: MiniLMEmbedder) -> None:
    assert minilm.embed([]) == []
    assert minilm.embed_array([]).shape == (0, 384)


def test_instances_with_the_same_settings_share_one_loaded_model() -> None:
    a, b = MiniLMEmbedder(), MiniLMEmbedder(batch_size=4)
    assert a._runtime() is b._runtime()
    assert MiniLMEmbedder(threads=2)._runtime() is not a._runtime()


def test_model_package_is_located_without_importing_it() -> None:
    was_imported = MODEL_PACKAGE in sys.modules
    path = packaged_model_path()
    assert path.name == "model.onnx"
    assert path.is_file()
    assert (MODEL_PACKAGE in sys.modules) == was_imported
    assert packaged_tokenizer_path().is_file()


def test_bad_settings_and_missing_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="max_length"):
        MiniLMEmbedder(max_length=4096)
    with pytest.raises(ConfigError, match="batch_size"):
        MiniLMEmbedder(batch_size=0)
    missing = MiniLMEmbedder(model_path=tmp_path / "nope.onnx")
    with pytest.raises(ConfigError, match=r"nope\.onnx"):
        missing.embed(["x"])


def test_minilm_is_a_registered_chromadb_embedding_function_without_paths(
    minilm: MiniLMEmbedder,
) -> None:
    assert not minilm.is_legacy()
    config = MiniLMEmbedder(max_length=128, threads=2).get_config()
    assert config == {"max_length": 128, "batch_size": 32, "threads": 2}
    assert "/" not in json.dumps(config)
    rebuilt = MiniLMEmbedder.build_from_config(config)
    assert isinstance(rebuilt, MiniLMEmbedder)
    assert (rebuilt.max_length, rebuilt.threads) == (128, 2)
    assert minilm.default_space() == "cosine"
    vectors = minilm(["hello world"])  # chromadb's validated __call__
    assert isinstance(vectors[0], np.ndarray)
    assert vectors[0].shape == (384,)
    assert known_embedding_functions["rhizome-minilm"] is MiniLMEmbedder


def test_hash_embedder_is_deterministic_and_lexical() -> None:
    embedder = HashEmbedder(dimension=32)
    assert isinstance(embedder, Embedder)
    a, b, c = embedder.embed(["red apple pie", "apple pie with cream", "quantum field theory"])
    assert a == HashEmbedder(dimension=32).embed(["red apple pie"])[0]
    assert len(a) == 32
    assert cosine(a, b) > cosine(a, c)
    assert embedder.embed([""]) == [[0.0] * 32]
    rebuilt = HashEmbedder.build_from_config(embedder.get_config())
    assert isinstance(rebuilt, HashEmbedder)
    assert rebuilt.dimension == 32
    assert known_embedding_functions["rhizome-hash"] is HashEmbedder
