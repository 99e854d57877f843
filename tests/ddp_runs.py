"""Run the trainings named by JSON config files one after another; tests/test_train.py launches this under
torchrun, so that one launch (seconds of start-up per process) serves several checks."""

import json
import sys
from pathlib import Path

from mlcdf.training import TrainConfig, train

if __name__ == "__main__":
    for path in sys.argv[1:]:
        train(TrainConfig(**json.loads(Path(path).read_text())))
