"""The GPU and distributed code paths, checked on the CPU where the logic allows (issue 14).

What only a GPU can show (speed, NCCL, fp16 on a real device) is checked by ``make gpu-check``.
"""

from __future__ import annotations

import pytest
import torch

from mlcdf.training import mixed_precision


@pytest.mark.parametrize(("native", "expected"), [(True, (torch.bfloat16, False)), (False, (torch.float16, True))])
def test_bf16_only_where_the_gpu_computes_it_natively(monkeypatch, native, expected):
    # A V100 or T4 reports bf16 only when emulation counts; there fp16 with a grad scaler is the fast choice.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation or native)
    assert mixed_precision(torch.device("cuda"), None) == expected
    assert mixed_precision(torch.device("cpu"), None) == (None, False)
    assert mixed_precision(torch.device("cuda"), False) == (None, False)
