"""dcp: read DCP folders from blobs with torch's reader, never running code from them."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.stateful import Stateful

from registry import dcp as rdcp
from registry.errors import CheckpointError, UnsafeCheckpointError

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def trained() -> tuple[nn.Module, torch.optim.Optimizer]:
    model = make_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(5, 4)).sum().backward()
    opt.step()
    return model, opt


class AppState(Stateful):
    """The DCP tutorial's app state: the model and its optimizer, under one entry."""

    def __init__(self, model: nn.Module, opt: torch.optim.Optimizer) -> None:
        self.model, self.opt = model, opt

    def state_dict(self):
        from torch.distributed.checkpoint.state_dict import get_state_dict

        msd, osd = get_state_dict(self.model, self.opt)
        return {"model": msd, "optim": osd}

    def load_state_dict(self, state_dict):
        raise AssertionError("not loaded in these tests")


def as_blobs(folder: Path, blobs: Path) -> dict[str, Path]:
    """A folder's files copied to files named by their sha256, as a store holds them."""
    blobs.mkdir(exist_ok=True)
    files = {}
    for path in sorted(folder.iterdir()):
        data = path.read_bytes()
        blob = blobs / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        files[path.name] = blob
    return files


def save(tmp_path: Path, state: dict) -> dict[str, Path]:
    dcp.save(state, checkpoint_id=tmp_path / "ck")
    return as_blobs(tmp_path / "ck", tmp_path / "blobs")


def assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert list(got) == list(want)
    for key, tensor in want.items():
        assert got[key].dtype == tensor.dtype, key
        assert torch.equal(got[key], tensor), key


def replant(files: dict[str, Path], tmp_path: Path, change) -> dict[str, Path]:
    """`files` with a `.metadata` rewritten by `change(metadata)` (read safely first)."""
    md = rdcp._read_metadata(files)
    change(md)
    planted = tmp_path / "planted.metadata"
    planted.write_bytes(pickle.dumps(md))
    return {**files, ".metadata": planted}


@pytest.mark.parametrize("layout", ["model", "model+optim", "app", "bare"])
def test_model_state_from_blobs(tmp_path, layout):
    model, opt = trained()
    sd = model.state_dict()
    state = {
        "model": lambda: {"model": sd},
        "model+optim": lambda: {"model": sd, "optim": opt.state_dict()},
        "app": lambda: {"app": AppState(model, opt)},
        "bare": lambda: dict(sd),
    }[layout]()
    files = save(tmp_path, state)
    assert all(path.name != name for name, path in files.items())  # blob names, not the originals
    prefix = {"model": "model.", "model+optim": "model.", "app": "app.model.", "bare": ""}[layout]

    listing = rdcp.metadata(files)
    for key, tensor in sd.items():
        assert listing[prefix + key] == (tuple(tensor.shape), tensor.dtype)
    assert rdcp.model_prefix(listing) == prefix
    assert_same(rdcp.model_state(files), sd)


def test_metadata_lists_optimizer_tensors_not_bytes(tmp_path):
    model, opt = trained()
    files = save(tmp_path, {"model": model.state_dict(), "optim": opt.state_dict()})
    listing = rdcp.metadata(files)
    assert listing["model.0.weight"] == ((8, 4), torch.float32)
    assert listing["model.1.num_batches_tracked"] == ((), torch.int64)
    assert listing["optim.state.0.exp_avg"] == ((8, 4), torch.float32)
    assert not any("param_groups" in key for key in listing)  # bytes items are not tensors


def test_bytes_items_are_never_unpickled(tmp_path, monkeypatch):
    model, opt = trained()
    files = save(tmp_path, {"model": model.state_dict(), "optim": opt.state_dict()})
    real_load = torch.load
    calls: list[object] = []

    def weights_only_load(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        if kwargs.get("weights_only") is not True:
            raise AssertionError("torch.load without weights_only")
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", weights_only_load)
    assert_same(rdcp.model_state(files), model.state_dict())
    assert calls and all(c is True for c in calls)
    # The guard does catch DCP's own reading of a bytes item.
    with pytest.raises(CheckpointException):
        dcp.load({"optim.param_groups.0.lr": 0.0}, checkpoint_id=tmp_path / "ck", no_dist=True)
    assert calls[-1] is False


def test_importing_dcp_does_not_import_torch():
    code = "import sys, registry.dcp; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    ("names", "prefix"),
    [
        ({"model.0.weight", "model.0.bias"}, "model."),
        ({"model.0.weight", "optim.state.0.exp_avg"}, "model."),
        ({"model.w", "optimizer.state.w.exp_avg", "lr_scheduler.x", "dataloader.y"}, "model."),
        ({"app.model.0.weight", "app.optim.state.0.weight.exp_avg"}, "app.model."),
        ({"app.model.0.weight"}, "app.model."),
        ({"0.weight", "0.bias"}, ""),
        # A bare Hugging Face state dict: `model.` is a submodule beside `lm_head`.
        ({"model.embed_tokens.weight", "lm_head.weight"}, ""),
        ({"backbone.model.0.weight", "head.weight"}, ""),
        ({"net.model.0.weight", "net.head.weight"}, ""),
    ],
)
def test_model_prefix(names, prefix):
    assert rdcp.model_prefix(names) == prefix


