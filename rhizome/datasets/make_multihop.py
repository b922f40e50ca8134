"""Generate the fictional multi-hop RAG dataset shipped in rhizome/datasets/data/.

Every entity (country, mountain range, river, town, person, company) is invented
from random syllables, so no model can answer from memory: it must retrieve
two passages and chain them. Each question names only the first-hop entity;
the bridge entity (second hop) and the answer appear only in the passages.

Deterministic: the same seed gives byte-identical files. Run from the repo root::

    python -m rhizome.datasets.make_multihop            # rewrites data/multihop_*.jsonl
    python -m rhizome.datasets.make_multihop --out DIR  # somewhere else (the tests do this)
"""

from __future__ import annotations

import argparse
import dataclasses
import random
from collections import Counter
from pathlib import Path
from typing import Any

from rhizome.datasets._splits import grouped_split, write_jsonl

__all__ = ("Names", "World", "build_world", "check", "main", "passages", "questions")


SEED = 20240611
SIZES = {"dev": 50, "test": 150, "train": 200}
COUNTS = {"country": 12, "mountains": 12, "river": 24, "town": 70, "person": 110, "company": 70}

_ONSETS = "Br C Dr F G H K L M N Qu R S Sk T Th V W Y Z".split()
_VOWELS = "a e i o u ae ei ou y".split()
_CODAS = "l n r s th v x nd rk sk ll rn".split()
_TAILS = ["", "", "a", "en", "or", "is", "et", "ow", "ek", "ia"]
_SUFFIX = {
    "country": "ovia esh and ara eth mark onia ine".split(),
    "town": "mere wick holt stead moor haven ridge wold thwaite by ford combe".split(),
    "first": "a o en ia ric wyn ette an ard ine".split(),
    "last": "et ington ard ow ley ane isk ock ery ham".split(),
}
_RANGES = ["Peaks", "Hills", "Range", "Heights", "Fells"]
_INDUSTRIES = {
    "Mills": "flour-milling",
    "Ironworks": "iron-casting",
    "Press": "printing",
    "Shipping": "shipping",
    "Looms": "weaving",
    "Glassworks": "glass-making",
    "Brewery": "brewing",
    "Instruments": "instrument-making",
    "Foundry": "bell-founding",
    "Ropeworks": "rope-making",
}
_PROFESSIONS = [
    "clockmaker", "cartographer", "chemist", "shipwright", "banker", "engineer",
    "botanist", "weaver", "surveyor", "merchant", "printer", "glassblower",
]  # fmt: skip


class Names:
    """Draws invented names; every stem is used at most once across all entities."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.used: set[str] = set()

    def stem(self) -> str:
        """A new pronounceable name stem, never handed out before."""
        while True:
            parts = [self.rng.choice(p) for p in (_ONSETS, _VOWELS, _CODAS, _TAILS)]
            stem = "".join(parts)
            if len(stem) >= 4 and stem.lower() not in self.used:
                self.used.add(stem.lower())
                return stem

    def with_suffix(self, kind: str) -> str:
        """A new name ending in one of the suffixes of ``kind`` (town, river, ...)."""
        return self.stem() + self.rng.choice(_SUFFIX[kind])


@dataclasses.dataclass
class World:
    """The invented entities and their facts."""

    countries: list[dict[str, Any]]
    mountains: list[dict[str, Any]]
    rivers: list[dict[str, Any]]
    towns: list[dict[str, Any]]
    people: list[dict[str, Any]]
    companies: list[dict[str, Any]]


def build_world(rng: random.Random) -> World:
    """Invent the countries, towns, people and their links, all from ``rng``."""
    names = Names(rng)
    countries: list[dict[str, Any]] = [
        {"name": names.with_suffix("country")} for _ in range(COUNTS["country"])
    ]
    mountains = [
        {"name": f"{names.stem()} {rng.choice(_RANGES)}", "country": countries[i % 12]["name"]}
        for i in range(COUNTS["mountains"])
    ]
    rivers = [
        {
            "name": f"{names.stem()} River",
            "source": rng.choice(mountains)["name"],
            "length": rng.randrange(40, 900, 5),
        }
        for _ in range(COUNTS["river"])
    ]
    towns: list[dict[str, Any]] = [
        {
            "name": names.with_suffix("town"),
            "country": countries[i % len(countries)]["name"],
            "river": rng.choice(rivers)["name"],
            "founded": rng.randrange(880, 1700),
        }
        for i in range(COUNTS["town"])
    ]
    for i, country in enumerate(countries):
        country["capital"] = towns[i]["name"]  # town i is in country i (i < 12)
        country["population"] = rng.randrange(2, 60) * 100_000
    people: list[dict[str, Any]] = [
        {
            "name": f"{names.with_suffix('first')} {names.with_suffix('last')}",
            "born": rng.randrange(1760, 1940),
            "town": rng.choice(towns)["name"],
            "profession": rng.choice(_PROFESSIONS),
        }
        for _ in range(COUNTS["person"])
    ]
    founders = rng.sample(people, COUNTS["company"])
    companies = []
    for founder in founders:
        kind = rng.choice(sorted(_INDUSTRIES))
        companies.append(
            {
                "name": f"{names.stem()} {kind}",
                "industry": _INDUSTRIES[kind],
                "founder": founder["name"],
                "founded": founder["born"] + rng.randrange(22, 55),
                "hq": rng.choice(towns)["name"],
            }
        )
    return World(countries, mountains, rivers, towns, people, companies)


def passages(world: World, rng: random.Random) -> list[dict[str, str]]:
    """One short passage per entity, its title the entity's name."""
    rows: list[tuple[str, str]] = []
    for c in world.countries:
        rows.append((c["name"], f"{c['name']} is a country of about {c['population']:,} "
                     f"people. Its capital is {c['capital']}."))  # fmt: skip
    for m in world.mountains:
        rows.append((m["name"], f"The {m['name']} are a mountain range in {m['country']}."))
    for r in world.rivers:
        rows.append((r["name"], f"The {r['name']} rises in the {r['source']}. "
                     f"It is {r['length']} kilometres long."))  # fmt: skip
    for t in world.towns:
        text = rng.choice([
            "{name} is a town in {country}, on the banks of the {river}. "
            "It was founded in {founded}.",
            "Founded in {founded}, {name} is a town in {country} that lies on the {river}.",
        ]).format(**t)  # fmt: skip
        rows.append((t["name"], text))
    for p in world.people:
        text = rng.choice([
            "{name} was {a} {profession}, born in {born} in the town of {town}.",
            "{name} (born {born}) was {a} {profession}. {name} was born in the town of {town}.",
        ]).format(a="an" if p["profession"][0] in "aeiou" else "a", **p)  # fmt: skip
        rows.append((p["name"], text))
    for c in world.companies:
        text = rng.choice([
            "{name} is a {industry} company founded in {founded} by {founder}. "
            "Its headquarters are in {hq}.",
            "Founded by {founder} in {founded}, {name} is a {industry} firm "
            "with its headquarters in {hq}.",
        ]).format(**c)  # fmt: skip
        rows.append((c["name"], text))
    rng.shuffle(rows)
    return [
        {"id": f"p{i:03d}", "title": title, "text": text} for i, (title, text) in enumerate(rows)
    ]


