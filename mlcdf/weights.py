"""Backbone weights: a local file (``weights=PATH``) or timm's default pretrained tag (``pretrained=True``).

Both go through one loader: read a state-dict file without unpickling arbitrary objects (safetensors, or
``torch.load(weights_only=True)``), unwrap training checkpoints, apply the timm family's
``checkpoint_filter_fn`` (old key layouts), drop the classifier keys the backbone's pretrained config
names, and load everything else strictly. The result is a :class:`LoadReport`, also logged.

``pretrained=True`` never hands the download to timm: when nothing is cached, ``huggingface_hub`` retries
network errors with back-off for about a minute per file before giving up. Instead the local cache is
checked first, then one metadata request with a short timeout decides whether the Hub is reachable, so an
offline machine gets an error at once that says to use ``--weights PATH``.
"""

from __future__ import annotations

import logging
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path

import huggingface_hub
import safetensors.torch
import torch
from huggingface_hub.errors import EntryNotFoundError
from torch import nn

from mlcdf.errors import MissingArtifactError, MlcdfError, SchemaError, first_line

__all__ = [
    "HUB_TIMEOUT_S",
    "LoadReport",
    "load_backbone_weights",
    "load_pretrained_backbone",
    "read_state_dict",
]

_logger = logging.getLogger(__name__)

HUB_TIMEOUT_S = 10.0
"""Seconds the one reachability request to the Hugging Face Hub may take."""

# timm's own order: prefer the safetensors file, fall back to the pickle-free-loadable PyTorch one.
_HUB_FILENAMES = ("model.safetensors", "pytorch_model.bin")
# Training checkpoints (timm's, torchvision's, ours) nest the weights under one of these keys.
_WRAPPER_KEYS = ("state_dict", "model")
_DDP_PREFIX = "module."
# An mlcdf model's state dict: the backbone's tensors carry this prefix, the head's do not.
_BACKBONE_PREFIX = "backbone."
_SHOWN_KEYS = 5


@dataclass(frozen=True)
class LoadReport:
    """What loading a weights file into a backbone did.

    Attributes:
        source: the file path, or ``hf-hub:<repo>`` for timm's pretrained weights.
        loaded: number of tensors copied into the backbone.
        missing: backbone tensors the file lacks (left at their random initialisation).
        unexpected: tensors in the file the backbone has no place for.
        ignored: classifier (head) tensors dropped on purpose: the multi-label head is always new.
    """

    source: str
    loaded: int
    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()

    def summary(self) -> str:
        return (
            f"{self.source}: loaded {self.loaded} tensors, ignored {len(self.ignored)} head tensors, "
            f"{len(self.missing)} missing, {len(self.unexpected)} unexpected"
        )


def _shown(keys) -> str:
    keys = list(keys)
    more = f" (+{len(keys) - _SHOWN_KEYS} more)" if len(keys) > _SHOWN_KEYS else ""
    return ", ".join(keys[:_SHOWN_KEYS]) + more


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read the tensors of a ``.safetensors`` or ``.pth``/``.pt``/``.bin`` file, on the CPU.

    PyTorch files are read with ``weights_only=True``: they may hold tensors and plain containers but no
    pickled objects. A training checkpoint whose weights sit under ``"state_dict"`` or ``"model"`` is
    unwrapped; other entries (optimizer state, epoch, ...) are left out.

    Raises:
        MissingArtifactError: ``path`` is not a file.
        SchemaError: the file is not readable as weights, or holds no tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingArtifactError(path, "expected a .pth or .safetensors file of backbone weights")
    if path.suffix == ".safetensors":
        try:
            return safetensors.torch.load_file(path, device="cpu")
        except (OSError, safetensors.SafetensorError) as error:
            raise SchemaError(path, f"not a readable .safetensors file ({error})") from None
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as error:
        raise SchemaError(path, f"not a weights-only PyTorch file ({first_line(error)})") from None
    while isinstance(content, dict):
        wrapped = next((content[key] for key in _WRAPPER_KEYS if isinstance(content.get(key), dict)), None)
        if wrapped is None:
            break
        content = wrapped
    if not isinstance(content, dict):
        raise SchemaError(path, f"holds a {type(content).__name__}, expected a state dict of backbone weights")
    tensors = {key: value for key, value in content.items() if isinstance(value, torch.Tensor)}
    if not tensors:
        raise SchemaError(path, "holds no tensors (expected a state dict of backbone weights)")
    return tensors


def _classifier_prefixes(backbone: nn.Module) -> tuple[str, ...]:
    classifier = getattr(backbone, "pretrained_cfg", {}).get("classifier") or ()
    names = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    return tuple(f"{name}." for name in names)


