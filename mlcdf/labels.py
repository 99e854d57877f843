"""Label vocabularies of Seq-DeepFake, conversions between id lists, sequences and multi-hot vectors, and
label statistics (how often labels occur and co-occur).

The release annotates each image with a list of 5 manipulation ids in the order applied, zero-padded on
the right (``"[1, 2, 4, 0, 0]"``); id 0 means "no manipulation". Ids 1..5 index the subset's vocabulary.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from mlcdf.errors import MlcdfError

#: Vocabularies in id order (id 1 is the first name).
SUBSETS: dict[str, tuple[str, ...]] = {
    "facial_components": ("nose", "eye", "eyebrow", "lip", "hair"),
    "facial_attributes": ("Bangs", "Eyeglasses", "Beard", "Smiling", "Young"),
}

#: Length of every label list in the release.
MAX_STEPS = 5

#: Folder name of unmanipulated images in the release.
REAL_FOLDER = "original"

SEQUENCE_SEPARATOR = "-"

_LABEL_RE = re.compile(r"^\s*\[([^\[\]]*)\]\s*$")


def vocabulary(subset: str) -> tuple[str, ...]:
    """Label names of ``subset`` in id order."""
    try:
        return SUBSETS[subset]
    except KeyError:
        raise ValueError(f"unknown subset {subset!r}; expected one of {', '.join(SUBSETS)}") from None


def parse_label_ids(text: str, num_labels: int = MAX_STEPS) -> tuple[int, ...]:
    """Parse and validate a release label cell such as ``"[1, 2, 4, 0, 0]"``.

    Raises:
        ValueError: the text is not a list of ``MAX_STEPS`` integers, an id is outside
            ``0..num_labels``, an id repeats, or a non-zero id follows a zero.
    """
    match = _LABEL_RE.match(text)
    if match is None:
        raise ValueError(f'label {text!r} is not a list like "[1, 2, 0, 0, 0]"')
    items = [item.strip() for item in match.group(1).split(",")] if match.group(1).strip() else []
    if len(items) != MAX_STEPS:
        raise ValueError(f"label {text!r} has {len(items)} entries, expected {MAX_STEPS}")
    ids = []
    for item in items:
        if not re.fullmatch(r"[+-]?\d+", item):
            raise ValueError(f"label {text!r} has a non-integer entry {item!r}")
        ids.append(int(item))
    for value in ids:
        if not 0 <= value <= num_labels:
            raise ValueError(f"label {text!r} has id {value} outside 0..{num_labels}")
    steps = [value for value in ids if value != 0]
    if len(set(steps)) != len(steps):
        raise ValueError(f"label {text!r} repeats a manipulation id")
    first_zero = ids.index(0) if 0 in ids else len(ids)
    if any(value != 0 for value in ids[first_zero:]):
        raise ValueError(f"label {text!r} has a non-zero id after a zero")
    return tuple(ids)


def format_label_ids(ids: Sequence[int]) -> str:
    """Write ids the way the release does: ``"[1, 2, 4, 0, 0]"`` (padded to ``MAX_STEPS``)."""
    padded = list(ids) + [0] * (MAX_STEPS - len(ids))
    return "[" + ", ".join(str(int(value)) for value in padded) + "]"


def steps_of(ids: Sequence[int]) -> tuple[int, ...]:
    """The non-zero ids, in the order applied."""
    return tuple(int(value) for value in ids if value != 0)


def step_name(step: int, vocab: Sequence[str]) -> str:
    """The name of step id ``step`` (1..C); another id, which a sequence model's decoder can emit (its PAD
    token before any EOS), is written ``#<id>``."""
    return vocab[step - 1] if 1 <= step <= len(vocab) else f"#{step}"


def ids_to_sequence(ids: Sequence[int], vocab: Sequence[str]) -> str:
    """``[1, 3, 0, 0, 0]`` -> ``"nose-eyebrow"``; real images give ``""``; an id outside 1..C is ``#<id>``
    (:func:`step_name`)."""
    return SEQUENCE_SEPARATOR.join(step_name(value, vocab) for value in steps_of(ids))