def questions(world: World) -> list[dict[str, Any]]:
    """Every two-hop question the world supports, grouped by first-hop entity."""
    town = {t["name"]: t for t in world.towns}
    person = {p["name"]: p for p in world.people}
    river = {r["name"]: r for r in world.rivers}
    out: list[dict[str, Any]] = []

    def add(qtype: str, question: str, answer: object, hop1: str, hop2: str) -> None:
        out.append({"type": qtype, "question": question, "answer": str(answer),
                    "supporting_titles": [hop1, hop2], "bridge": hop2})  # fmt: skip

    for c in world.companies:
        f, hq = person[c["founder"]], town[c["hq"]]
        n = c["name"]
        add(
            "founder_birthplace",
            f"In which town was the founder of {n} born?",
            f["town"],
            n,
            f["name"],
        )
        add(
            "founder_birth_year",
            f"In what year was the founder of {n} born?",
            f["born"],
            n,
            f["name"],
        )
        add("hq_country", f"In which country is the town where {n} has its headquarters?",
            hq["country"], n, hq["name"])  # fmt: skip
        add("hq_river", f"On which river lies the town where {n} has its headquarters?",
            hq["river"], n, hq["name"])  # fmt: skip
    for p in world.people:
        add("birthplace_country", f"In which country was {p['name']} born?",
            town[p["town"]]["country"], p["name"], p["town"])  # fmt: skip
    for t in world.towns:
        add("river_source", f"In which mountain range does the river that flows through "
            f"{t['name']} rise?", river[t["river"]]["source"], t["name"], t["river"])  # fmt: skip
    for k in world.countries:
        add("capital_founded", f"In what year was the capital of {k['name']} founded?",
            town[k["capital"]]["founded"], k["name"], k["capital"])  # fmt: skip
    return out


def check(corpus: list[dict[str, str]], items: list[dict[str, Any]]) -> None:
    """Fail loudly unless every question is answerable from exactly its two passages."""
    by_title = {p["title"]: p["text"] for p in corpus}
    if len(by_title) != len(corpus):
        raise SystemExit("duplicate passage titles")
    for q in items:
        hop1, hop2 = q["supporting_titles"]
        problems = [
            hop1 not in by_title or hop2 not in by_title,
            hop2 not in by_title.get(hop1, ""),
            q["answer"] not in by_title.get(hop2, ""),
            hop2 in q["question"] or q["answer"] in q["question"],
        ]
        if any(problems):
            raise SystemExit(f"question {q['question']!r} fails the retrievability check")


def main(argv: list[str] | None = None) -> None:
    """Command line entry (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_out = Path(__file__).resolve().parent / "data"
    parser.add_argument("--out", type=Path, default=default_out)
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    world = build_world(rng)
    corpus = passages(world, rng)
    by_title = {p["title"]: p["text"] for p in corpus}
    # Drop the few questions whose answer already shows in the first passage.
    items = [q for q in questions(world) if q["answer"] not in by_title[q["supporting_titles"][0]]]
    check(corpus, items)
    groups: dict[str, list[dict[str, Any]]] = {}
    for q in items:
        groups.setdefault(q["supporting_titles"][0], []).append(q)
    splits = grouped_split(groups, SIZES, seed=args.seed)
    write_jsonl(args.out / "multihop_corpus.jsonl", corpus)
    for name, rows in splits.items():
        numbered = [{"id": f"mh-{name}-{i:03d}", **row} for i, row in enumerate(rows)]
        write_jsonl(args.out / f"multihop_{name}.jsonl", numbered)
        kinds = Counter(r["type"] for r in rows)
        print(f"{name}: {len(rows)} questions {dict(sorted(kinds.items()))}")
    print(f"corpus: {len(corpus)} passages -> {args.out}")


if __name__ == "__main__":
    main()
