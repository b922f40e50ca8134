"""Small datasets shipped with rhizome for examples, demos and tests.

* :func:`load_multihop` / :func:`load_multihop_corpus` — two-hop questions about
  invented entities plus the passages to retrieve from (RAG).
* :func:`load_gsm` — GSM8K-style math word problems (chain of thought).

Every loader returns :class:`~rhizome.engine.example.Example` objects with
``question`` marked as the input.
"""

from __future__ import annotations

from rhizome.datasets._files import SPLITS as SPLITS
from rhizome.datasets.gsm import load_gsm as load_gsm
from rhizome.datasets.multihop import load_multihop as load_multihop
from rhizome.datasets.multihop import load_multihop_corpus as load_multihop_corpus

__all__ = ("SPLITS", "load_gsm", "load_multihop", "load_multihop_corpus")
