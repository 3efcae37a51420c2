"""checkpoints: tell file kinds apart, find state_dicts, refuse pickles without running them."""

from __future__ import annotations

import argparse
import io
import pickle
import zipfile
from pathlib import Path, PurePosixPath

import pytest
import torch
from helpers import MARKER, Payload, same_tensors
from safetensors.torch import save_file
from torch import nn

from registry import checkpoints
from registry.checkpoints import SAFETENSORS, TORCH_LEGACY, TORCH_ZIP, Weights
from registry.errors import CheckpointError, RegistryError, UnsafeCheckpointError
from registry.stores.folder import BlobStore


def read_all(path: Path) -> list[Weights]:
    return list(checkpoints.read(path))


def one_line(exc: BaseException) -> str:
    message = str(exc)
    assert "\n" not in message
    return message


@pytest.fixture
def state(tiny_model: nn.Module) -> dict[str, torch.Tensor]:
    return tiny_model.state_dict()


# --- sniff -----------------------------------------------------------------------------


def test_sniff_torch_zip(small_file: Path) -> None:
    assert checkpoints.sniff(small_file) == TORCH_ZIP


def test_sniff_torch_legacy(tmp_path: Path, state: dict) -> None:
    path = tmp_path / "legacy.pth"
    torch.save(state, path, _use_new_zipfile_serialization=False)
    assert checkpoints.sniff(path) == TORCH_LEGACY


def test_sniff_safetensors(tmp_path: Path, state: dict) -> None:
    path = tmp_path / "model.safetensors"
    save_file(state, path)
    assert checkpoints.sniff(path) == SAFETENSORS


def test_sniff_goes_by_content_not_extension(tmp_path: Path, state: dict) -> None:
    torch_named_safetensors = tmp_path / "weights.safetensors"
    torch.save(state, torch_named_safetensors)
    safetensors_named_pth = tmp_path / "weights.pth"
    save_file(state, safetensors_named_pth)
    assert checkpoints.sniff(torch_named_safetensors) == TORCH_ZIP
    assert checkpoints.sniff(safetensors_named_pth) == SAFETENSORS


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_sniff_refuses_torchscript(tmp_path: Path, tiny_model: nn.Module) -> None:
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(tiny_model), path)
    with pytest.raises(CheckpointError) as caught:
        checkpoints.sniff(path)
    assert type(caught.value) is CheckpointError
    assert one_line(caught.value) == (
        f"{path} is a TorchScript archive (torch.jit.save); push the model's "
        "state_dict saved with torch.save instead"
    )


def test_sniff_refuses_plain_pickle(tmp_path: Path, state: dict) -> None:
    path = tmp_path / "weights.pkl"
    path.write_bytes(pickle.dumps(state))
    with pytest.raises(UnsafeCheckpointError) as caught:
        checkpoints.sniff(path)
    message = one_line(caught.value)
    assert message.startswith(
        f"{path} is a raw pickle (or a legacy torch.save with pickle_protocol > 2)"
    )
    assert "save model.state_dict() with torch.save instead" in message


def test_sniff_refuses_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "notes.pth"
    path.write_bytes(b"hello world, this is not a model")
    with pytest.raises(CheckpointError) as caught:
        checkpoints.sniff(path)
    assert type(caught.value) is CheckpointError
    assert one_line(caught.value) == (
        f"{path} is not a checkpoint: expected a torch.save file or .safetensors, "
        f"found bytes {b'hello wo'.hex()}"
    )


def test_sniff_refuses_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.pth"
    path.touch()
    with pytest.raises(CheckpointError, match=r" is empty$"):
        checkpoints.sniff(path)


def test_sniff_refuses_folder(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError) as caught:
        checkpoints.sniff(tmp_path)
    assert str(caught.value) == f"{tmp_path} is a folder, not a checkpoint file"


def test_sniff_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.pth"
    with pytest.raises(CheckpointError) as caught:
        checkpoints.sniff(path)
    assert str(caught.value) == f"cannot read {path}: No such file or directory"


def test_sniff_refuses_damaged_zip(tmp_path: Path, small_file: Path) -> None:
    path = tmp_path / "cut.pth"
    path.write_bytes(small_file.read_bytes()[:-100])  # the central directory is gone
    with pytest.raises(CheckpointError) as caught:
        checkpoints.sniff(path)
    assert one_line(caught.value).startswith(f"{path} is a damaged zip archive: ")


