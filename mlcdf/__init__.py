"""mlcdf: multi-label deepfake classification on Seq-DeepFake and your own images."""

__version__ = "0.1.0"
