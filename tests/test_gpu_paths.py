"""The GPU and distributed code paths, checked on the CPU where the logic allows (issue 14).

What only a GPU can show (speed, NCCL, fp16 on a real device) is checked by ``make gpu-check``.
"""

from __future__ import annotations

import pytest
import torch

from mlcdf.training import mixed_precision


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # On a busy machine (shared CI cores) PyTorch's worker threads contend and run many times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(("native", "expected"), [(True, (torch.bfloat16, False)), (False, (torch.float16, True))])
def test_bf16_only_where_the_gpu_computes_it_natively(monkeypatch, native, expected):
    # A V100 or T4 reports bf16 only when emulation counts; there fp16 with a grad scaler is the fast choice.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation or native)
    assert mixed_precision(torch.device("cuda"), None) == expected
    assert mixed_precision(torch.device("cpu"), None) == (None, False)
    assert mixed_precision(torch.device("cuda"), False) == (None, False)


def tiny_graph(num_labels: int = 5, dim: int = 8):
    import numpy as np

    from mlcdf.models import GraphTensors

    rng = np.random.default_rng(0)
    adjacency = rng.random((num_labels, num_labels)).astype(np.float32) + np.eye(num_labels, dtype=np.float32)
    return GraphTensors(adjacency / adjacency.sum(1, keepdims=True), rng.standard_normal((num_labels, dim)))


@pytest.mark.parametrize("name", ["timm:test_resnet", "ml_gcn"])
def test_scores_under_autocast_come_from_a_float32_head(name):
    from mlcdf.engine import predict
    from mlcdf.models import create_model

    torch.manual_seed(0)
    model = create_model(name, 5, graph=tiny_graph() if name == "ml_gcn" else None, **({"backbone": "test_resnet"} if name == "ml_gcn" else {})).eval()
    images = torch.randn(96, 3, 32, 32)
    batches = [{"x": images[i : i + 32], "targets": torch.zeros(32, 5), "indices": torch.arange(i, i + 32)} for i in range(0, 96, 32)]
    scores, _, _ = predict(model, batches, torch.device("cpu"), prepare_input=lambda batch: batch["x"], autocast_dtype=torch.bfloat16)
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            features = model.forward_features(images)
        assert features.dtype == torch.bfloat16  # the backbone did run in bf16
        expected = torch.sigmoid(model.forward_head(features.float())).double().numpy()
    assert (scores == expected).all()
    # bf16 logits leave 30 to 90 distinct scores of 96 per label here (ties that move the mAP); float32 ones
    # are distinct but for a rare coincidence.
    assert all(len(set(scores[:, j])) >= len(images) - 1 for j in range(5)), [len(set(scores[:, j])) for j in range(5)]
