"""Multi-label metrics for manipulation labels: pure functions over numpy arrays.

Conventions, as in :mod:`sklearn.metrics`:

- Arguments come as ``(y_true, y_score, *, ...)``. ``y_true`` holds 0/1 targets of shape
  (n_samples, n_labels); ``y_score`` holds real scores of the same shape (probabilities wherever a
  threshold is involved).
- A label is *predicted* for a sample when ``y_score >= threshold``. ``threshold`` is a scalar, or one
  value per label (see :func:`tune_thresholds`).
- Results are fractions in [0, 1] (Python floats, or float64 arrays per label). Percentages appear only
  in reports and ``metrics.json``. ``*_score``, precision, recall, F1 and accuracy are higher-is-better;
  ``*_loss`` is lower-is-better.
- Inputs are never modified. Everything is computed in float64.
- A label without positive samples has no recall and no average precision. Such a label gets NaN in
  per-label arrays, is left out of every per-class mean (mAP, CP, CR, CF1), and is named in a
  :class:`NoPositivesWarning`. A label with no *predicted* positives has precision 0, which is the
  convention behind the published figures; it is not a warning.

Published multi-label code disagrees on these definitions (for example, ML-GCN's code takes CF1 as the
harmonic mean of CP and CR). The formulas are stated in each docstring. CF1 here is the mean of the
per-label F1 scores, which is the convention the paper's figures follow.

Seq-DeepFake's sequence metrics, :func:`fixed_accuracy` and :func:`adaptive_accuracy`, take (N, L)
integer id arrays instead and return percentages, as the authors' code and their published figures do.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Literal, overload

import numpy as np
from numpy.typing import ArrayLike
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

__all__ = [
    "NoPositivesWarning",
    "UndefinedMetricWarning",
    "adaptive_accuracy",
    "average_precision",
    "average_precision_by_num_steps",
    "exact_match_ratio",
    "fixed_accuracy",
    "hamming_loss",
    "paper_metrics",
    "per_label_thresholds",
    "precision_recall_f1",
    "real_fake_accuracy",
    "real_fake_roc_auc",
    "tune_thresholds",
]


class UndefinedMetricWarning(UserWarning):
    """A metric is undefined for the data given (for example, a single class is present)."""


class NoPositivesWarning(UndefinedMetricWarning):
    """A label has no positive sample: its recall and AP are undefined and it is left out of the means."""


def _check_multilabel(y_true: ArrayLike, y_score: ArrayLike, *, labels: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The single boundary check of this module: return ``(y_true, y_score)`` as int64 and float64 arrays.

    The returned arrays may share memory with the inputs. Callers only read them.

    Raises:
        ValueError: the shapes differ or are not (n_samples, n_labels) with at least one sample and
            one label; ``y_true`` holds a value other than 0 and 1; ``y_score`` holds NaN or infinity;
            ``labels`` does not name every column.
    """
    true = np.asarray(y_true)
    score = np.asarray(y_score, dtype=np.float64)
    if true.ndim != 2 or score.shape != true.shape:
        raise ValueError(f"y_true and y_score must both have shape (n_samples, n_labels); got {true.shape} and {score.shape}")
    if true.size == 0:
        raise ValueError(f"need at least one sample and one label; got shape {true.shape}")
    values = np.unique(true)
    if not np.isin(values, (0, 1)).all():
        raise ValueError(f"y_true must hold only 0 and 1; got values {values[:10].tolist()}")
    bad = np.argwhere(~np.isfinite(score))
    if len(bad):
        row, column = bad[0]
        raise ValueError(
            f"y_score must be finite; got {len(bad)} non-finite value(s), the first {score[row, column]} at sample {row}, label {column}"
        )
    if labels is not None and len(labels) != true.shape[1]:
        raise ValueError(f"got {len(labels)} label names {list(labels)} for {true.shape[1]} label columns")
    return true.astype(np.int64), score


