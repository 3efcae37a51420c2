"""Behaviour checks: does the model rebuilt today compute what it computed at push?

A digest proves the bytes, not the code that runs them. At push, the model
as the registry rebuilds it runs in eval mode on a fixed input,
`torch.randn(shape)` from a generator seeded with 0 (float32, CPU), and its
output is recorded: each output tensor's shape and dtype, its values (all of
them up to MAX_VALUES, else MAX_VALUES evenly spaced ones), mean and
standard deviation. A check reruns the same input and compares within
TOLERANCE, which allows for the rounding that differs between CPU thread
counts and kernels, not for a changed computation.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from registry.errors import CheckInputError, first_line
from registry.records import CheckResult

if TYPE_CHECKING:
    import torch
    from torch import nn

    from registry.architectures import Arch
    from registry.records import Fingerprint, ModelVersion

SEED = 0
MAX_VALUES = 4096
ATOL, RTOL = 1e-4, 1e-3
TOLERANCE = f"|new - recorded| <= {ATOL:g} + {RTOL:g} * |recorded|"
MAX_INPUT_ELEMENTS = 1 << 28  # 1 GiB of float32: a typo, not a check input


@dataclass(frozen=True)
class Comparison:
    """How far a rerun's outputs are from the recorded ones."""

    matches: bool
    max_abs_diff: float
    where: str  # the largest deviation, in words


def parse_shape(text: str | Sequence[int], what: str = "check input") -> tuple[int, ...]:
    """`1,3,224,224` (or a sequence of ints) as a shape of positive sizes; `what` names it."""
    try:
        shape = tuple(int(part) for part in (text.split(",") if isinstance(text, str) else text))
    except (TypeError, ValueError):
        shape = ()
    if not shape or any(size < 1 for size in shape):
        raise CheckInputError(
            f"{what} {text!r} is not a shape: give positive sizes such as 1,3,224,224"
        )
    if math.prod(shape) > MAX_INPUT_ELEMENTS:
        raise CheckInputError(f"{what} {list(shape)} has more than 2**28 elements")
    return shape


def output_shapes(model: nn.Module, shape: Sequence[int], device: str | None = None) -> Any:
    """The shape of each tensor `model` outputs on zeros of `shape`: one forward pass."""
    import torch

    try:
        with torch.inference_mode():
            output = model(torch.zeros(tuple(shape), device=device or "cpu"))
    except Exception as exc:  # the model's own words, whatever it raises
        raise CheckInputError(
            f"forward pass on input of shape {list(shape)} failed: "
            f"{type(exc).__name__}: {first_line(exc)}"
        ) from None
    if isinstance(output, torch.Tensor):
        return list(output.shape)
    if isinstance(output, (tuple, list)):
        return [list(o.shape) for o in output if isinstance(o, torch.Tensor)]
    if isinstance(output, dict):
        return {k: list(v.shape) for k, v in output.items() if isinstance(v, torch.Tensor)}
    return type(output).__name__


def run(model: nn.Module, shape: Sequence[int]) -> list[dict[str, Any]]:
    """The fingerprint of `model`'s output on the seeded input of `shape`."""
    import torch

    generator = torch.Generator().manual_seed(SEED)
    example = torch.randn(tuple(shape), generator=generator, dtype=torch.float32)
    try:
        with torch.no_grad():
            output = model.eval()(example)
    except Exception as exc:  # the model's own words, whatever it raises
        raise CheckInputError(
            f"the model rejects check input {list(shape)}: {type(exc).__name__}: {first_line(exc)}"
        ) from None
    outputs = [_fingerprint(path, tensor) for path, tensor in _tensors(output, "output")]
    if not outputs:
        raise CheckInputError(f"the model's output on {list(shape)} holds no tensor to record")
    return outputs


def environment(arch: Arch) -> dict[str, str]:
    """What produced the output besides the weights: torch, torchvision, the arch's code."""
    import torch

    found: dict[str, str] = {"torch": str(torch.__version__)}
    from importlib.metadata import PackageNotFoundError, version  # here: `ls` never needs it

    with contextlib.suppress(PackageNotFoundError):  # read from metadata: no import needed
        found["torchvision"] = version("torchvision")
    if not arch.torchvision:
        found["arch code"] = _code_digest(arch.builder)
    return found


