"""Models: registry, factory, every model's forward/backward, parameter counts, graph heads, weights loading.

CPU only, 32-pixel inputs, and no network (conftest's autouse fixture makes any socket connection fail).
"""

from __future__ import annotations

import doctest
import json
import logging
import time
from dataclasses import dataclass

import huggingface_hub
import numpy as np
import pytest
import safetensors.torch
import timm
import torch
from typer.testing import CliRunner

from mlcdf.errors import MissingArtifactError, MlcdfError, SchemaError
from mlcdf.graph import LabelGraph, save_graph
from mlcdf.models import (
    GraphTensors,
    UnknownModelError,
    _factory,
    _registry,
    count_parameters,
    create_model,
    is_model,
    list_models,
    load_backbone_weights,
    meta_model,
    model_config,
    model_info,
    rebuild_model,
)
from mlcdf.models._backbone import BackboneClassifier, create_backbone
from mlcdf.models.agcn import AdaptiveGraphConvolution
from mlcdf.models.gcn import GraphConvolution, GraphHead
from mlcdf.weights import load_pretrained_backbone

PAPER_MODELS = ("resnet50", "resnet101", "tresnet_m", "ml_gcn", "iml_gcn", "ml_agcn")
TINY = "test_resnet"  # timm's tiny test network: fast to build, same API as the real ones


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_graph(num_labels: int = 5, dim: int = 8, seed: int = 0) -> GraphTensors:
    rng = np.random.default_rng(seed)
    adjacency = rng.random((num_labels, num_labels)).astype(np.float32) + np.eye(num_labels, dtype=np.float32)
    return GraphTensors(adjacency / adjacency.sum(1, keepdims=True), rng.standard_normal((num_labels, dim)))


def images(size: int = 32) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))


# --- registry -----------------------------------------------------------------------------------------


def test_registry_lists_the_paper_models():
    assert set(PAPER_MODELS) <= set(list_models())
    assert list_models("*gcn") == ["iml_gcn", "ml_agcn", "ml_gcn"]
    assert list_models("resnet*") == ["resnet50", "resnet101"]  # natural order
    assert is_model("ml_gcn") and is_model(f"timm:{TINY}") and not is_model("timm:no_such_net")
    assert model_info("ml_gcn").requires_graph and not model_info("resnet50").requires_graph
    assert model_info("ml_agcn").paper_params_m == 36.6
    assert model_info(f"timm:{TINY}").family == "timm"


def test_unknown_model_is_a_user_error_with_suggestions():
    with pytest.raises(UnknownModelError, match="resnet50, resnet101") as caught:
        create_model("resnet", 5)
    assert isinstance(caught.value, MlcdfError) and isinstance(caught.value, ValueError)
    with pytest.raises(UnknownModelError, match="timm architecture"):
        create_model("timm:no_such_net", 5)


def test_registering_a_name_twice_warns(monkeypatch):
    monkeypatch.setattr(_registry, "_model_entrypoints", dict(_registry._model_entrypoints))
    monkeypatch.setattr(_registry, "_model_info", dict(_registry._model_info))

    def resnet50(num_labels, **kwargs):
        """A replacement."""

    with pytest.warns(UserWarning, match="registered twice"):
        _registry.register_model(resnet50)
    assert model_info("resnet50").description == "A replacement."


# --- every model: forward, backward, API ------------------------------------------------------------------


@pytest.mark.parametrize("name", [*PAPER_MODELS, f"timm:{TINY}"])
def test_every_model_forward_backward(name):
    torch.manual_seed(0)
    graph = tiny_graph() if model_info(name).requires_graph else None
    model = create_model(name, 5, graph=graph)
    x = images()
    logits = model(x)
    assert logits.shape == (2, 5)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.get_classifier().parameters())
    first = next(model.backbone.parameters())
    assert first.grad is not None and torch.isfinite(first.grad).all()

    features = model.forward_features(x)
    assert features.ndim == 4 and features.shape[:2] == (2, model.num_features)
    assert model.forward_head(features, pre_logits=True).shape == (2, model.num_features)
    assert model.model_name == name and model.num_labels == 5
    assert len(model.input_mean) == 3 and len(model.input_std) == 3
    assert model.weights_report is None


def test_the_base_class_needs_a_head():
    with pytest.raises(TypeError, match="abstract"):
        BackboneClassifier(create_backbone(TINY), 5)


