"""Readers and writers of the dataset files (the release, the prepared contract, the synthetic stand-in)."""
