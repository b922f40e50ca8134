"""Generate the GSM8K-style math dataset shipped in rhizome/datasets/data/gsm_*.jsonl.

Uses reasoning-gym's ``gsm_symbolic`` generator (reasoning-gym 0.1.25,
Apache-2.0), which fills templates modelled on GSM8K problems with fresh
numbers and names. reasoning-gym is needed only to run this script, never by
rhizome itself; install it in a throw-away environment::

    python -m venv /tmp/rg && /tmp/rg/bin/pip install reasoning-gym==0.1.25
    /tmp/rg/bin/python -m rhizome.datasets.make_gsm

Splits are by template, so a test problem never shares its template with a
training demo. Deterministic for a given seed and reasoning-gym version.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rhizome.datasets._splits import grouped_split, write_jsonl

__all__ = ("generate", "main")


SEED = 8
POOL = 1200
SIZES = {"dev": 48, "test": 100, "train": 152}
_SUFFIX = " Give the result as your final answer. Do not include units."


def generate(seed: int) -> dict[str, list[dict[str, Any]]]:
    """Draw a pool of problems and group them by template; duplicates dropped."""
    import reasoning_gym
    from reasoning_gym.arithmetic.gsm_symbolic import GSMSymbolicDataset

    dataset = reasoning_gym.create_dataset("gsm_symbolic", seed=seed, size=POOL)
    if not isinstance(dataset, GSMSymbolicDataset):
        raise SystemExit(f"unexpected dataset class {type(dataset).__name__}")
    groups: dict[str, list[dict[str, Any]]] = {}
    seen: set[str] = set()
    for index in range(POOL):
        item = dataset[index]
        template = f"t{dataset.task_indices[index]:02d}"
        question = item["question"].removesuffix(_SUFFIX).strip()
        # Four problems per template at most, so many templates reach every split.
        if question in seen or len(groups.get(template, [])) >= 4:
            continue
        seen.add(question)
        cot = item["metadata"]["answer_cot"].rsplit("####", 1)[0].strip()
        groups.setdefault(template, []).append(
            {
                "question": question,
                "answer": str(item["answer"]).strip(),
                "reasoning": cot,
                "template": template,
            }
        )
    return groups


def main(argv: list[str] | None = None) -> None:
    """Command line entry (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_out = Path(__file__).resolve().parent / "data"
    parser.add_argument("--out", type=Path, default=default_out)
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    splits = grouped_split(generate(args.seed), SIZES, seed=args.seed)
    for name, rows in splits.items():
        numbered = [{"id": f"gsm-{name}-{i:03d}", **row} for i, row in enumerate(rows)]
        write_jsonl(args.out / f"gsm_{name}.jsonl", numbered)
        templates = len({r["template"] for r in rows})
        print(f"{name}: {len(rows)} problems from {templates} templates")


if __name__ == "__main__":
    main()
