"""The ``mlcdf`` command line: one thin module per command over the library, joined in :mod:`mlcdf.cli.main`.

The top floor: may import any package. Commands import the library inside their functions, so that
``mlcdf --help`` loads no torch.
"""
