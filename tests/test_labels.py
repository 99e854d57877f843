import numpy as np
import pytest

from mlcdf.labels import (
    format_label_ids,
    ids_to_multihot,
    ids_to_sequence,
    parse_label_ids,
    sequence_to_ids,
    vocabulary,
)


def test_parse_and_format_round_trip():
    assert parse_label_ids("[1, 2, 4, 0, 0]") == (1, 2, 4, 0, 0)
    assert parse_label_ids(" [5,4,3,2,1] ") == (5, 4, 3, 2, 1)
    assert format_label_ids((1, 2, 4)) == "[1, 2, 4, 0, 0]"


@pytest.mark.parametrize(
    "text, reason",
    [
        ("1, 2, 0, 0, 0", "is not a list"),
        ("[1, 2, 0, 0]", "has 4 entries"),
        ("[1, 2, 0, 0, 0, 0]", "has 6 entries"),
        ("[1, x, 0, 0, 0]", "non-integer"),
        ("[1, 6, 0, 0, 0]", "outside 0..5"),
        ("[1, -1, 0, 0, 0]", "outside 0..5"),
        ("[1, 1, 0, 0, 0]", "repeats"),
        ("[1, 0, 2, 0, 0]", "after a zero"),
    ],
)
def test_parse_rejects(text, reason):
    with pytest.raises(ValueError, match=reason):
        parse_label_ids(text)


def test_multihot_ignores_order_and_padding():
    np.testing.assert_array_equal(ids_to_multihot((4, 1, 0, 0, 0), 5), [1, 0, 0, 1, 0])
    np.testing.assert_array_equal(ids_to_multihot((0, 0, 0, 0, 0), 5), [0, 0, 0, 0, 0])
    assert ids_to_multihot((1, 2, 3, 4, 5), 5).dtype == np.uint8


def test_sequences():
    vocab = vocabulary("facial_attributes")
    assert ids_to_sequence((1, 2, 4, 0, 0), vocab) == "Bangs-Eyeglasses-Smiling"
    assert ids_to_sequence((0, 0, 0, 0, 0), vocab) == ""
    assert sequence_to_ids("bangs-Eyeglasses", vocab) == (1, 2, 0, 0, 0)
    with pytest.raises(ValueError, match="'glasses' is not one of"):
        sequence_to_ids("glasses", vocab)
    with pytest.raises(ValueError, match="unknown subset"):
        vocabulary("faces")
