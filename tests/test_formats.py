"""Checkpoint formats end to end: push, pull bit-exact, load in eval mode, through API and CLI.

Every file `push` accepts (spec, "Checkpoint files push accepts"), what it records
as `format` and `details`, the whole-model pickle that is read only when trusted
and never again, and hostile files that must be refused in one line, nothing stored.
Runs on SQLite and, with REGISTRY_TEST_DATABASE_URL, on PostgreSQL.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import random
import struct
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import SMALL_ARCH
from helpers import (
    MARKER,
    TINY_ARCH,
    TINY_ARGS,
    Payload,
    all_eval,
    outputs_equal,
    same_tensors,
    tiny,
)
from safetensors.torch import load_file, save_file
from torch import nn

from registry import (
    ArchitectureError,
    ArchitectureMismatchError,
    CheckpointError,
    ModelVersion,
    Registry,
    UnsafeCheckpointError,
)

TINY_CLI_ARGS = (
    "--arch", TINY_ARCH, "--name", "tiny", "--arg", "width=4", "--arg", "num_classes=5",
)  # fmt: skip


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def stored_files(store: Path) -> list[Path]:
    """Every file under the blob store: blobs and temp files alike."""
    return sorted(p for p in store.rglob("*") if p.is_file()) if store.exists() else []


def assert_nothing_stored(reg: Registry) -> None:
    assert stored_files(reg.store.root) == []
    assert reg.models() == []


def assert_one_line_error(code: int, out: str, err: str) -> None:
    assert (code, out) == (1, "")
    assert err.startswith("Error: ") and err.count("\n") == 1 and err.endswith("\n")
    assert "Traceback" not in err


def assert_cli_stored_nothing(run, tmp_path: Path) -> None:
    assert stored_files(tmp_path / "blobs") == []
    assert run("ls", "--json") == (0, "[]\n", "")


def trained(model: nn.Module) -> dict:
    """One SGD-with-momentum step on `model` (changing it); the optimizer's state_dict."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    model(torch.randn(2, 3, 16, 16)).sum().backward()
    optimizer.step()
    model.eval()
    return optimizer.state_dict()


def refuse_torch_load(*args, **kwargs):
    """Stands in for torch.load where a test proves nothing is unpickled."""
    raise AssertionError("torch.load was called")


def with_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in state.items()}


# --- every accepted format: how it is written, what push records -----------------------------

Writer = Callable[[nn.Module, Path], None]


def save_training_checkpoint(model: nn.Module, path: Path) -> None:
    optimizer_state = trained(model)
    torch.save(
        {
            "epoch": 5,
            "model_state_dict": model.state_dict(),
            "optimizer_state_dict": optimizer_state,
            "loss": 0.25,
        },
        path,
    )


FORMATS: list[tuple[str, str, Writer, str, dict]] = [
    (
        "zip",
        ".pth",
        lambda m, p: torch.save(m.state_dict(), p),
        "state_dict",
        {"serialization": "zip"},
    ),
    (
        "legacy",
        ".pth",
        lambda m, p: torch.save(m.state_dict(), p, _use_new_zipfile_serialization=False),
        "state_dict",
        {"serialization": "legacy"},
    ),
    (
        "training-checkpoint",
        ".tar",
        save_training_checkpoint,
        "checkpoint",
        {"serialization": "zip", "key": "model_state_dict"},
    ),
    (
        "state_dict-key",
        ".ckpt",
        lambda m, p: torch.save({"epoch": 1, "state_dict": m.state_dict()}, p),
        "checkpoint",
        {"serialization": "zip", "key": "state_dict"},
    ),
    (
        "dataparallel",
        ".pth",
        lambda m, p: torch.save(with_prefix(m.state_dict(), "module."), p),
        "state_dict",
        {"serialization": "zip", "stripped_prefix": "module."},
    ),
    (
        "compiled",
        ".pth",
        lambda m, p: torch.save(with_prefix(m.state_dict(), "_orig_mod."), p),
        "state_dict",
        {"serialization": "zip", "stripped_prefix": "_orig_mod."},
    ),
    (
        "dataparallel-checkpoint",
        ".pth",
        lambda m, p: torch.save({"model": with_prefix(m.state_dict(), "module.")}, p),
        "checkpoint",
        {"serialization": "zip", "key": "model", "stripped_prefix": "module."},
    ),
    (
        "safetensors",
        ".safetensors",
        lambda m, p: save_file(m.state_dict(), p),
        "safetensors",
        {},
    ),
    (
        "compiled-safetensors",
        ".safetensors",
        lambda m, p: save_file(with_prefix(m.state_dict(), "_orig_mod."), p),
        "safetensors",
        {"stripped_prefix": "_orig_mod."},
    ),
]
FORMAT_IDS = [case[0] for case in FORMATS]
OPTIONAL_DETAILS = ("serialization", "key", "stripped_prefix", "class")