def test_planted_metadata_is_refused_unrun(tmp_path):
    model, _ = trained()
    files = save(tmp_path, {"model": model.state_dict()})
    marker = tmp_path / "pwned.marker"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {shlex.quote(str(marker))}",))

    planted = tmp_path / "evil.metadata"
    planted.write_bytes(pickle.dumps(Payload()))
    evil = {**files, ".metadata": planted}
    for read in (rdcp.metadata, rdcp.model_state):
        with pytest.raises(UnsafeCheckpointError, match=r"wants posix\.system") as info:
            read(evil)
        assert "\n" not in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["../x", "sub/__0_0.distcp", "..", "__9_0.distcp"])
def test_storage_outside_the_folder_is_refused(tmp_path, name):
    model, _ = trained()
    files = save(tmp_path, {"model": model.state_dict()})

    def move(md):
        index = next(iter(md.storage_data))
        md.storage_data[index] = dataclasses.replace(md.storage_data[index], relative_path=name)

    planted = replant(files, tmp_path, move)
    for read in (rdcp.metadata, rdcp.model_state):
        with pytest.raises(CheckpointError, match="not a file of the folder") as info:
            read(planted)
        assert not isinstance(info.value, UnsafeCheckpointError)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda info: {"transform_descriptors": ["evil/1"]}, "unknown transforms"),
        (lambda info: {"offset": info.offset + 10**9}, "which holds"),
        (lambda info: {"length": -1}, "bad offset or length"),
    ],
)
def test_bad_storage_entries_are_refused(tmp_path, change, match):
    model, _ = trained()
    files = save(tmp_path, {"model": model.state_dict()})

    def edit(md):
        for index, info in md.storage_data.items():
            md.storage_data[index] = dataclasses.replace(info, **change(info))

    with pytest.raises(CheckpointError, match=match):
        rdcp.metadata(replant(files, tmp_path, edit))


def test_a_tensor_larger_than_its_data_is_refused(tmp_path):
    model, _ = trained()
    files = save(tmp_path, {"model": model.state_dict()})

    def grow(md):
        md.state_dict_metadata["model.0.weight"].size = torch.Size([1 << 20, 1 << 20])

    with pytest.raises(CheckpointError, match=r"model\.0\.weight.* but stores"):
        rdcp.model_state(replant(files, tmp_path, grow))


def test_missing_metadata_and_damaged_metadata(tmp_path):
    model, _ = trained()
    files = save(tmp_path, {"model": model.state_dict()})
    with pytest.raises(CheckpointError, match=r"no \.metadata"):
        rdcp.model_state({k: v for k, v in files.items() if k != ".metadata"})
    damaged = tmp_path / "damaged"
    damaged.write_bytes(files[".metadata"].read_bytes()[:100])
    with pytest.raises(CheckpointError, match="damaged"):
        rdcp.metadata({**files, ".metadata": damaged})
    with pytest.raises(CheckpointError, match="not a file of the folder"):
        rdcp.model_state({k: v for k, v in files.items() if k == ".metadata"})


def test_damaged_slices_fail_in_one_line(tmp_path):
    model, _ = trained()
    files = save(tmp_path, {"model": model.state_dict()})
    damaged = tmp_path / "damaged.distcp"
    damaged.write_bytes(bytes(files["__0_0.distcp"].stat().st_size))
    with pytest.raises(CheckpointError, match=r"not a plain torch\.save") as info:
        rdcp.model_state({**files, "__0_0.distcp": damaged})
    assert "\n" not in str(info.value)


FSDP_SAVE = textwrap.dedent(
    """
    import os, sys, warnings
    import torch, torch.distributed as dist, torch.distributed.checkpoint as dcp
    import torch.multiprocessing as mp
    from torch import nn
    warnings.simplefilter("ignore")

    def worker(rank, out):
        # A file rendezvous: no port to pick, which another test could take meanwhile.
        rendezvous = "file://" + out + "/rendezvous"
        dist.init_process_group("gloo", init_method=rendezvous, rank=rank, world_size=2)
        from torch.distributed.fsdp import fully_shard
        from torch.distributed.checkpoint.state_dict import get_state_dict
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
        for layer in model[0], model[2]:
            fully_shard(layer)
        fully_shard(model)
        opt = torch.optim.AdamW(model.parameters())
        model(torch.randn(4, 16)).sum().backward()
        opt.step()
        msd, osd = get_state_dict(model, opt)
        dcp.save({"model": msd, "optim": osd}, checkpoint_id=out + "/ck")
        full = {k: v.full_tensor() for k, v in msd.items()}
        if rank == 0:
            torch.save(full, out + "/ref.pt")
        # Both ranks done before either tears gloo down: a rank that leaves while the
        # other still holds work in flight can abort ("terminate called ...").
        dist.barrier()
        dist.destroy_process_group()

    if __name__ == "__main__":
        mp.spawn(worker, args=(sys.argv[1],), nprocs=2)
    """
)


def test_fsdp2_checkpoint_of_two_ranks(tmp_path):
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    script = tmp_path / "fsdp_save.py"
    script.write_text(FSDP_SAVE)
    saved = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], timeout=120, capture_output=True, text=True
    )
    assert saved.returncode == 0, saved.stderr[-3000:]
    files = as_blobs(tmp_path / "ck", tmp_path / "blobs")
    assert {"__0_0.distcp", "__1_0.distcp"} <= set(files)
    ref = torch.load(tmp_path / "ref.pt", weights_only=True)
    assert rdcp.metadata(files)["model.0.weight"] == ((32, 16), torch.float32)
    assert_same(rdcp.model_state(files), ref)
