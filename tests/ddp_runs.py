"""Run the trainings named by JSON config files one after another; tests/test_train.py launches this under
torchrun, so that one launch (seconds of start-up per process) serves several checks."""

import json
import sys
from pathlib import Path

import torch.distributed as dist

import mlcdf.train.stage as training

if __name__ == "__main__":
    # One process group for all the runs: train() joins it if it exists, and a group created again in the
    # same processes would rendezvous on the first one's stale store keys.
    dist.init_process_group("gloo")
    training.shutdown_distributed = lambda: None
    for path in sys.argv[1:]:
        training.train(training.TrainConfig(**json.loads(Path(path).read_text())))
    dist.destroy_process_group()