def sequence_to_ids(sequence: str, vocab: Sequence[str]) -> tuple[int, ...]:
    """``"nose-eyebrow"`` -> ``(1, 3, 0, 0, 0)`` (case-insensitive); ``""`` gives all zeros.

    Raises:
        ValueError: a step name is not in ``vocab``.
    """
    lookup = {name.lower(): index + 1 for index, name in enumerate(vocab)}
    ids = []
    for name in filter(None, sequence.split(SEQUENCE_SEPARATOR)):
        if name.lower() not in lookup:
            raise ValueError(f"{name!r} is not one of {', '.join(vocab)}")
        ids.append(lookup[name.lower()])
    return tuple(ids + [0] * (MAX_STEPS - len(ids)))


def sequence_steps(sequence: str, labels: Sequence[str]) -> tuple[int, ...]:
    """A prepared ``sequence`` cell -> its step ids in order: ``"nose-lip"`` -> ``(1, 4)``, ``""`` -> ``()``.

    Names are matched exactly, as the prepared contract writes them; any vocabulary size works.

    Raises:
        MlcdfError: a step that is not one of ``labels``, or more steps than labels.
    """
    lookup = {name: index + 1 for index, name in enumerate(labels)}
    steps = sequence.split(SEQUENCE_SEPARATOR) if sequence else []
    unknown = [step for step in steps if step not in lookup]
    if unknown:
        raise MlcdfError(f"sequence {sequence!r} has step(s) {unknown} that are not labels ({', '.join(labels)})")
    if len(steps) > len(labels):
        raise MlcdfError(f"sequence {sequence!r} has {len(steps)} steps; a sequence takes at most {len(labels)}")
    return tuple(lookup[step] for step in steps)


def sequences_to_ids(sequences: Sequence[str], labels: Sequence[str]) -> np.ndarray:
    """Prepared ``sequence`` cells -> (N, C) step ids in order, 0-padded (``"eye-nose"`` -> ``[2, 1, 0, 0, 0]``),
    as :func:`mlcdf.metrics.fixed_accuracy` takes them.

    Raises:
        MlcdfError: as :func:`sequence_steps`.
    """
    ids = np.zeros((len(sequences), len(labels)), dtype=np.int64)
    for row, sequence in zip(ids, sequences):
        steps = sequence_steps(sequence, labels)
        row[: len(steps)] = steps
    return ids


def ids_to_multihot(ids: Sequence[int], num_labels: int) -> np.ndarray:
    """Multi-hot vector: ``y[id - 1] = 1`` for every non-zero id; real images are all zeros."""
    target = np.zeros(num_labels, dtype=np.uint8)
    for value in steps_of(ids):
        target[value - 1] = 1
    return target


def count_cooccurrence(targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Count labels and label pairs over a multi-hot target matrix.

    Args:
        targets: (N, C) 0/1 array, one row per image.

    Returns:
        ``(label_counts, cooccurrence)``: (C,) images carrying each label, and (C, C) images carrying
        both labels, with a zero diagonal (a label does not co-occur with itself).
    """
    targets = np.asarray(targets)
    if targets.ndim != 2:
        raise ValueError(f"targets must be (n_images, n_labels), got shape {targets.shape}")
    multi_hot = (targets != 0).astype(np.int64)
    cooccurrence = multi_hot.T @ multi_hot
    label_counts = np.diag(cooccurrence).copy()
    np.fill_diagonal(cooccurrence, 0)
    return label_counts, cooccurrence


def conditional_probabilities(cooccurrence: np.ndarray, label_counts: np.ndarray) -> np.ndarray:
    """P(j | i) = cooccurrence[i, j] / label_counts[i]; a row is zero where label i has no images."""
    counts = np.asarray(label_counts, dtype=np.float64)
    cooccurrence = np.asarray(cooccurrence, dtype=np.float64)
    safe = np.where(counts > 0, counts, 1.0)[:, None]
    return np.where(counts[:, None] > 0, cooccurrence / safe, 0.0)