def compare(recorded: list[dict[str, Any]], now: list[dict[str, Any]]) -> Comparison:
    """Compare a rerun's fingerprint with the recorded one, value by value."""
    if [o["path"] for o in recorded] != [o["path"] for o in now]:
        return Comparison(False, math.inf, f"it returns {_paths(now)}, not {_paths(recorded)}")
    matches, largest, where = True, -1.0, ""
    for old, new in zip(recorded, now, strict=True):
        if old["shape"] != new["shape"] or old["dtype"] != new["dtype"]:
            return Comparison(
                False,
                math.inf,
                f"{old['path']} is {new['dtype']} {new['shape']}, "
                f"recorded {old['dtype']} {old['shape']}",
            )
        values = zip(old["indices"], old["values"], new["values"], strict=True)
        pairs = [(f"element {i}", a, b) for i, a, b in values]
        pairs += [(stat, old[stat], new[stat]) for stat in ("mean", "std")]
        for what, a, b in pairs:
            deviation, ok = _deviation(a, b)
            matches = matches and ok
            if deviation > largest:
                largest, where = deviation, f"{old['path']} {what}: recorded {a!r}, now {b!r}"
    return Comparison(matches, max(largest, 0.0), where)


def verdict(version: ModelVersion, recorded: Fingerprint, model: nn.Module) -> CheckResult:
    """Run `model` on the recorded check input and say whether it computes what it did."""
    from registry import architectures

    found = compare(recorded.outputs, run(model, recorded.input_shape))
    detail = f"max abs diff {found.max_abs_diff:.3g} at {found.where}"
    if not found.matches:
        now = environment(architectures.resolve(version.arch, trust=True))
        then = ", ".join(f"{k} {v}" for k, v in recorded.environment.items())
        today = ", ".join(f"{k} {v}" for k, v in now.items())
        detail += f" (tolerance {TOLERANCE}); at push: {then}; now: {today}"
    return CheckResult(version.ref, found.matches, found.max_abs_diff, TOLERANCE, detail)


def _deviation(recorded: float | None, now: float | None) -> tuple[float, bool]:
    """|now - recorded| and whether it is within tolerance; None stands for NaN or infinity."""
    if recorded is None or now is None:
        return (0.0, True) if recorded is None and now is None else (math.inf, False)
    deviation = abs(now - recorded)
    return deviation, deviation <= ATOL + RTOL * abs(recorded)


def _tensors(output: Any, path: str) -> list[tuple[str, torch.Tensor]]:
    """Every tensor in a model's output (a tensor, tuple, list or dict of them), by path."""
    import torch

    if isinstance(output, torch.Tensor):
        return [(path, output)]
    if isinstance(output, Mapping):
        items = [(f"{path}[{key!r}]", value) for key, value in output.items()]
    elif isinstance(output, (tuple, list)):
        items = [(f"{path}[{i}]", value) for i, value in enumerate(output)]
    else:
        return []
    return [found for sub_path, value in items for found in _tensors(value, sub_path)]


def _fingerprint(path: str, tensor: torch.Tensor) -> dict[str, Any]:
    import torch

    flat = tensor.detach().cpu().reshape(-1).to(torch.float64)
    if flat.numel() > MAX_VALUES:
        indices = torch.linspace(0, flat.numel() - 1, MAX_VALUES).round().long()
    else:
        indices = torch.arange(flat.numel())
    finite = flat[torch.isfinite(flat)]
    return {
        "path": path,
        "shape": list(tensor.shape),
        "dtype": str(tensor.dtype).removeprefix("torch."),
        "indices": indices.tolist(),
        "values": [_number(v) for v in flat[indices].tolist()],
        "mean": _number(finite.mean().item()) if finite.numel() else None,
        "std": _number(finite.std().item()) if finite.numel() > 1 else None,
    }


def _number(value: float) -> float | None:
    """A JSON-safe number: NaN and infinities become None (PostgreSQL's JSON has neither)."""
    return value if math.isfinite(value) else None


def _paths(outputs: list[dict[str, Any]]) -> str:
    return ", ".join(o["path"] for o in outputs) or "no tensor"


def _code_digest(builder: Any) -> str:
    """`file.py sha256:<12 hex>` of the module defining the builder: edits show up."""
    module = sys.modules.get(getattr(builder, "__module__", ""))
    source = getattr(module, "__file__", None)
    if not source:
        return "unknown"
    try:
        with open(source, "rb") as file:
            digest = hashlib.sha256(file.read()).hexdigest()[:12]
    except OSError:
        return "unknown"
    return f"{source.rsplit('/', 1)[-1]} sha256:{digest}"
