"""One registry of scorers: built-ins register with a decorator, plugins the same way."""

from __future__ import annotations

import importlib.util
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from ..errors import OodbenchError, suggest
from .base import Scorer

_REGISTRY: dict[str, type[Scorer]] = {}
_PLUGINS_LOADED = False
_PLUGIN_FILES: set[Path] = set()


def register_scorer(cls: type[Scorer]) -> type[Scorer]:
    """Class decorator: add a :class:`Scorer` subclass to the registry under ``cls.name``."""
    if not (isinstance(cls, type) and issubclass(cls, Scorer)):
        raise TypeError("register_scorer decorates Scorer subclasses")
    name = cls.name
    if not name or name != name.lower() or " " in name:
        raise ValueError(f"scorer name must be a non-empty lower-case word, got {name!r}")
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ValueError(f"a scorer named {name!r} is already registered ({_REGISTRY[name].__module__})")
    _REGISTRY[name] = cls
    return cls


def _load_entry_points() -> None:
    global _PLUGINS_LOADED
    if _PLUGINS_LOADED:
        return
    _PLUGINS_LOADED = True
    for ep in entry_points(group="oodbench.scorers"):
        ep.load()  # importing the module runs its @register_scorer decorators


def load_plugin(path: str | Path) -> None:
    """Import a Python file whose ``@register_scorer`` classes join the registry."""
    path = Path(path)
    if not path.is_file():
        raise OodbenchError(f"Plugin file {str(path)!r} does not exist: give the path to a .py file.")
    if path.resolve() in _PLUGIN_FILES:  # loading the same file twice registers nothing new
        return
    _PLUGIN_FILES.add(path.resolve())
    mod_name = f"oodbench_plugin_{path.stem}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise OodbenchError(f"Cannot import plugin {str(path)!r}: is it a Python file?")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    spec.loader.exec_module(module)


def scorer_names() -> list[str]:
    _load_entry_points()
    return sorted(_REGISTRY)


def get_scorer(name: str) -> type[Scorer]:
    _load_entry_points()
    key = name.lower()
    if key not in _REGISTRY:
        raise suggest(name, _REGISTRY, "method")
    return _REGISTRY[key]


def make_scorer(name: str, **params: Any) -> Scorer:
    """Instantiate a registered scorer with validated parameter overrides."""
    return get_scorer(name)(**params)
