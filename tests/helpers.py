"""Small assertions shared by the tests."""

from __future__ import annotations

import torch


def outputs_equal(a: torch.nn.Module, b: torch.nn.Module, shape=(2, 3, 32, 32)) -> bool:
    x = torch.randn(shape)
    with torch.inference_mode():
        return torch.equal(a.eval()(x), b(x))


def all_eval(model: torch.nn.Module) -> bool:
    return not any(m.training for m in model.modules())
