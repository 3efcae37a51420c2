"""Tensor diff: manifests settle identical tensors unread; changed ones are read and measured."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import pytest
import torch
from helpers import TINY
from safetensors.torch import save_file

from registry import IntegrityError, NotFoundError, Registry


def tensor_bytes(blob: Path, name: str) -> tuple[int, int]:
    """Where a tensor's bytes lie in a safetensors file: (offset, length)."""
    with open(blob, "rb") as file:
        header_size = struct.unpack("<Q", file.read(8))[0]
        header = json.loads(file.read(header_size))
    start, end = header[name]["data_offsets"]
    return 8 + header_size + start, end - start


def flip(blob: Path, name: str) -> None:
    offset, _ = tensor_bytes(blob, name)
    blob.chmod(0o644)
    with open(blob, "r+b") as file:
        file.seek(offset)
        byte = file.read(1)
        file.seek(offset)
        file.write(bytes([byte[0] ^ 0xFF]))


def test_fine_tune_reads_only_the_changed_tensors(reg: Registry, tmp_path: Path) -> None:
    """resnet18 and a copy with only `fc` changed: the rest is identical without being read.

    The proof: the base blob's bytes of an identical tensor are damaged after
    the push, and diff still calls it identical, with no integrity error;
    damaging `fc.weight` instead is caught, because diff reads that one.
    """
    from torchvision.models import resnet18

    torch.manual_seed(0)
    model = resnet18(weights=None, num_classes=10)
    save_file(model.state_dict(), tmp_path / "base.safetensors")
    with torch.no_grad():
        model.fc.weight.mul_(1.5)
        model.fc.bias.add_(0.25)
    save_file(model.state_dict(), tmp_path / "ft.safetensors")
    base = reg.push(tmp_path / "base.safetensors", arch="resnet18", arch_args={"num_classes": 10})
    tuned = reg.push(
        tmp_path / "ft.safetensors",
        arch="resnet18",
        name="cifar-resnet",
        arch_args={"num_classes": 10},
        parent=base.ref,
    )
    base_blob = reg.store.path(base.sha256)  # type: ignore[attr-defined]
    flip(base_blob, "layer4.1.conv2.weight")

    found = reg.diff(tuned.ref)
    assert (found.a, found.b) == (base.ref, tuned.ref)
    changed = {t.name: t for t in found.tensors if t.status != "identical"}
    assert sorted(changed) == ["fc.bias", "fc.weight"]
    assert found.summary == {
        "identical": len(model.state_dict()) - 2,
        "changed": 2,
        "added": 0,
        "removed": 0,
        "reshaped": 0,
    }
    assert changed["fc.bias"].max_abs == pytest.approx(0.25, abs=1e-6)

    flip(base_blob, "fc.weight")
    with pytest.raises(IntegrityError, match=r"fc\.weight.*expected blake3:[0-9a-f]{56} but"):
        reg.diff(base.ref, tuned.ref)


def test_max_abs_and_rel_l2_match_a_hand_computation(reg: Registry, tiny_model) -> None:
    a = reg.push(tiny_model, name="a", **TINY)
    before = tiny_model.head.weight.detach().clone().double()
    with torch.no_grad():
        tiny_model.head.weight[0, 0] += 0.5
        tiny_model.head.weight[1, 2] -= 0.125
    b = reg.push(tiny_model, name="b", **TINY)
    after = tiny_model.head.weight.detach().double()

    (change,) = [t for t in reg.diff(a.ref, b.ref).tensors if t.status == "changed"]
    delta = (after - before).flatten().tolist()
    expected_rel = math.sqrt(sum(d * d for d in delta)) / math.sqrt(
        sum(x * x for x in before.flatten().tolist())
    )
    assert change.name == "head.weight"
    assert change.max_abs == max(abs(d) for d in delta)
    assert change.rel_l2 == pytest.approx(expected_rel, rel=1e-12)


def test_added_removed_and_reshaped_across_architectures(reg: Registry, tiny_model) -> None:
    import tiny_models

    torch.manual_seed(1)
    wide = tiny_models.TinyNet(width=4, num_classes=7)
    a = reg.push(tiny_model, name="a", **TINY)
    b = reg.push(
        wide, name="b", arch="tiny_models:TinyNet", arch_args={"num_classes": 7, "width": 4}
    )
    statuses = {t.name: t.status for t in reg.diff(a.ref, b.ref).tensors}
    assert statuses["head.weight"] == statuses["head.bias"] == "reshaped"

    from torch import nn

    c = reg.push(
        nn.Linear(3, 2),
        name="c",
        arch="torch.nn:Linear",
        arch_args={"in_features": 3, "out_features": 2},
    )
    found = reg.diff(a.ref, c.ref)
    assert found.summary["removed"] == len(tiny_model.state_dict())
    assert [t.name for t in found.tensors if t.status == "added"] == ["weight", "bias"]


def test_a_version_against_itself_is_all_identical_without_its_blob(
    reg: Registry, tiny_model
) -> None:
    version = reg.push(tiny_model, **TINY)
    reg.store.path(version.sha256).unlink()  # type: ignore[attr-defined]
    found = reg.diff(version.ref, version.ref)
    assert found.summary["identical"] == len(tiny_model.state_dict()) == len(found.tensors)


def test_diff_of_a_version_without_parent_is_one_line(run, cli_reg: Registry, tiny_model) -> None:
    cli_reg.push(tiny_model, name="root", **TINY)
    assert run("diff", "root@v1") == (
        1,
        "",
        "Error: parent of root@v1 not found; it was pushed without --parent; give two "
        "versions: registry diff A B\n",
    )
    with pytest.raises(NotFoundError):
        cli_reg.diff("root@v1")


def test_cli_diff_groups_by_module_and_speaks_the_specs_json(
    run, cli_reg: Registry, tiny_model
) -> None:
    cli_reg.push(tiny_model, name="base", **TINY)
    with torch.no_grad():
        tiny_model.head.weight.zero_()
    cli_reg.push(tiny_model, name="ft", parent="base@v1", **TINY)
    code, out, _ = run("diff", "ft")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "diff base@v1 ft@v1"
    assert lines[1].split() == ["features.*", "identical", "7", "tensors"]
    assert lines[2].split()[:3] == ["head.weight", "changed", "max_abs"]
    assert lines[3].split() == ["head.bias", "identical"]
    assert lines[-1] == "8 identical, 1 changed, 0 added, 0 removed, 0 reshaped"

    code, out, _ = run("diff", "base@v1", "ft@v1", "--json")
    data = json.loads(out)
    assert set(data) == {"a", "b", "summary", "tensors"}
    assert (data["a"], data["b"]) == ("base@v1", "ft@v1")
    assert data["tensors"][0] == {
        "name": "features.0.weight",
        "status": "identical",
        "max_abs": None,
        "rel_l2": None,
    }
    (changed,) = [t for t in data["tensors"] if t["status"] == "changed"]
    assert changed["name"] == "head.weight" and changed["rel_l2"] == pytest.approx(1.0)
