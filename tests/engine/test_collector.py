"""The batch's garbage-collector scope: applied during a batch, undone after, never clobbering."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from rhizome.engine.batches.gc_scope import calm_collector
from rhizome.engine.graphs.graph import Graph
from rhizome.nodes.function import FunctionNode


@pytest.fixture(autouse=True)
def clean_collector() -> Iterator[None]:
    """Each test starts and ends with the interpreter's own collector settings."""
    before = gc.get_threshold()
    gc.unfreeze()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)
    gc.enable()


async def test_a_batch_freezes_and_raises_gen0_then_restores() -> None:
    seen: list[tuple[int, tuple[int, int, int]]] = []

    def look(x: int) -> int:
        seen.append((gc.get_freeze_count(), gc.get_threshold()))
        return x

    gc.set_threshold(700, 10, 10)
    graph = Graph("look").add("f", FunctionNode(look, outputs=["y"]))
    results = await graph.batch([{"x": i} for i in range(4)], concurrency=2, progress=False)
    assert [r.prediction["y"] for r in results if r.prediction] == [0, 1, 2, 3]
    assert all(frozen > 0 and threshold == (10_000, 10, 10) for frozen, threshold in seen)
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == (700, 10, 10)


def test_nested_scopes_undo_once_at_the_outermost() -> None:
    gc.set_threshold(500, 10, 10)
    with calm_collector():
        with calm_collector():
            assert gc.get_threshold()[0] == 10_000
        assert gc.get_threshold()[0] == 10_000
        assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == (500, 10, 10)
    assert gc.get_freeze_count() == 0


def test_someone_elses_freeze_is_left_in_place() -> None:
    gc.freeze()
    frozen = gc.get_freeze_count()
    with calm_collector():
        pass
    assert gc.get_freeze_count() >= frozen > 0


def test_thresholds_changed_during_the_scope_are_kept() -> None:
    gc.set_threshold(700, 10, 10)
    with calm_collector():
        gc.set_threshold(50_000, 20, 20)
    assert gc.get_threshold() == (50_000, 20, 20)


def test_higher_thresholds_and_a_disabled_collector_are_not_touched() -> None:
    gc.set_threshold(20_000, 10, 10)
    with calm_collector():
        assert gc.get_threshold() == (20_000, 10, 10)
    gc.disable()
    with calm_collector():
        assert gc.get_freeze_count() == 0
    assert not gc.isenabled()