def test_input_normalisation_follows_the_backbone():
    assert meta_model("resnet50").input_mean == pytest.approx((0.485, 0.456, 0.406))
    assert meta_model("resnet101").input_std == pytest.approx((0.229, 0.224, 0.225))
    for name in ("tresnet_m", "iml_gcn", "ml_agcn"):  # TResNet takes raw [0, 1] pixels
        model = meta_model(name)
        assert (model.input_mean, model.input_std) == ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


def test_direct_reset_classifier():
    model = create_model(f"timm:{TINY}", 5)
    model.reset_classifier(3)
    assert model(images()).shape == (2, 3) and model.num_labels == 3


# --- parameter counts ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PAPER_MODELS)
def test_parameter_counts_match_the_paper(name):
    model = meta_model(name, 5, embedding_dim=300)
    assert all(p.is_meta for p in model.parameters())  # counted without allocating
    params_m = count_parameters(model) / 1e6
    assert params_m == pytest.approx(model_info(name).paper_params_m, rel=0.02)


def test_graph_head_parameter_formulas():
    gcn = 300 * 1024 + 1024 * 2048
    with torch.device("meta"):
        tresnet = count_parameters(timm.create_model("tresnet_m", num_classes=0, pretrained=False))
    assert count_parameters(meta_model("iml_gcn")) == tresnet + gcn
    assert count_parameters(meta_model("ml_agcn")) == tresnet + 3 * gcn + 4
    assert count_parameters(meta_model("ml_gcn", embedding_dim=50)) == count_parameters(meta_model("ml_gcn")) - 250 * 1024


# --- graph models -------------------------------------------------------------------------------------------------


def test_gcn_head_on_a_hand_checked_graph():
    a_hat = [[0.5, 0.5], [0.0, 1.0]]
    embeddings = [[1.0, 0.0], [0.0, 1.0]]
    head = GraphHead(a_hat, embeddings, num_features=2, hidden_dim=2)
    with torch.no_grad():
        head.gc1.weight.copy_(torch.tensor([[1.0, -1.0], [2.0, 0.0]]))
        head.gc2.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 10.0]]))
    # gc1: Â·E·W1 = [[1.5, -0.5], [2, 0]]; LeakyReLU(0.2) -> [[1.5, -0.1], [2, 0]]
    # gc2: Â·H·W2 = Â·[[1.5, -1], [2, 0]] = [[1.75, -0.5], [2, 0]]
    torch.testing.assert_close(head.label_classifiers(), torch.tensor([[1.75, -0.5], [2.0, 0.0]]))
    pooled = torch.tensor([[1.0, 1.0], [2.0, -1.0]])
    torch.testing.assert_close(head(pooled), torch.tensor([[1.25, 2.0], [4.0, 4.0]]))


def test_graph_model_max_pools_at_any_input_size():
    model = create_model("ml_gcn", 5, graph=tiny_graph(), backbone=TINY).eval()
    features = model.forward_features(images(48))
    torch.testing.assert_close(model.forward_head(features, pre_logits=True), features.amax(dim=(2, 3)))
    for size in (32, 48, 64):
        assert model(images(size)).shape == (2, 5)


def test_adaptive_layer_starts_as_a_plain_gcn_layer():
    torch.manual_seed(0)
    h, a_hat = torch.randn(5, 6), torch.rand(5, 5)
    adaptive = AdaptiveGraphConvolution(6, 4)
    plain = GraphConvolution(6, 4)
    plain.weight.data.copy_(adaptive.weight.data)
    torch.testing.assert_close(adaptive(h, a_hat), plain(h, a_hat))  # gates start at 0

    attention = adaptive.attention_adjacency(h)
    torch.testing.assert_close(attention.sum(-1), torch.ones(5))
    with torch.no_grad():
        adaptive.attention_gate.fill_(1.0)
        adaptive.similarity_gate.fill_(2.0)
    expected = a_hat + attention + 2 * adaptive.similarity_adjacency(h)
    torch.testing.assert_close(adaptive.adjacency(h, a_hat), expected)
    adaptive(h, a_hat).sum().backward()
    assert adaptive.query.weight.grad.abs().sum() > 0 and adaptive.similarity_gate.grad != 0


def test_similarity_adjacency_by_hand():
    h = torch.tensor([[1.0, 0.0], [1.0, 1.0], [-1.0, 0.0]])
    # cosines: (0,1) = 1/sqrt(2), (0,2) = -1 -> 0, (1,2) = -1/sqrt(2) -> 0; then rows normalised
    s = 2**-0.5
    expected = torch.tensor([[1, s, 0], [s, 1, 0], [0, 0, 1]]) / torch.tensor([[1 + s], [1 + s], [1.0]])
    torch.testing.assert_close(AdaptiveGraphConvolution.similarity_adjacency(h), expected)