def assert_details(details: dict, expected: dict) -> None:
    """`details` holds exactly the expected format fields, and none of the others."""
    recorded = {k: details[k] for k in OPTIONAL_DETAILS if k in details}
    assert recorded == expected


def round_trip(reg: Registry, path: Path, original: nn.Module, **push) -> ModelVersion:
    """Push `path`, pull it back bit-exact, load it: eval mode, same weights, same outputs."""
    push = {"arch": TINY_ARCH, "name": "tiny", "arch_args": TINY_ARGS, **push}
    version = reg.push(path, **push)
    assert (version.sha256, version.size) == (sha256(path), path.stat().st_size)
    pulled = reg.pull(version.ref, path.parent / "pulled" / path.name)
    assert pulled.read_bytes() == path.read_bytes()
    model = reg.load(version.ref)
    assert type(model) is type(original)
    assert all_eval(model)
    assert same_tensors(dict(model.state_dict()), dict(original.state_dict()))
    assert outputs_equal(original, model)
    return version


@pytest.mark.parametrize(("case", "suffix", "write", "format", "details"), FORMATS, ids=FORMAT_IDS)
def test_api_round_trip(
    reg: Registry,
    tiny_model: nn.Module,
    tmp_path: Path,
    case: str,
    suffix: str,
    write: Writer,
    format: str,
    details: dict,
) -> None:
    path = tmp_path / f"{case}{suffix}"
    write(tiny_model, path)
    version = round_trip(reg, path, tiny_model)
    assert version.format == format
    assert_details(version.details, details)
    assert version.weights_sha256 is None
    assert reg.get("tiny@v1").details == version.details
    assert same_tensors(reg.state_dict("tiny@v1"), dict(tiny_model.state_dict()))


@pytest.mark.parametrize(("case", "suffix", "write", "format", "details"), FORMATS, ids=FORMAT_IDS)
def test_cli_round_trip(
    run,
    tiny_model: nn.Module,
    tmp_path: Path,
    case: str,
    suffix: str,
    write: Writer,
    format: str,
    details: dict,
) -> None:
    path = tmp_path / f"{case}{suffix}"
    write(tiny_model, path)
    code, out, err = run("push", str(path), *TINY_CLI_ARGS, "--json")
    assert (code, err) == (0, "")
    pushed = json.loads(out)
    assert (pushed["ref"], pushed["sha256"], pushed["format"]) == ("tiny@v1", sha256(path), format)
    assert_details(pushed["details"], details)
    assert run("pull", "tiny@v1") == (0, f"tiny-v1{suffix}\n", "")
    assert (tmp_path / f"tiny-v1{suffix}").read_bytes() == path.read_bytes()
    code, out, err = run("load", "tiny@v1", "--input-shape", "1,3,16,16", "--json")
    assert (code, err) == (0, "")
    assert json.loads(out) == {
        "ref": "tiny@v1",
        "class": "tiny_models.TinyNet",
        "num_params": sum(p.numel() for p in tiny_model.parameters()),
        "training": False,
        "output_shape": [1, 5],
    }


