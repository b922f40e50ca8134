"""JointSearch's option groups (SearchSpaceConfig, TrialSchedule, Budget) and flat keywords."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from rhizome.engine.client.fake import FakeLM
from rhizome.engine.errors import ConfigError
from rhizome.optimizers.joint import JointSearch, SearchSpaceConfig, TrialSchedule
from rhizome.optimizers.metrics import exact_match
from rhizome.optimizers.trials import Budget
from tests.optimizers.test_joint import DATA, INSTRUCTIONS, planted, summary, two_step

SPACE = {
    "instructions": INSTRUCTIONS,
    "num_demo_sets": 2,
    "max_labeled_demos": 2,
    "max_bootstrapped_demos": 2,
}
SCHEDULE = {"num_trials": 12, "minibatch_size": 5, "full_eval_every": 4, "parallel": 4}


def flat(lm: FakeLM, **extra: Any) -> JointSearch:
    return JointSearch(exact_match(), lm=lm, **SPACE, **SCHEDULE, **extra)


def grouped(lm: FakeLM, **extra: Any) -> JointSearch:
    return JointSearch(
        exact_match(),
        lm=lm,
        space=SearchSpaceConfig(**SPACE),
        trials=TrialSchedule(**SCHEDULE),
        **extra,
    )


def test_defaults_are_the_flat_defaults() -> None:
    s = JointSearch(exact_match())
    assert s.trials == TrialSchedule(
        num_trials=30, minibatch_size=25, full_eval_every=10, parallel=4, startup_trials=None
    )
    assert s.space_config == SearchSpaceConfig(
        num_instructions=5, num_demo_sets=4, max_bootstrapped_demos=4, max_labeled_demos=4
    )
    assert (s.num_trials, s.minibatch_size, s.num_instructions, s.temperatures) == (30, 25, 5, [])


async def test_group_form_and_flat_form_run_the_same_search(tmp_path: Path) -> None:
    flat_lm, grouped_lm = FakeLM(planted), FakeLM(planted)
    one = flat(flat_lm, budget=Budget(calls=10_000), run_dir=tmp_path / "flat")
    two = grouped(grouped_lm, budget=Budget(calls=10_000), run_dir=tmp_path / "grouped")
    assert one.trials == two.trials
    assert one.space_config == two.space_config
    best_one = await one.optimize(two_step(), DATA)
    best_two = await two.optimize(two_step(), DATA)
    assert summary(one) == summary(two)
    assert one.best_config == two.best_config
    assert one.best_score == two.best_score
    assert flat_lm.calls == grouped_lm.calls
    assert best_one.named_parameters() == best_two.named_parameters()
    space_json = (tmp_path / "flat" / "space.json").read_text(encoding="utf-8")
    assert space_json == (tmp_path / "grouped" / "space.json").read_text(encoding="utf-8")


async def test_a_run_started_flat_resumes_grouped(tmp_path: Path) -> None:
    first = flat(FakeLM(planted), run_dir=tmp_path, budget=Budget(calls=100))
    await first.optimize(two_step(), DATA)
    assert first.stopped == "budget"
    whole = flat(FakeLM(planted))
    await whole.optimize(two_step(), DATA)
    rest = grouped(FakeLM(planted), run_dir=tmp_path)
    await rest.optimize(two_step(), DATA)
    assert rest.stopped == "done"
    assert summary(rest) == summary(whole)


async def test_a_resume_with_another_schedule_is_still_refused(tmp_path: Path) -> None:
    await flat(FakeLM(planted), run_dir=tmp_path).optimize(two_step(), DATA)
    other = JointSearch(
        exact_match(),
        lm=FakeLM(planted),
        space=SearchSpaceConfig(**SPACE),
        trials=dataclasses.replace(TrialSchedule(**SCHEDULE), minibatch_size=3),
        run_dir=tmp_path,
    )
    with pytest.raises(ConfigError, match="different settings"):
        await other.optimize(two_step(), DATA)


@pytest.mark.parametrize(
    ("options", "names"),
    [
        ({"trials": TrialSchedule(), "num_trials": 5}, "trials=TrialSchedule(...) and num_trials="),
        (
            {"trials": TrialSchedule(), "parallel": 2, "startup_trials": 3},
            "trials=TrialSchedule(...) and parallel=, startup_trials=",
        ),
        ({"space": SearchSpaceConfig(), "ks": [3]}, "space=SearchSpaceConfig(...) and ks="),
        (
            {"space": SearchSpaceConfig(), "instructions": {"a": ["x"]}},
            "space=SearchSpaceConfig(...) and instructions=",
        ),
    ],
)
def test_a_group_and_its_flat_keyword_together_are_refused(
    options: dict[str, Any], names: str
) -> None:
    with pytest.raises(ConfigError, match="not both") as info:
        JointSearch(exact_match(), **options)
    assert f"JointSearch() got both {names};" in str(info.value)


def test_a_group_with_another_groups_flat_keyword_is_fine() -> None:
    s = JointSearch(exact_match(), trials=TrialSchedule(num_trials=3), temperatures=[0.5])
    assert (s.num_trials, s.temperatures, s.space_config.temperatures) == (3, [0.5], (0.5,))


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: TrialSchedule(num_trials=0), r"TrialSchedule\(num_trials=0\) must be at least 1"),
        (lambda: TrialSchedule(parallel=1.5), r"TrialSchedule\(parallel=1.5\) must be an int"),
        (lambda: TrialSchedule(startup_trials=-1), r"startup_trials=-1\) must be at least 0"),
        (lambda: SearchSpaceConfig(num_demo_sets=-1), r"num_demo_sets=-1\) must be at least 0"),
        (lambda: SearchSpaceConfig(ks=[0, 3]), r"SearchSpaceConfig\(ks=\[0, 3\]\) must be ints"),
        (lambda: SearchSpaceConfig(temperatures=[-0.1]), r"temperatures=...\) must be numbers"),
        (
            lambda: SearchSpaceConfig(instructions={"answer": "Be brief."}),
            "must map predictor paths to lists of instructions",
        ),
    ],
)
def test_bad_values_in_a_group_are_refused(build: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build()


def test_flat_keywords_keep_their_messages() -> None:
    with pytest.raises(ConfigError, match=r"JointSearch\(minibatch_size=0\) must be at least 1"):
        JointSearch(exact_match(), minibatch_size=0)


def test_groups_are_frozen_and_normalized() -> None:
    space = SearchSpaceConfig(temperatures=[0.2], ks=[1, 2], instructions={"a": ["x", "y"]})
    assert (space.temperatures, space.ks, dict(space.instructions)) == (
        (0.2,),
        (1, 2),
        {"a": ("x", "y")},
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        space.ks = ()  # type: ignore[misc]
    with pytest.raises(AttributeError):
        JointSearch(exact_match()).trials = TrialSchedule()  # type: ignore[misc]