def test_graph_is_required_checked_and_read_from_a_file(tmp_path):
    with pytest.raises(MlcdfError, match="build-graph"):
        create_model("ml_gcn", 5)
    with pytest.raises(MlcdfError, match="does not use a label graph"):
        create_model("resnet50", 5, graph=tiny_graph())
    with pytest.raises(MlcdfError, match="--backbone is for graph models"):
        create_model(f"timm:{TINY}", 5, backbone="resnet18")
    with pytest.raises(MlcdfError, match="4 labels"):
        create_model("ml_gcn", 5, graph=tiny_graph(num_labels=4), backbone=TINY)

    tensors = tiny_graph(dim=50)
    labels = ("nose", "eye", "eyebrow", "lip", "hair")
    graph = LabelGraph(labels, np.ones(5), np.zeros((5, 5)), np.eye(5), tensors.A_hat, tensors.embeddings)
    save_graph(tmp_path / "g.npz", graph)
    model = create_model("iml_gcn", 5, graph=tmp_path / "g.npz", backbone=TINY)
    assert model.head.gc1.in_features == 50  # the GCN input follows the embedding width
    np.testing.assert_allclose(model.head.embeddings.numpy(), tensors.embeddings, rtol=1e-6)
    with pytest.raises(MissingArtifactError):
        create_model("iml_gcn", 5, graph=tmp_path / "missing.npz")


def test_graph_reset_classifier():
    model = create_model("ml_agcn", 5, graph=tiny_graph(), backbone=TINY)
    with pytest.raises(MlcdfError, match="5 labels"):
        model.reset_classifier(3)
    model.reset_classifier(3, graph=tiny_graph(num_labels=3, dim=4))
    assert model(images()).shape == (2, 3)


# --- rebuild from a checkpoint -------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "kwargs"), [("ml_agcn", {"backbone": TINY, "hidden_dim": 16}), (f"timm:{TINY}", {})])
def test_rebuild_from_config_and_state_dict(name, kwargs):
    graph = tiny_graph() if model_info(name).requires_graph else None
    model = create_model(name, 5, graph=graph, drop_rate=None, **kwargs).eval()
    config = json.loads(json.dumps(model_config(model)))  # what a checkpoint stores
    assert config == {"name": name, "num_labels": 5, "kwargs": kwargs}  # None kwargs are dropped
    state = model.state_dict()
    if graph is not None:
        assert {"head.A_hat", "head.embeddings"} <= set(state)
    rebuilt = rebuild_model(config, state).eval()
    x = images()
    torch.testing.assert_close(rebuilt(x), model(x))

    with pytest.raises(MlcdfError, match="do not fit"):
        rebuild_model(config, {**state, "extra": x})


# --- backbone weights --------------------------------------------------------------------------------------------


@dataclass
class NotWeights:
    value: int = 1


def reference_backbone() -> torch.nn.Module:
    """A timm test network with a 1000-class classifier, as a downloaded checkpoint would have."""
    torch.manual_seed(1)
    return timm.create_model(TINY, pretrained=False)