def _load(backbone: nn.Module, state: dict[str, torch.Tensor], source: str, *, strict: bool) -> LoadReport:
    """Load ``state`` into ``backbone``; see the module docstring for the steps."""
    if state and all(key.startswith(_DDP_PREFIX) for key in state):
        state = {key[len(_DDP_PREFIX) :]: value for key, value in state.items()}
    own = backbone.state_dict()
    ignored: list[str] = []
    if any(key.startswith(_BACKBONE_PREFIX) for key in state) and not any(key.startswith(_BACKBONE_PREFIX) for key in own):
        ignored = [key for key in state if not key.startswith(_BACKBONE_PREFIX)]
        state = {key[len(_BACKBONE_PREFIX) :]: v for key, v in state.items() if key.startswith(_BACKBONE_PREFIX)}
    filter_fn = getattr(sys.modules.get(type(backbone).__module__), "checkpoint_filter_fn", None)
    if filter_fn is not None:
        state = filter_fn(state, backbone)
    head = _classifier_prefixes(backbone)
    ignored += [key for key in state if key.startswith(head)]
    state = {key: value for key, value in state.items() if not key.startswith(head)}

    mismatched = [
        f"{key} {tuple(value.shape)} vs {tuple(own[key].shape)}"
        for key, value in state.items()
        if key in own and own[key].shape != value.shape
    ]
    if mismatched:
        raise MlcdfError(f"{source}: tensor shapes do not fit this backbone: {_shown(mismatched)}")
    # BatchNorm step counters are bookkeeping, not weights; older checkpoints omit them.
    missing = tuple(key for key in own if key not in state and not key.endswith("num_batches_tracked"))
    unexpected = tuple(key for key in state if key not in own)
    loaded = len(state) - len(unexpected)
    arch = getattr(backbone, "pretrained_cfg", {}).get("architecture", type(backbone).__name__)
    if loaded == 0:
        raise MlcdfError(f"{source}: no tensor matches the {arch} backbone (weights for another architecture?)")
    if strict and (missing or unexpected):
        raise MlcdfError(
            f"{source}: does not match the {arch} backbone: {len(missing)} missing ({_shown(missing)}), "
            f"{len(unexpected)} unexpected ({_shown(unexpected)})"
        )
    backbone.load_state_dict(state, strict=False)
    report = LoadReport(source, loaded, missing, unexpected, tuple(ignored))
    _logger.info("backbone weights from %s", report.summary())
    if missing or unexpected:
        _logger.warning("%s: missing %s; unexpected %s", source, _shown(missing), _shown(unexpected))
    return report


def load_backbone_weights(backbone: nn.Module, path: str | Path, *, strict: bool = True) -> LoadReport:
    """Load a local weights file into a timm backbone built with ``num_classes=0``.

    Accepted: timm or torchvision state dicts, training checkpoints that nest them under ``"state_dict"``
    or ``"model"``, DDP (``module.``) prefixes, and an mlcdf model's state dict (its ``backbone.`` part).

    Args:
        backbone: the timm backbone.
        path: a ``.safetensors`` or ``.pth`` file.
        strict: raise when a backbone tensor is missing or a non-head tensor is unexpected (True); when
            False those are only logged as a warning.

    Returns:
        The :class:`LoadReport`.

    Raises:
        MlcdfError: the file is unreadable, matches nothing, has a wrong shape, or (strict) does not match.
    """
    return _load(backbone, read_state_dict(path), str(path), strict=strict)


def _download_error(repo_id: str, filename: str, error: Exception) -> MlcdfError:
    return MlcdfError(
        f"cannot download the pretrained weights hf-hub:{repo_id} ({type(error).__name__}: {first_line(error)}); "
        f"offline? fetch {filename} from https://huggingface.co/{repo_id} on a machine with internet and pass "
        "it with --weights PATH"
    )


def _hub_weights_file(hub_id: str, filename: str | None) -> Path:
    """The local path of a Hub weights file: from the cache, else downloaded after one quick reachability check."""
    repo_id, _, revision = hub_id.partition("@")
    candidates = (filename,) if filename else _HUB_FILENAMES
    for candidate in candidates:
        cached = huggingface_hub.try_to_load_from_cache(repo_id, candidate, revision=revision or None)
        if isinstance(cached, str):
            return Path(cached)
    for candidate in candidates:
        url = huggingface_hub.hf_hub_url(repo_id, candidate, revision=revision or None)
        try:
            huggingface_hub.get_hf_file_metadata(url, timeout=HUB_TIMEOUT_S)
        except EntryNotFoundError:
            continue
        # Network failures surface as httpx, requests or OSError subclasses depending on the
        # huggingface_hub version; every one of them means "no download", and the message keeps the cause.
        except Exception as error:
            raise _download_error(repo_id, candidate, error) from error
        try:
            return Path(huggingface_hub.hf_hub_download(repo_id, candidate, revision=revision or None))
        except Exception as error:
            raise _download_error(repo_id, candidate, error) from error
    raise MlcdfError(f"hf-hub:{hub_id} has none of {', '.join(candidates)}; pass a weights file with --weights PATH")


def load_pretrained_backbone(backbone: nn.Module, *, strict: bool = True) -> LoadReport:
    """Load timm's default pretrained weights for ``backbone`` (its ``pretrained_cfg``) from the Hugging Face Hub.

    The local Hub cache is used when it has the file; otherwise one request with a
    :data:`HUB_TIMEOUT_S` timeout checks the Hub is reachable before downloading.

    Raises:
        MlcdfError: at once when offline (or ``HF_HUB_OFFLINE=1``) and the file is not cached, or when timm
            lists no Hub weights for this architecture; the message names ``--weights PATH``.
    """
    cfg = getattr(backbone, "pretrained_cfg", {})
    hub_id = cfg.get("hf_hub_id")
    if not hub_id:
        arch = cfg.get("architecture", type(backbone).__name__)
        raise MlcdfError(f"timm lists no Hugging Face Hub weights for {arch}; download weights yourself and pass --weights PATH")
    path = _hub_weights_file(hub_id, cfg.get("hf_hub_filename"))
    return _load(backbone, read_state_dict(path), f"hf-hub:{hub_id}", strict=strict)
