"""Loading a PROGRAM: ``package.module:factory`` plus an optional saved-parameters JSON.

The command line and the HTTP server name the program they work on the way
``uvicorn`` names an app: a module (dotted name, or a ``.py`` file path) and an
attribute in it, separated by a colon::

    rhizome run rhizome.examples:build --input '{"question": "..."}'
    rhizome serve examples/qa.py:build --params runs/qa/program.json

The attribute is a factory called with no arguments (or a ready
:class:`~rhizome.engine.graphs.graph.Graph`, or any single node, which is wrapped in a
one-node graph). Importing the module runs its code, as importing any Python
module does; the saved parameters are read as JSON only
(:meth:`Graph.load <rhizome.engine.graphs.graph.Graph.load>`), never unpickled or
evaluated.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from rhizome.engine.errors import ConfigError
from rhizome.engine.graphs.graph import Graph
from rhizome.engine.graphs.node import Node

__all__ = ("import_module", "load_program", "parse_spec")


EXAMPLE = "rhizome.examples:build"


def parse_spec(spec: str) -> tuple[str, str]:
    """Split ``"module:attribute"``; ConfigError says what a valid spec looks like."""
    module, colon, attribute = spec.rpartition(":")
    if not colon or not module or not attribute.isidentifier():
        raise ConfigError(
            f"program {spec!r} must be written MODULE:FACTORY, e.g. {EXAMPLE!r} or "
            "'path/to/file.py:build' (the factory returns a rhizome Graph)"
        )
    return module, attribute


def import_module(name: str, *, search: Path | None = None) -> ModuleType:
    """Import a dotted module name, or a ``.py`` file by path.

    Args:
        name: ``"package.module"`` or ``"path/to/file.py"``.
        search: A folder put first on ``sys.path`` for dotted names (default:
            the current directory), so local modules import like ``python -m``.
    """
    if name.endswith(".py"):
        return _import_file(Path(name))
    folder = str((search or Path.cwd()).resolve())
    if folder not in sys.path:
        sys.path.insert(0, folder)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            raise ConfigError(
                f"cannot import module {name!r} (no module named {exc.name!r}); run from the "
                "folder that holds it, install it, or give a file path such as "
                "'path/to/file.py:build'"
            ) from None
        raise ConfigError(f"importing {name!r} failed: {exc}") from exc
    except Exception as exc:
        raise ConfigError(f"importing {name!r} failed: {type(exc).__name__}: {exc}") from exc


def _import_file(path: Path) -> ModuleType:
    if not path.is_file():
        raise ConfigError(f"no Python file at {str(path)!r}")
    name = f"rhizome_program_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot load {str(path)!r} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise ConfigError(f"running {str(path)!r} failed: {type(exc).__name__}: {exc}") from exc
    return module


def load_program(spec: str, params: str | Path | None = None) -> Graph:
    """Build the graph named by ``spec`` and load saved parameters onto it.

    Args:
        spec: ``"package.module:factory"`` or ``"file.py:factory"``.
        params: A JSON file written by ``Graph.save`` (``rhizome optimize`` writes one).

    Raises:
        ConfigError: The module or attribute is missing, or the factory failed
            or returned something that is not a node.
        SaveError: The parameters file is malformed or does not fit the graph.
    """
    module_name, attribute = parse_spec(spec)
    module = import_module(module_name)
    if not hasattr(module, attribute):
        raise ConfigError(
            f"module {module_name!r} has no attribute {attribute!r}; it defines: "
            f"{', '.join(_candidates(module)) or 'no functions or graphs'}"
        )
    graph = _as_graph(getattr(module, attribute), spec)
    graph.validate()
    if params is not None:
        graph.load(params)
    return graph


def _candidates(module: ModuleType) -> list[str]:
    """Names a PROGRAM could point at: the module's own functions, and nodes or graphs."""
    return sorted(
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and (isinstance(value, Node) or getattr(value, "__module__", None) == module.__name__)
        and (callable(value) or isinstance(value, Node))
    )


def _as_graph(value: object, spec: str) -> Graph:
    made = value
    if not isinstance(value, Node) and callable(value):
        try:
            made = value()
        except Exception as exc:
            raise ConfigError(
                f"the factory {spec!r} raised {type(exc).__name__}: {exc}; a factory is called "
                "with no arguments and returns a Graph"
            ) from exc
    if isinstance(made, Graph):
        return made
    if isinstance(made, Node):
        name = spec.rpartition(":")[2]
        return Graph(name).add(name, made)
    raise ConfigError(
        f"{spec!r} gave {type(made).__name__}, not a rhizome Graph or node; point it at a "
        "function returning a Graph (e.g. def build() -> Graph)"
    )
