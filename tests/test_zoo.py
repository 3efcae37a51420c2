"""Every torchvision builder round-trips: the tutorial's save, push with no arguments, load.

For each name `torchvision.models.list_models()` returns, as a new user would:
build it with `weights=None` (and `weights_backbone=None`), save its state_dict
the tutorial's way, `push --arch NAME` with no arguments, load it, and check it
is in eval mode and computes exactly what the original computes on a fixed
input. Builders above MAX_PARAMS are skipped, and say so. Each model's file,
version and blob are removed once it is checked, so the sweep's disk use stays
that of its largest model (vit_l_32, 1.2 GB) rather than the zoo's tens of GB.

It takes about 7 minutes on two cores (119 models); `make test-fast` leaves it out.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import all_eval
from torch import nn

from registry import Registry, architectures

pytestmark = pytest.mark.slow

MAX_PARAMS = 600_000_000  # vit_h_14 (632M) and regnet_y_128gf (645M) are above it

# The smallest cheap input each family accepts (first matching prefix wins).
INPUTS: list[tuple[str, tuple[int, ...]]] = [
    ("vit_", (1, 3, 224, 224)),  # asserts its image size
    ("maxvit_", (1, 3, 224, 224)),
    ("inception_v3", (1, 3, 96, 96)),
    ("quantized_inception_v3", (1, 3, 96, 96)),
    ("s3d", (1, 3, 16, 224, 224)),  # its last pooling needs 2x7x7
    ("mvit_", (1, 3, 16, 224, 224)),  # built for exactly 16x224x224
    ("r3d_", (1, 3, 4, 32, 32)),
    ("mc3_", (1, 3, 4, 32, 32)),
    ("r2plus1d_", (1, 3, 4, 32, 32)),
    ("swin3d_", (1, 3, 4, 32, 32)),
    ("raft_", (1, 3, 128, 128)),  # a pair of images
]
DETECTION = ("fasterrcnn_", "maskrcnn_", "keypointrcnn_", "retinanet_", "fcos_", "ssd")


def model_names() -> list[str]:
    from torchvision import models

    return models.list_models()


def example_input(name: str) -> tuple[Any, ...]:
    """The positional arguments of one forward pass, the same on every call."""
    generator = torch.Generator().manual_seed(0)
    if name.startswith(DETECTION):
        return ([torch.rand(3, 64, 64, generator=generator)],)
    shape = next((s for prefix, s in INPUTS if name.startswith(prefix)), (1, 3, 64, 64))
    image = torch.randn(shape, generator=generator)
    if name.startswith("raft_"):
        return image, torch.randn(shape, generator=generator)
    return (image,)


def for_comparison(model: nn.Module) -> nn.Module:
    """Post-processing settings that make a randomly initialised detector's outputs testable.

    With random weights some detectors keep no box above their score threshold,
    and every detector resizes to 800 pixels; both copies get the same settings,
    which touch no weights.
    """
    for module in model.modules():
        if hasattr(module, "score_thresh"):
            module.score_thresh = 0.0
        if type(module).__name__ == "GeneralizedRCNNTransform":
            module.min_size, module.max_size = (128,), 128
    return model


def same_output(a: Any, b: Any) -> bool:
    """Bitwise equality through the tensors, lists and dicts a model returns."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, Mapping):
        return (
            isinstance(b, Mapping)
            and a.keys() == b.keys()
            and all(same_output(a[k], b[k]) for k in a)
        )
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same_output(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def has_values(output: Any) -> bool:
    """Whether an output holds at least one number (an empty detection compares nothing)."""
    if isinstance(output, torch.Tensor):
        return output.numel() > 0
    if isinstance(output, Mapping):
        return any(has_values(v) for v in output.values())
    if isinstance(output, (list, tuple)):
        return any(has_values(v) for v in output)
    return False


@pytest.fixture(scope="module")
def zoo_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    home = tmp_path_factory.mktemp("zoo")
    reg = Registry(home=home)
    yield reg
    reg.close()


@pytest.mark.parametrize("name", model_names())
def test_builder_round_trips(zoo_registry: Registry, tmp_path: Path, name: str) -> None:
    reg = zoo_registry
    arch = architectures.resolve(name)
    num_params = architectures.count_params(arch.build({}))
    if num_params > MAX_PARAMS:
        pytest.skip(f"{name} has {num_params:,} parameters, above the zoo test's {MAX_PARAMS:,}")

    torch.manual_seed(0)
    original = arch.builder(**arch.neutral_arguments()).eval()
    path = tmp_path / "model_weights.pth"
    torch.save(original.state_dict(), path)
    try:
        version = reg.push(path, arch=name)
        assert (version.arch, version.arch_args, version.num_params) == (name, {}, num_params)
        model = reg.load(version.ref)
        assert type(model) is type(original)
        assert all_eval(model)
        inputs = example_input(name)
        with torch.inference_mode():
            expected = for_comparison(original)(*inputs)
            got = for_comparison(model)(*inputs)
        assert has_values(expected)
        assert same_output(expected, got)
    finally:
        path.unlink()
        for version in reg.search():
            reg.delete(version.ref)
        reg.gc()
    assert [p for p in reg.store.root.rglob("*") if p.is_file()] == []