def per_label_thresholds(threshold: float | Sequence[float] | np.ndarray, n_labels: int) -> np.ndarray:
    """``threshold`` as one float64 value per label (a scalar is repeated).

    Raises:
        ValueError: it is neither a scalar nor of length ``n_labels``, or it is not finite.
    """
    values = np.asarray(threshold, dtype=np.float64)
    if values.ndim == 0:
        values = np.full(n_labels, float(values))
    if values.shape != (n_labels,):
        raise ValueError(f"threshold must be a scalar or have one value per label ({n_labels}); got shape {values.shape}")
    if not np.isfinite(values).all():
        raise ValueError(f"threshold must be finite; got {values.tolist()}")
    return values


def _predict(y_score: np.ndarray, threshold: float | Sequence[float] | np.ndarray) -> np.ndarray:
    """Predicted labels: ``y_score >= threshold``, per label."""
    return y_score >= per_label_thresholds(threshold, y_score.shape[1])


def _label_name(index: int, labels: Sequence[str] | None) -> str:
    return repr(labels[index]) if labels is not None else f"#{index}"


def _warn_no_positives(no_positives: np.ndarray, labels: Sequence[str] | None, consequence: str, *, stacklevel: int = 3) -> None:
    """One :class:`NoPositivesWarning` naming every label flagged in ``no_positives``.

    The default ``stacklevel`` points at the caller of the public metric that calls this.
    """
    if no_positives.any():
        names = ", ".join(_label_name(int(j), labels) for j in np.flatnonzero(no_positives))
        warnings.warn(f"label(s) {names} have no positive samples; {consequence}", NoPositivesWarning, stacklevel=stacklevel)


def _per_label(
    binary_metric: Callable[[np.ndarray, np.ndarray], float],
    y_true: np.ndarray,
    y_score: np.ndarray,
    *,
    labels: Sequence[str] | None,
    consequence: str,
) -> np.ndarray:
    """``binary_metric(y_true[:, j], y_score[:, j])`` for each label ``j``.

    A label without positives gets NaN instead, and all of them are named in one warning.
    """
    has_positives = np.asarray(y_true.any(axis=0))
    _warn_no_positives(~has_positives, labels, consequence, stacklevel=4)
    return np.array(
        [binary_metric(y_true[:, j], y_score[:, j]) if has_positives[j] else np.nan for j in range(y_true.shape[1])],
        dtype=np.float64,
    )


def _macro(per_label: np.ndarray) -> float:
    """Mean over the labels where the metric is defined (not NaN); NaN when it is defined for none."""
    defined = per_label[~np.isnan(per_label)]
    return float(defined.mean()) if defined.size else float("nan")


def _validate_average(average: str | None, allowed: tuple[str | None, ...]) -> None:
    if average not in allowed:
        raise ValueError(f"average must be one of {allowed}; got {average!r}")


@overload
def average_precision(
    y_true: ArrayLike, y_score: ArrayLike, *, average: Literal["macro"] = ..., labels: Sequence[str] | None = ...
) -> float: ...


@overload
def average_precision(y_true: ArrayLike, y_score: ArrayLike, *, average: None, labels: Sequence[str] | None = ...) -> np.ndarray: ...


def average_precision(
    y_true: ArrayLike, y_score: ArrayLike, *, average: Literal["macro"] | None = "macro", labels: Sequence[str] | None = None
) -> float | np.ndarray:
    """Average precision per label and its mean over labels (mAP).

    For one label, with the samples ranked by decreasing score, AP is computed by
    :func:`sklearn.metrics.average_precision_score`::

        AP = sum_n (R_n - R_{n-1}) * P_n

    where ``P_n`` and ``R_n`` are the precision and recall when every sample scoring at least the
    n-th distinct score is predicted positive. Tied scores form one step: they enter the ranking
    together, so their order in the input does not matter. ``mAP = mean_j AP_j``.

    Args:
        y_true: 0/1 targets, shape (n_samples, n_labels).
        y_score: scores, shape (n_samples, n_labels). Only their order within each label matters.
        average: ``"macro"`` gives the mAP as a float; ``None`` gives the AP of each label.
        labels: label names, used only in warnings.

    Returns:
        The mAP as a float in [0, 1], or a float64 array of shape (n_labels,). A label without positive
        samples has no AP: it gets NaN and is left out of the mean, with a :class:`NoPositivesWarning`.
        The mAP is NaN when no label has a positive.

    Examples:
        >>> y_true = [[1, 0], [0, 1], [1, 1], [0, 0]]
        >>> y_score = [[0.9, 0.2], [0.4, 0.6], [0.3, 0.7], [0.1, 0.8]]
        >>> average_precision(y_true, y_score, average=None).round(4)
        array([0.8333, 0.5833])
        >>> round(average_precision(y_true, y_score), 4)
        0.7083
    """
    _validate_average(average, ("macro", None))
    y_true, y_score = _check_multilabel(y_true, y_score, labels=labels)
    per_label = _per_label(
        average_precision_score,
        y_true,
        y_score,
        labels=labels,
        consequence="their AP is undefined and left out of the mAP",
    )
    return per_label if average is None else _macro(per_label)


