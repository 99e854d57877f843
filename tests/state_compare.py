"""Compare nested checkpoint states (dicts, lists, tensors, numbers) value by value, naming the first difference."""

from __future__ import annotations

import torch


def state_differences(a, b, path: str = "") -> list[str]:
    """Every place where ``a`` and ``b`` differ: keys, types, tensor dtype/shape/values, plain values.

    Tensors must be bit-identical (``torch.equal``, same dtype); floats must be equal, not close.
    """
    where = path or "<root>"
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return [f"{where}: keys differ, only left {sorted(map(str, set(a) - set(b)))}, only right {sorted(map(str, set(b) - set(a)))}"]
        return [d for key in a for d in state_differences(a[key], b[key], f"{path}.{key}" if path else str(key))]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{where}: lengths {len(a)} and {len(b)}"]
        return [d for index, (x, y) in enumerate(zip(a, b)) for d in state_differences(x, y, f"{path}[{index}]")]
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.dtype != b.dtype or a.shape != b.shape:
            return [f"{where}: {a.dtype}{tuple(a.shape)} vs {b.dtype}{tuple(b.shape)}"]
        if torch.equal(a, b):
            return []
        if a.is_floating_point():
            return [f"{where}: max |difference| {(a.double() - b.double()).abs().max().item():.3g}"]
        return [f"{where}: {int((a != b).sum())} element(s) differ"]
    if type(a) is not type(b) or a != b:
        return [f"{where}: {a!r} vs {b!r}"]
    return []


def assert_same_state(a, b, what: str) -> None:
    differences = state_differences(a, b)
    assert not differences, f"{what} differ in {len(differences)} place(s), e.g. " + "; ".join(differences[:5])
