"""Figure 8: `Registry.diff` of a model against a fine-tune of its last layer.

Two checkpoints of the arch (torchvision, weights=None, seed 0: nothing
downloaded) saved the tutorial's way: v1, and a fine-tune in which only the
last layer changed, pushed to a fresh registry, the second with `parent=`
the first. Nothing is written while timing; both sides read the same two
files' bytes, warm in the page cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from figures import Workspace
from harness import Contender, Result, Target, compare

from registry import Registry


@dataclass(frozen=True)
class Pair:
    """A registry home holding v1 of an arch and its fine-tune v2, and both files."""

    home: Path
    v1: str
    v2: str
    files: tuple[Path, Path]


_pairs: dict[str, Pair] = {}


def pair(ws: Workspace, arch: str) -> Pair:
    """v1 (the workspace's checkpoint) and a fine-tune of its last layer, pushed once."""
    if arch in _pairs:
        return _pairs[arch]
    import torch

    v1_path = ws.checkpoint(arch)
    state = ws.model(arch).state_dict()
    last_weight, last_bias = (k for k in state if k.rsplit(".", 1)[0] == _last_layer(state))
    generator = torch.Generator().manual_seed(1)
    tuned = dict(state)  # the fine-tune: a new last layer, every other tensor shared
    tuned[last_weight] = state[last_weight] + 0.01 * torch.randn(
        state[last_weight].shape, generator=generator
    )
    tuned[last_bias] = state[last_bias] + 0.01
    v2_path = ws.root / f"{arch}-fine-tuned.pth"
    torch.save(tuned, v2_path)
    home = ws.root / f"diff-{arch}"
    with Registry(home=home) as reg:
        v1 = reg.push(v1_path, arch=arch).ref
        v2 = reg.push(v2_path, arch=arch, parent=v1).ref
        summary = reg.diff(v1, v2).summary
    assert summary["changed"] == 2 and summary["identical"] == len(state) - 2, summary
    _pairs[arch] = Pair(home, v1, v2, (v1_path, v2_path))
    return _pairs[arch]


def diff(ws: Workspace, arch: str, repeats: int, targets: bool) -> list[Result]:
    """`reg.diff(v1, v2)` against plain `torch.load` of both files."""
    import torch

    p = pair(ws, arch)

    def load_both(_: object) -> None:
        for path in p.files:
            torch.load(path, weights_only=True)

    reg = Registry(home=p.home)
    try:
        return compare(
            f"8 · {arch}",
            [
                Contender("`torch.load` of both files, full loads (baseline)", load_both),
                Contender(
                    f"`reg.diff({p.v1!r}, {p.v2!r})`, engine open",
                    lambda _: reg.diff(p.v1, p.v2),
                    targets=(Target(0.2, "ratio"),) if targets else (),
                ),
            ],
            repeats,
        )
    finally:
        reg.close()


def _last_layer(state: dict[str, object]) -> str:
    """The module owning the state_dict's last weight: vgg16's `classifier.6`."""
    return next(k for k in reversed(state) if k.endswith(".weight")).rsplit(".", 1)[0]