def test_tutorial_state_dict_of_a_torchvision_model(
    reg: Registry, small_file: Path, small_model: nn.Module
) -> None:
    version = round_trip(
        reg, small_file, small_model, arch=SMALL_ARCH, name=None, arch_args={"num_classes": 10}
    )
    assert (version.ref, version.format) == (f"{SMALL_ARCH}@v1", "state_dict")
    assert_details(version.details, {"serialization": "zip"})


def test_legacy_training_checkpoint(reg: Registry, tiny_model: nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "old.pth"
    optimizer_state = trained(tiny_model)
    checkpoint = {"epoch": 3, "model_state_dict": tiny_model.state_dict(), "loss": 0.5}
    checkpoint["optimizer_state_dict"] = optimizer_state
    torch.save(checkpoint, path, _use_new_zipfile_serialization=False)
    version = round_trip(reg, path, tiny_model)
    assert version.format == "checkpoint"
    assert_details(version.details, {"serialization": "legacy", "key": "model_state_dict"})


# --- training checkpoints holding more than one state_dict -----------------------------------


def other_weights(seed: int, width: int = 4) -> nn.Module:
    return tiny(seed, width=width)


@pytest.mark.parametrize(("misfit", "fit"), [("ema", "model"), ("model", "ema")])
def test_checkpoint_takes_the_state_dict_that_fits(
    reg: Registry, tiny_model: nn.Module, tmp_path: Path, misfit: str, fit: str
) -> None:
    """A wider net's weights under one known key, the model's under another: the fit wins."""
    path = tmp_path / "checkpoint.pth"
    wide = other_weights(seed=1, width=8)
    torch.save({misfit: wide.state_dict(), fit: tiny_model.state_dict(), "step": 10}, path)
    version = round_trip(reg, path, tiny_model)
    assert version.format == "checkpoint"
    assert_details(version.details, {"serialization": "zip", "key": fit})


def test_checkpoint_where_nothing_fits_names_the_mismatch(reg: Registry, tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pth"
    torch.save({"model": other_weights(seed=1, width=8).state_dict()}, path)
    with pytest.raises(ArchitectureMismatchError, match=r"mis-shaped key"):
        reg.push(path, arch=TINY_ARCH, name="tiny", arch_args=TINY_ARGS)
    assert_nothing_stored(reg)


@pytest.fixture
def two_fitting(tmp_path: Path, tiny_model: nn.Module) -> tuple[Path, nn.Module]:
    """A checkpoint whose "model" and "ema" both fit; returns it and the "ema" model."""
    ema = other_weights(seed=7)
    path = tmp_path / "two.pth"
    torch.save({"model": tiny_model.state_dict(), "ema": ema.state_dict(), "epoch": 9}, path)
    return path, ema


def test_key_chooses_the_entry(
    reg: Registry, two_fitting: tuple[Path, nn.Module], tiny_model: nn.Module
) -> None:
    path, ema = two_fitting
    default = round_trip(reg, path, tiny_model, name="default")
    assert_details(default.details, {"serialization": "zip", "key": "model"})
    chosen = round_trip(reg, path, ema, name="chosen", key="ema")
    assert chosen.format == "checkpoint"
    assert_details(chosen.details, {"serialization": "zip", "key": "ema"})


def test_cli_key_chooses_the_entry(
    run, two_fitting: tuple[Path, nn.Module], tmp_path: Path
) -> None:
    path, ema = two_fitting
    code, out, err = run("push", str(path), *TINY_CLI_ARGS, "--key", "ema", "--json")
    assert (code, err) == (0, "")
    assert json.loads(out)["details"]["key"] == "ema"
    assert run("pull", "tiny@v1", "--format", "safetensors") == (0, "tiny-v1.safetensors\n", "")
    assert same_tensors(load_file(tmp_path / "tiny-v1.safetensors"), dict(ema.state_dict()))


def test_cli_key_naming_a_missing_entry_lists_the_keys(
    run, two_fitting: tuple[Path, nn.Module], tmp_path: Path
) -> None:
    path, _ = two_fitting
    code, out, err = run("push", str(path), *TINY_CLI_ARGS, "--key", "optimizer")
    assert_one_line_error(code, out, err)
    assert err.endswith(" has no state_dict under key 'optimizer'; its keys: model, ema, epoch\n")
    assert_cli_stored_nothing(run, tmp_path)


def test_key_naming_an_entry_that_is_no_state_dict(
    reg: Registry, two_fitting: tuple[Path, nn.Module]
) -> None:
    path, _ = two_fitting
    with pytest.raises(CheckpointError, match=r"no state_dict under key 'epoch'"):
        reg.push(path, arch=TINY_ARCH, name="tiny", arch_args=TINY_ARGS, key="epoch")
    assert_nothing_stored(reg)


def test_same_bytes_with_another_key_gives_that_keys_weights(
    reg: Registry, two_fitting: tuple[Path, nn.Module]
) -> None:
    path, ema = two_fitting
    reg.push(path, arch=TINY_ARCH, name="tiny", arch_args=TINY_ARGS)
    chosen = reg.push(path, arch=TINY_ARCH, name="tiny", arch_args=TINY_ARGS, key="ema")
    assert chosen.details["key"] == "ema"
    assert same_tensors(reg.state_dict(chosen.ref), dict(ema.state_dict()))


# --- pull --format safetensors ----------------------------------------------------------------


@pytest.mark.parametrize("case", ["zip", "legacy", "dataparallel-checkpoint"])
def test_pull_as_safetensors(
    reg: Registry, tiny_model: nn.Module, tmp_path: Path, case: str
) -> None:
    _, suffix, write, _, _ = FORMATS[FORMAT_IDS.index(case)]
    path = tmp_path / f"weights{suffix}"
    write(tiny_model, path)
    reg.push(path, arch=TINY_ARCH, name="team/tiny", arch_args=TINY_ARGS)
    assert reg.pull("team/tiny@v1", format="safetensors") == Path("tiny-v1.safetensors")
    converted = load_file(tmp_path / "tiny-v1.safetensors")
    assert same_tensors(converted, dict(tiny_model.state_dict()))
    # and the converted file is itself a checkpoint push accepts
    again = round_trip(reg, tmp_path / "tiny-v1.safetensors", tiny_model)
    assert again.format == "safetensors"


def test_cli_pull_as_safetensors(run, tiny_model: nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "model_weights.pth"
    torch.save(tiny_model.state_dict(), path)
    assert run("push", str(path), *TINY_CLI_ARGS)[0] == 0
    assert run("pull", "tiny", "--format", "safetensors") == (0, "tiny-v1.safetensors\n", "")
    converted = load_file(tmp_path / "tiny-v1.safetensors")
    assert same_tensors(converted, dict(tiny_model.state_dict()))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code, out, err = run("pull", "tiny@v1", "--format", "safetensors", "-o", str(out_dir))
    assert (code, out, err) == (0, f"{out_dir / 'tiny-v1.safetensors'}\n", "")
    assert (out_dir / "tiny-v1.safetensors").read_bytes() == (
        tmp_path / "tiny-v1.safetensors"
    ).read_bytes()


def test_pull_in_an_unknown_format_is_refused(run, reg: Registry, tiny_model: nn.Module) -> None:
    reg.push(tiny_model, arch=TINY_ARCH, name="tiny", arch_args=TINY_ARGS)
    with pytest.raises(ValueError, match="format"):
        reg.pull("tiny@v1", format="onnx")
    code, out, err = run("pull", "tiny@v1", "--format", "onnx")
    assert (code, out) == (2, "") and "Invalid value for '--format'" in err
    assert not Path("tiny-v1.onnx").exists() and not Path("tiny-v1.pt").exists()


# --- whole-model pickles ----------------------------------------------------------------------


@pytest.fixture
def pickled_model(tmp_path: Path, tiny_model: nn.Module) -> Path:
    path = tmp_path / "model.pth"
    torch.save(tiny_model, path)
    return path


def test_untrusted_pickle_is_refused_and_nothing_stored(reg: Registry, pickled_model: Path) -> None:
    with pytest.raises(UnsafeCheckpointError) as caught:
        reg.push(pickled_model, arch=TINY_ARCH, name="tiny", arch_args=TINY_ARGS)
    message = str(caught.value)
    assert "\n" not in message
    assert "holds a pickled tiny_models.TinyNet; unpickling it would run code" in message
    assert "--trust-pickle" in message
    assert_nothing_stored(reg)


def test_cli_untrusted_pickle_is_refused_and_nothing_stored(
    run, pickled_model: Path, tmp_path: Path
) -> None:
    code, out, err = run("push", str(pickled_model), *TINY_CLI_ARGS)
    assert_one_line_error(code, out, err)
    assert "unpickling it would run code" in err and "--trust-pickle" in err
    assert_cli_stored_nothing(run, tmp_path)


@pytest.mark.parametrize("serialization", ["zip", "legacy"])
def test_trusted_pickle_is_stored_with_a_safe_copy(
    reg: Registry,
    tiny_model: nn.Module,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    serialization: str,
) -> None:
    path = tmp_path / "model.pth"
    torch.save(tiny_model, path, _use_new_zipfile_serialization=serialization == "zip")
    version = round_trip(reg, path, tiny_model, trust_pickle=True)
    assert version.format == "pickle"
    assert_details(
        version.details, {"serialization": serialization, "class": "tiny_models:TinyNet"}
    )
    assert version.weights_sha256 not in (None, version.sha256)
    blobs = [p.name for p in stored_files(reg.store.root)]
    assert sorted(blobs) == sorted([version.sha256, version.weights_sha256])
    plain = tmp_path / "plain.pth"
    torch.save(tiny_model.state_dict(), plain)
    reg.push(plain, arch=TINY_ARCH, name="plain", arch_args=TINY_ARGS)

    monkeypatch.setattr(torch, "load", refuse_torch_load)
    model = reg.load(version.ref)
    assert all_eval(model) and outputs_equal(tiny_model, model)
    assert same_tensors(reg.state_dict(version.ref), dict(tiny_model.state_dict()))
    assert reg.pull(version.ref, format="safetensors") == Path("tiny-v1.safetensors")
    assert same_tensors(load_file("tiny-v1.safetensors"), dict(tiny_model.state_dict()))
    # the control: a version without a safe copy does go through the patched torch.load
    with pytest.raises(Exception, match=r"torch\.load was called"):  # wrapped or not
        reg.state_dict("plain@v1")


def test_cli_trusted_pickle(
    run, pickled_model: Path, tiny_model: nn.Module, tmp_path: Path, monkeypatch
) -> None:
    code, out, err = run("push", str(pickled_model), *TINY_CLI_ARGS, "--trust-pickle", "--json")
    assert (code, err) == (0, "")
    pushed = json.loads(out)
    assert (pushed["format"], pushed["details"]["class"]) == ("pickle", "tiny_models:TinyNet")
    assert pushed["weights_sha256"] not in (None, pushed["sha256"])
    assert run("pull", "tiny@v1") == (0, "tiny-v1.pth\n", "")
    assert (tmp_path / "tiny-v1.pth").read_bytes() == pickled_model.read_bytes()

    monkeypatch.setattr(torch, "load", refuse_torch_load)
    code, out, err = run("load", "tiny@v1", "--input-shape", "1,3,16,16")
    assert (code, err) == (0, "")
    assert out.endswith("eval mode\noutput shape: [1, 5]\n")


def test_trusted_pickle_with_another_arch_is_refused(reg: Registry, pickled_model: Path) -> None:
    with pytest.raises(ArchitectureMismatchError):
        reg.push(pickled_model, arch=SMALL_ARCH, arch_args={"num_classes": 5}, trust_pickle=True)
    assert_nothing_stored(reg)


def test_cli_trusted_pickle_with_another_arch_is_refused(
    run, pickled_model: Path, tmp_path: Path
) -> None:
    code, out, err = run(
        "push", str(pickled_model), "--arch", SMALL_ARCH, "--arg", "num_classes=5", "--trust-pickle"
    )
    assert_one_line_error(code, out, err)
    assert f"weights do not fit arch '{SMALL_ARCH}'" in err
    assert_cli_stored_nothing(run, tmp_path)


def test_trusted_training_checkpoint_holding_a_whole_model(
    reg: Registry, tiny_model: nn.Module, tmp_path: Path
) -> None:
    path = tmp_path / "checkpoint.pth"
    torch.save({"epoch": 3, "model": tiny_model}, path)
    with pytest.raises(UnsafeCheckpointError, match=r"holds a pickled tiny_models\.TinyNet"):
        reg.push(path, arch=TINY_ARCH, name="tiny", arch_args=TINY_ARGS)
    assert_nothing_stored(reg)
    version = round_trip(reg, path, tiny_model, trust_pickle=True)
    assert (version.format, version.weights_sha256 is not None) == ("pickle", True)
    expected = {"serialization": "zip", "key": "model", "class": "tiny_models:TinyNet"}
    assert_details(version.details, expected)


def test_trusted_pickle_of_a_dataparallel_wrapper(
    reg: Registry, tiny_model: nn.Module, tmp_path: Path
) -> None:
    path = tmp_path / "model.pth"
    torch.save(nn.DataParallel(tiny_model), path)
    version = round_trip(reg, path, tiny_model, trust_pickle=True)
    assert version.format == "pickle"
    assert version.details["class"] == "tiny_models:TinyNet"  # the wrapped model, unwrapped
    assert "stripped_prefix" not in version.details


class OtherNet(nn.Module):
    """Same parameters as TinyNet(width=4, num_classes=5), another class and forward."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.head = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.pool(self.features(x)), 1))


def test_trusted_pickle_of_another_class_is_refused_even_when_weights_fit(
    reg: Registry, tmp_path: Path
) -> None:
    path = tmp_path / "other.pth"
    torch.save(OtherNet().eval(), path)
    with pytest.raises(ArchitectureError, match=r"holds a pickled test_formats:OtherNet"):
        reg.push(path, arch=TINY_ARCH, name="tiny", arch_args=TINY_ARGS, trust_pickle=True)
    assert_nothing_stored(reg)


# --- malicious pickles: refused, never run, nothing stored ------------------------------------


def write_payload(kind: str, path: Path, state: dict) -> None:
    if kind == "zip":
        torch.save(Payload(), path)
    elif kind == "legacy":
        torch.save(Payload(), path, _use_new_zipfile_serialization=False)
    elif kind == "in-checkpoint":
        torch.save({"model_state_dict": state, "callback": Payload()}, path)
    else:
        path.write_bytes(pickle.dumps(Payload(), protocol=int(kind.removeprefix("raw-p"))))


PAYLOADS = ["zip", "legacy", "in-checkpoint"]
RAW_PAYLOADS = ["raw-p2", "raw-p4", "raw-p5"]
NAMES_THE_GLOBAL = r"holds a pickled (posix|os)\.system; unpickling it would run code"


def test_payload_is_live_when_unpickled(tmp_path: Path) -> None:
    """The control for the tests below: the payload does run when pickle is trusted."""
    pickle.loads(pickle.dumps(Payload()))
    assert (tmp_path / MARKER).exists()


@pytest.mark.parametrize("kind", PAYLOADS)
def test_payload_is_refused_by_name_and_never_run(
    reg: Registry, tiny_model: nn.Module, tmp_path: Path, kind: str
) -> None:
    path = tmp_path / "evil.pth"
    write_payload(kind, path, tiny_model.state_dict())
    with pytest.raises(UnsafeCheckpointError, match=NAMES_THE_GLOBAL) as caught:
        reg.push(path, arch=TINY_ARCH, name="tiny", arch_args=TINY_ARGS)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / MARKER).exists()
    assert_nothing_stored(reg)


@pytest.mark.parametrize("kind", PAYLOADS + RAW_PAYLOADS)
def test_cli_payload_is_refused_and_never_run(
    run, tiny_model: nn.Module, tmp_path: Path, kind: str
) -> None:
    path = tmp_path / "evil.pth"
    write_payload(kind, path, tiny_model.state_dict())
    code, out, err = run("push", str(path), *TINY_CLI_ARGS)
    assert_one_line_error(code, out, err)
    assert "running code" in err or "run code" in err
    assert not (tmp_path / MARKER).exists()
    assert_cli_stored_nothing(run, tmp_path)


@pytest.mark.parametrize("kind", RAW_PAYLOADS)
def test_raw_pickle_payload_is_refused_and_never_run(
    reg: Registry, tmp_path: Path, kind: str
) -> None:
    path = tmp_path / "evil.pkl"
    write_payload(kind, path, {})
    with pytest.raises(UnsafeCheckpointError, match="cannot be read without running code"):
        reg.push(path, arch=TINY_ARCH, name="tiny", arch_args=TINY_ARGS)
    assert not (tmp_path / MARKER).exists()
    assert_nothing_stored(reg)


@pytest.mark.parametrize("kind", RAW_PAYLOADS)
def test_raw_pickle_payload_refusal_names_the_global(
    reg: Registry, tmp_path: Path, kind: str
) -> None:
    path = tmp_path / "evil.pkl"
    write_payload(kind, path, {})
    with pytest.raises(UnsafeCheckpointError, match=r"(posix|os)\.system"):
        reg.push(path, arch=TINY_ARCH, name="tiny", arch_args=TINY_ARGS)
    assert not (tmp_path / MARKER).exists()


# --- hostile files: one line, exit 1, nothing stored -----------------------------------------


def zip_checkpoint(state: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def rewrite_zip(data: bytes, change: Callable[[str, bytes], bytes | None]) -> bytes:
    """A copy of zip `data` with each entry passed through `change` (None drops it)."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as source, zipfile.ZipFile(out, "w") as target:
        for info in source.infolist():
            content = change(info.filename, source.read(info))
            if content is not None:
                target.writestr(info, content)
    return out.getvalue()


def safetensors_file(header: dict, data: bytes, claimed_size: int | None = None) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", claimed_size or len(raw)) + raw + data


def hostile(kind: str, path: Path, model: nn.Module) -> Path:
    """Write a hostile file of `kind` at `path` (or a folder beside it); return what to push."""
    state = model.state_dict()
    if kind == "random-bytes":
        path.write_bytes(random.Random(0).randbytes(4096))
    elif kind == "truncated-zip":
        data = zip_checkpoint(state)
        path.write_bytes(data[: len(data) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "directory":
        path = path.with_suffix("")
        path.mkdir()
    elif kind == "torchscript":
        # torch.jit.script is deprecated, but users still have such archives
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.jit.script(model).save(str(path))
    elif kind == "safetensors-10gb-header":
        header = {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}
        path.write_bytes(safetensors_file(header, bytes(16), claimed_size=10 * 10**9))
    elif kind == "safetensors-offsets-past-end":
        header = {"w": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 4000]}}
        path.write_bytes(safetensors_file(header, bytes(16)))
    elif kind == "zip-bomb":
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("archive/data.pkl", bytes(50 * 10**6))
    elif kind == "zip-missing-tensor":
        data = zip_checkpoint(state)
        path.write_bytes(rewrite_zip(data, lambda n, c: None if "/data/" in n else c))
    elif kind == "zip-garbled-pickle":
        data = zip_checkpoint(state)
        garble = lambda n, c: c[:10] + bytes(len(c) - 10) if n.endswith("data.pkl") else c  # noqa: E731
        path.write_bytes(rewrite_zip(data, garble))
    else:
        raise AssertionError(kind)
    return path


HOSTILE = [
    ("random-bytes", "is not a checkpoint"),
    ("truncated-zip", "is a damaged zip archive"),
    ("empty", "is empty"),
    ("directory", "holds no files"),  # an empty folder: nothing to push
    ("torchscript", "is a TorchScript archive (torch.jit.save)"),
    ("safetensors-10gb-header", "looks like safetensors but its header claims 10,000,000,000"),
    ("safetensors-offsets-past-end", "is not a valid safetensors file"),
    ("zip-bomb", "entries claim more bytes than the file holds"),
    ("zip-missing-tensor", "is damaged or truncated"),
    ("zip-garbled-pickle", "is damaged or truncated"),
]


@pytest.mark.parametrize(("kind", "fragment"), HOSTILE, ids=[k for k, _ in HOSTILE])
def test_cli_hostile_file_is_refused_in_one_line(
    run, tiny_model: nn.Module, tmp_path: Path, kind: str, fragment: str
) -> None:
    path = hostile(kind, tmp_path / "hostile.pth", tiny_model)
    code, out, err = run("push", str(path), *TINY_CLI_ARGS)
    assert_one_line_error(code, out, err)
    assert fragment in err
    assert_cli_stored_nothing(run, tmp_path)


@pytest.mark.parametrize(("kind", "fragment"), HOSTILE, ids=[k for k, _ in HOSTILE])
def test_hostile_file_is_a_checkpoint_error(
    reg: Registry, tiny_model: nn.Module, tmp_path: Path, kind: str, fragment: str
) -> None:
    path = hostile(kind, tmp_path / "hostile.pth", tiny_model)
    with pytest.raises(CheckpointError) as caught:
        reg.push(path, arch=TINY_ARCH, name="tiny", arch_args=TINY_ARGS)
    assert fragment in str(caught.value) and "\n" not in str(caught.value)
    assert_nothing_stored(reg)


def test_damaged_pickle_message_is_plain_and_says_what_is_wrong(
    reg: Registry, tiny_model: nn.Module, tmp_path: Path
) -> None:
    path = hostile("zip-garbled-pickle", tmp_path / "hostile.pth", tiny_model)
    with pytest.raises(CheckpointError, match="is damaged or truncated") as caught:
        reg.push(path, arch=TINY_ARCH, name="tiny", arch_args=TINY_ARGS)
    message = str(caught.value)
    assert message.isprintable(), repr(message)
    assert "can still be loaded" not in message


# --- what a refusal names --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("write", "options"),
    [
        (lambda p, m: torch.save({"model": m.state_dict()}, p), ["--key", "nope"]),
        (lambda p, m: torch.save(Payload(), p), []),
        (lambda p, m: torch.save(m, p), []),
        (lambda p, m: hostile("safetensors-offsets-past-end", p, m), []),
        (lambda p, m: hostile("zip-missing-tensor", p, m), []),
    ],
    ids=["missing-key", "payload", "whole-model", "safetensors-offsets", "zip-missing-tensor"],
)
def test_refusal_names_the_pushed_file(
    run, tiny_model: nn.Module, tmp_path: Path, write: Callable, options: list[str]
) -> None:
    path = tmp_path / "mine.pth"
    write(path, tiny_model)
    code, out, err = run("push", str(path), *TINY_CLI_ARGS, *options)
    assert_one_line_error(code, out, err)
    assert err.startswith(f"Error: {path} "), err
    assert not (tmp_path / MARKER).exists()


@pytest.mark.parametrize("saver", ["torch", "safetensors-save-model"])
def test_tied_weights_round_trip_and_stay_tied(reg: Registry, tmp_path: Path, saver: str) -> None:
    import tiny_models
    from safetensors.torch import save_model

    torch.manual_seed(0)
    model = tiny_models.TiedNet().eval()
    path = tmp_path / ("tied.pth" if saver == "torch" else "tied.safetensors")
    if saver == "torch":
        torch.save(model.state_dict(), path)
    else:
        save_model(model, str(path))  # stores one name for the shared tensor
    version = reg.push(path, arch="tiny_models:TiedNet", name="tied")
    loaded = reg.load(version.ref)
    assert loaded.out.weight is loaded.embed.weight
    tokens = torch.tensor([[1, 2, 3]])
    with torch.inference_mode():
        assert torch.equal(loaded(tokens), model(tokens))
    assert reg.pull(version.ref).read_bytes() == path.read_bytes()