def _divide(numerator: np.ndarray, denominator: np.ndarray, *, zero: float) -> np.ndarray:
    """``numerator / denominator`` elementwise, with ``zero`` where the denominator is 0."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    result = np.full(np.broadcast(numerator, denominator).shape, zero, dtype=np.float64)
    np.divide(numerator, denominator, out=result, where=denominator != 0)
    return result


def _precision_recall_f1_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # No predicted positives: precision 0 (the published convention). No positives: recall undefined.
    precision = _divide(tp, tp + fp, zero=0.0)
    recall = _divide(tp, tp + fn, zero=np.nan)
    # F1 = 2PR / (P + R) = 2TP / (2TP + FP + FN), which is 0 when P = R = 0 and NaN with the recall.
    f1 = np.where(np.isnan(recall), np.nan, _divide(2 * precision * recall, precision + recall, zero=0.0))
    return precision, recall, f1


Threshold = float | Sequence[float] | np.ndarray


@overload
def precision_recall_f1(
    y_true: ArrayLike,
    y_score: ArrayLike,
    *,
    threshold: Threshold = ...,
    average: Literal["macro", "micro"] = ...,
    labels: Sequence[str] | None = ...,
) -> tuple[float, float, float]: ...


@overload
def precision_recall_f1(
    y_true: ArrayLike, y_score: ArrayLike, *, threshold: Threshold = ..., average: None, labels: Sequence[str] | None = ...
) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...


def precision_recall_f1(
    y_true: ArrayLike,
    y_score: ArrayLike,
    *,
    threshold: Threshold = 0.5,
    average: Literal["macro", "micro"] | None = "macro",
    labels: Sequence[str] | None = None,
) -> tuple[float, float, float] | tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and F1 at a threshold: per class (CP, CR, CF1) or overall (OP, OR, OF1).

    A label is predicted when ``y_score >= threshold``. With ``TP_j``, ``FP_j`` and ``FN_j`` counted over
    the samples for label ``j``::

        P_j  = TP_j / (TP_j + FP_j)          (0 when the label is never predicted)
        R_j  = TP_j / (TP_j + FN_j)          (undefined when the label has no positives)
        F1_j = 2 P_j R_j / (P_j + R_j)       (0 when P_j = R_j = 0)

        average="macro":  CP = mean_j P_j,  CR = mean_j R_j,  CF1 = mean_j F1_j
        average="micro":  OP = sum TP / sum (TP + FP),  OR = sum TP / sum (TP + FN),
                          OF1 = 2 OP OR / (OP + OR)

    Both averages are scikit-learn's ``precision_recall_fscore_support`` with ``zero_division=0`` when
    every label has positives. CF1 is the mean of the per-label F1 scores, not the harmonic mean of CP
    and CR.

    Args:
        y_true: 0/1 targets, shape (n_samples, n_labels).
        y_score: probabilities, shape (n_samples, n_labels).
        threshold: a scalar, or one value per label.
        average: ``"macro"`` (CP, CR, CF1), ``"micro"`` (OP, OR, OF1), or ``None`` for per-label arrays.
        labels: label names, used only in warnings.

    Returns:
        ``(precision, recall, f1)`` as floats in [0, 1], or float64 arrays of shape (n_labels,) when
        ``average`` is None. A label without positives has a precision but a NaN recall and F1. It is
        left out of the macro means, with a :class:`NoPositivesWarning`. OR and OF1 are NaN when no
        label has a positive.

    Examples:
        >>> y_true = [[1, 0], [0, 1], [1, 1], [0, 0]]
        >>> y_score = [[0.9, 0.2], [0.4, 0.6], [0.3, 0.7], [0.1, 0.8]]
        >>> [round(v, 4) for v in precision_recall_f1(y_true, y_score)]
        [0.8333, 0.75, 0.7333]
        >>> [round(v, 4) for v in precision_recall_f1(y_true, y_score, average="micro")]
        [0.75, 0.75, 0.75]
        >>> precision_recall_f1(y_true, y_score, threshold=0.95, average=None)[0]  # nothing predicted
        array([0., 0.])
    """
    _validate_average(average, ("macro", "micro", None))
    y_true, y_score = _check_multilabel(y_true, y_score, labels=labels)
    y_pred = _predict(y_score, threshold)
    positive = y_true == 1
    tp = (y_pred & positive).sum(axis=0)
    fp = (y_pred & ~positive).sum(axis=0)
    fn = (~y_pred & positive).sum(axis=0)
    if average == "micro":
        if not positive.any():
            warnings.warn("no label has a positive sample; OR and OF1 are undefined", NoPositivesWarning, stacklevel=2)
        precision, recall, f1 = _precision_recall_f1_from_counts(tp.sum(), fp.sum(), fn.sum())
        return float(precision), float(recall), float(f1)
    _warn_no_positives(tp + fn == 0, labels, "their recall and F1 are undefined and left out of CP, CR and CF1")
    precision, recall, f1 = _precision_recall_f1_from_counts(tp, fp, fn)
    if average is None:
        return precision, recall, f1
    # A label without positives has a precision but no recall, so it is dropped from all three means:
    # CP, CR and CF1 then average over the same labels, as the mAP does.
    defined = ~np.isnan(recall)
    return _macro(np.where(defined, precision, np.nan)), _macro(recall), _macro(f1)


