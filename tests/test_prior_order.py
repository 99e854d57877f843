"""The set + prior order decoder, by hand on a toy table."""

import numpy as np
import pytest

from mlcdf.errors import MlcdfError
from mlcdf.tasks.prior_order import estimate_prior_orders, order_sets

LABELS = ("a", "b", "c", "d")


def test_most_frequent_order_per_set_by_hand():
    train = ["b-a", "b-a", "a-b", "", "c", "a-c", "c-a", "a-b-c", "c-b-a", "c-b-a"]
    prior = estimate_prior_orders(train, LABELS)
    # {a, b}: b-a twice beats a-b once. {a, c}: a-c and c-a once each: the smaller id sequence, a-c.
    assert prior["orders"] == {"1-2": [2, 1], "1-3": [1, 3], "3": [3], "1-2-3": [3, 2, 1]}
    # Mean positions: a at 2,2,1,1,2,1,3,3 -> 15/8; b at 1,1,2,2,2,2 -> 10/6; c at 1,2,1,3,1,1 -> 9/6; d never -> 5.
    np.testing.assert_allclose(prior["mean_position"], [15 / 8, 10 / 6, 9 / 6, 5])
    sets = np.array([[1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 1, 0], [0, 1, 1, 0], [1, 0, 0, 1], [0, 0, 0, 1]])
    expected = [
        [2, 1, 0, 0],  # seen: b-a
        [1, 3, 0, 0],  # seen, tie broken: a-c
        [0, 0, 0, 0],  # real
        [3, 2, 1, 0],  # seen: c-b-a (twice) beats a-b-c
        [3, 2, 0, 0],  # unseen {b, c}: by mean position, c (1.5) before b (1.67)
        [1, 4, 0, 0],  # unseen {a, d}: d was never seen, so it goes last
        [4, 0, 0, 0],
    ]
    np.testing.assert_array_equal(order_sets(sets, prior), expected)


def test_the_prior_is_json_ready_and_checked():
    import json

    prior = estimate_prior_orders(["a-b"], LABELS)
    assert json.loads(json.dumps(prior)) == prior
    with pytest.raises(MlcdfError):
        order_sets(np.ones((2, 3)), prior)
    with pytest.raises(MlcdfError):
        estimate_prior_orders(["a-x"], LABELS)
