"""The model zoo: direct and graph-based multi-label classifiers behind one factory.

Importing the family modules below registers their models; ``create_model(name, num_labels, ...)``
builds any of them, and ``timm:<architecture>`` builds a direct model over any timm backbone.
Imports only the core (graphs come as :class:`~mlcdf.label_graph.LabelGraph`, weights through
:mod:`mlcdf.weights`).
"""

from mlcdf.models import agcn, direct, gcn, seqfakeformer  # noqa: F401  (imported to register their models)
from mlcdf.models._backbone import BackboneClassifier
from mlcdf.models._factory import (
    PAPER_EMBEDDING_DIM,
    count_parameters,
    create_model,
    meta_model,
    model_config,
    rebuild_model,
)
from mlcdf.models._registry import (
    ModelInfo,
    UnknownModelError,
    is_model,
    list_models,
    model_entrypoint,
    model_info,
    register_model,
    resolve_config,
)
from mlcdf.models.gcn import GraphTensors, graph_from_state_dict
from mlcdf.weights import LoadReport, load_backbone_weights, read_state_dict

__all__ = [
    "PAPER_EMBEDDING_DIM",
    "BackboneClassifier",
    "GraphTensors",
    "LoadReport",
    "ModelInfo",
    "UnknownModelError",
    "count_parameters",
    "create_model",
    "graph_from_state_dict",
    "is_model",
    "list_models",
    "load_backbone_weights",
    "meta_model",
    "model_config",
    "model_entrypoint",
    "model_info",
    "read_state_dict",
    "rebuild_model",
    "register_model",
    "resolve_config",
]