def test_sniff_refuses_zip_that_is_not_torch(tmp_path: Path) -> None:
    path = tmp_path / "archive.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(CheckpointError) as caught:
        checkpoints.sniff(path)
    assert str(caught.value) == f"{path} is a zip archive but not a torch.save checkpoint"


# --- read: what a file holds -------------------------------------------------------------


def test_read_tutorial_state_dict(small_file: Path, small_model: nn.Module) -> None:
    [found] = read_all(small_file)
    assert found.format == "state_dict"
    assert found.details == {"serialization": "zip"}
    assert same_tensors(found.state_dict, small_model.state_dict())


def test_read_legacy_state_dict(tmp_path: Path, state: dict) -> None:
    path = tmp_path / "legacy.pth"
    torch.save(state, path, _use_new_zipfile_serialization=False)
    [found] = read_all(path)
    assert (found.format, found.details) == ("state_dict", {"serialization": "legacy"})
    assert same_tensors(found.state_dict, state)


def test_read_training_checkpoint(tmp_path: Path, tiny_model: nn.Module) -> None:
    optimizer = torch.optim.SGD(tiny_model.parameters(), lr=0.1, momentum=0.9)
    tiny_model.train()
    tiny_model(torch.randn(2, 3, 8, 8)).sum().backward()
    optimizer.step()  # so the optimizer's state holds tensors too
    path = tmp_path / "checkpoint.pth"
    torch.save(
        {
            "epoch": 7,
            "model_state_dict": tiny_model.state_dict(),
            "optimizer_state_dict": optimizer.state_dict(),
            "loss": 0.25,
        },
        path,
    )
    [found] = read_all(path)
    assert found.format == "checkpoint"
    assert found.details == {"serialization": "zip", "key": "model_state_dict"}
    assert same_tensors(found.state_dict, tiny_model.state_dict())


def test_read_checkpoint_offers_each_nested_state_dict_known_keys_first(
    tmp_path: Path, state: dict
) -> None:
    path = tmp_path / "gan.pth"
    torch.save({"generator": state, "ema": state, "model": state, "step": 1}, path)
    assert [w.details["key"] for w in read_all(path)] == ["model", "ema", "generator"]


def test_read_safetensors(tmp_path: Path, state: dict) -> None:
    path = tmp_path / "model.safetensors"
    save_file(state, path)
    [found] = read_all(path)
    assert (found.format, found.details) == ("safetensors", {})
    assert found.state_dict.keys() == state.keys()
    assert all(torch.equal(found.state_dict[k], v) for k, v in state.items())


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod."])
def test_read_offers_prefix_stripped_variant(tmp_path: Path, state: dict, prefix: str) -> None:
    path = tmp_path / "wrapped.pth"
    torch.save({prefix + k: v for k, v in state.items()}, path)
    as_found, stripped = read_all(path)
    assert list(as_found.state_dict) == [prefix + k for k in state]
    assert "stripped_prefix" not in as_found.details
    assert stripped.details == {"serialization": "zip", "stripped_prefix": prefix}
    assert same_tensors(stripped.state_dict, state)


def test_read_strips_prefix_inside_training_checkpoint(tmp_path: Path, state: dict) -> None:
    path = tmp_path / "ddp.pth"
    torch.save({"epoch": 1, "state_dict": {"module." + k: v for k, v in state.items()}}, path)
    candidates = read_all(path)
    assert [w.details for w in candidates] == [
        {"serialization": "zip", "key": "state_dict"},
        {"serialization": "zip", "key": "state_dict", "stripped_prefix": "module."},
    ]
    assert same_tensors(candidates[1].state_dict, state)


def test_read_no_prefix_variant_when_only_some_keys_have_it(tmp_path: Path, state: dict) -> None:
    path = tmp_path / "mixed.pth"
    torch.save({("module." + k if "head" in k else k): v for k, v in state.items()}, path)
    assert len(read_all(path)) == 1


def test_read_dict_without_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "metrics.pth"
    torch.save({"epoch": 3, "lr": 0.1}, path)
    with pytest.raises(CheckpointError) as caught:
        read_all(path)
    assert str(caught.value) == f"{path} holds no state_dict: found a dict with keys epoch, lr"


def test_read_list_of_tensors(tmp_path: Path) -> None:
    path = tmp_path / "tensors.pth"
    torch.save([torch.ones(2)], path)
    with pytest.raises(CheckpointError) as caught:
        read_all(path)
    assert str(caught.value) == f"{path} holds no state_dict: found a list"


