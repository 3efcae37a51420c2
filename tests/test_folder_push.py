"""Folder versions end to end (issue 22): push, show, pull, tar, load, diff, kills, refusals.

Sharded folders here are written by hand (safetensors shards and their
index, as `save_pretrained` and `huggingface_hub` write them) for an
nn.Linear, so they need no extra; tests/test_transformers_zoo.py covers
transformers' own folders, tests/test_hf.py and tests/test_dcp.py the
rebuilds of each kind.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from registry import ArchitectureError, CheckpointError, Registry
from registry.errors import StorageError

LINEAR = {"arch": "torch.nn:Linear", "arch_args": {"in_features": 4, "out_features": 3}}
LINEAR_CLI = ["--arch", "torch.nn:Linear", "--arg", "in_features=4", "--arg", "out_features=3"]


def sharded(folder: Path, seed: int = 0, bias_seed: int | None = None) -> Path:
    """An nn.Linear(4, 3) as two safetensors shards, an index and a README in a subfolder."""
    torch.manual_seed(seed)
    state = torch.nn.Linear(4, 3).state_dict()
    if bias_seed is not None:
        torch.manual_seed(bias_seed)
        state["bias"] = torch.randn(3)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({"weight": state["weight"]}, folder / "model-00001-of-00002.safetensors")
    save_file({"bias": state["bias"]}, folder / "model-00002-of-00002.safetensors")
    index = {
        "metadata": {"total_size": 60},
        "weight_map": {
            "weight": "model-00001-of-00002.safetensors",
            "bias": "model-00002-of-00002.safetensors",
        },
    }
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    (folder / "docs").mkdir(exist_ok=True)
    (folder / "docs" / "README.md").write_text("a linear layer\n")
    return folder


def tree(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


def listing(folder: Path) -> str:
    """The file list SPEC defines the version's digest over, computed here by hand."""
    lines = [
        f"{hashlib.sha256(data).hexdigest()}  {len(data)}  {path}\n"
        for path, data in sorted(tree(folder).items(), key=lambda item: item[0].encode())
    ]
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def blob_bytes(reg: Registry) -> int:
    return sum(p.stat().st_size for p in (reg.store.root / "sha256").rglob("*") if p.is_file())


def test_a_sharded_folder_is_one_version_of_its_files(reg: Registry, tmp_path: Path) -> None:
    folder = sharded(tmp_path / "linear")
    version = reg.push(folder, **LINEAR)
    assert (version.ref, version.format, version.is_new) == ("linear@v1", "sharded", True)
    assert version.sha256 == listing(folder)
    data = reg.get("linear@v1").to_json()
    assert [(f["path"], f["size"]) for f in data["files"]] == [
        (path, len(body)) for path, body in sorted(tree(folder).items())
    ]
    assert data["size"] == sum(len(body) for body in tree(folder).values())
    assert {t.name for t in reg.tensors("linear@v1")} == {"weight", "bias"}  # both shards
    torch.manual_seed(0)
    expected = torch.nn.Linear(4, 3)
    model = reg.load("linear@v1")
    assert not model.training
    assert torch.equal(model.weight, expected.weight) and torch.equal(model.bias, expected.bias)
    assert set(reg.state_dict("linear@v1")) == {"weight", "bias"}


def test_pull_writes_the_folder_bit_exact_and_refuses_a_folder_in_use(
    reg: Registry, tmp_path: Path
) -> None:
    folder = sharded(tmp_path / "linear")
    reg.push(folder, **LINEAR)
    os.chdir(tmp_path)
    pulled = reg.pull("linear@v1")
    assert pulled == Path("linear-v1") and tree(pulled) == tree(folder)
    umask = os.umask(0)
    os.umask(umask)
    assert pulled.stat().st_mode & 0o777 == 0o777 & ~umask  # as mkdir would make it
    empty = tmp_path / "empty"
    empty.mkdir()
    assert tree(reg.pull("linear@v1", empty)) == tree(folder)  # an empty folder is taken
    with pytest.raises(StorageError, match="exists and is not empty"):
        reg.pull("linear@v1", empty)
    assert tree(empty) == tree(folder)
    assert not [p for p in tmp_path.iterdir() if ".pull-" in p.name]  # no temp folder left