def paper_metrics(
    y_true: ArrayLike,
    y_score: ArrayLike,
    *,
    threshold: float | Sequence[float] | np.ndarray = 0.5,
    labels: Sequence[str] | None = None,
) -> dict[str, float]:
    """The seven figures of the paper's tables: mAP, CP, CR, CF1, OP, OR, OF1 (fractions in [0, 1]).

    See :func:`average_precision` (mAP) and :func:`precision_recall_f1` (the rest, at ``threshold``)
    for the definitions.

    Examples:
        >>> y_true = [[1, 0], [0, 1], [1, 1], [0, 0]]
        >>> y_score = [[0.9, 0.2], [0.4, 0.6], [0.3, 0.7], [0.1, 0.8]]
        >>> {name: round(value, 3) for name, value in paper_metrics(y_true, y_score).items()}
        {'mAP': 0.708, 'CP': 0.833, 'CR': 0.75, 'CF1': 0.733, 'OP': 0.75, 'OR': 0.75, 'OF1': 0.75}
    """
    cp, cr, cf1 = precision_recall_f1(y_true, y_score, threshold=threshold, average="macro", labels=labels)
    op, or_, of1 = precision_recall_f1(y_true, y_score, threshold=threshold, average="micro", labels=labels)
    return {
        "mAP": average_precision(y_true, y_score, labels=labels),
        "CP": cp,
        "CR": cr,
        "CF1": cf1,
        "OP": op,
        "OR": or_,
        "OF1": of1,
    }


def exact_match_ratio(y_true: ArrayLike, y_score: ArrayLike, *, threshold: float | Sequence[float] | np.ndarray = 0.5) -> float:
    """Fraction of samples whose predicted label set equals the true set (subset accuracy).

    ``EMR = (1/n) sum_i [ yhat_i == y_i ]``, where ``yhat_ij = y_score_ij >= threshold_j``. It is 1 only
    when every manipulation is found and none is invented. A real image counts as a match when no label
    is predicted.

    Examples:
        >>> exact_match_ratio([[1, 0], [0, 1], [0, 0]], [[0.9, 0.2], [0.6, 0.7], [0.1, 0.3]])
        0.6666666666666666
    """
    y_true, y_score = _check_multilabel(y_true, y_score)
    return float((_predict(y_score, threshold) == (y_true == 1)).all(axis=1).mean())


