"""Signatures are immutable values: their field views and hash are built once and stay true."""

from __future__ import annotations

import pytest

from rhizome.engine.call.signature import Signature


def test_field_views_are_read_only_and_in_declaration_order() -> None:
    sig = Signature("context: list[str], question -> answer: int")
    assert list(sig.inputs) == ["context", "question"]
    assert list(sig.outputs) == ["answer"]
    assert sig.outputs["answer"].annotation is int
    with pytest.raises(TypeError):
        sig.inputs["extra"] = sig.outputs["answer"]  # type: ignore[index]
    assert list(sig.inputs) == ["context", "question"]


def test_instruction_is_changed_only_through_a_copy() -> None:
    sig = Signature("question -> answer", "Answer briefly.")
    with pytest.raises(AttributeError):
        sig.instruction = "Something else."  # type: ignore[misc]
    changed = sig.with_instruction("Something else.")
    assert (sig.instruction, changed.instruction) == ("Answer briefly.", "Something else.")
    assert sig != changed
    assert hash(sig) != hash(changed)


def test_equal_signatures_hash_alike_and_share_cache_entries() -> None:
    a = Signature("question -> answer", "Answer.")
    b = Signature("question -> answer", "Answer.")
    assert a == b
    assert hash(a) == hash(b)
    assert len({a, b, a.with_instruction("Other.")}) == 2
