"""Readers and writers of the dataset files, and the images they hold.

The Seq-DeepFake release (:mod:`~mlcdf.data.seqdeepfake`), a user's CSV (:mod:`~mlcdf.data.own_csv`) and
the synthetic stand-in (:mod:`~mlcdf.data.synth`) each write the prepared contract
(:mod:`~mlcdf.data.prepared`); :mod:`~mlcdf.data.dataset` feeds it to a model (image cache, sampler,
augmentation); :mod:`~mlcdf.data.perturb` holds the image perturbations and their spec strings, used by
evaluation, ``mlcdf perturb`` (:mod:`~mlcdf.data.perturbed`) and training augmentation alike.
Imports only the core.
"""