def hamming_loss(y_true: ArrayLike, y_score: ArrayLike, *, threshold: float | Sequence[float] | np.ndarray = 0.5) -> float:
    """Fraction of wrong (sample, label) decisions.

    ``HL = (1 / (n L)) sum_ij [ yhat_ij != y_ij ]`` for n samples and L labels, where
    ``yhat_ij = y_score_ij >= threshold_j``. This is :func:`sklearn.metrics.hamming_loss` on the
    thresholded scores.

    Examples:
        >>> hamming_loss([[1, 0], [0, 1], [0, 0]], [[0.9, 0.2], [0.6, 0.7], [0.1, 0.3]])
        0.16666666666666666
    """
    y_true, y_score = _check_multilabel(y_true, y_score)
    return float((_predict(y_score, threshold) != (y_true == 1)).mean())


def real_fake_roc_auc(y_true: ArrayLike, y_score: ArrayLike) -> float:
    """ROC-AUC of real-versus-fake detection derived from the label scores.

    An image is fake when it carries any label (``is_fake_i = max_j y_ij``). Its fake score is its
    highest label probability (``s_i = max_j y_score_ij``). The result is
    :func:`sklearn.metrics.roc_auc_score` of ``(is_fake, s)``: the probability that a random fake
    image scores above a random real one, with ties counted as one half.

    Returns:
        A float in [0, 1]. It is NaN, with an :class:`UndefinedMetricWarning`, when the images are all
        real or all fake.

    Examples:
        >>> real_fake_roc_auc([[1, 0], [0, 1], [0, 0], [0, 0]], [[0.9, 0.2], [0.3, 0.4], [0.1, 0.4], [0.2, 0.1]])
        0.875
    """
    y_true, y_score = _check_multilabel(y_true, y_score)
    is_fake = np.asarray(y_true.any(axis=1))
    if is_fake.all() or not is_fake.any():
        warnings.warn(
            f"real-vs-fake ROC-AUC is undefined: all {len(is_fake)} images are {'fake' if is_fake.all() else 'real'}",
            UndefinedMetricWarning,
            stacklevel=2,
        )
        return float("nan")
    return float(roc_auc_score(is_fake, y_score.max(axis=1)))


def real_fake_accuracy(y_true: ArrayLike, y_score: ArrayLike, *, threshold: float | Sequence[float] | np.ndarray = 0.5) -> float:
    """Accuracy of real-versus-fake detection derived from the label decisions.

    An image is predicted fake when any label is predicted (``y_score_ij >= threshold_j`` for some j).
    With a scalar threshold this is the same as ``max_j y_score_ij >= threshold``. It is true fake when it
    carries any label. The result is the fraction of images where the two agree.

    Examples:
        >>> real_fake_accuracy([[1, 0], [0, 1], [0, 0], [0, 0]], [[0.9, 0.2], [0.3, 0.4], [0.1, 0.4], [0.2, 0.6]])
        0.5
    """
    y_true, y_score = _check_multilabel(y_true, y_score)
    return float((_predict(y_score, threshold).any(axis=1) == y_true.any(axis=1)).mean())


def average_precision_by_num_steps(y_true: ArrayLike, y_score: ArrayLike, num_steps: ArrayLike) -> dict[int, float]:
    """mAP over the images with exactly k manipulation steps, for each k >= 1 present.

    For each k the mAP is :func:`average_precision` restricted to the images with ``num_steps == k``. It
    is averaged over the labels that are present in some of those images and absent from others. A
    label that is absent from all of them has no AP. A label present in all of them has an AP of 1
    whatever the scores, so it would say nothing. Neither kind is counted. For example, with 5 labels
    and k = 5 every label is present, so that mAP is NaN.

    The group decides the chance level: a label's AP under random scores is its frequency in the
    group, and with L labels that frequency averages k / L. Compare groups with this in mind.

    Args:
        y_true: 0/1 targets, shape (n_samples, n_labels).
        y_score: scores, shape (n_samples, n_labels).
        num_steps: non-negative integers, shape (n_samples,). Images with 0 steps (real) are skipped.
            In Seq-DeepFake each manipulation appears at most once, so this is ``y_true.sum(axis=1)``.

    Returns:
        ``{k: mAP}`` for each k >= 1 present in ``num_steps``, in increasing order. A value is NaN when
        no label in that group is informative.

    Raises:
        ValueError: ``num_steps`` has the wrong shape or holds a negative or non-integer value.

    Examples:
        >>> y_true = [[1, 0], [0, 1], [1, 1], [0, 0]]
        >>> y_score = [[0.9, 0.2], [0.4, 0.6], [0.3, 0.7], [0.1, 0.8]]
        >>> average_precision_by_num_steps(y_true, y_score, [1, 1, 2, 0])
        {1: 1.0, 2: nan}
    """
    y_true, y_score = _check_multilabel(y_true, y_score)
    steps = np.asarray(num_steps)
    if steps.shape != (y_true.shape[0],):
        raise ValueError(f"num_steps must have shape ({y_true.shape[0]},); got {steps.shape}")
    if np.any(steps < 0) or np.any(steps != np.round(steps)):
        raise ValueError(f"num_steps must hold non-negative integers; got values {np.unique(steps)[:10].tolist()}")
    result: dict[int, float] = {}
    for k in np.unique(steps[steps > 0]).astype(np.int64):
        group = steps == k
        present = y_true[group].sum(axis=0)
        informative = (present > 0) & (present < group.sum())
        result[int(k)] = (
            average_precision(y_true[group][:, informative], y_score[group][:, informative]) if informative.any() else float("nan")
        )
    return result


