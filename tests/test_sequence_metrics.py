"""Seq-DeepFake's Fixed-Acc and Adaptive-Acc against a transcription of the authors' accumulation.

The reference is ``evalute_transformer`` in ``test.py`` of github.com/rshaojimmy/SeqDeepFake (Shao et al.,
ECCV 2022). It runs one image at a time and, after decoding, accumulates:

- fixed: ``running_corrects += sum(caption == labels)``; ``epoch_size += 1 * L``;
- adaptive: ``cmp_len = max(#nonzero(labels), #nonzero(caption))``; if ``cmp_len == 0`` one correct out
  of one, else ``sum(caption[:cmp_len] == labels[:cmp_len])`` out of ``cmp_len``;

and reports ``100 * running_corrects / epoch_size``. The loops below restate that in our words, row by
row, with plain Python, so that they share nothing with the vectorised functions under test.
"""

import numpy as np
import pytest

from mlcdf.metrics import adaptive_accuracy, fixed_accuracy


def authors_fixed(true, pred):
    corrects, size = 0, 0
    for labels, caption in zip(np.asarray(true).tolist(), np.asarray(pred).tolist()):
        corrects += sum(1 for a, b in zip(caption, labels) if a == b)
        size += len(labels)
    return 100.0 * corrects / size


def authors_adaptive(true, pred):
    corrects, size = 0, 0
    for labels, caption in zip(np.asarray(true).tolist(), np.asarray(pred).tolist()):
        cmp_len = max(len([v for v in labels if v > 0]), len([v for v in caption if v > 0]))
        if cmp_len == 0:
            corrects += 1
            cmp_len = 1
        else:
            corrects += sum(1 for a, b in zip(caption[:cmp_len], labels[:cmp_len]) if a == b)
        size += cmp_len
    return 100.0 * corrects / size


def release_like(rng, n, length, num_labels, zero_inside=0.0):
    """Rows as in the release's lists: k distinct ids then zeros; optionally zeros dropped inside."""
    rows = np.zeros((n, length), dtype=np.int64)
    for i in range(n):
        k = rng.integers(0, min(length, num_labels) + 1)
        rows[i, :k] = rng.choice(np.arange(1, num_labels + 1), size=k, replace=False)
        if zero_inside and rng.random() < zero_inside:
            rows[i, rng.integers(0, length)] = 0
    return rows


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("shape", [(1, 1), (1, 5), (7, 1), (13, 5), (50, 3), (200, 5), (31, 8)])
def test_equal_the_authors_accumulation_on_random_arrays(seed, shape):
    rng = np.random.default_rng(seed)
    n, length = shape
    num_labels = int(rng.integers(1, 9))
    true = release_like(rng, n, length, num_labels)
    # Predictions of every kind: release-like, with zeros inside, and unconstrained ids (repeats, any order).
    for pred in (
        release_like(rng, n, length, num_labels, zero_inside=0.5),
        rng.integers(0, num_labels + 1, size=(n, length)),
        true.copy(),
    ):
        assert fixed_accuracy(true, pred) == pytest.approx(authors_fixed(true, pred), abs=1e-12)
        assert adaptive_accuracy(true, pred) == pytest.approx(authors_adaptive(true, pred), abs=1e-12)
        # Either argument may carry zeros inside.
        assert adaptive_accuracy(pred, true) == pytest.approx(authors_adaptive(pred, true), abs=1e-12)


def test_edge_cases_by_hand():
    real = [[0, 0, 0, 0, 0]]
    full = [[1, 2, 3, 4, 5]]
    # A real image predicted empty: 5/5 fixed slots, and one correct slot out of one (adaptive).
    assert fixed_accuracy(real, real) == 100.0 and adaptive_accuracy(real, real) == 100.0
    # A real image predicted with one step: fixed 4/5; adaptive compares 1 position, wrong.
    assert fixed_accuracy(real, [[3, 0, 0, 0, 0]]) == 80.0
    assert adaptive_accuracy(real, [[3, 0, 0, 0, 0]]) == 0.0
    # All real, all predicted exactly.
    assert fixed_accuracy(full, full) == 100.0 and adaptive_accuracy(full, full) == 100.0
    # A manipulated image predicted empty: the trailing zeros do not count for adaptive.
    assert fixed_accuracy([[1, 2, 0, 0, 0]], real) == 60.0
    assert adaptive_accuracy([[1, 2, 0, 0, 0]], real) == 0.0
    # Longer predicted than true: compared over the predicted length (3): 2/3.
    assert adaptive_accuracy([[1, 2, 0, 0, 0]], [[1, 2, 4, 0, 0]]) == pytest.approx(200 / 3)
    # A 0 inside the prediction: its length is 2 (non-zero entries), not 3 (the last non-zero position),
    # so only positions 0 and 1 are compared and the 4 at position 2 never is: 1/2.
    assert adaptive_accuracy([[1, 4, 0, 0, 0]], [[1, 0, 4, 0, 0]]) == 50.0
    # With a longer truth all its 3 positions are compared, the 0 inside included: 2/3.
    assert adaptive_accuracy([[1, 3, 2, 0, 0]], [[1, 0, 2, 0, 0]]) == pytest.approx(200 / 3)
    # The same order matters: a swap is wrong in both slots.
    assert fixed_accuracy([[1, 2, 0, 0, 0]], [[2, 1, 0, 0, 0]]) == 60.0
    assert adaptive_accuracy([[1, 2, 0, 0, 0]], [[2, 1, 0, 0, 0]]) == 0.0
    # Pooled over images, not averaged per image: (0 + 1) / (2 + 1).
    assert adaptive_accuracy([[1, 2, 0], [0, 0, 0]], [[2, 1, 0], [0, 0, 0]]) == pytest.approx(100 / 3)


def test_inputs_are_checked_and_kept():
    true = np.array([[1, 2, 0]])
    pred = np.array([[1, 0, 0]])
    before = (true.copy(), pred.copy())
    assert adaptive_accuracy(true, pred) == 50.0
    assert (true == before[0]).all() and (pred == before[1]).all()
    assert fixed_accuracy(true.astype(np.float64), pred) == pytest.approx(200 / 3)  # integral floats are ids
    for bad_true, bad_pred in (
        ([[1, 2]], [[1, 2, 0]]),
        ([1, 2, 0], [1, 2, 0]),
        (np.zeros((0, 5), dtype=int), np.zeros((0, 5), dtype=int)),
        ([[1, -1, 0]], [[1, 2, 0]]),
        ([[1.5, 0, 0]], [[1, 2, 0]]),
    ):
        with pytest.raises(ValueError):
            fixed_accuracy(bad_true, bad_pred)
        with pytest.raises(ValueError):
            adaptive_accuracy(bad_true, bad_pred)
