"""Evaluating a trained run: predict a split with its checkpoint, then write the evaluation folder.

Inference comes from :mod:`mlcdf.inference`, the folder from :mod:`mlcdf.evaluation.evaluate`, and the
perturbed conditions of ``--perturb`` from :mod:`mlcdf.evaluation.robustness`.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mlcdf.config import check_workers
from mlcdf.data.perturb import check_seed
from mlcdf.errors import MlcdfError
from mlcdf.evaluation.evaluate import EVALUATION_OUTPUT, Predictions, default_eval_dir, write_evaluation
from mlcdf.io import check_output_folder, check_replaceable
from mlcdf.progress import ProgressFn, silent


def _with_prior_order(run_dir: Path, predictions: Predictions, threshold: float, tune_on: Predictions | None) -> Predictions:
    """``predictions`` with the oracle sequences and, for a model without an order, its predicted sets
    in the most frequent training order (:mod:`mlcdf.tasks.prior_order`, estimated on the run's train split).

    The sets are the labels at or above the decision threshold, the per-label tuned ones with ``tune_on``
    (as :func:`~mlcdf.evaluation.evaluate.compute_metrics` tunes them). A dataset that records no order
    gets no sequence metrics.
    """
    from mlcdf.data.prepared import load_prepared
    from mlcdf.inference.runs import read_run
    from mlcdf.metrics import tune_thresholds
    from mlcdf.tasks.prior_order import estimate_prior_orders, order_sets

    prepared = load_prepared(read_run(run_dir).config.prepared)
    if prepared.meta.get("ordered", True) is False:
        return dataclasses.replace(predictions, true_sequences=None, pred_sequences=None)
    prior = estimate_prior_orders(prepared.read_split("train").sequences, predictions.labels)
    oracle = order_sets(predictions.targets, prior)
    if predictions.pred_sequences is not None:
        return dataclasses.replace(predictions, oracle_sequences=oracle)
    if tune_on is None:
        thresholds = np.full(len(predictions.labels), threshold)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # compute_metrics records them
            thresholds = tune_thresholds(tune_on.targets, tune_on.scores, default=threshold, labels=predictions.labels)
    return dataclasses.replace(
        predictions,
        pred_sequences=order_sets(predictions.scores >= thresholds, prior),
        oracle_sequences=oracle,
        sequence_decoder={"kind": "set + prior order", "estimated_on": f"{prepared.path} (train split)", "prior": prior},
    )


def evaluate_run(
    run_dir: str | Path,
    *,
    split: str = "test",
    checkpoint: str = "best",
    device: str = "auto",
    batch_size: int = 64,
    threshold: float = 0.5,
    tune_on_val: bool = False,
    out_dir: str | Path | None = None,
    progress: ProgressFn = silent,
    perturb: Sequence = (),
    perturb_seed: int = 0,
    workers: int | None = None,
) -> tuple[Path, dict]:
    """``mlcdf evaluate --run``: predict a split with a trained run's checkpoint and evaluate it.

    Inference is :func:`mlcdf.inference.runs.predict_split`. With ``tune_on_val``, the val split is
    predicted too, and per-label F1 thresholds tuned on it are applied to ``split``.

    Args:
        run_dir: a run folder written by ``mlcdf train``, or a bundle (:func:`mlcdf.inference.runs.read_run`).
        split: the split to evaluate.
        checkpoint: ``best``, ``last`` or ``ema``.
        device: ``auto``, ``cuda`` or ``cpu``.
        batch_size: images per inference batch.
        threshold: the decision threshold, or the fallback of the tuned thresholds.
        tune_on_val: tune per-label thresholds on the val split (``--tune-thresholds``).
        out_dir: the evaluation folder. Defaults to ``RUN/eval/<split>``; required for a bundle.
        progress: draws the inference progress.
        perturb: :class:`mlcdf.data.perturb.Condition` s to score the split under as well; the folder then
            gets the robustness files of :mod:`mlcdf.evaluation.robustness`.
        perturb_seed: the seed of the perturbations' random draws.
        workers: processes decoding and perturbing images for ``perturb`` (None: min(16, CPUs)).

    Returns:
        ``(out_dir, metrics)``.

    Raises:
        MlcdfError: inference is not available, or thresholds would be tuned on the split evaluated.
    """
    try:
        from mlcdf.inference.bundle import is_bundle_reference
        from mlcdf.inference.runs import predict_split
    except ModuleNotFoundError as error:
        if error.name != "mlcdf.inference.runs":
            raise
        raise MlcdfError("evaluate --run needs the trainer (not built yet)") from None
    if tune_on_val and split == "val":
        raise MlcdfError("--tune-thresholds tunes on the val split, so evaluating val with it would be optimistic; evaluate test")
    check_seed(perturb_seed, "perturb_seed")
    check_workers(workers, "workers")
    if out_dir is None and is_bundle_reference(run_dir):
        raise MlcdfError(f"{run_dir}: a bundle has no run folder to write the evaluation into; give --out DIR")
    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir is not None else default_eval_dir(run_dir, split)
    check_output_folder(out)
    check_replaceable(out, **EVALUATION_OUTPUT)  # before inference, which may take a while

    def predict(name: str) -> tuple[Predictions, int | None]:
        result = predict_split(run_dir, name, checkpoint, device, batch_size, progress)
        y_true, y_score, file_paths, num_steps, labels, num_params = result[:6]
        predictions = Predictions(
            file_paths=list(file_paths),
            labels=tuple(labels),
            targets=np.asarray(y_true, dtype=np.uint8),
            scores=np.asarray(y_score, dtype=np.float64),
            num_steps=None if num_steps is None else np.asarray(num_steps, dtype=np.int64),
            origin=f"{run_dir} ({name} split, {checkpoint} checkpoint)",
            # A run whose task predicts an order (a sequence model) also brings its decoded sequences.
            true_sequences=getattr(result, "true_sequences", None),
            pred_sequences=getattr(result, "pred_sequences", None),
        )
        return predictions, num_params

    predictions, num_params = predict(split)
    tune_on = predict("val")[0] if tune_on_val else None
    if predictions.true_sequences is not None:
        predictions = _with_prior_order(run_dir, predictions, threshold, tune_on)
    write_more = None
    if perturb:
        from mlcdf.evaluation.robustness import robustness_rows, score_conditions, write_robustness

        scored = score_conditions(
            run_dir,
            perturb,
            split=split,
            checkpoint=checkpoint,
            device=device,
            batch_size=batch_size,
            workers=workers,
            seed=perturb_seed,
            progress=progress,
        )
        write_more = functools.partial(write_robustness, rows=robustness_rows(scored, threshold=threshold, tune_on=tune_on))

    return out, write_evaluation(out, predictions, threshold=threshold, tune_on=tune_on, num_params=num_params, write_more=write_more)