def _best_f1_threshold(y_true: np.ndarray, y_score: np.ndarray) -> float:
    precision, recall, thresholds = precision_recall_curve(y_true, y_score, drop_intermediate=False)
    # The curve's last point (precision 1, recall 0) has no threshold.
    f1 = _divide(2 * precision[:-1] * recall[:-1], precision[:-1] + recall[:-1], zero=0.0)
    return float(thresholds[np.argmax(f1)])


def tune_thresholds(y_true: ArrayLike, y_score: ArrayLike, *, default: float = 0.5, labels: Sequence[str] | None = None) -> np.ndarray:
    """Per-label thresholds that maximise each label's F1 on the data given (typically validation).

    For each label ``j`` the candidates are its distinct scores. A label is predicted when
    ``y_score >= t``, so each candidate gives one (P_j, R_j) point. The result is::

        t_j = argmax_t F1_j(t),  F1_j(t) = 2 P_j(t) R_j(t) / (P_j(t) + R_j(t))

    Ties go to the lowest such threshold. Tune on one split and apply the thresholds to another.
    Tuning and scoring on the same split is optimistic.

    Args:
        y_true: 0/1 targets, shape (n_samples, n_labels).
        y_score: probabilities, shape (n_samples, n_labels).
        default: the threshold of a label without positives, which has no F1 to maximise (a
            :class:`NoPositivesWarning` names it).
        labels: label names, used only in warnings.

    Returns:
        Float64 array of shape (n_labels,), for the ``threshold`` argument of the other metrics.

    Examples:
        >>> tune_thresholds([[1, 0], [0, 1], [1, 1], [0, 0]], [[0.9, 0.2], [0.4, 0.6], [0.3, 0.7], [0.1, 0.8]])
        array([0.3, 0.6])
    """
    y_true, y_score = _check_multilabel(y_true, y_score, labels=labels)
    thresholds = _per_label(
        _best_f1_threshold,
        y_true,
        y_score,
        labels=labels,
        consequence=f"their threshold stays at the default {default}",
    )
    return np.where(np.isnan(thresholds), default, thresholds)


