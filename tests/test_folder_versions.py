"""Folder versions in the catalog: their files, size and digest, kept by gc, checked by verify.

These record folder versions through the catalog's own write transaction,
as push does (tests/test_folder_push.py pushes real folders), on both backends.
"""

from __future__ import annotations

import contextlib
import os
from datetime import datetime, timezone

import pytest

from registry import CheckpointError, Registry
from registry.folders import digest, file_list
from registry.records import FolderFile, ModelVersion, NewVersion


def record_folder(reg: Registry, name: str, files: dict[str, bytes]) -> ModelVersion:
    """Store each file and the file list as blobs, then record the folder version."""
    entries, writers = [], []
    with contextlib.ExitStack() as stack:
        for path, data in files.items():
            writer = stack.enter_context(reg.store.writer())
            writer.write(data)
            entries.append(FolderFile(path, len(data), writer.finish()))
            writers.append(writer)
        listing = stack.enter_context(reg.store.writer())
        listing.write(file_list(entries))
        assert listing.finish() == digest(entries)
        writers.append(listing)
        for writer in writers:
            writer.publish()
        with reg.catalog.recording() as recording:
            for writer in writers:
                recording.place(writer)
            return recording.add(
                NewVersion(
                    name=name, format="folder", arch="", arch_args={}, description="",
                    created_at=datetime.now(timezone.utc), created_by="test@host", num_params=0,
                    torch_version="", details={}, blob_sha256=listing.finish(),
                    files=tuple(sorted(entries, key=lambda f: f.path.encode())),
                )
            )  # fmt: skip


SHARDS = {"config.json": b"{}", "model-1.safetensors": b"a" * 100, "model-2.safetensors": b"b" * 50}


def test_a_folder_version_records_its_files_size_and_file_list_digest(reg: Registry) -> None:
    version = record_folder(reg, "folder", SHARDS)
    found = reg.get("folder@v1")
    assert found == version and found.files is not None
    assert [(f.path, f.size) for f in found.files] == [
        ("config.json", 2), ("model-1.safetensors", 100), ("model-2.safetensors", 50),
    ]  # fmt: skip
    assert found.size == 152  # the files', not the file list's
    assert found.sha256 == digest(found.files)
    assert found.to_json()["files"][0] == {
        "path": "config.json", "size": 2, "sha256": found.files[0].sha256,
    }  # fmt: skip
    assert [m.size for m in reg.models()] == [152]


def test_gc_keeps_every_file_of_a_folder_version_and_frees_them_after_rm(reg: Registry) -> None:
    version = record_folder(reg, "folder", SHARDS)
    assert version.files is not None
    digests = {version.sha256, *(f.sha256 for f in version.files)}
    assert reg.gc().blobs == 0
    assert all(reg.store.exists(d) for d in digests)
    reg.delete(version.ref)
    assert [m.size for m in reg.models()] == [0]
    assert reg.gc().blobs == len(digests)
    assert not any(reg.store.exists(d) for d in digests)


def test_a_file_two_folder_versions_share_is_stored_once_and_outlives_either(
    reg: Registry,
) -> None:
    first = record_folder(reg, "folder", SHARDS)
    second = record_folder(reg, "folder", {**SHARDS, "model-2.safetensors": b"c" * 50})
    assert first.files is not None and second.files is not None
    shared = first.files[1].sha256
    assert shared == second.files[1].sha256
    reg.delete(first.ref)
    reg.gc()
    assert reg.store.exists(shared)  # second still needs it
    assert not reg.store.exists(first.files[2].sha256)  # only first needed this shard
    assert [m.size for m in reg.models()] == [152]


def test_verify_checks_each_file_of_a_folder_version(reg: Registry) -> None:
    version = record_folder(reg, "folder", SHARDS)
    assert version.files is not None
    assert reg.verify() == []
    damaged = version.files[2].sha256
    path = reg.store.local_path(damaged, version.ref)
    os.chmod(path, 0o644)
    path.write_bytes(b"x" * 50)
    problems = reg.verify()
    assert [(p.ref, p.expected, p.status) for p in problems] == [(version.ref, damaged, "corrupt")]


def test_what_reads_one_file_refuses_a_folder_version_in_one_line(reg: Registry, tmp_path) -> None:
    record_folder(reg, "folder", SHARDS)
    for read in (
        lambda: reg.pull("folder@v1", tmp_path / "out", format="safetensors"),
        lambda: reg.local_file("folder@v1"),
    ):
        with pytest.raises(CheckpointError, match="folder@v1: it is a folder version"):
            read()
    with pytest.raises(CheckpointError, match="does not know how to rebuild"):
        reg.load("folder@v1")
    assert not (tmp_path / "out").exists()
