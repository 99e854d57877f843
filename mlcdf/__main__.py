"""``python -m mlcdf`` (used by ``torchrun -m mlcdf train ...``)."""

from mlcdf.cli.main import main

main()
