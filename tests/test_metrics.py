import doctest
import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from mlcdf import metrics
from mlcdf.metrics import (
    NoPositivesWarning,
    UndefinedMetricWarning,
    average_precision,
    average_precision_by_num_steps,
    exact_match_ratio,
    hamming_loss,
    paper_metrics,
    precision_recall_f1,
    real_fake_accuracy,
    real_fake_roc_auc,
    tune_thresholds,
)


def random_case(n=200, labels=5, seed=0):
    rng = np.random.default_rng(seed)
    y_true = (rng.random((n, labels)) < 0.4).astype(np.int64)
    y_true[:labels, :] = np.eye(labels, dtype=np.int64)  # every label has a positive
    # Scores rounded to 0.05 so that ties are common and some equal the 0.5 threshold exactly.
    y_score = np.round(np.clip(0.35 * y_true + rng.random((n, labels)) * 0.7, 0, 1) * 20) / 20
    return y_true, y_score


def test_docstring_examples():
    result = doctest.testmod(metrics, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 10 and result.failed == 0


def test_average_precision_hand_computed_with_ties():
    # Ranking: {0.8: one positive, one negative} tied, then 0.4 (positive), then 0.1 (negative).
    # The tie is one step: P=1/2 at R=1/2, then P=2/3 at R=1, so AP = 1/2*1/2 + 1/2*2/3 = 7/12.
    y_true = np.array([[1], [0], [1], [0]])
    y_score = np.array([[0.8], [0.8], [0.4], [0.1]])
    assert average_precision(y_true, y_score) == pytest.approx(7 / 12)
    # The order of tied samples in the input does not matter.
    assert average_precision(y_true[[1, 0, 2, 3]], y_score[[1, 0, 2, 3]]) == pytest.approx(7 / 12)


def test_average_precision_matches_sklearn():
    y_true, y_score = random_case()
    np.testing.assert_allclose(average_precision(y_true, y_score, average=None), skm.average_precision_score(y_true, y_score, average=None))
    assert average_precision(y_true, y_score) == pytest.approx(skm.average_precision_score(y_true, y_score, average="macro"))


@pytest.mark.parametrize("threshold", [0.5, 0.3, 0.85])
def test_precision_recall_f1_match_sklearn(threshold):
    y_true, y_score = random_case(seed=1)
    y_pred = (y_score >= threshold).astype(int)
    for average in ("macro", "micro"):
        expected = skm.precision_recall_fscore_support(y_true, y_pred, average=average, zero_division=0)[:3]
        np.testing.assert_allclose(precision_recall_f1(y_true, y_score, threshold=threshold, average=average), expected)
    per_label = precision_recall_f1(y_true, y_score, threshold=threshold, average=None)
    np.testing.assert_allclose(per_label, skm.precision_recall_fscore_support(y_true, y_pred, average=None, zero_division=0)[:3])


def test_score_equal_to_threshold_is_predicted():
    p, r, f1 = precision_recall_f1([[1], [0]], [[0.5], [0.49999]], threshold=0.5, average=None)
    assert (p[0], r[0], f1[0]) == (1.0, 1.0, 1.0)


def test_cf1_is_mean_of_label_f1_and_of1_is_harmonic_mean():
    # Label 0: TP=1, FP=0, FN=3 -> P=1, R=1/4, F1=0.4. Label 1: TP=2, FP=2, FN=0 -> P=1/2, R=1, F1=2/3.
    y_true = np.array([[1, 1], [1, 1], [1, 0], [1, 0]])
    y_score = np.array([[0.9, 0.9], [0.1, 0.9], [0.1, 0.9], [0.1, 0.9]])
    cp, cr, cf1 = precision_recall_f1(y_true, y_score)
    assert (cp, cr) == pytest.approx((0.75, 0.625))
    assert cf1 == pytest.approx((0.4 + 2 / 3) / 2)
    assert cf1 != pytest.approx(2 * cp * cr / (cp + cr))  # ML-GCN code's CF1 differs
    op, or_, of1 = precision_recall_f1(y_true, y_score, average="micro")
    assert (op, or_) == pytest.approx((3 / 5, 3 / 6))
    assert of1 == pytest.approx(2 * op * or_ / (op + or_))


def test_no_predicted_positives_gives_zero_precision_without_warning():
    y_true = np.array([[1, 0], [0, 1], [1, 1]])
    y_score = np.full((3, 2), 0.2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p, r, f1 = precision_recall_f1(y_true, y_score, average=None)
        assert precision_recall_f1(y_true, y_score, average="micro") == (0.0, 0.0, 0.0)
    np.testing.assert_array_equal(p, [0, 0])
    np.testing.assert_array_equal(r, [0, 0])
    np.testing.assert_array_equal(f1, [0, 0])


def test_label_without_positives_is_reported_and_left_out():
    y_true = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
    y_score = np.array([[0.9, 0.2, 0.7], [0.4, 0.6, 0.1], [0.3, 0.7, 0.2], [0.1, 0.8, 0.3]])
    names = ("nose", "eye", "hair")
    with pytest.warns(NoPositivesWarning, match="'hair'"):
        per_label = average_precision(y_true, y_score, average=None, labels=names)
    assert np.isnan(per_label[2]) and not np.isnan(per_label[:2]).any()
    with pytest.warns(NoPositivesWarning):
        assert average_precision(y_true, y_score) == pytest.approx(average_precision(y_true[:, :2], y_score[:, :2]))
    with pytest.warns(NoPositivesWarning, match="#2"):
        p, r, f1 = precision_recall_f1(y_true, y_score, average=None)
    assert p[2] == 0.0 and np.isnan(r[2]) and np.isnan(f1[2])
    with pytest.warns(NoPositivesWarning):
        macro = precision_recall_f1(y_true, y_score)
    np.testing.assert_allclose(macro, precision_recall_f1(y_true[:, :2], y_score[:, :2]))
    # The pooled figures keep the label's false alarm (score 0.7 on the first image).
    op, _, _ = precision_recall_f1(y_true, y_score, average="micro")
    assert op == pytest.approx(3 / 5)
    with pytest.warns(NoPositivesWarning, match="default 0.4"):
        assert tune_thresholds(y_true, y_score, default=0.4)[2] == 0.4


def test_no_positives_at_all_gives_nan_not_a_crash():
    y_true = np.zeros((3, 2), dtype=int)
    y_score = np.full((3, 2), 0.7)
    with pytest.warns(NoPositivesWarning):
        values = paper_metrics(y_true, y_score)
    assert np.isnan(values["mAP"]) and np.isnan(values["CR"]) and np.isnan(values["OR"])
    assert values["OP"] == 0.0


def test_inputs_are_not_modified_and_float32_is_accepted():
    y_true, y_score = random_case(seed=2)
    scores32 = y_score.astype(np.float32)
    true_copy, score_copy = y_true.copy(), scores32.copy()
    paper_metrics(y_true, scores32)
    tune_thresholds(y_true, scores32)
    average_precision_by_num_steps(y_true, scores32, y_true.sum(axis=1))
    np.testing.assert_array_equal(y_true, true_copy)
    np.testing.assert_array_equal(scores32, score_copy)


@pytest.mark.parametrize(
    "y_true, y_score, message",
    [
        ([[1, 0]], [[0.5, 0.5, 0.5]], "shape"),
        ([1, 0], [0.5, 0.5], "shape"),
        (np.zeros((0, 2)), np.zeros((0, 2)), "at least one"),
        ([[2, 0]], [[0.5, 0.5]], "only 0 and 1"),
        ([[1, 0]], [[np.nan, 0.5]], "finite"),
    ],
)
def test_boundary_check_rejects_bad_input(y_true, y_score, message):
    with pytest.raises(ValueError, match=message):
        average_precision(y_true, y_score)


def test_label_names_and_thresholds_must_fit_the_columns():
    with pytest.raises(ValueError, match="label names"):
        average_precision([[1, 0]], [[0.5, 0.5]], labels=("a",))
    with pytest.raises(ValueError, match="one value per label"):
        precision_recall_f1([[1, 0]], [[0.5, 0.5]], threshold=[0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match="average"):
        precision_recall_f1([[1, 0]], [[0.5, 0.5]], average="weighted")


def test_per_label_thresholds():
    y_true = np.array([[1, 0], [0, 1]])
    y_score = np.array([[0.3, 0.6], [0.2, 0.7]])
    p, r, _ = precision_recall_f1(y_true, y_score, threshold=[0.25, 0.65], average=None)
    np.testing.assert_array_equal(p, [1, 1])
    np.testing.assert_array_equal(r, [1, 1])
    assert exact_match_ratio(y_true, y_score, threshold=[0.25, 0.65]) == 1.0


def test_exact_match_and_hamming_loss_match_sklearn():
    y_true, y_score = random_case(seed=3)
    y_pred = (y_score >= 0.5).astype(int)
    assert exact_match_ratio(y_true, y_score) == pytest.approx(skm.accuracy_score(y_true, y_pred))
    assert hamming_loss(y_true, y_score) == pytest.approx(skm.hamming_loss(y_true, y_pred))


def test_real_vs_fake():
    y_true, y_score = random_case(seed=4)
    y_true[-20:] = 0  # real images
    is_fake = y_true.any(axis=1)
    assert real_fake_roc_auc(y_true, y_score) == pytest.approx(skm.roc_auc_score(is_fake, y_score.max(axis=1)))
    assert real_fake_accuracy(y_true, y_score) == pytest.approx(np.mean((y_score.max(axis=1) >= 0.5) == is_fake))
    with pytest.warns(UndefinedMetricWarning, match="all 2 images are fake"):
        assert np.isnan(real_fake_roc_auc([[1, 0], [0, 1]], [[0.9, 0.1], [0.2, 0.3]]))


def test_average_precision_by_num_steps():
    y_true = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, 1], [1, 1, 1], [0, 0, 0]])
    y_score = np.array(
        [[0.9, 0.1, 0.2], [0.2, 0.8, 0.6], [0.1, 0.3, 0.7], [0.8, 0.9, 0.6], [0.7, 0.6, 0.5], [0.5, 0.5, 0.5], [0.9, 0.9, 0.9]]
    )
    steps = y_true.sum(axis=1)
    result = average_precision_by_num_steps(y_true, y_score, steps)
    assert list(result) == [1, 2, 3]
    # One step: each label is present in one of the three images and absent from the other two.
    assert result[1] == pytest.approx(average_precision(y_true[:3], y_score[:3]))
    # Two steps: label 1 is in both images (AP 1 by construction), so only labels 0 and 2 count:
    # label 0 is ranked right (AP 1), label 2's negative outscores its positive (AP 1/2).
    assert result[2] == pytest.approx(0.75)
    assert np.isnan(result[3])  # all labels present: nothing to rank
    with pytest.raises(ValueError, match="num_steps"):
        average_precision_by_num_steps(y_true, y_score, steps[:-1])


def test_tune_thresholds_maximises_f1_on_the_tuning_data():
    y_true, y_score = random_case(seed=5)
    tuned = tune_thresholds(y_true, y_score)
    assert tuned.shape == (5,)
    tuned_f1 = precision_recall_f1(y_true, y_score, threshold=tuned, average=None)[2]
    for candidate in np.unique(y_score):
        assert (tuned_f1 >= precision_recall_f1(y_true, y_score, threshold=candidate, average=None)[2] - 1e-12).all()


def test_tune_thresholds_ties_go_to_the_lowest_threshold():
    # Thresholds 0.8 (P=1, R=1/2) and 0.2 (P=1/2, R=1) both give the best F1, 2/3.
    assert tune_thresholds([[1], [0], [0], [1]], [[0.8], [0.6], [0.4], [0.2]])[0] == 0.2
