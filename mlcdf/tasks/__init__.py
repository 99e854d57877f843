"""Tasks: what a model learns from a split and how its outputs are read — the seam a second task plugs into.

A :class:`Task` gives the training targets of a split table, the loss, the decoding of the model's
outputs into per-label scores, and the validation figure that picks the best checkpoint. The trainer,
inference and evaluation go through it and never ask which task they run. Two tasks exist,
:class:`MultiLabelTask` (the paper's) and :class:`SequenceTask` (Seq-DeepFake's image-to-sequence task,
for SeqFakeFormer); :func:`create_task` picks the one the model's registry entry names.

Imports the core, ``data`` and ``models``; never ``train`` or anything above it.
"""

from mlcdf.tasks.base import Task
from mlcdf.tasks.multilabel import MultiLabelTask, create_task
from mlcdf.tasks.sequence import SequenceTask

__all__ = ["MultiLabelTask", "SequenceTask", "Task", "create_task"]