def test_read_empty_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "empty.pth"
    torch.save({}, path)
    with pytest.raises(CheckpointError, match=r"holds no state_dict: found an empty dict$"):
        read_all(path)


def test_read_empty_safetensors(tmp_path: Path) -> None:
    path = tmp_path / "empty.safetensors"
    save_file({}, path)
    with pytest.raises(CheckpointError):
        read_all(path)


def test_read_invalid_safetensors_header(tmp_path: Path) -> None:
    path = tmp_path / "bad.safetensors"
    header = b'{"w": oops}'
    path.write_bytes(len(header).to_bytes(8, "little") + header)
    assert checkpoints.sniff(path) == SAFETENSORS
    with pytest.raises(CheckpointError) as caught:
        read_all(path)
    assert one_line(caught.value).startswith(f"{path} is not a valid safetensors file: ")


def test_read_truncated_legacy_file(tmp_path: Path, state: dict) -> None:
    whole = tmp_path / "legacy.pth"
    torch.save(state, whole, _use_new_zipfile_serialization=False)
    path = tmp_path / "cut.pth"
    path.write_bytes(whole.read_bytes()[:-20])
    with pytest.raises(CheckpointError) as caught:
        read_all(path)
    assert type(caught.value) is CheckpointError
    assert one_line(caught.value).startswith(f"{path} is damaged or truncated: ")


def _truncations(tmp_path: Path, kind: str) -> dict[int, BaseException | None]:
    """Read a small file cut short at every byte: the legacy file itself, or a zip's data.pkl."""
    whole = tmp_path / "whole.pth"
    torch.save({"weight": torch.zeros(2, 2)}, whole, _use_new_zipfile_serialization=kind == "zip")
    path = tmp_path / "cut.pth"
    outcomes: dict[int, BaseException | None] = {}
    if kind == "legacy":
        data = whole.read_bytes()
        cuts = range(len(checkpoints._LEGACY_MAGIC), len(data))
    else:
        with zipfile.ZipFile(whole) as archive:
            entries = [(info, archive.read(info)) for info in archive.infolist()]
        pickled = next(data for info, data in entries if info.filename.endswith("data.pkl"))
        cuts = range(1, len(pickled))
    for cut in cuts:
        if kind == "legacy":
            path.write_bytes(data[:cut])
        else:
            with zipfile.ZipFile(path, "w") as archive:
                for info, data in entries:
                    archive.writestr(
                        info, data[:cut] if info.filename.endswith("data.pkl") else data
                    )
        try:
            read_all(path)
            outcomes[cut] = None
        except Exception as exc:
            outcomes[cut] = exc
    return outcomes


@pytest.mark.parametrize("kind", ["legacy", "zip"])
def test_every_truncated_pickle_is_a_checkpoint_error(tmp_path: Path, kind: str) -> None:
    outcomes = _truncations(tmp_path, kind)
    escaped = {cut: repr(e) for cut, e in outcomes.items() if not isinstance(e, RegistryError)}
    assert escaped == {}


@pytest.mark.parametrize("kind", ["legacy", "zip"])
def test_truncated_pickle_is_never_called_unsafe(tmp_path: Path, kind: str) -> None:
    outcomes = _truncations(tmp_path, kind)
    unsafe = {cut: str(e) for cut, e in outcomes.items() if isinstance(e, UnsafeCheckpointError)}
    assert unsafe == {}


# --- read: pickles are refused and never run ----------------------------------------------


def test_payload_is_live_when_unpickled(tmp_path: Path) -> None:
    """The control for the tests below: the payload does run when pickle is trusted."""
    pickle.loads(pickle.dumps(Payload()))
    assert (tmp_path / MARKER).exists()


@pytest.mark.parametrize("serialization", ["zip", "legacy"])
def test_read_refuses_malicious_reduce_without_running_it(
    tmp_path: Path, serialization: str
) -> None:
    path = tmp_path / "evil.pth"
    torch.save(Payload(), path, _use_new_zipfile_serialization=serialization == "zip")
    with pytest.raises(UnsafeCheckpointError) as caught:
        read_all(path)
    message = one_line(caught.value)
    assert message.startswith(f"{path} holds a pickled posix.system; unpickling it would run code")
    assert "--trust-pickle" in message
    assert not (tmp_path / MARKER).exists()


