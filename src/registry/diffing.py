"""Tensor diff: what changed between two versions, read as little as possible.

Tensors are matched by name across the two manifests, whatever the
architectures. Equal shape, dtype and digest: identical, and neither blob is
read. Otherwise both tensors are read, one pair at a time, each checked
against its manifest digest (so no whole-blob hash is needed), and compared
in float64 slices of CHUNK elements: memory stays bounded by the largest
tensor, never the model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from registry.errors import IntegrityError
from registry.manifests import tensor_digest
from registry.records import Diff, TensorChange, TensorInfo

if TYPE_CHECKING:
    import torch

CHUNK = 1 << 19  # elements compared at once: 4 MiB of float64 per side, cache-friendly

Reader = Callable[[str], "torch.Tensor"]


def unread(a: Sequence[TensorInfo], b: Sequence[TensorInfo]) -> bool:
    """True when the manifests alone settle the diff: no tensor needs reading."""
    by_name = {t.name: t for t in a}
    return all(not _needs_reading(by_name[t.name], t) for t in b if t.name in by_name)


def compare(
    a_ref: str,
    b_ref: str,
    a: Sequence[TensorInfo],
    b: Sequence[TensorInfo],
    read_a: Reader | None,
    read_b: Reader | None,
) -> Diff:
    """Diff manifest `a` against `b`; the readers fetch the tensors whose digests differ."""
    in_b = {t.name: t for t in b}
    changes = []
    for old in a:
        new = in_b.get(old.name)
        if new is None:
            changes.append(TensorChange(old.name, "removed", detail=kind(old)))
        elif (old.dtype, old.shape) != (new.dtype, new.shape):
            changes.append(TensorChange(old.name, "reshaped", detail=f"{kind(old)} -> {kind(new)}"))
        elif not _needs_reading(old, new):
            changes.append(TensorChange(old.name, "identical"))
        else:
            assert read_a is not None and read_b is not None
            left = _checked(read_a, old, a_ref)
            right = _checked(read_b, new, b_ref)
            changes.append(_measure(old.name, left, right))
            del left, right  # before the next pair is read
    in_a = {t.name for t in a}
    changes += [TensorChange(t.name, "added", detail=kind(t)) for t in b if t.name not in in_a]
    return Diff(a_ref, b_ref, tuple(changes))


def _needs_reading(old: TensorInfo, new: TensorInfo) -> bool:
    same_kind = (old.dtype, old.shape) == (new.dtype, new.shape)
    return same_kind and (old.digest is None or old.digest != new.digest)


def _checked(read: Reader, info: TensorInfo, ref: str) -> torch.Tensor:
    """Read one tensor and check it against its manifest digest."""
    tensor = read(info.name)
    if info.digest is not None:
        actual = tensor_digest(tensor, like=info.digest)
        if actual != info.digest:
            raise IntegrityError(f"{ref} (tensor {info.name})", info.digest, actual)
    return tensor


def _measure(name: str, a: torch.Tensor, b: torch.Tensor) -> TensorChange:
    """max |B - A| and ||B - A|| / ||A||, in float64, CHUNK elements at a time."""
    import torch

    left, right = a.reshape(-1), b.reshape(-1)
    max_abs = diff_sq = a_sq = 0.0
    for start in range(0, left.numel(), CHUNK):
        x = left[start : start + CHUNK].to(torch.float64)
        delta = right[start : start + CHUNK].to(torch.float64).sub_(x)  # in place: one buffer
        low, high = torch.aminmax(delta)  # one read, where abs() then max() are two passes
        max_abs = max(max_abs, -low.item(), high.item())
        diff_sq += torch.dot(delta, delta).item()
        a_sq += torch.dot(x, x).item()
    if diff_sq == 0 and max_abs == 0:  # the bytes differ, not the values (-0.0, NaN payloads)
        return TensorChange(name, "identical")
    rel_l2 = math.sqrt(diff_sq) / math.sqrt(a_sq) if a_sq else math.inf
    return TensorChange(name, "changed", max_abs=max_abs, rel_l2=rel_l2)


def kind(info: TensorInfo) -> str:
    """`float32 [1000, 4096]`: how a diff shows an added, removed or reshaped tensor."""
    return f"{info.dtype} {list(info.shape)}"


def grouped(diff: Diff) -> list[tuple[str, str, str]]:
    """The text view: (tensors, status, detail) lines, a module whose tensors all share
    one status collapsed to `prefix.*` (so `features.* identical` reads at a glance)."""
    lines: list[tuple[str, str, str]] = []
    by_top: dict[str, list[TensorChange]] = {}
    for change in diff.tensors:
        by_top.setdefault(change.name.split(".", 1)[0], []).append(change)
    for top, changes in by_top.items():
        lines += _collapse(top, changes, depth=1)
    return lines


def _collapse(prefix: str, changes: list[TensorChange], depth: int) -> list[tuple[str, str, str]]:
    statuses = {c.status for c in changes}
    if len(changes) > 1 and len(statuses) == 1 and statuses <= {"identical", "added", "removed"}:
        return [(f"{prefix}.*", changes[0].status, f"{len(changes)} tensors")]
    if len(changes) == 1 and changes[0].name.count(".") < depth:
        return [_line(changes[0])]
    deeper: dict[str, list[TensorChange]] = {}
    for change in changes:
        parts = change.name.split(".")
        key = ".".join(parts[: depth + 1]) if len(parts) > depth + 1 else change.name
        deeper.setdefault(key, []).append(change)
    lines = []
    for key, members in deeper.items():
        if len(members) == 1 and members[0].name == key:
            lines.append(_line(members[0]))
        else:
            lines += _collapse(key, members, depth + 1)
    return lines


def _line(change: TensorChange) -> tuple[str, str, str]:
    if change.status == "changed":
        detail = f"max_abs {change.max_abs:<10.4g} rel_l2 {change.rel_l2:.4g}"
    else:
        detail = change.detail
    return change.name, change.status, detail
