"""Grade-school math word problems (GSM8K style) for chain-of-thought programs.

300 problems made by reasoning-gym's ``gsm_symbolic`` generator, which fills
templates modelled on GSM8K problems with fresh names and numbers. Splits:
train 152, dev 48, test 100, split by template so test problems never share a
template with training demos.

Provenance and licence: generated once by ``rhizome.datasets.make_gsm`` with
reasoning-gym 0.1.25 (Apache-2.0, per its package metadata); the templates
follow problems of GSM8K (OpenAI, MIT licence). rhizome does not depend on
reasoning-gym at run time. See ``rhizome/datasets/README.md``.
"""

from __future__ import annotations

from rhizome.datasets._files import check_split, read_jsonl
from rhizome.engine.example import Example

__all__ = ("load_gsm",)


def load_gsm(split: str = "dev") -> list[Example]:
    """The problems of one split, as examples with ``question`` as the input.

    Each example has ``question``, ``answer`` (the final number as a string,
    such as ``"42"``), ``reasoning`` (a worked solution, usable as a
    chain-of-thought demo), ``id`` and ``template``; its tag is ``"gsm"``.

    Args:
        split: ``"train"``, ``"dev"`` or ``"test"``.

    Raises:
        ConfigError: ``split`` is not one of those.
    """
    check_split("gsm", split)
    return [
        Example(
            {k: row[k] for k in ("question", "answer", "reasoning", "id", "template")},
            tags=("gsm",),
        ).with_inputs("question")
        for row in read_jsonl(f"gsm_{split}.jsonl")
    ]
