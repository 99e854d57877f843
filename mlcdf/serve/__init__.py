"""``mlcdf serve``: a trained run (folder or bundle) behind a small HTTP service (the ``serve`` extra)."""