def test_pull_dash_o_dash_writes_a_tar_of_the_folder(reg: Registry, tmp_path: Path) -> None:
    folder = sharded(tmp_path / "linear")
    reg.push(folder, **LINEAR)
    result = subprocess.run(
        [sys.executable, "-m", "registry", *_location(reg), "pull", "linear@v1", "-o", "-"],
        capture_output=True,
        check=True,
    )
    with tarfile.open(fileobj=io.BytesIO(result.stdout)) as archive:
        members = {m.name: archive.extractfile(m).read() for m in archive if m.isfile()}
    assert members == tree(folder)


def test_show_lists_a_folder_files(run, tmp_path: Path) -> None:
    folder = sharded(tmp_path / "linear")
    run("push", str(folder), *LINEAR_CLI)
    code, out, _ = run("show", "linear@v1")
    assert code == 0
    assert "files: 4" in out and "docs/README.md" in out and "model.safetensors.index.json" in out
    code, out, _ = run("show", "linear@v1", "--json")
    paths = [f["path"] for f in json.loads(out)["files"]]
    assert paths == sorted(tree(folder)) and paths[0] == "docs/README.md"


def test_a_changed_shard_is_the_only_new_bytes_stored(
    reg: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from registry import manifests

    folder = sharded(tmp_path / "linear")
    first = reg.push(folder, **LINEAR)
    before = blob_bytes(reg)
    changed = sharded(tmp_path / "linear", bias_seed=7)
    described: list[list[str]] = []
    describe = manifests.describe
    monkeypatch.setattr(manifests, "describe", lambda s: described.append(list(s)) or describe(s))
    second = reg.push(changed, **LINEAR)
    assert described == [["bias"]]  # the unchanged shard's tensors keep their recorded digests
    old, new_ = ({t.name: t.digest for t in reg.tensors(r)} for r in ("linear@v1", "linear@v2"))
    assert old["weight"] == new_["weight"] and old["bias"] != new_["bias"]
    assert second.version == 2
    assert first.files is not None and second.files is not None
    new = {f.sha256 for f in second.files} - {f.sha256 for f in first.files}
    shard = (changed / "model-00002-of-00002.safetensors").stat().st_size
    assert len(new) == 1
    assert blob_bytes(reg) - before == shard + len(folders_listing(second))  # + its file list
    diff = {c.name: c.status for c in reg.diff("linear@v1", "linear@v2").tensors}
    assert diff == {"weight": "identical", "bias": "changed"}
    again = reg.push(changed, **LINEAR)
    assert (again.version, again.is_new) == (2, False)


def folders_listing(version) -> bytes:
    from registry.folders import file_list

    return file_list(version.files)


def test_a_plain_folder_is_stored_and_pulled_but_not_loaded(reg: Registry, tmp_path: Path) -> None:
    folder = tmp_path / "notes"
    (folder / "a").mkdir(parents=True)
    (folder / "a" / "b.txt").write_bytes(b"b")
    (folder / "c.bin").write_bytes(os.urandom(100))
    version = reg.push(folder)
    assert (version.ref, version.format, version.arch) == ("notes@v1", "folder", "")
    assert tree(reg.pull("notes@v1", tmp_path / "back")) == tree(folder)
    with pytest.raises(CheckpointError, match="does not know how to rebuild"):
        reg.load("notes@v1")
    with pytest.raises(CheckpointError, match="does not know how to"):
        reg.state_dict("notes@v1")
    with pytest.raises(ArchitectureError, match="takes no --arch"):
        reg.push(folder, **LINEAR)


def test_refusals_leave_nothing_stored(reg: Registry, tmp_path: Path) -> None:
    folder = sharded(tmp_path / "linear")
    with pytest.raises(ArchitectureError, match="--arch"):
        reg.push(folder)  # sharded: the builder is the pusher's to name
    (folder / "link").symlink_to(folder / "docs" / "README.md")
    with pytest.raises(CheckpointError, match="symlink"):
        reg.push(folder, **LINEAR)
    (folder / "link").unlink()
    adapter = tmp_path / "lora"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    save_file({"x": torch.zeros(1)}, adapter / "adapter_model.safetensors")
    with pytest.raises(ArchitectureError, match="--parent"):
        reg.push(adapter)
    torch.manual_seed(0)
    wrong = sharded(tmp_path / "wrong")
    save_file({"bias": torch.zeros(5)}, wrong / "model-00002-of-00002.safetensors")
    with pytest.raises(Exception, match="mis-shaped key"):
        reg.push(wrong, **LINEAR)
    assert reg.models() == []
    assert not (reg.store.root / "sha256").exists() or blob_bytes(reg) == 0


def test_an_index_naming_a_missing_shard_is_refused(reg: Registry, tmp_path: Path) -> None:
    folder = sharded(tmp_path / "linear")
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"names shard model-00002-of-00002\.safetensors"):
        reg.push(folder, **LINEAR)


