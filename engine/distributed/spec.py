"""What travels to a Ray worker: the program and the LM, as plain data.

A worker never receives a live graph or LM object: it gets a
:class:`ProgramSpec` (a ``module:factory`` name and the saved parameters as
JSON text, the same JSON ``Graph.save`` writes) and an :class:`LMSpec` (the
client's configuration, with the *name* of the environment variable holding
the API key, never the key). The key itself reaches the worker processes
through Ray's runtime environment (:meth:`LMSpec.secret_env`), under the
variable name the LM is configured with.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from rhizome.engine.client.openai import Limits, OpenAILM, RequestDefaults
from rhizome.engine.client.protocol import LM, Capabilities
from rhizome.engine.client.retry import RetryPolicy
from rhizome.engine.client.usage import Prices
from rhizome.engine.errors import ConfigError
from rhizome.engine.graphs.graph import Graph

__all__ = ("Factory", "LMSpec", "ProgramSpec", "factory_name", "ledger_scope")

Factory = str | Callable[[], Graph]


def factory_name(factory: Factory) -> str:
    """``"module:function"`` for a factory given as a name or a module-level function.

    Raises:
        ConfigError: The factory is a lambda, a nested function or a bound
            method, which a worker on another machine cannot import by name.
    """
    if isinstance(factory, str):
        from rhizome.engine.graphs.program import parse_spec

        parse_spec(factory)
        return factory
    module = getattr(factory, "__module__", None)
    qualname = getattr(factory, "__qualname__", "")
    if not module or not qualname.isidentifier() or module == "__main__":
        raise ConfigError(
            f"the graph factory {factory!r} must be a module-level function that workers can "
            "import (def build() -> Graph in an importable module), or its name as "
            "'package.module:build'; lambdas, nested functions and functions of __main__ "
            "cannot be rebuilt on another machine"
        )
    return f"{module}:{qualname}"


@dataclasses.dataclass(frozen=True, kw_only=True)
class ProgramSpec:
    """A graph as a worker rebuilds it: its factory's name and saved parameters.

    Attributes:
        factory: ``"package.module:factory"`` (or ``"file.py:factory"``).
        parameters: The text of a saved-parameters JSON file, or None.
    """

    factory: str
    parameters: str | None = None

    @classmethod
    def of(cls, factory: Factory, parameters: str | os.PathLike[str] | Graph | None) -> ProgramSpec:
        """A spec from a factory and saved parameters (a JSON file, or a graph to save)."""
        text: str | None
        if parameters is None:
            text = None
        elif isinstance(parameters, Graph):
            text = parameters_json(parameters)
        else:
            try:
                text = Path(parameters).read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigError(
                    f"cannot read the saved parameters {parameters!r}: {exc}"
                ) from None
        return cls(factory=factory_name(factory), parameters=text)

    def build(self) -> Graph:
        """Import the factory, build the graph and load the saved parameters onto it."""
        from rhizome.engine.graphs.program import load_program

        if self.parameters is None:
            return load_program(self.factory)
        with tempfile.TemporaryDirectory(prefix="rhizome-program-") as folder:
            path = Path(folder) / "program.json"
            path.write_text(self.parameters, encoding="utf-8")
            return load_program(self.factory, path)


def parameters_json(graph: Graph) -> str:
    """``graph``'s parameters as the JSON text ``Graph.save`` writes."""
    with tempfile.TemporaryDirectory(prefix="rhizome-program-") as folder:
        path = Path(folder) / "program.json"
        graph.save(path)
        return path.read_text(encoding="utf-8")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LMSpec:
    """An :class:`~rhizome.engine.client.openai.OpenAILM`'s configuration, without its key.

    Attributes:
        model: The model name.
        base_url: The API root.
        api_key_env: The environment variable workers read the key from.
        limits: ``max_concurrency`` and ``timeout`` (each worker's own cap).
        retry: ``max_retries``, ``backoff`` and ``max_wait``.
        defaults: ``temperature`` and ``max_tokens``.
        cache: True for the worker's default persistent response cache.
        capabilities: What the server supports (``Capabilities`` fields), so
            workers format requests as the driver does.
        prices: Token prices (``Prices`` fields), or None.
        cache_namespace: What identifies the server in cache keys.
    """

    model: str
    base_url: str
    api_key_env: str
    limits: Mapping[str, Any]
    retry: Mapping[str, Any]
    defaults: Mapping[str, Any]
    cache: bool = False
    capabilities: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    prices: Mapping[str, float] | None = None
    cache_namespace: str | None = None

    @classmethod
    def of(cls, lm: LM) -> LMSpec:
        """The spec of an ``OpenAILM``.

        Raises:
            ConfigError: ``lm`` is another kind of LM, which cannot be rebuilt by a worker.
        """
        if not isinstance(lm, OpenAILM):
            raise ConfigError(
                f"a Ray run rebuilds its LM on every worker from its settings, which works for "
                f"OpenAILM only; got {type(lm).__name__}. Point an OpenAILM at the model server "
                "(base_url=...), or bind the LM inside the graph factory"
            )
        return cls(
            model=lm.name,
            base_url=lm.base_url,
            api_key_env=lm.api_key_env,
            limits=dataclasses.asdict(lm.limits),
            retry={**dataclasses.asdict(lm.retry), "retry_on": sorted(lm.retry.retry_on)},
            defaults=dataclasses.asdict(lm.defaults),
            cache=lm.cache is not None,
            capabilities=dataclasses.asdict(lm.capabilities),
            prices=dataclasses.asdict(lm.prices) if lm.prices is not None else None,
            cache_namespace=lm.cache_namespace,
        )

    def build(self) -> OpenAILM:
        """A new client with this configuration; its key is read from ``api_key_env``."""
        return OpenAILM(
            self.model,
            base_url=self.base_url,
            api_key_env=self.api_key_env,
            limits=Limits(**self.limits),
            retry=RetryPolicy(**self.retry),
            defaults=RequestDefaults(**self.defaults),
            cache="default" if self.cache else None,
            capabilities=Capabilities(**self.capabilities) if self.capabilities else None,
            prices=Prices(**self.prices) if self.prices is not None else None,
            cache_namespace=self.cache_namespace,
        )

    @staticmethod
    def secret_env(lm: LM | None) -> dict[str, str]:
        """``{api_key_env: key}`` for Ray's runtime environment, or ``{}`` when there is no key.

        Raises:
            ConfigError: The LM was given its key as ``api_key=...`` and the
                environment variable it names does not hold it, so workers
                could not find it.
        """
        if not isinstance(lm, OpenAILM) or not lm.sends_key:
            return {}
        key = os.environ.get(lm.api_key_env)
        if not key:
            raise ConfigError(
                f"the LM's API key was passed as api_key=..., but workers read it from the "
                f"environment: set {lm.api_key_env} to the key (Ray passes the variable on to "
                "every worker, never the key inside a serialized object)"
            )
        return {lm.api_key_env: key}


def ledger_scope(program: ProgramSpec, lm: LMSpec | None) -> str:
    """What a finished row depends on besides its example: the program and the LM.

    The coordinator's ledger keys rows by ``scope:example-key``, so candidates
    of a search scoring the same examples at once never take each other's rows.
    """
    text = repr((program, lm))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