@pytest.mark.parametrize("layout", ["pth", "safetensors", "wrapped_ddp", "mlcdf"])
def test_weights_file_loads_the_backbone_and_ignores_the_head(tmp_path, layout):
    source = reference_backbone()
    state = source.state_dict()
    path = tmp_path / ("w.safetensors" if layout == "safetensors" else "w.pth")
    if layout == "safetensors":
        safetensors.torch.save_file(state, path)
    elif layout == "wrapped_ddp":
        torch.save({"model": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, path)
    elif layout == "mlcdf":
        trained = create_model(f"timm:{TINY}", 5)
        trained.backbone.load_state_dict(state, strict=False)
        torch.save({"model": trained.state_dict()}, path)
    else:
        torch.save(state, path)

    model = create_model(f"timm:{TINY}", 5, weights=path)
    for key, value in model.backbone.state_dict().items():
        torch.testing.assert_close(value, state[key])
    report = model.weights_report
    assert report.source == str(path) and not report.missing and not report.unexpected
    assert {"fc.weight", "fc.bias"} <= set(report.ignored)
    # The same loader serves a bare timm backbone (build-graph's image encoders use it too).
    assert load_backbone_weights(timm.create_model(TINY, num_classes=0), path) == report


def test_weights_that_do_not_fit_are_reported(tmp_path, caplog):
    state = reference_backbone().state_dict()
    partial = {k: v for k, v in state.items() if not k.startswith("layer4.")}
    partial["extra.weight"] = torch.zeros(1)
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(MlcdfError, match="missing"):
        create_model(f"timm:{TINY}", 5, weights=tmp_path / "partial.pth")

    model = create_model(f"timm:{TINY}", 5)
    with caplog.at_level(logging.WARNING, logger="mlcdf.weights"):
        report = model.load_backbone(weights=tmp_path / "partial.pth", strict=False)
    layer4 = [k for k in model.backbone.state_dict() if k.startswith("layer4.")]
    assert report.missing == tuple(k for k in layer4 if not k.endswith("num_batches_tracked"))
    assert report.unexpected == ("extra.weight",) and "layer4" in caplog.text
    assert report.loaded == len(partial) - 3  # all but extra.weight and the ignored fc.weight, fc.bias

    other = timm.create_model("test_efficientnet", pretrained=False).state_dict()
    torch.save(other, tmp_path / "other.pth")
    with pytest.raises(MlcdfError, match="no tensor matches|shapes"):
        create_model(f"timm:{TINY}", 5, weights=tmp_path / "other.pth")


def test_weights_files_are_never_unpickled(tmp_path):
    torch.save({"model": NotWeights()}, tmp_path / "pickle.pth")
    with pytest.raises(SchemaError, match="weights-only"):
        create_model(f"timm:{TINY}", 5, weights=tmp_path / "pickle.pth")
    with pytest.raises(MissingArtifactError):
        create_model(f"timm:{TINY}", 5, weights=tmp_path / "absent.pth")
    with pytest.raises(MlcdfError, match="not both"):
        create_model(f"timm:{TINY}", 5, weights=tmp_path / "absent.pth", pretrained=True)


# --- pretrained=True ------------------------------------------------------------------------------------------------


def test_pretrained_offline_fails_at_once_naming_weights(monkeypatch, tmp_path):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))  # nothing cached
    start = time.monotonic()
    with pytest.raises(MlcdfError, match="--weights PATH") as caught:
        create_model("resnet50", 5, pretrained=True)
    assert time.monotonic() - start < 5
    assert "https://huggingface.co/timm/resnet50" in str(caught.value)


def test_pretrained_unreachable_hub_is_tried_once_without_retries(monkeypatch, tmp_path):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    calls = []

    def unreachable(url, timeout=None, **kwargs):
        calls.append((url, timeout))
        raise ConnectionError("Name or service not known")

    def download(*args, **kwargs):
        raise AssertionError("hf_hub_download must not run when the Hub is unreachable")

    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", unreachable)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    with pytest.raises(MlcdfError, match="--weights PATH"):
        create_model(f"timm:{TINY}", 5, pretrained=True)
    assert len(calls) == 1 and calls[0][1] is not None


def test_pretrained_uses_the_hub_cache_without_network(monkeypatch, tmp_path):
    state = reference_backbone().state_dict()
    cached = tmp_path / "model.safetensors"
    safetensors.torch.save_file(state, cached)
    looked_up = []

    def from_cache(repo_id, filename, revision=None, **kwargs):
        looked_up.append((repo_id, filename))
        return str(cached)

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", from_cache)
    model = create_model(f"timm:{TINY}", 5, pretrained=True)
    assert looked_up == [("timm/test_resnet.r160_in1k", "model.safetensors")]
    assert model.weights_report.source == "hf-hub:timm/test_resnet.r160_in1k"
    torch.testing.assert_close(model.backbone.conv1[0].weight, state["conv1.0.weight"])


def test_pretrained_without_hub_weights_names_weights():
    with pytest.raises(MlcdfError, match="--weights PATH"):
        load_pretrained_backbone(torch.nn.Linear(2, 2))


# --- mlcdf models ----------------------------------------------------------------------------------------------------


def test_models_command_json_and_table():
    from mlcdf.cli.main import app

    runner = CliRunner()
    result = runner.invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert set(PAPER_MODELS) <= set(rows)
    assert rows["ml_gcn"]["params"] == 44_904_512 and rows["ml_gcn"]["paper_params_m"] == 44.9
    assert isinstance(rows["resnet50"]["params"], int)

    table = runner.invoke(app, ["models", "*gcn"])
    assert table.exit_code == 0 and "ml_agcn" in table.stdout and "resnet50" not in table.stdout
    assert runner.invoke(app, ["models", "nothing*"]).exit_code == 2


def test_docstring_examples():
    result = doctest.testmod(_factory)
    assert result.attempted and not result.failed