def test_read_refuses_payload_hidden_in_training_checkpoint(tmp_path: Path, state: dict) -> None:
    path = tmp_path / "checkpoint.pth"
    torch.save({"epoch": 1, "model_state_dict": state, "callback": Payload()}, path)
    with pytest.raises(UnsafeCheckpointError, match=r"holds a pickled posix\.system"):
        read_all(path)
    assert not (tmp_path / MARKER).exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_read_refuses_plain_pickle_payload(tmp_path: Path, protocol: int) -> None:
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(Payload(), protocol=protocol))
    with pytest.raises(UnsafeCheckpointError, match=r"is a raw pickle \(or a legacy torch\.save"):
        read_all(path)
    assert not (tmp_path / MARKER).exists()


def test_read_refuses_text_pickle_payload(tmp_path: Path) -> None:
    """Protocol 0 has no 0x80 header: refused as unknown bytes, still never run."""
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(Payload(), protocol=0))
    with pytest.raises(CheckpointError, match="is not a checkpoint"):
        read_all(path)
    assert not (tmp_path / MARKER).exists()


@pytest.mark.parametrize("serialization", ["zip", "legacy"])
def test_read_refuses_whole_model_pickle(
    tmp_path: Path, tiny_model: nn.Module, serialization: str
) -> None:
    path = tmp_path / "model.pth"
    torch.save(tiny_model, path, _use_new_zipfile_serialization=serialization == "zip")
    with pytest.raises(UnsafeCheckpointError) as caught:
        read_all(path)
    assert one_line(caught.value) == (
        f"{path} holds a pickled tiny_models.TinyNet; unpickling it would run code, so it "
        "was not read. Save model.state_dict() with torch.save, or pass --trust-pickle for "
        "a file you trust"
    )


def test_read_takes_timm_checkpoint_with_its_argparse_namespace(
    tmp_path: Path, state: dict
) -> None:
    """timm's train.py saves its options as an argparse.Namespace, which sets attributes only."""
    path = tmp_path / "checkpoint.pth.tar"
    torch.save({"state_dict": state, "args": argparse.Namespace(lr=0.1), "version": 2}, path)
    [found] = read_all(path)
    assert found.details == {"serialization": "zip", "key": "state_dict"}


def test_read_refuses_training_checkpoint_with_other_pickled_args(
    tmp_path: Path, state: dict
) -> None:
    path = tmp_path / "checkpoint.pth"
    torch.save({"model_state_dict": state, "args": PurePosixPath("/data")}, path)
    with pytest.raises(UnsafeCheckpointError, match=r"holds a pickled pathlib\.PurePosixPath"):
        read_all(path)


# --- load and save ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("write", "suffix"),
    [
        (lambda sd, p: torch.save(sd, p), ".pth"),
        (lambda sd, p: torch.save(sd, p, _use_new_zipfile_serialization=False), ".pth"),
        (lambda sd, p: torch.save({"epoch": 2, "model": sd}, p), ".pth"),
        (lambda sd, p: torch.save({"module." + k: v for k, v in sd.items()}, p), ".pth"),
        (lambda sd, p: save_file({"_orig_mod." + k: v for k, v in sd.items()}, p), ".safetensors"),
    ],
    ids=["zip", "legacy", "checkpoint", "module-prefix", "safetensors-compiled"],
)
def test_load_reads_back_what_read_found(tmp_path: Path, state: dict, write, suffix: str) -> None:
    path = tmp_path / f"weights{suffix}"
    write(state, path)
    chosen = read_all(path)[-1]  # the stripped variant where there is one
    loaded = checkpoints.load(path, chosen.format, chosen.details)
    assert same_tensors(loaded, chosen.state_dict)
    assert same_tensors(loaded, state)


def test_save_writes_torch_zip(state: dict) -> None:
    sink = io.BytesIO()
    checkpoints.save(state, sink)
    assert sink.getvalue().startswith(b"PK\x03\x04")
    assert same_tensors(torch.load(io.BytesIO(sink.getvalue()), weights_only=True), state)


def test_save_into_blob_then_read(tmp_path: Path, state: dict) -> None:
    store = BlobStore(tmp_path / "blobs")
    with store.writer() as writer:
        checkpoints.save(state, writer)
        digest = writer.commit()
    [found] = read_all(store.path(digest))
    assert (found.format, found.details) == ("state_dict", {"serialization": "zip"})
    assert same_tensors(found.state_dict, state)
