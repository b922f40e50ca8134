"""Search spaces: the candidate values of every tunable slot of every node.

A :class:`SearchSpace` is a list of :class:`Dimension` s, one per slot
(``"answer.instruction"``, ``"answer.demos"``, ``"answer.temperature"``,
``"answer.lm"``, ``"retrieve.k"``), each with a list of candidate values. A
configuration picks one option index per dimension, and :meth:`SearchSpace.apply`
turns it into a new graph. Spaces are plain JSON, so a search saves its space
and a resumed search reuses it instead of paying to build it again.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rhizome.engine.errors import ConfigError
from rhizome.engine.trace import jsonable
from rhizome.optimizers.bootstrap import BootstrapFewShot
from rhizome.optimizers.labeled import LabeledFewShot

if TYPE_CHECKING:
    from rhizome.engine.client.protocol import LM
    from rhizome.engine.example import Example
    from rhizome.engine.graphs.graph import Graph
    from rhizome.optimizers.metrics import Metric

__all__ = (
    "Dimension",
    "SearchSpace",
    "demo_candidates",
    "dimension",
    "load_space",
    "save_space",
    "scalar_dimensions",
)


SPACE_FILE = "space.json"
Demos = list[dict[str, Any]]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Dimension:
    """The candidate values of one slot.

    Attributes:
        path: The path of the predictor or node owning the slot (``"answer"``,
            ``"agent.step"``, ``"hops.search"``).
        slot: The slot (``instruction``, ``demos``, ``temperature``, ``lm``, ``k``);
            ``path.slot`` is a name of :meth:`Graph.named_parameters`.
        options: Candidate values; option 0 is the graph's own value. For ``lm``
            the values are indices into the search's ``lms`` (None keeps the node's LM).
        labels: A short description of each option, for logs and reports.
    """

    path: str
    slot: str
    options: tuple[Any, ...]
    labels: tuple[str, ...]

    @property
    def name(self) -> str:
        """The parameter name, ``path.slot``."""
        return f"{self.path}.{self.slot}"


class SearchSpace:
    """Candidate values for every searched slot, and how to apply a choice to a graph.

    Args:
        dims: The dimensions, in a stable order.
    """

    def __init__(self, dims: Sequence[Dimension]) -> None:
        names = [d.name for d in dims]
        if len(set(names)) != len(names):
            raise ConfigError(f"a search space names a slot twice: {names}")
        self.dims = list(dims)

    @property
    def sizes(self) -> dict[str, int]:
        """Number of options per dimension name."""
        return {d.name: len(d.options) for d in self.dims}

    def default(self) -> dict[str, int]:
        """The configuration that keeps every slot as the graph had it."""
        return dict.fromkeys(self.sizes, 0)

    def apply(self, graph: Graph, config: Mapping[str, int], *, lms: Sequence[LM] = ()) -> Graph:
        """A copy of ``graph`` with each dimension set to its chosen option.

        The choices go through :meth:`Graph.set_parameters`, the one door to
        tunable state; an ``lm`` option of None keeps the node's own LM.
        """
        values: dict[str, Any] = {}
        for dim in self.dims:
            value = dim.options[config.get(dim.name, 0)]
            if dim.slot == "lm":
                if value is None:
                    continue
                value = lms[value]
            values[dim.name] = value
        return graph.with_parameters(values)

    def describe(self, config: Mapping[str, int]) -> dict[str, str]:
        """The label of each chosen option, by dimension name."""
        return {d.name: d.labels[config.get(d.name, 0)] for d in self.dims}

    def to_json(self) -> dict[str, Any]:
        """The space as JSON-ready data."""
        return {
            "dims": [
                {
                    "path": d.path,
                    "slot": d.slot,
                    "options": jsonable(list(d.options)),
                    "labels": list(d.labels),
                }
                for d in self.dims
            ]
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SearchSpace:
        """Read data written by :meth:`to_json`."""
        try:
            dims = [
                Dimension(
                    path=str(d["path"]),
                    slot=str(d["slot"]),
                    options=tuple(d["options"]),
                    labels=tuple(str(x) for x in d["labels"]),
                )
                for d in data["dims"]
            ]
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"a saved search space is malformed ({exc}); delete it") from exc
        return cls(dims)

    def normalized(self) -> SearchSpace:
        """The same space after a JSON round trip, so fresh and resumed runs see equal values."""
        return SearchSpace.from_json(json.loads(json.dumps(self.to_json())))

    def check_fits(self, graph: Graph) -> None:
        """Raise ConfigError when the space names parameters the graph lacks."""
        missing = sorted({d.name for d in self.dims} - set(graph.named_parameters()))
        if missing:
            raise ConfigError(
                f"the saved search space names {missing}, which this graph does not have; "
                "resume only with the graph that started the run, or use a new run_dir"
            )


def save_space(run_dir: Path, settings: Mapping[str, Any], space: SearchSpace) -> None:
    """Write ``space.json``: the space and the settings that fix a search's trajectory."""
    run_dir.mkdir(parents=True, exist_ok=True)
    data = {"settings": dict(settings), "space": space.to_json()}
    text = json.dumps(data, indent=1, ensure_ascii=False)
    (run_dir / SPACE_FILE).write_text(text, encoding="utf-8")


