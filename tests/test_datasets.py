"""The shipped datasets: sizes, splits, answerability, determinism, loaders."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rhizome.datasets import SPLITS, load_gsm, load_multihop, load_multihop_corpus
from rhizome.engine.errors import ConfigError
from rhizome.engine.example import Example

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "rhizome" / "datasets" / "data"
MULTIHOP_SIZES = {"train": 200, "dev": 50, "test": 150}
GSM_SIZES = {"train": 152, "dev": 48, "test": 100}
QUESTION_TYPES = {
    "founder_birthplace",
    "founder_birth_year",
    "hq_country",
    "hq_river",
    "birthplace_country",
    "river_source",
    "capital_founded",
}


@pytest.mark.parametrize("split", SPLITS)
def test_multihop_split_sizes_and_examples(split: str) -> None:
    examples = load_multihop(split)
    assert len(examples) == MULTIHOP_SIZES[split]
    for example in examples:
        assert isinstance(example, Example)
        assert example.input_keys == ("question",)
        assert set(example.labels()) == {"answer", "supporting_titles", "bridge", "id"}
        assert len(example.tags) == 1
        assert example.tags[0] in QUESTION_TYPES


def test_multihop_splits_do_not_overlap() -> None:
    questions = {split: {e.question for e in load_multihop(split)} for split in SPLITS}
    first_hops = {split: {e.supporting_titles[0] for e in load_multihop(split)} for split in SPLITS}
    for a, b in [("train", "dev"), ("train", "test"), ("dev", "test")]:
        assert not questions[a] & questions[b]
        assert not first_hops[a] & first_hops[b]
    assert sum(len(q) for q in questions.values()) == 400


def test_every_question_is_answerable_from_its_two_passages() -> None:
    corpus = {p["title"]: p["text"] for p in load_multihop_corpus()}
    for split in SPLITS:
        for example in load_multihop(split):
            hop1, hop2 = example.supporting_titles
            assert hop2 == example.bridge
            assert example.bridge in corpus[hop1], example.id
            assert example.answer in corpus[hop2], example.id
            assert example.answer not in corpus[hop1], example.id
            assert example.bridge not in example.question, example.id
            assert example.answer not in example.question, example.id


def test_corpus_has_unique_titles_and_ids() -> None:
    corpus = load_multihop_corpus()
    assert 150 <= len(corpus) <= 300
    assert len({p["title"] for p in corpus}) == len(corpus)
    assert len({p["id"] for p in corpus}) == len(corpus)
    assert all(set(p) == {"id", "title", "text"} and p["text"] for p in corpus)


def test_multihop_generator_is_deterministic(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "rhizome.datasets.make_multihop", "--out", str(tmp_path)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    names = sorted(p.name for p in DATA.glob("multihop_*.jsonl"))
    assert names == sorted(p.name for p in tmp_path.iterdir())
    for name in names:
        assert (tmp_path / name).read_bytes() == (DATA / name).read_bytes(), name


@pytest.mark.parametrize("split", SPLITS)
def test_gsm_split_sizes_and_examples(split: str) -> None:
    examples = load_gsm(split)
    assert len(examples) == GSM_SIZES[split]
    for example in examples:
        assert example.input_keys == ("question",)
        assert example.tags == ("gsm",)
        float(example.answer)  # a plain number
        assert example.reasoning
        assert "####" not in example.reasoning


def test_gsm_splits_share_no_problem_or_template() -> None:
    loaded = {split: load_gsm(split) for split in SPLITS}
    for a, b in [("train", "dev"), ("train", "test"), ("dev", "test")]:
        assert not {e.question for e in loaded[a]} & {e.question for e in loaded[b]}
        assert not {e.template for e in loaded[a]} & {e.template for e in loaded[b]}


def test_loaders_are_repeatable() -> None:
    assert load_multihop("dev") == load_multihop("dev")
    assert [e.id for e in load_gsm("test")] == [e.id for e in load_gsm("test")]


def test_unknown_split_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="choose one of: train, dev, test"):
        load_multihop("validation")
    with pytest.raises(ConfigError, match="gsm has no split 'eval'"):
        load_gsm("eval")
