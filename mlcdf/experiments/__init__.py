"""Experiments: many runs as data, and the one runner that executes them.

:mod:`~mlcdf.experiments.plans` reads and checks a plan (no torch); :mod:`~mlcdf.experiments.runner`
runs one (skip, resume, lock, launch locally or on Slurm, report); :mod:`~mlcdf.experiments.reproduce`
is the paper's plan with its data; :mod:`~mlcdf.experiments.study` is the co-occurrence study (and the
parts every study shares), :mod:`~mlcdf.experiments.study_order` the order study. May import every stage
package; only ``cli`` is above it. Nothing is imported here, so plans stay torch-free.
"""