def load_space(
    run_dir: Path, settings: Mapping[str, Any], graph: Graph, *, num_lms: int
) -> SearchSpace | None:
    """The space saved in ``run_dir`` (None when there is none yet).

    Raises:
        ConfigError: The saved search used other settings, names slots this
            graph lacks, chooses among more LMs than given, or the directory
            holds trials of something else.
    """
    path = run_dir / SPACE_FILE
    if not path.exists():
        if (run_dir / "trials.jsonl").exists():
            raise ConfigError(
                f"{run_dir} holds trials but no {SPACE_FILE}, so it was not written by a "
                "search that can resume: use a new run_dir"
            )
        return None
    saved = json.loads(path.read_text(encoding="utf-8"))
    if saved.get("settings") != dict(settings):
        raise ConfigError(
            f"{run_dir} holds a search with different settings ({saved.get('settings')}); "
            "resume with the same ones, or use a new run_dir"
        )
    space = SearchSpace.from_json(saved["space"])
    space.check_fits(graph)
    for dim in space.dims:
        if dim.slot == "lm" and any(v is not None and v >= num_lms for v in dim.options):
            raise ConfigError(
                f"the saved search space chooses among more LMs than the {num_lms} given; "
                "pass the same lms=[...] as the run that started it"
            )
    return space


def _dedupe(options: Sequence[tuple[str, Any]]) -> tuple[tuple[Any, ...], tuple[str, ...]]:
    values: list[Any] = []
    labels: list[str] = []
    seen: set[str] = set()
    for label, value in options:
        key = json.dumps(jsonable(value), sort_keys=True)
        if key not in seen:
            seen.add(key)
            values.append(value)
            labels.append(label)
    return tuple(values), tuple(labels)


def dimension(path: str, slot: str, options: Sequence[tuple[str, Any]]) -> Dimension:
    """A dimension from ``(label, value)`` pairs, dropping repeated values (first label wins)."""
    values, labels = _dedupe(options)
    return Dimension(path=path, slot=slot, options=values, labels=labels)


def scalar_dimensions(
    graph: Graph,
    *,
    temperatures: Sequence[float] = (),
    ks: Sequence[int] = (),
    lms: Sequence[LM] = (),
) -> list[Dimension]:
    """Temperature, LM and ``k`` dimensions for every such parameter (when asked for).

    The parameters come from :meth:`Graph.named_parameters`, so a slot nested
    anywhere (a retrieval node inside a loop body) is searched like any other.
    """
    dims: list[Dimension] = []
    counts: list[Dimension] = []  # k dimensions go last, as the search has always ordered them
    for name, current in graph.named_parameters().items():
        path, _, slot = name.rpartition(".")
        if slot == "temperature" and temperatures:
            opts = [(f"t={current}", current)] + [(f"t={t}", t) for t in temperatures]
            dims.append(dimension(path, slot, opts))
        elif slot == "lm" and lms:
            bound = current.name if current is not None else "run default"
            choices = [(lm.name, i) for i, lm in enumerate(lms)]
            dims.append(dimension(path, slot, [(bound, None), *choices]))
        elif slot == "k" and ks:
            choices = [(f"k={k}", k) for k in ks]
            counts.append(dimension(path, slot, [(f"k={current}", current), *choices]))
    return dims + counts


async def demo_candidates(
    graph: Graph,
    trainset: Sequence[Example],
    metric: Metric,
    *,
    num_sets: int,
    max_bootstrapped_demos: int,
    max_labeled_demos: int,
    seed: int,
    threshold: float = 1.0,
    concurrency: int = 16,
    lm: LM | None = None,
    teacher: Graph | None = None,
) -> dict[str, list[tuple[str, Demos]]]:
    """Candidate demo sets per predictor path: as given, zero-shot, labelled, bootstraps.

    Bootstrap ``i`` shuffles the trainset with ``seed + i`` and keeps a random
    number (1 to ``max_bootstrapped_demos``) of bootstrapped demos; the first
    keeps the maximum. Labelled demos fill each bootstrapped set up to
    ``max_labeled_demos`` (as in :class:`~rhizome.optimizers.bootstrap.BootstrapFewShot`).
    """
    out: dict[str, list[tuple[str, Demos]]] = {
        path: [("as given", list(p.demos)), ("zero-shot", [])]
        for path, p in graph.named_predictors()
    }
    if max_labeled_demos > 0:
        labeled = await LabeledFewShot(max_labeled_demos, seed=seed).optimize(graph, trainset)
        _collect(out, labeled, "labelled")
    rng = random.Random(seed)
    for i in range(num_sets):
        size = max_bootstrapped_demos if i == 0 else rng.randint(1, max(1, max_bootstrapped_demos))
        boot = BootstrapFewShot(
            metric,
            threshold=threshold,
            max_bootstrapped_demos=size,
            max_labeled_demos=max_labeled_demos,
            teacher=teacher,
            concurrency=concurrency,
            lm=lm,
            seed=seed + i,
            progress=False,
        )
        _collect(out, await boot.optimize(graph, trainset), f"bootstrap {i} ({size} demos)")
    return out


def _collect(out: dict[str, list[tuple[str, Demos]]], graph: Graph, label: str) -> None:
    for path, predictor in graph.named_predictors():
        out[path].append((label, list(predictor.demos)))