def _check_sequences(true: ArrayLike, pred: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """The boundary check of the sequence metrics: ``(true, pred)`` as int64 arrays of one (N, L) shape.

    Raises:
        ValueError: the shapes differ or are not (N, L) with N, L >= 1; a value is not an integer or is
            negative.
    """
    arrays = []
    for name, values in (("true", true), ("pred", pred)):
        array = np.asarray(values)
        if array.dtype.kind not in "iub":
            if array.dtype.kind != "f" or not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
                raise ValueError(f"{name} must hold integers (0 = none, ids 1..C); got dtype {array.dtype}")
        arrays.append(array.astype(np.int64))
    true_ids, pred_ids = arrays
    if true_ids.ndim != 2 or pred_ids.shape != true_ids.shape:
        raise ValueError(f"true and pred must both have shape (n_samples, n_positions); got {true_ids.shape} and {pred_ids.shape}")
    if true_ids.size == 0:
        raise ValueError(f"need at least one sample and one position; got shape {true_ids.shape}")
    if (true_ids < 0).any() or (pred_ids < 0).any():
        raise ValueError("true and pred must hold non-negative ids (0 = none, ids 1..C)")
    return true_ids, pred_ids


def fixed_accuracy(true: ArrayLike, pred: ArrayLike) -> float:
    """Seq-DeepFake's Fixed-Acc, in percent: the share of the N x L slots where ``pred`` equals ``true``.

    ``true`` and ``pred`` are (N, L) integer arrays as in the release's label lists: position k holds the
    id (1..C) of the k-th manipulation applied, 0 for none. Every slot counts, the trailing zeros of a
    short sequence too::

        Fixed-Acc = 100 · #{(i, k) : pred_ik = true_ik} / (N · L)

    This is the accumulation of ``evalute_transformer`` in the authors' ``test.py`` (Shao, Wu, Liu,
    "Detecting and Recovering Sequential DeepFake Manipulation", ECCV 2022,
    github.com/rshaojimmy/SeqDeepFake) over images decoded one at a time. Unlike the other functions of
    this module it returns a percentage, as the published figures are.

    Edge cases: a 0 inside a sequence is an ordinary value (a slot matches when both hold 0); ids beyond
    C are compared like any other.

    Raises:
        ValueError: shapes differ or are not (N, L) with N, L >= 1, or a value is not a non-negative integer.

    Examples:
        >>> fixed_accuracy([[1, 2, 0, 0, 0], [0, 0, 0, 0, 0]], [[2, 1, 0, 0, 0], [0, 0, 0, 0, 0]])
        80.0
    """
    true_ids, pred_ids = _check_sequences(true, pred)
    return float(100.0 * np.count_nonzero(true_ids == pred_ids) / true_ids.size)


def adaptive_accuracy(true: ArrayLike, pred: ArrayLike) -> float:
    """Seq-DeepFake's Adaptive-Acc, in percent: slots compared only up to the longer of the two lengths.

    ``true`` and ``pred`` are (N, L) integer arrays as for :func:`fixed_accuracy`. For image i let
    ``n_i = max(#{k : true_ik > 0}, #{k : pred_ik > 0})``: a length is the number of non-zero entries,
    not the position of the last one. Then::

        Adaptive-Acc = 100 · Σ_i c_i / Σ_i m_i
        c_i = #{k < n_i : pred_ik = true_ik},  m_i = n_i      when n_i > 0
        c_i = 1,                              m_i = 1        when n_i = 0

    So a real image predicted empty counts as one correct slot out of one, and only the first ``n_i``
    positions are compared. This is the accumulation of ``evalute_transformer`` in the authors'
    ``test.py`` (Shao et al., ECCV 2022, github.com/rshaojimmy/SeqDeepFake), image by image. It returns
    a percentage, as the published figures are.

    Edge cases, all as the authors' code: a 0 inside a sequence is not counted in its length but is
    compared where it falls (``pred = [1, 0, 2, 0, 0]`` has length 2 and only positions 0 and 1 are
    compared); a prediction longer than the truth is compared over its own length, so its extra steps
    count as wrong slots; an empty prediction for a manipulated image scores 0 over the true length.

    Raises:
        ValueError: shapes differ or are not (N, L) with N, L >= 1, or a value is not a non-negative integer.

    Examples:
        >>> round(adaptive_accuracy([[1, 2, 0, 0, 0], [0, 0, 0, 0, 0]], [[2, 1, 0, 0, 0], [0, 0, 0, 0, 0]]), 4)
        33.3333
    """
    true_ids, pred_ids = _check_sequences(true, pred)
    lengths = np.maximum(np.count_nonzero(true_ids > 0, axis=1), np.count_nonzero(pred_ids > 0, axis=1))
    compared = np.arange(true_ids.shape[1])[None, :] < lengths[:, None]
    correct = np.count_nonzero((true_ids == pred_ids) & compared, axis=1)
    empty = lengths == 0
    total_correct = int(correct[~empty].sum()) + int(empty.sum())
    total_slots = int(lengths[~empty].sum()) + int(empty.sum())
    return float(100.0 * total_correct / total_slots)
