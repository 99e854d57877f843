"""The train stage: a resumable, distributed-ready run of one model on one prepared subset.

Owns the stage (:mod:`~mlcdf.train.stage`), the training loop and batched inference
(:mod:`~mlcdf.train.engine`), EMA, checkpoints, the torchrun runtime, the callbacks a caller hears and
TensorBoard logging. Imports the core, ``data``, ``models`` and ``tasks``; never ``inference``,
``graph``, ``evaluation``, ``experiments`` or ``cli``.
"""
