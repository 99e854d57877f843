"""Run options: :class:`TrainConfig`, its defaults, validation and reading from files, without torch.

Everything that defines a training run lives here so that the report, the plan checker and the CLI can
read and check options (and their defaults) without importing torch. The trainer
(:mod:`mlcdf.train`) turns a resolved configuration into a run.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mlcdf.devices import DEVICE_NAMES, is_device_name
from mlcdf.errors import MlcdfError

#: The options a resumed run takes from the caller, not from its checkpoint: where it is (``out``: a
#: copied or moved run resumes where it is now), where and how fast it runs and where it shows its
#: curves (``tensorboard``), not what it computes.
RESUME_OVERRIDES = ("out", "device", "workers", "tensorboard")
#: The most DataLoader worker processes a run may ask for; each holds a copy of the dataset's state.
MAX_WORKERS = 64
#: DataLoader worker processes of a training process whose run sets none (``workers = None``), at most.
DEFAULT_LOADER_WORKERS = 4
#: Upper bounds of the counts a run or a plan takes, far above any real use and low enough that no count
#: turns into a traceback (an allocation of that many, an integer too large for torch or a file name).
#: ``seeds`` is a plan's (``--seeds``): each seed is a run folder.
MAX_COUNTS: dict[str, int] = {
    "epochs": 100_000,
    "patience": 100_000,
    "batch_size": 65_536,
    "image_size": 8192,
    "seeds": 1000,
    "images": 100_000_000,  # of a split that ``mlcdf synth`` writes
    "faces": 1000,  # scored per photo (``predict --max-faces``)
}

#: How the face images of a prepared subset, and so of a run trained on it, were cut from their photos:
#: ``none`` (as they come), or aligned as FFHQ or CelebA-HQ were (:mod:`mlcdf.faces.align`). Recorded as
#: ``alignment`` in ``meta.json`` and ``config.json``; ``mlcdf predict`` aligns the faces it finds the same way.
ALIGNMENTS = ("none", "ffhq", "celeba-hq")
#: Seq-DeepFake's subsets were made from FFHQ (attributes) and CelebA-HQ (components) faces, as those
#: datasets aligned them; any other subset, and a user's dataset, is ``none`` unless ``prepare`` is told.
SUBSET_ALIGNMENTS = {"facial_attributes": "ffhq", "facial_components": "celeba-hq"}


def default_alignment(subset: str) -> str:
    """The alignment of a subset whose files predate the ``alignment`` field (or that sets none): its source's."""
    return SUBSET_ALIGNMENTS.get(subset, "none")


def check_alignment(value: object, source: str = "--alignment") -> str:
    """``value`` if it is one of :data:`ALIGNMENTS`.

    Raises:
        MlcdfError: naming ``source`` (an option, or the file that holds the value).
    """
    if value not in ALIGNMENTS:
        raise MlcdfError(f"{source}: alignment must be one of {', '.join(ALIGNMENTS)}, got {value!r}")
    return str(value)


#: Optimisation recipes. ``asl``: the ASL/TResNet recipe (AdamW with decoupled weight decay on weights
#: only, OneCycle). ``mlgcn``: ML-GCN's (SGD with momentum, 10x lower lr for the backbone, step decay,
#: gradient clipping). ``seqfakeformer``: Seq-DeepFake's (configs/r34.json, r50.json and train.py of
#: github.com/rshaojimmy/SeqDeepFake): AdamW, lr 1e-3 and 1e-4 for the backbone, weight decay on every
#: parameter, linear warm-up over 20 of 170 epochs then x0.1 at epochs 70 and 120 (scaled to ``epochs``),
#: gradient clipping at 0.1; and its images (datasets/dataset.py): 256 px, ColorJitter(brightness
#: [0.5, 1.3], contrast [0.8, 1.5], saturation [0.2, 1.5]) with a horizontal flip, Normalize(0.5, 0.5).
#: ``image_size`` and ``jitter_ranges`` are the defaults of ``--image-size`` and ``--jitter`` (224 and
#: :data:`DEFAULT_JITTER` where a recipe has none); ``normalize`` (mean, std per channel) replaces the
#: model's own input normalisation (its backbone's pretrained statistics), at training and at every use.
RECIPES: dict[str, dict[str, Any]] = {
    "asl": {"lr": 1e-4, "clip_grad_norm": None},
    "mlgcn": {"lr": 0.1, "clip_grad_norm": 10.0, "backbone_lr_factor": 0.1, "momentum": 0.9},
    "seqfakeformer": {
        "lr": 1e-3,
        "clip_grad_norm": 0.1,
        "backbone_lr_factor": 0.1,
        "decay_all": True,
        "epochs": 170,
        "warmup_epochs": 20,
        "milestones": (70, 120),
        "image_size": 256,
        "jitter_ranges": {"brightness": (0.5, 1.3), "contrast": (0.8, 1.5), "saturation": (0.2, 1.5)},
        "normalize": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    },
}
#: The recipe of a model whose registry entry names none (:attr:`mlcdf.models.ModelInfo.recipe`).
DEFAULT_RECIPE = "asl"
#: ``--image-size`` of a recipe without its own.
DEFAULT_IMAGE_SIZE = 224
#: ``--jitter`` of a recipe without its own ranges: brightness, contrast and saturation factors in [0.9, 1.1].
DEFAULT_JITTER = 0.1
#: The properties a colour jitter scales, in the order they are applied.
JITTER_PROPERTIES = ("brightness", "contrast", "saturation")


