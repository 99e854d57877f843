"""Label graphs for the graph-based classifiers: co-occurrence adjacency and node embeddings."""

from mlcdf.graph.graph_file import LabelGraph, load_graph, save_graph

__all__ = ["LabelGraph", "load_graph", "save_graph"]
