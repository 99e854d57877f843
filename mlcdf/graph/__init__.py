"""The build-graph stage: label graphs for the graph-based classifiers.

ML-GCN's co-occurrence adjacency (:mod:`~mlcdf.graph.cooccurrence`), word node embeddings
(:mod:`~mlcdf.graph.embeddings`), image node embeddings from an ImageNet backbone or a trained run
(:mod:`~mlcdf.graph.image_embeddings`), and the stage itself (:mod:`~mlcdf.graph.build`). The file it
writes is a core contract (:mod:`mlcdf.label_graph`), so models and the trainer read graphs without this
package. Imports the core, ``data``, ``models``, ``tasks``, ``train`` and ``inference`` (a trained run can
embed the labels); never ``evaluation``, ``experiments`` or ``cli``.
"""

from mlcdf.label_graph import LabelGraph, load_graph, save_graph

__all__ = ["LabelGraph", "load_graph", "save_graph"]