#: TrainConfig fields ``asl_<name>`` are AsymmetricLoss's ``<name>`` (gamma_neg, gamma_pos, clip).
_ASL_PREFIX = "asl_"


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run; written to ``RUN/config.json``.

    ``None`` means "the recipe's or the device's default" and is resolved by :meth:`resolve`.
    """

    prepared: str
    model: str
    out: str
    loss: str = "bce"
    # AsymmetricLoss's own defaults (a test holds them equal): the ASL paper's, and the Seq-DeepFake paper's.
    asl_gamma_neg: float = 4.0
    asl_gamma_pos: float = 0.0
    asl_clip: float = 0.05
    graph: str | None = None
    backbone: str | None = None
    recipe: str | None = None
    epochs: int = 40
    batch_size: int = 128
    image_size: int | None = None
    lr: float | None = None
    weight_decay: float = 1e-4
    clip_grad_norm: float | None = None
    patience: int = 10
    ema_decay: float = 0.9997
    device: str = "auto"
    seed: int = 0
    pretrained: bool = False
    weights: str | None = None
    workers: int | None = None
    amp: bool | None = None
    channels_last: bool | None = None
    compile: bool = False
    sync_bn: bool = False
    cache: bool = True
    val_fraction: float = 0.1
    flip: bool = True
    jitter: float | None = None
    augment_perturb: float = 0.0
    tensorboard: str | None = None

    def resolve(self, default_recipe: str = DEFAULT_RECIPE) -> TrainConfig:
        """Fill recipe defaults and check values; raises MlcdfError on a bad combination.

        ``default_recipe`` is the recipe of a configuration that names none: the model's
        (:func:`mlcdf.models.resolve_config` passes it). After resolving, ``recipe``, ``lr``,
        ``clip_grad_norm`` and ``image_size`` are set; ``jitter`` stays None only where the recipe's own
        ranges apply (:meth:`jitter_ranges`).
        """
        recipe_name = self.recipe if self.recipe is not None else default_recipe
        if recipe_name not in RECIPES:
            raise MlcdfError(f"unknown recipe {recipe_name!r}; expected one of {', '.join(RECIPES)}")
        recipe = RECIPES[recipe_name]
        image_size = self.image_size if self.image_size is not None else recipe.get("image_size", DEFAULT_IMAGE_SIZE)
        jitter = self.jitter if self.jitter is not None or "jitter_ranges" in recipe else DEFAULT_JITTER
        if self.loss not in ("bce", "asl"):
            raise MlcdfError(f"unknown loss {self.loss!r}; expected bce or asl")
        changed = [f.name for f in dataclasses.fields(self) if f.name.startswith(_ASL_PREFIX) and getattr(self, f.name) != f.default]
        if self.loss != "asl" and changed:
            options = ", ".join("--" + name.replace("_", "-") for name in changed)
            raise MlcdfError(f"{options} set(s) the Asymmetric Loss; add --asl (loss 'asl'), or drop it for BCE")
        if self.pretrained and self.weights:
            raise MlcdfError("give either --pretrained or --weights, not both")
        counts = {"epochs": self.epochs, "batch_size": self.batch_size, "image_size": image_size}
        for name, value in counts.items():
            if value < 1:
                raise MlcdfError(f"{name} must be at least 1, got {value}")
        for name, value in {**counts, "patience": self.patience}.items():
            check_count(name, value)
        checks = {
            "seed": (0 <= self.seed < 2**32, "an integer from 0 to 2**32-1"),
            "lr": (self.lr is None or (math.isfinite(self.lr) and self.lr > 0), "a finite number > 0"),
            "weight_decay": (math.isfinite(self.weight_decay) and self.weight_decay >= 0, "a finite number >= 0"),
            "clip_grad_norm": (
                self.clip_grad_norm is None or (math.isfinite(self.clip_grad_norm) and self.clip_grad_norm > 0),
                "a finite number > 0",
            ),
            "patience": (self.patience >= 0, "at least 0"),
            "ema_decay": (0 <= self.ema_decay < 1, "in [0, 1)"),
            "device": (is_device_name(self.device), DEVICE_NAMES),
            "workers": (self.workers is None or 0 <= self.workers <= MAX_WORKERS, f"from 0 to {MAX_WORKERS}"),
            "val_fraction": (0 < self.val_fraction < 1, "in (0, 1)"),
            "jitter": (jitter is None or 0 <= jitter <= 0.5, "in [0, 0.5]"),
            "augment_perturb": (0 <= self.augment_perturb <= 1, "a probability in [0, 1]"),
            "asl_gamma_neg": (math.isfinite(self.asl_gamma_neg) and self.asl_gamma_neg >= 0, "a finite number >= 0"),
            "asl_gamma_pos": (math.isfinite(self.asl_gamma_pos) and self.asl_gamma_pos >= 0, "a finite number >= 0"),
            "asl_clip": (0 <= self.asl_clip < 1, "in [0, 1)"),
        }
        for name, (ok, expected) in checks.items():
            if not ok:
                raise MlcdfError(f"{name} must be {expected}, got {getattr(self, name)!r}")
        return dataclasses.replace(
            self,
            recipe=recipe_name,
            image_size=image_size,
            jitter=jitter,
            lr=self.lr if self.lr is not None else recipe["lr"],
            clip_grad_norm=self.clip_grad_norm if self.clip_grad_norm is not None else recipe["clip_grad_norm"],
        )

    @property
    def recipe_options(self) -> dict[str, Any]:
        """The :data:`RECIPES` entry of a resolved configuration."""
        assert self.recipe is not None, "TrainConfig.resolve() fills recipe"
        return RECIPES[self.recipe]

    @property
    def input_size(self) -> int:
        """The square input size in pixels of a resolved configuration (``image_size``, which
        :meth:`resolve` fills and every run's ``config.json`` holds)."""
        assert self.image_size is not None, "TrainConfig.resolve() fills image_size"
        return self.image_size

    def jitter_ranges(self) -> dict[str, tuple[float, float]]:
        """The factor range of each of :data:`JITTER_PROPERTIES` for a resolved configuration: the
        recipe's own where ``jitter`` is None, else ``[1 - jitter, 1 + jitter]`` for each."""
        if self.jitter is None:
            return dict(self.recipe_options["jitter_ranges"])
        return {name: (1.0 - self.jitter, 1.0 + self.jitter) for name in JITTER_PROPERTIES}

    def normalisation(self, model_mean: Sequence[float], model_std: Sequence[float]) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The (mean, std) per channel the run's input images are normalised with: the recipe's
        ``normalize`` where it has one, else the model's own (``model_mean``, ``model_std``)."""
        mean, std = self.recipe_options.get("normalize", (model_mean, model_std))
        return tuple(float(v) for v in mean), tuple(float(v) for v in std)

    def loss_options(self) -> dict[str, float]:
        """Keyword arguments of :func:`~mlcdf.tasks.losses.create_loss` for ``loss``: ASL's γ-, γ+ and clip."""
        if self.loss != "asl":
            return {}
        return {f.name[len(_ASL_PREFIX) :]: getattr(self, f.name) for f in dataclasses.fields(self) if f.name.startswith(_ASL_PREFIX)}

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> TrainConfig:
        """The configuration in ``values`` (read from ``source``), each value checked against its type.

        Raises:
            MlcdfError: an unknown option or a value of the wrong type, naming ``source``.
        """
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise MlcdfError(f"{source}: unknown option(s) {unknown}")
        for name, value in values.items():
            # The annotations are strings ("float | None"): from __future__ import annotations.
            allowed = fields[name].type.split(" | ")
            if not any(is_option_type(value, type_name) for type_name in allowed):
                expected = " or ".join("null" if t == "None" else t for t in allowed)
                raise MlcdfError(f"{source}: option {name} must be {expected}, got {value!r}")
        return cls(**values)


def check_count(name: str, value: int | float, *, option: str | None = None) -> None:
    """Raise unless ``value`` is at most the bound of ``name`` in :data:`MAX_COUNTS`.

    Raises:
        MlcdfError: naming the option (``option``, else ``name``), the value (shortened when huge) and the bound.
    """
    bound = MAX_COUNTS[name]
    if value > bound:
        shown = str(value) if value < 10**15 else f"{float(value):.3g}"
        raise MlcdfError(f"{option or name} must be at most {bound:,}, got {shown}")


def is_option_type(value: Any, type_name: str) -> bool:
    """Whether ``value`` (from JSON, TOML or a checkpoint) fits a TrainConfig field type; bools are not numbers."""
    if type_name == "None":
        return value is None
    if isinstance(value, bool):
        return type_name == "bool"
    accepted = {"str": (str,), "int": (int,), "float": (int, float), "bool": ()}[type_name]
    return isinstance(value, accepted)


def available_cpus() -> int:
    """The CPUs this process may run on: its affinity (a Slurm allocation, ``taskset``, a container's
    cpuset), not the machine's count, which on a shared node is many times what the job was given."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity on this platform (macOS)
        return os.cpu_count() or 1


def default_workers(processes: int = 1) -> int:
    """DataLoader workers of each of ``processes`` training processes sharing this process's CPUs, for a
    run that sets none: :data:`DEFAULT_LOADER_WORKERS`, fewer where the CPUs are fewer (at least 1)."""
    return min(DEFAULT_LOADER_WORKERS, max(1, available_cpus() // processes))


def check_workers(value: int | None, option: str = "--workers") -> int | None:
    """``value``, a count of worker processes or threads (None: the command's default), if it is from 0
    to :data:`MAX_WORKERS`. Every command's ``--workers`` goes through here, so that no count forks until
    the machine runs out of memory.

    Raises:
        MlcdfError: naming ``option``, the value (shortened when huge) and the range.
    """
    if value is not None and not 0 <= value <= MAX_WORKERS:
        shown = str(value) if abs(value) < 10**15 else f"a number of {len(str(abs(value)))} digits"
        raise MlcdfError(f"{option} must be from 0 to {MAX_WORKERS}, got {shown}")
    return value


#: ``--threshold`` words of the commands that predict on new images: ``tuned`` (the run's per-label
#: thresholds tuned on validation, an error without) and ``auto`` (those where the run has them, else
#: :data:`DEFAULT_THRESHOLD`); :mod:`mlcdf.inference.thresholds` applies them.
THRESHOLD_WORDS = ("auto", "tuned")
DEFAULT_THRESHOLD = 0.5


def parse_threshold(value: str | float) -> str | float:
    """``--threshold`` as given: one of :data:`THRESHOLD_WORDS`, or a number in [0, 1].

    Raises:
        MlcdfError: anything else (NaN too).
    """
    word = value.strip().lower() if isinstance(value, str) else value
    if word in THRESHOLD_WORDS:
        return word
    try:
        number = float(word)
    except ValueError:
        number = math.nan
    if not 0 <= number <= 1:
        raise MlcdfError(f"--threshold must be a number in [0, 1], 'tuned' or 'auto', got {value!r}")
    return number


def asl_defaults() -> dict[str, float]:
    """The Asymmetric Loss settings of a run that sets none: the ASL paper's, used by Seq-DeepFake too."""
    defaults = TrainConfig(prepared="", model="", out="")
    return {f.name: getattr(defaults, f.name) for f in dataclasses.fields(TrainConfig) if f.name.startswith(_ASL_PREFIX)}
