"""Old module names of the flat layout (0.1), kept for one release: each warns and forwards to its new home.

``import mlcdf.training`` and ``from mlcdf.evaluate import evaluate_run`` still work, with a
DeprecationWarning naming the new module. Names are looked up in the new modules only when used, so an
old name costs no more to import than its new module.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from collections.abc import Callable
from typing import Any

#: Old module -> the modules that now hold its names, searched in order.
MOVED_MODULES: dict[str, tuple[str, ...]] = {
    "mlcdf.training": ("mlcdf.config", "mlcdf.train.stage", "mlcdf.train.callbacks"),
    "mlcdf.engine": ("mlcdf.train.engine",),
    "mlcdf.ema": ("mlcdf.train.ema",),
    "mlcdf.checkpoint": ("mlcdf.train.checkpoint",),
    "mlcdf.distributed": ("mlcdf.train.distributed", "mlcdf.devices"),
    "mlcdf.tensorboard_log": ("mlcdf.train.tensorboard",),
    "mlcdf.losses": ("mlcdf.tasks.losses",),
    "mlcdf.evaluate": ("mlcdf.evaluation.evaluate", "mlcdf.evaluation.runs"),
    "mlcdf.robustness": ("mlcdf.evaluation.robustness",),
    "mlcdf.report": ("mlcdf.evaluation.report",),
    "mlcdf.perturb": ("mlcdf.data.perturb",),
    "mlcdf.explain": ("mlcdf.inference.explain",),
    "mlcdf.export": ("mlcdf.inference.export",),
    "mlcdf.plans": ("mlcdf.experiments.plans", "mlcdf.experiments.runner"),
    "mlcdf.runner": ("mlcdf.experiments.runner",),
    "mlcdf.reproduce": ("mlcdf.experiments.reproduce",),
    "mlcdf.study": ("mlcdf.experiments.study",),
    "mlcdf.graph.graph_file": ("mlcdf.label_graph",),
}


def _deprecated(old: str, new: str) -> None:
    warnings.warn(f"{old} is now {new}; the old name goes in the next release", DeprecationWarning, stacklevel=3)


def forwarder(old: str, homes: tuple[str, ...], names: frozenset[str] | None = None) -> Callable[[str], Any]:
    """A module ``__getattr__`` (PEP 562) that finds a name (any, or one of ``names``) in the first of
    ``homes`` that has it."""

    def __getattr__(name: str) -> Any:
        # Dunder look-ups (``__path__``, ``__file__``) come from the import system, not from a user.
        if not name.startswith("__") and (names is None or name in names):
            for home in homes:
                module = importlib.import_module(home)
                if hasattr(module, name):
                    _deprecated(f"{old}.{name}", f"{home}.{name}")
                    return getattr(module, name)
        raise AttributeError(f"module {old!r} has no attribute {name!r}")

    return __getattr__


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Makes each old module name importable.

    A module that moved whole is the new module itself under its old name too, so that code patching it
    (``monkeypatch.setattr(mlcdf.evaluate, ...)``) patches what runs. A module whose names went to several
    homes is an empty module that forwards attribute look-ups.
    """

    def find_spec(self, fullname: str, path: Any = None, target: types.ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        return importlib.machinery.ModuleSpec(fullname, self) if fullname in MOVED_MODULES else None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        homes = MOVED_MODULES[spec.name]
        _deprecated(spec.name, " and ".join(homes))
        if len(homes) > 1:
            return None  # the default: a new, empty module
        module = importlib.import_module(homes[0])
        # The import system gives the module this (old) name's spec; exec_module puts its own back.
        self._specs[spec.name] = module.__spec__
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        name = module.__spec__.name if module.__spec__ is not None else module.__name__
        if name in self._specs:
            module.__spec__ = self._specs.pop(name)
        else:
            module.__getattr__ = forwarder(name, MOVED_MODULES[name])  # type: ignore[method-assign]

    def __init__(self) -> None:
        self._specs: dict[str, importlib.machinery.ModuleSpec | None] = {}


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (once)."""
    if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _MovedModuleFinder())
