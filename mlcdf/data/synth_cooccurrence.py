"""Co-occurrence profiles of ``mlcdf synth``: which manipulations tend to be applied together.

Seq-DeepFake drew every sequence uniformly (a length of 1 to 5, then distinct manipulations in random
order), so its label co-occurrence carries no information; the paper (Singh et al., MMSP 2023) offers
that as the reason why graph models, built to exploit co-occurrence, do not beat plain CNNs there. A
profile lets the generator make data where co-occurrence does carry information.

A profile is a list of *recipes*, label sets with weights (``{"recipes": [{"labels": ["nose", "lip"],
"weight": 3}, ...], "real_fraction": f}``, the contract of DESIGN.md §7). With probability ``strength``
(RHO) a fake image takes its label set from a recipe drawn by weight, its steps in random order;
otherwise the uniform process of the release draws it. RHO = 0 is the release's process, draw for draw.

Drawing label sets is separate from drawing pixels (:meth:`Cooccurrence.draw`, :func:`label_statistics`),
so the label process can be checked on millions of draws without rendering a face.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlcdf.errors import MissingArtifactError, MlcdfError, SchemaError
from mlcdf.io import read_json_object
from mlcdf.labels import SUBSETS, conditional_probabilities, count_cooccurrence, steps_of

UNIFORM = "uniform"
EDITING_HABITS = "editing-habits"
BUILT_IN_PROFILES = (UNIFORM, EDITING_HABITS)

_PROFILE_KEYS = ("recipes", "real_fraction")
_RECIPE_KEYS = ("labels", "weight")
#: The largest recipe weight: weights are relative, and the sum of many must stay a finite float.
MAX_WEIGHT = 1e12

#: The built-in ``editing-habits`` profile, in the file format. Made up to look like what editing apps
#: encourage (not measured on any real data): parts edited as a group (the mouth and nose together, the
#: eye region together), a rejuvenating smile, a groomed look; some pairs never in one recipe (a beard
#: with bangs, hair with eyeglasses); unequal label frequencies (lip and nose, Smiling and Young common).
EDITING_HABITS_PROFILES: dict[str, dict[str, Any]] = {
    "facial_components": {
        "recipes": [
            {"labels": ["nose", "lip"], "weight": 4},
            {"labels": ["eye", "eyebrow"], "weight": 3},
            {"labels": ["lip"], "weight": 2},
            {"labels": ["nose", "lip", "eye"], "weight": 2},
            {"labels": ["hair"], "weight": 1},
            {"labels": ["eye", "eyebrow", "nose", "lip"], "weight": 1},
        ]
    },
    "facial_attributes": {
        "recipes": [
            {"labels": ["Smiling", "Young"], "weight": 4},
            {"labels": ["Smiling"], "weight": 2},
            {"labels": ["Young"], "weight": 2},
            {"labels": ["Beard", "Eyeglasses"], "weight": 2},
            {"labels": ["Bangs", "Young"], "weight": 2},
            {"labels": ["Bangs", "Smiling", "Young"], "weight": 1},
        ]
    },
}


@dataclass(frozen=True)
class Recipe:
    """A label set of a profile: its manipulation ids (1-based, in vocabulary order) and its weight."""

    steps: tuple[int, ...]
    weight: float


@dataclass(frozen=True)
class Cooccurrence:
    """A profile applied to one subset with a strength.

    Attributes:
        profile: ``editing-habits`` or the path of the profile file, as given.
        subset: the subset whose labels the recipes name.
        recipes: the label sets and their weights.
        strength: RHO, the probability that a fake image takes a recipe's label set.
        real_fraction: the profile's share of real images, or ``None`` (the generator's default).
    """

    profile: str
    subset: str
    recipes: tuple[Recipe, ...]
    strength: float
    real_fraction: float | None = None

    @property
    def probabilities(self) -> np.ndarray:
        weights = np.array([recipe.weight for recipe in self.recipes], np.float64)
        return weights / weights.sum()

    def draw(self, rng: np.random.Generator) -> list[int] | None:
        """A recipe's steps in random order with probability ``strength``, else ``None`` (the caller draws
        uniformly). Nothing is drawn from ``rng`` when ``strength`` is 0, so RHO = 0 leaves every image as
        the uniform process makes it."""
        if self.strength <= 0 or rng.uniform() >= self.strength:
            return None
        index = int(np.searchsorted(np.cumsum(self.probabilities), rng.uniform(), side="right"))
        steps = self.recipes[min(index, len(self.recipes) - 1)].steps
        return [steps[position] for position in rng.permutation(len(steps))]

    def describe(self) -> dict[str, Any]:
        """The profile as ``synth.json`` records it (the recipes in the file format)."""
        labels = SUBSETS[self.subset]
        return {
            "profile": self.profile,
            "strength": self.strength,
            "recipes": [{"labels": [labels[step - 1] for step in r.steps], "weight": r.weight} for r in self.recipes],
        }


def load_cooccurrence(profile: str, subset: str, strength: float) -> Cooccurrence | None:
    """The profile named ``profile`` (``uniform``, ``editing-habits`` or a JSON file) for ``subset``;
    ``None`` for ``uniform``, which is the release's process.

    Raises:
        MissingArtifactError: no such profile file.
        SchemaError: the file is not a valid profile (bad JSON, an unknown key or label, an empty recipe,
            a weight <= 0), naming the file and what is wrong.
    """
    if profile == UNIFORM:
        return None
    if profile == EDITING_HABITS:
        return parse_profile(EDITING_HABITS_PROFILES[subset], EDITING_HABITS, subset, strength)
    if not profile.strip():
        raise MlcdfError(f"an empty co-occurrence profile name; expected {', '.join(BUILT_IN_PROFILES)} or a JSON file")
    path = Path(profile)
    if path.is_dir():
        raise MlcdfError(f"{path}: is a folder, not a co-occurrence profile (expected {' or '.join(BUILT_IN_PROFILES)} or a JSON file)")
    if not path.is_file():
        raise MissingArtifactError(path, f"a co-occurrence profile: {' or '.join(BUILT_IN_PROFILES)} or a JSON file")
    try:
        document = read_json_object(path, "a co-occurrence profile object")
    except UnicodeDecodeError:
        raise SchemaError(path, "not UTF-8 text (expected a JSON co-occurrence profile)") from None
    return parse_profile(document, profile, subset, strength)


def parse_profile(document: Mapping[str, Any], source: str, subset: str, strength: float) -> Cooccurrence:
    """Validate a profile object (see the module docstring); errors name ``source`` and the entry."""

    def fail(message: str) -> SchemaError:
        return SchemaError(source, message)

    unknown = [key for key in document if key not in _PROFILE_KEYS]
    if unknown:
        raise fail(f"unknown key {unknown[0]!r} (expected {', '.join(_PROFILE_KEYS)})")
    entries = document.get("recipes")
    if not isinstance(entries, list) or not entries:
        raise fail('\'recipes\' must be a non-empty list of {"labels": [...], "weight": w}')
    vocabulary = SUBSETS[subset]
    recipes = []
    for number, entry in enumerate(entries):
        where = f"recipes[{number}]"
        if not isinstance(entry, dict):
            raise fail(f"{where}: expected an object with 'labels' and 'weight'")
        unknown = [key for key in entry if key not in _RECIPE_KEYS]
        if unknown or set(entry) != set(_RECIPE_KEYS):
            problem = f"unknown key {unknown[0]!r}" if unknown else "missing 'labels' or 'weight'"
            raise fail(f"{where}: {problem} (expected labels, weight)")
        labels, weight = entry["labels"], entry["weight"]
        if not isinstance(labels, list) or not labels:
            raise fail(f"{where}: 'labels' must be a non-empty list of label names (an empty recipe is a real image: use real_fraction)")
        for label in labels:
            if label not in vocabulary:
                raise fail(
                    f"{where}: unknown label {label!r} for {subset} (expected {', '.join(vocabulary)}; "
                    "a profile file names the labels of one subset: choose it with --subset)"
                )
        if len(set(labels)) != len(labels):
            raise fail(f"{where}: a label is repeated in {labels}")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 < weight <= MAX_WEIGHT:
            shown = repr(weight) if not isinstance(weight, int) or weight < 10**15 else f"an integer of {len(str(weight))} digits"
            raise fail(f"{where}: 'weight' must be a number > 0 and at most {MAX_WEIGHT:g}, got {shown}")
        recipes.append(Recipe(tuple(sorted(vocabulary.index(label) + 1 for label in labels)), float(weight)))
    real_fraction = document.get("real_fraction")
    if real_fraction is not None and (
        isinstance(real_fraction, bool) or not isinstance(real_fraction, (int, float)) or not 0 <= real_fraction <= 1
    ):
        raise fail(f"'real_fraction' must be a number from 0 to 1, got {real_fraction!r}")
    return Cooccurrence(source, subset, tuple(recipes), float(strength), None if real_fraction is None else float(real_fraction))


def label_statistics(label_ids: Iterable[Iterable[int]], labels: tuple[str, ...], recipes: Iterable[Recipe] = ()) -> dict[str, Any]:
    """What the label process produced: images, fakes, positives per label, P(j | i) over the images,
    and the share of fake images whose label set is one of ``recipes``.

    ``label_ids`` are release labels (manipulation ids in order, zero-padded).
    """
    step_sets = [frozenset(steps_of(tuple(ids))) for ids in label_ids]
    targets = np.zeros((len(step_sets), len(labels)), np.int64)
    for row, steps in enumerate(step_sets):
        targets[row, [step - 1 for step in steps]] = 1
    counts, cooccurrence = count_cooccurrence(targets)
    conditional = conditional_probabilities(cooccurrence, counts)
    recipe_sets = {frozenset(recipe.steps) for recipe in recipes}
    fakes = [steps for steps in step_sets if steps]
    return {
        "images": len(step_sets),
        "fake_images": len(fakes),
        "positives": {label: int(count) for label, count in zip(labels, counts)},
        "fakes_from_a_recipe_set": round(sum(steps in recipe_sets for steps in fakes) / len(fakes), 6) if fakes else 0.0,
        "p_j_given_i": {
            label: {other: round(float(conditional[i, j]), 4) for j, other in enumerate(labels) if j != i} for i, label in enumerate(labels)
        },
    }