def test_a_folder_version_through_a_bundle(reg: Registry, tmp_path: Path) -> None:
    folder = sharded(tmp_path / "linear")
    version = reg.push(folder, **LINEAR)
    bundle = tmp_path / "linear.tar"
    reg.export_bundle(["linear@v1"], bundle)
    other = Registry(database_url=f"sqlite:///{tmp_path / 'other.db'}", store=tmp_path / "other")
    imported = other.import_bundle(bundle)
    assert [v.sha256 for v in imported] == [version.sha256]
    assert other.get("linear@v1").files == version.files
    assert tree(other.pull("linear@v1", tmp_path / "back")) == tree(folder)
    assert other.verify() == []


# -- kills -------------------------------------------------------------------------------------

KILL = "REGISTRY_TEST_KILL_AT"


@pytest.mark.parametrize("point", ["push-copy", "push-hashed", "push-blob-placed", "push-commit"])
def test_a_folder_push_killed_anywhere_records_nothing_and_verify_is_clean(
    point: str, reg: Registry, tmp_path: Path
) -> None:
    folder = sharded(tmp_path / "linear")
    killed = subprocess.run(
        [sys.executable, "-m", "registry", *_location(reg), "push", str(folder), *LINEAR_CLI],
        env={**os.environ, KILL: point},
        capture_output=True,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert reg.models() == [] and reg.verify() == []
    reg.gc()
    assert reg.push(folder, **LINEAR).version == 1
    assert reg.verify() == []


@pytest.mark.parametrize("point", ["pull-copy", "pull-folder-written"])
def test_a_folder_pull_killed_anywhere_leaves_no_partial_folder(
    point: str, reg: Registry, tmp_path: Path
) -> None:
    folder = sharded(tmp_path / "linear")
    reg.push(folder, **LINEAR)
    target = tmp_path / "out" / "copy[1]"  # a name that is also a glob pattern
    killed = subprocess.run(
        [sys.executable, "-m", "registry", *_location(reg), "pull", "linear@v1", "-o", str(target)],
        env={**os.environ, KILL: point},
        capture_output=True,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not target.exists()
    assert [p.name.startswith(".copy[1].pull-") for p in target.parent.iterdir()] == [True]
    assert tree(reg.pull("linear@v1", target)) == tree(folder)
    assert [p.name for p in target.parent.iterdir()] == ["copy[1]"]  # the dead pull's temp: gone


def _location(reg: Registry) -> list[str]:
    return ["--database-url", reg.settings.database_url, "--store", str(reg.store.root)]


def test_a_damaged_shard_fails_every_read_of_the_folder(reg: Registry, tmp_path: Path) -> None:
    from registry import IntegrityError

    version = reg.push(sharded(tmp_path / "linear"), **LINEAR)
    assert version.files is not None
    shard = next(f for f in version.files if f.path.startswith("model-00002"))
    blob = reg.store.root / "sha256" / shard.sha256[:2] / shard.sha256
    blob.chmod(0o644)
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF  # a flipped bit in the bias's bytes
    blob.write_bytes(bytes(data))
    for read in (
        lambda: reg.load("linear@v1"),
        lambda: reg.state_dict("linear@v1"),
        lambda: reg.pull("linear@v1", tmp_path / "out"),
    ):
        with pytest.raises(IntegrityError, match=r"linear@v1/model-00002-of-00002\.safetensors"):
            read()
    assert not (tmp_path / "out").exists()
    assert [(p.expected, p.status) for p in reg.verify()] == [(shard.sha256, "corrupt")]
