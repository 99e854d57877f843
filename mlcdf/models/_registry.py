"""The model registry: module-level dicts filled by :func:`register_model` when a family module is imported.

``mlcdf/models/__init__.py`` imports every family module, so the full registry exists as soon as
``mlcdf.models`` is imported. Any timm architecture is also a direct model under the name
``timm:<architecture>``; those are not listed (timm has over a thousand) but :func:`is_model` and
:func:`model_info` know them.
"""

from __future__ import annotations

import fnmatch
import re
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import timm

from mlcdf.config import DEFAULT_RECIPE, RECIPES, TrainConfig
from mlcdf.errors import MlcdfError

__all__ = [
    "TIMM_PREFIX",
    "ModelInfo",
    "UnknownModelError",
    "is_model",
    "list_models",
    "model_entrypoint",
    "model_info",
    "register_model",
    "resolve_config",
    "split_model_name",
]

TIMM_PREFIX = "timm:"

_model_entrypoints: dict[str, Callable] = {}
_model_info: dict[str, ModelInfo] = {}


class UnknownModelError(MlcdfError, ValueError):
    """No registered model and no timm architecture has this name.

    A ``ValueError`` for library callers, an :class:`~mlcdf.errors.MlcdfError` so that the CLI shows it as
    one line with exit code 2.
    """


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about a model before building it.

    Attributes:
        name: the registry key (``resnet50``) or ``timm:<architecture>``.
        family: the module that defines it (``direct``, ``gcn``, ``agcn``; ``timm`` for ``timm:`` names).
        description: the first line of the entry function's docstring.
        requires_graph: whether ``create_model`` needs a label graph from ``mlcdf build-graph``.
        paper_params_m: the parameter count in millions reported by the paper for 5 labels (300-d word
            embeddings for graph models), or None when the paper has no such model.
        task: what the model is trained for, which picks its :mod:`mlcdf.tasks` task: ``multilabel`` (C
            logits) or ``sequence`` (token logits of an image-to-sequence model).
        recipe: the training recipe (:data:`mlcdf.config.RECIPES`) of a run that names none: the one its
            authors trained it with (``seqfakeformer`` for SeqFakeFormer), else ``asl``.
    """

    name: str
    family: str
    description: str
    requires_graph: bool = False
    paper_params_m: float | None = None
    task: str = "multilabel"
    recipe: str = DEFAULT_RECIPE


def register_model(
    fn: Callable | None = None,
    *,
    requires_graph: bool = False,
    paper_params_m: float | None = None,
    task: str = "multilabel",
    recipe: str = DEFAULT_RECIPE,
) -> Callable:
    """Register a model entry function under its own name; usable bare or with keyword arguments.

    The entry function is called as ``fn(num_labels, *, pretrained, weights, **kwargs)`` (plus ``graph=``
    when ``requires_graph``). Registering a name twice warns and keeps the newer entry, as timm does.

    Args:
        fn: the entry function (when used as a bare decorator).
        requires_graph: the model needs a label graph (False).
        paper_params_m: the paper's parameter count in millions (None).
        task: ``multilabel`` or ``sequence`` (``multilabel``).
        recipe: the default training recipe, a key of :data:`mlcdf.config.RECIPES` (``asl``).

    Returns:
        The entry function, unchanged, or a decorator when called with keyword arguments only.
    """

    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; expected one of {', '.join(RECIPES)}")

    def decorate(entry: Callable) -> Callable:
        name = entry.__name__
        if name in _model_entrypoints:
            warnings.warn(f"model {name!r} registered twice; the entry in {entry.__module__} replaces the first", stacklevel=2)
        module = sys.modules[entry.__module__]
        exported = getattr(module, "__all__", None)
        if exported is not None and name not in exported:
            exported.append(name)
        _model_entrypoints[name] = entry
        _model_info[name] = ModelInfo(
            name=name,
            family=entry.__module__.rsplit(".", 1)[-1],
            description=(entry.__doc__ or "").strip().split("\n", 1)[0],
            requires_graph=requires_graph,
            paper_params_m=paper_params_m,
            task=task,
            recipe=recipe,
        )
        return entry

    return decorate(fn) if fn is not None else decorate


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name.lower())]


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style wildcard, in natural order (``resnet50`` < ``resnet101``).

    ``timm:<architecture>`` names are not listed; see ``timm.list_models`` for those.
    """
    return sorted(fnmatch.filter(_model_entrypoints, pattern), key=_natural_key)


def split_model_name(name: str) -> tuple[str, str]:
    """``"timm:convnext_tiny"`` -> ``("timm", "convnext_tiny")``; a registered name -> ``("", name)``."""
    if name.startswith(TIMM_PREFIX):
        return "timm", name[len(TIMM_PREFIX) :]
    return "", name


def is_model(name: str) -> bool:
    """Whether ``name`` is a registered model or ``timm:`` plus a timm architecture."""
    source, arch = split_model_name(name)
    return timm.is_model(arch) if source == "timm" else arch in _model_entrypoints


def _unknown(name: str) -> UnknownModelError:
    source, arch = split_model_name(name)
    if source == "timm":
        close = timm.list_models(f"*{arch}*")[:8]
        hint = f"timm architectures like it: {', '.join(close)}" if close else "see timm.list_models()"
        return UnknownModelError(f"unknown timm architecture {arch!r} ({hint})")
    close = list_models(f"*{arch}*")
    known = close or list_models()
    return UnknownModelError(f"unknown model {name!r}; known: {', '.join(known)} (or timm:<architecture> for any timm backbone)")


def model_entrypoint(name: str) -> Callable:
    """The entry function of a registered model; raises :class:`UnknownModelError` otherwise."""
    try:
        return _model_entrypoints[name]
    except KeyError:
        raise _unknown(name) from None


def model_info(name: str) -> ModelInfo:
    """The :class:`ModelInfo` of a registered model or of a ``timm:<architecture>`` name."""
    source, arch = split_model_name(name)
    if source == "timm":
        if not timm.is_model(arch):
            raise _unknown(name)
        return ModelInfo(name=name, family="timm", description=f"timm {arch} with a linear multi-label head")
    try:
        return _model_info[name]
    except KeyError:
        raise _unknown(name) from None


def resolve_config(config: TrainConfig) -> TrainConfig:
    """``config`` resolved (:meth:`~mlcdf.config.TrainConfig.resolve`) with its model's own recipe as the
    default, so that a run of ``seqfakeformer_r50`` without ``--recipe`` trains as its authors did.

    Raises:
        MlcdfError: an unknown model, or what ``resolve`` raises.
    """
    return config.resolve(default_recipe=model_info(config.model).recipe)
