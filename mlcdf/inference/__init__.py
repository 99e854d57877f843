"""Trained runs on images: loading a run, predicting splits and files, Grad-CAM, ONNX export.

:mod:`~mlcdf.inference.runs` loads a run folder and predicts; :mod:`~mlcdf.inference.explain` draws
Grad-CAM; :mod:`~mlcdf.inference.export` writes ONNX. Imports the core, ``data``, ``models``, ``tasks``
and ``train``; never ``graph``, ``evaluation``, ``experiments`` or ``cli``.
"""

from mlcdf.inference.runs import ImagePredictions, RunInfo, find_images, load_run_model, predict_images, predict_split, read_run

__all__ = ["ImagePredictions", "RunInfo", "find_images", "load_run_model", "predict_images", "predict_split", "read_run"]
