"""mlcdf: multi-label deepfake classification on Seq-DeepFake and your own images.

The package is cut by pipeline stage, and a package imports only the ones below it (a test holds this;
``docs/architecture.md`` is the map):

- the core, plain modules here: ``errors``, ``io``, ``labels``, ``progress``, ``config``, ``metrics``,
  ``label_graph``, ``devices``, ``weights``;
- ``data``: readers of the dataset files, the prepared contract, images and perturbations;
- ``models``: the model zoo behind one factory;
- ``tasks``: what a model learns and how its outputs are read (targets, loss, scores, validation figure);
- ``train``: the train stage;
- ``inference``: trained runs on images: predict, explain, export;
- ``graph``: the build-graph stage (adjacency and node embeddings, from word vectors or image features);
- ``evaluation``: metrics files, reports and robustness;
- ``experiments``: plans, the runner, the paper's reproduction and the studies;
- ``cli``: the ``mlcdf`` command.
"""

from mlcdf import _moved

__version__ = "0.1.0"

_moved.install()
