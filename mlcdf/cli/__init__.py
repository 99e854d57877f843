"""The ``mlcdf`` command line: one module per stage, joined in :mod:`mlcdf.cli.main`."""
