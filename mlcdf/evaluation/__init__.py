"""Evaluation: evaluation folders from predictions, reports over runs, robustness under perturbations.

:mod:`~mlcdf.evaluation.evaluate` writes an evaluation folder from targets and scores (no torch);
:mod:`~mlcdf.evaluation.runs` evaluates a trained run; :mod:`~mlcdf.evaluation.report` tabulates runs
beside the paper (no torch); :mod:`~mlcdf.evaluation.robustness` scores a run under perturbations.
Imports everything below it (the core, ``data``, ``models``, ``tasks``, ``train``, ``inference``,
``graph``); never ``experiments`` or ``cli``. Nothing is imported here, so the report stays torch-free.
"""
