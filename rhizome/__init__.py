"""rhizome: programs made of language-model calls, as graphs that run and optimize themselves.

The user-facing names are re-exported here explicitly. Names whose modules pull
in heavy dependencies (chromadb, onnxruntime, the local model server) are
loaded on first access, so ``import rhizome`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

from rhizome.engine.batches.batch import BatchResult as BatchResult
from rhizome.engine.call.adapters import Adapter as Adapter
from rhizome.engine.call.adapters import JSONAdapter as JSONAdapter
from rhizome.engine.call.adapters import TextAdapter as TextAdapter
from rhizome.engine.call.media import History as History
from rhizome.engine.call.media import Image as Image
from rhizome.engine.call.predictor import Predictor as Predictor
from rhizome.engine.call.signature import Field as Field
from rhizome.engine.call.signature import InputField as InputField
from rhizome.engine.call.signature import OutputField as OutputField
from rhizome.engine.call.signature import Signature as Signature
from rhizome.engine.client.cache import ResponseCache as ResponseCache
from rhizome.engine.client.fake import FakeLM as FakeLM
from rhizome.engine.client.openai import Limits as Limits
from rhizome.engine.client.openai import OpenAILM as OpenAILM
from rhizome.engine.client.openai import RequestDefaults as RequestDefaults
from rhizome.engine.client.policy import CallPolicy as CallPolicy
from rhizome.engine.client.protocol import LM as LM
from rhizome.engine.client.protocol import Capabilities as Capabilities
from rhizome.engine.client.protocol import LMRequest as LMRequest
from rhizome.engine.client.protocol import LMResponse as LMResponse
from rhizome.engine.client.retry import RetryPolicy as RetryPolicy
from rhizome.engine.client.usage import Prices as Prices
from rhizome.engine.context import context as context
from rhizome.engine.errors import ConfigError as ConfigError
from rhizome.engine.errors import GraphError as GraphError
from rhizome.engine.errors import LMConnectionError as LMConnectionError
from rhizome.engine.errors import LMError as LMError
from rhizome.engine.errors import LMReplyError as LMReplyError
from rhizome.engine.errors import LMStatusError as LMStatusError
from rhizome.engine.errors import LMTimeoutError as LMTimeoutError
from rhizome.engine.errors import NodeError as NodeError
from rhizome.engine.errors import NodeTimeoutError as NodeTimeoutError
from rhizome.engine.errors import ParseError as ParseError
from rhizome.engine.errors import RhizomeError as RhizomeError
from rhizome.engine.errors import SaveError as SaveError
from rhizome.engine.errors import SignatureError as SignatureError
from rhizome.engine.errors import SpendLimitError as SpendLimitError
from rhizome.engine.example import Example as Example
from rhizome.engine.example import Prediction as Prediction
from rhizome.engine.graphs.checkpoint import CheckpointStore as CheckpointStore
from rhizome.engine.graphs.checkpoint import DirectoryCheckpoint as DirectoryCheckpoint
from rhizome.engine.graphs.checkpoint import SQLiteCheckpoint as SQLiteCheckpoint
from rhizome.engine.graphs.durable import RunWaiting as RunWaiting
from rhizome.engine.graphs.durable import interrupt as interrupt
from rhizome.engine.graphs.graph import Graph as Graph
from rhizome.engine.graphs.node import Node as Node
from rhizome.engine.trace import Trace as Trace
from rhizome.inspection import inspect_history as inspect_history
from rhizome.nodes.compare import MultiChainComparison as MultiChainComparison
from rhizome.nodes.fanout import FanOut as FanOut
from rhizome.nodes.function import FunctionNode as FunctionNode
from rhizome.nodes.human import AskHuman as AskHuman
from rhizome.nodes.human import ask_human as ask_human
from rhizome.nodes.loop import Loop as Loop
from rhizome.nodes.predict import ChainOfThought as ChainOfThought
from rhizome.nodes.predict import Predict as Predict
from rhizome.nodes.program_of_thought import ProgramOfThought as ProgramOfThought
from rhizome.nodes.react import ReAct as ReAct
from rhizome.nodes.retrieve import Retrieve as Retrieve
from rhizome.nodes.router import Router as Router
from rhizome.nodes.router import route_to as route_to
from rhizome.nodes.sampling import BestOfN as BestOfN
from rhizome.nodes.sampling import Refine as Refine
from rhizome.optimizers.bootstrap import BootstrapFewShot as BootstrapFewShot
from rhizome.optimizers.ensemble import Ensemble as Ensemble
from rhizome.optimizers.evaluate import Evaluate as Evaluate
from rhizome.optimizers.evaluate import EvaluationResult as EvaluationResult
from rhizome.optimizers.finetune import export_finetune_data as export_finetune_data
from rhizome.optimizers.joint import JointSearch as JointSearch
from rhizome.optimizers.joint import SearchSpaceConfig as SearchSpaceConfig
from rhizome.optimizers.joint import TrialSchedule as TrialSchedule
from rhizome.optimizers.judge import llm_judge as llm_judge
from rhizome.optimizers.knn import KNNFewShot as KNNFewShot
from rhizome.optimizers.labeled import LabeledFewShot as LabeledFewShot
from rhizome.optimizers.metrics import Score as Score
from rhizome.optimizers.metrics import answer_in_passages as answer_in_passages
from rhizome.optimizers.metrics import exact_match as exact_match
from rhizome.optimizers.metrics import numeric_match as numeric_match
from rhizome.optimizers.metrics import retrieval_recall as retrieval_recall
from rhizome.optimizers.metrics import token_f1 as token_f1
from rhizome.optimizers.propose import COPRO as COPRO
from rhizome.optimizers.propose import propose_instructions as propose_instructions
from rhizome.optimizers.random_search import RandomSearch as RandomSearch
from rhizome.optimizers.reflect import GEPA as GEPA
from rhizome.optimizers.reflect import Reflect as Reflect
from rhizome.optimizers.trials import Budget as Budget
from rhizome.tools.agent.calculator import calculator as calculator
from rhizome.tools.agent.http_get import make_http_get as make_http_get
from rhizome.tools.agent.sandbox import PythonSandbox as PythonSandbox
from rhizome.tools.agent.search import make_search_tool as make_search_tool
from rhizome.tools.agent.tool import Tool as Tool
from rhizome.tools.agent.tool import tool as tool
from rhizome.tools.retrieval.retrievers import InMemoryRetriever as InMemoryRetriever
from rhizome.tools.retrieval.retrievers import Passage as Passage
from rhizome.tools.retrieval.retrievers import Retriever as Retriever
from rhizome.tools.retrieval.retrievers import RetrieverError as RetrieverError

_LAZY = {
    "ChromaRetriever": "rhizome.tools.retrieval.chroma",
    "ColBERTv2": "rhizome.tools.retrieval.colbert",
    "MiniLMEmbedder": "rhizome.tools.retrieval.embeddings",
    "index_documents": "rhizome.tools.retrieval.indexing",
    "local_lm": "rhizome.tools.embedded.lm",
    "mcp_tools": "rhizome.tools.agent.mcp",
    "async_local_lm": "rhizome.tools.embedded.lm",
}

__all__ = (
    "COPRO",
    "GEPA",
    "LM",
    "Adapter",
    "AskHuman",
    "BatchResult",
    "BestOfN",
    "BootstrapFewShot",
    "Budget",
    "CallPolicy",
    "Capabilities",
    "ChainOfThought",
    "CheckpointStore",
    "ChromaRetriever",
    "ColBERTv2",
    "ConfigError",
    "DirectoryCheckpoint",
    "Ensemble",
    "Evaluate",
    "EvaluationResult",
    "Example",
    "FakeLM",
    "FanOut",
    "Field",
    "FunctionNode",
    "Graph",
    "GraphError",
    "History",
    "Image",
    "InMemoryRetriever",
    "InputField",
    "JSONAdapter",
    "JointSearch",
    "KNNFewShot",
    "LMConnectionError",
    "LMError",
    "LMReplyError",
    "LMRequest",
    "LMResponse",
    "LMStatusError",
    "LMTimeoutError",
    "LabeledFewShot",
    "Limits",
    "Loop",
    "MiniLMEmbedder",
    "MultiChainComparison",
    "Node",
    "NodeError",
    "NodeTimeoutError",
    "OpenAILM",
    "OutputField",
    "ParseError",
    "Passage",
    "Predict",
    "Prediction",
    "Predictor",
    "Prices",
    "ProgramOfThought",
    "PythonSandbox",
    "RandomSearch",
    "ReAct",
    "Refine",
    "Reflect",
    "RequestDefaults",
    "ResponseCache",
    "Retrieve",
    "Retriever",
    "RetrieverError",
    "RetryPolicy",
    "RhizomeError",
    "Router",
    "RunWaiting",
    "SQLiteCheckpoint",
    "SaveError",
    "Score",
    "SearchSpaceConfig",
    "Signature",
    "SignatureError",
    "SpendLimitError",
    "TextAdapter",
    "Tool",
    "Trace",
    "TrialSchedule",
    "answer_in_passages",
    "ask_human",
    "async_local_lm",
    "calculator",
    "context",
    "exact_match",
    "export_finetune_data",
    "index_documents",
    "inspect_history",
    "interrupt",
    "llm_judge",
    "local_lm",
    "make_http_get",
    "make_search_tool",
    "mcp_tools",
    "numeric_match",
    "propose_instructions",
    "retrieval_recall",
    "route_to",
    "token_f1",
    "tool",
)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'rhizome' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
