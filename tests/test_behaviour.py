"""Behaviour checks: the model rebuilt today against its output recorded at push."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import TINY, TINY_CLI

from registry import BehaviourMismatchError, CheckInputError, Registry

EDITABLE = textwrap.dedent(
    """
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(6, 3)

        def forward(self, x):
            return self.layer(x)
    """
)


def test_push_records_and_check_matches(reg: Registry, tiny_model) -> None:
    version = reg.push(tiny_model, check_input=(2, 3, 16, 16), **TINY)
    assert version.check_input == (2, 3, 16, 16)
    assert version.to_json()["check_input"] == [2, 3, 16, 16]
    result = reg.check(version.ref)
    assert (result.ref, result.matches, result.max_abs_diff) == (version.ref, True, 0.0)
    assert reg.load(version.ref, check=True).training is False


def test_a_repeat_push_adds_the_check_a_version_lacked(reg: Registry, tiny_model) -> None:
    version = reg.push(tiny_model, **TINY)
    again = reg.push(tiny_model, check_input="1,3,8,8", **TINY)
    assert (again.ref, again.is_new, again.check_input) == (version.ref, False, (1, 3, 8, 8))
    assert reg.check(version.ref).matches


def test_the_tolerance_allows_for_cpu_thread_counts(reg: Registry) -> None:
    from torchvision.models import resnet18

    torch.manual_seed(0)
    threads = torch.get_num_threads()
    version = reg.push(
        resnet18(weights=None, num_classes=10), arch="resnet18", arch_args={"num_classes": 10},
        check_input="2,3,64,64",
    )  # fmt: skip
    torch.set_num_threads(1)
    try:
        result = reg.check(version.ref)
    finally:
        torch.set_num_threads(threads)
    assert result.matches, result.detail


def test_an_edited_builder_is_caught(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run, cli_reg: Registry
) -> None:
    """Same bytes and arch name, edited code: `check` exits 1, `load(check=True)` raises."""
    folder = tmp_path / "code"
    folder.mkdir()
    source = folder / "editable_models.py"
    source.write_text(EDITABLE)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("PYTHONPATH", str(folder))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    sys.modules.pop("editable_models", None)  # another run's, edited
    import editable_models

    torch.manual_seed(0)
    state = editable_models.Net().state_dict()
    weights = tmp_path / "net.pt"
    torch.save(state, weights)
    code, _, err = run(
        "push", str(weights), "--arch", "editable_models:Net", "--check-input", "4,6"
    )
    assert code == 0, err
    command = [sys.executable, "-m", "registry", "--database-url", cli_reg.settings.database_url,
               "--store", str(tmp_path / "blobs"), "check", "net@v1"]  # fmt: skip
    unchanged = subprocess.run(command, capture_output=True, text=True)
    assert unchanged.returncode == 0, unchanged.stderr
    assert unchanged.stdout == "net@v1: behaviour matches (max abs diff 0)\n"

    source.write_text(EDITABLE.replace("return self.layer(x)", "return self.layer(x) * 1.01"))
    changed = subprocess.run(command, capture_output=True, text=True)
    assert changed.returncode == 1 and changed.stdout == ""
    (line,) = changed.stderr.splitlines()
    assert line.startswith("Error: net@v1 behaves differently: max abs diff ")
    assert "at push: torch " in line and "editable_models.py sha256:" in line
    pushed_code = line.split("at push: ")[1].split(";")[0]
    now_code = line.split("now: ")[1]
    assert pushed_code != now_code  # the arch code's digest moved

    del sys.modules["editable_models"]
    with pytest.raises(BehaviourMismatchError, match="net@v1 behaves differently"):
        cli_reg.load("net@v1", check=True)
    assert cli_reg.check("net@v1").matches is False


def test_a_shape_the_model_rejects_fails_the_push_with_nothing_stored(
    run, cli_reg: Registry, tiny_model, tmp_path: Path
) -> None:
    path = tmp_path / "tiny.pt"
    torch.save(tiny_model.state_dict(), path)
    code, out, err = run("push", str(path), *TINY_CLI, "--check-input", "1,7,16,16")
    assert (code, out) == (1, "")
    (line,) = err.splitlines()
    assert line.startswith("Error: the model rejects check input [1, 7, 16, 16]: RuntimeError: ")
    assert cli_reg.models() == []
    assert run("push", str(path), *TINY_CLI, "--check-input", "1,x")[2] == (
        "Error: check input '1,x' is not a shape: give positive sizes such as 1,3,224,224\n"
    )


def test_check_of_a_version_without_a_fingerprint_says_so(
    run, cli_reg: Registry, tiny_model
) -> None:
    cli_reg.push(tiny_model, name="plain", **TINY)
    code, out, err = run("check", "plain")
    assert (code, out) == (1, "")
    assert err == (
        "Error: plain@v1 was pushed without --check-input, so there is no recorded behaviour "
        "to check; push it again with --check-input SHAPE\n"
    )
    with pytest.raises(CheckInputError):
        cli_reg.load("plain@v1", check=True)


def test_check_json(run, cli_reg: Registry, tiny_model) -> None:
    cli_reg.push(tiny_model, name="tiny", check_input=[1, 3, 8, 8], **TINY)
    code, out, _ = run("check", "tiny", "--json")
    assert code == 0
    data = json.loads(out)
    assert (data["ref"], data["matches"], data["max_abs_diff"]) == ("tiny@v1", True, 0.0)


def test_fingerprint_and_parent_travel_in_a_bundle(
    reg: Registry, tiny_model, tmp_path: Path
) -> None:
    base = reg.push(tiny_model, name="base", **TINY)
    with torch.no_grad():
        tiny_model.head.bias.fill_(0.5)
    child = reg.push(tiny_model, name="child", parent=base.ref, check_input=(1, 3, 8, 8), **TINY)
    reg.export_bundle([child.ref, base.ref], tmp_path / "b.tar")
    target = Registry(home=tmp_path / "target")
    imported = {v.name: v for v in target.import_bundle(tmp_path / "b.tar")}
    assert imported["child"].parent == imported["base"].ref
    assert target.check(imported["child"].ref).matches
    assert target.tensors(imported["child"].ref) == reg.tensors(child.ref)

    reg.export_bundle([child.ref], tmp_path / "child.tar")
    reg.export_bundle([base.ref], tmp_path / "base.tar")
    (alone,) = Registry(home=tmp_path / "third").import_bundle(tmp_path / "child.tar")
    assert alone.parent is None  # its parent is neither in the bundle nor there

    later = Registry(home=tmp_path / "fourth")
    later.push(tiny_model.__class__(4, 5), name="base", **TINY)  # base@v1: other bytes
    (parent,) = later.import_bundle(tmp_path / "base.tar")
    (linked,) = later.import_bundle(tmp_path / "child.tar")
    assert (parent.ref, linked.parent) == ("base@v2", "base@v2")  # found by name and bytes
