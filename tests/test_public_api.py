from __future__ import annotations

import subprocess
import sys

import pytest

import rhizome

# The public surface is a promise: changing it must be a deliberate edit here.
EXPECTED = {
    "COPRO", "LM", "BatchResult", "BestOfN", "BootstrapFewShot", "Budget", "Capabilities",
    "ChainOfThought", "ChromaRetriever", "ColBERTv2", "ConfigError", "Ensemble", "Evaluate",
    "EvaluationResult", "Example", "FakeLM", "FunctionNode", "Graph", "GraphError",
    "InMemoryRetriever", "InputField", "JSONAdapter", "JointSearch", "KNNFewShot", "LMError",
    "LabeledFewShot", "Loop", "MiniLMEmbedder", "MultiChainComparison", "Node", "NodeError",
    "OpenAILM", "OutputField", "ParseError", "Passage", "Predict", "Prediction", "Predictor",
    "Prices", "ProgramOfThought", "PythonSandbox", "RandomSearch", "ReAct", "Refine",
    "ResponseCache", "Retrieve", "Retriever", "RhizomeError", "Router", "SaveError", "Signature",
    "SignatureError", "TextAdapter", "Tool", "Trace", "answer_in_passages", "async_local_lm",
    "calculator", "context", "exact_match", "export_finetune_data", "index_documents",
    "llm_judge", "local_lm", "make_http_get", "make_search_tool", "numeric_match",
    "propose_instructions", "route_to", "token_f1", "tool",
}  # fmt: skip


def test_public_api_is_pinned() -> None:
    assert isinstance(rhizome.__all__, tuple)
    assert set(rhizome.__all__) == EXPECTED


def test_every_public_name_resolves() -> None:
    for name in rhizome.__all__:
        assert getattr(rhizome, name) is not None, name


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="NoSuchThing"):
        rhizome.NoSuchThing  # type: ignore[attr-defined]  # noqa: B018


def test_import_does_not_load_chromadb() -> None:
    code = "import sys, rhizome; print('chromadb' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
