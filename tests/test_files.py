"""files: a user's destination appears complete and verified, or not at all."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest
from test_blobstore import DATA, DIGEST, corrupt, put

from registry import files
from registry.errors import IntegrityError, NotFoundError, StorageError
from registry.stores.folder import BlobStore


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs")


def copy_out(store: BlobStore, destination: Path, **options) -> None:
    """What a pull does: open the blob, copy it to the destination, verified."""
    files.copy_verified(store.open(DIGEST, "m@v1"), destination, DIGEST, "m@v1", **options)


def test_copy_verified_is_bit_exact(store: BlobStore, tmp_path: Path) -> None:
    put(store)
    destination = tmp_path / "out" / "weights.pth"
    destination.parent.mkdir()
    done: list[int] = []
    copy_out(store, destination, progress=done.append)
    assert destination.read_bytes() == DATA
    assert sum(done) == len(DATA)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(destination.stat().st_mode) == 0o666 & ~umask
    assert os.listdir(destination.parent) == ["weights.pth"]


def test_copy_verified_replaces_an_existing_file(store: BlobStore, tmp_path: Path) -> None:
    put(store)
    destination = tmp_path / "weights.pth"
    destination.write_bytes(b"old")
    copy_out(store, destination)
    assert destination.read_bytes() == DATA


def test_copy_verified_of_corrupted_blob_writes_nothing(store: BlobStore, tmp_path: Path) -> None:
    put(store)
    corrupt(store, DIGEST)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(IntegrityError) as caught:
        copy_out(store, out / "weights.pth")
    error = caught.value
    assert (error.ref, error.expected) == ("m@v1", DIGEST)
    assert error.actual == hashlib.sha256(b"tampered").hexdigest()
    assert str(error) == (
        f"m@v1 failed verification: expected sha256:{DIGEST} but its bytes hash to "
        f"sha256:{error.actual}; the store is corrupt (run `registry verify`)"
    )
    assert os.listdir(out) == []


def test_copy_verified_of_corrupted_blob_keeps_existing_destination(
    store: BlobStore, tmp_path: Path
) -> None:
    put(store)
    corrupt(store, DIGEST)
    destination = tmp_path / "weights.pth"
    destination.write_bytes(b"the user's file")
    with pytest.raises(IntegrityError):
        copy_out(store, destination)
    assert destination.read_bytes() == b"the user's file"
    assert not any(name.startswith(".weights.pth.") for name in os.listdir(tmp_path))


def test_copy_verified_without_verify_copies_what_is_there(
    store: BlobStore, tmp_path: Path
) -> None:
    put(store)
    corrupt(store, DIGEST)
    destination = tmp_path / "weights.pth"
    copy_out(store, destination, verify=False)
    assert destination.read_bytes() == b"tampered"


def test_copy_verified_of_missing_blob(store: BlobStore, tmp_path: Path) -> None:
    destination = tmp_path / "weights.pth"
    with pytest.raises(IntegrityError) as caught:
        copy_out(store, destination)
    assert (caught.value.expected, caught.value.actual) == (DIGEST, None)
    assert str(caught.value) == (
        f"m@v1 failed verification: expected sha256:{DIGEST} but the blob is missing; "
        "the store is corrupt (run `registry verify`)"
    )
    assert not destination.exists()


def test_copy_verified_into_missing_folder(store: BlobStore, tmp_path: Path) -> None:
    put(store)
    with pytest.raises(NotFoundError):
        copy_out(store, tmp_path / "nowhere" / "weights.pth")
    assert not (tmp_path / "nowhere").exists()


def test_copy_verified_into_missing_folder_names_the_folder(
    store: BlobStore, tmp_path: Path
) -> None:
    put(store)
    with pytest.raises(NotFoundError) as caught:
        copy_out(store, tmp_path / "nowhere" / "weights.pth")
    assert str(caught.value) == f"folder {tmp_path / 'nowhere'} not found"


def test_copy_verified_onto_a_folder(store: BlobStore, tmp_path: Path) -> None:
    put(store)
    destination = tmp_path / "out" / "weights.pth"
    destination.mkdir(parents=True)
    with pytest.raises(StorageError, match="Is a directory"):
        copy_out(store, destination)
    assert destination.is_dir()
    assert os.listdir(destination.parent) == ["weights.pth"]


def test_copy_verified_onto_a_folder_names_the_destination(
    store: BlobStore, tmp_path: Path
) -> None:
    put(store)
    destination = tmp_path / "weights.pth"
    destination.mkdir()
    with pytest.raises(StorageError) as caught:
        copy_out(store, destination)
    assert str(caught.value) == f"cannot write {destination}: Is a directory"


# -- VerifyingSink: a cold pull's stream, hashed on another thread as it is written


def stream_through(sink: files.VerifyingSink, data: bytes, step: int) -> None:
    """Write `data` as a downloader would, reusing one buffer for every chunk."""
    buffer = bytearray(step)
    for start in range(0, len(data), step):
        n = len(data[start : start + step])
        buffer[:n] = data[start : start + step]
        sink.write(memoryview(buffer)[:n])
        buffer[:n] = b"\0" * n  # the next chunk overwrites the buffer at once


@pytest.mark.parametrize("by", ["sha256", "blake3"])
def test_a_verifying_sink_writes_the_bytes_and_checks_them(tmp_path: Path, by: str) -> None:
    import blake3

    data = os.urandom(3 << 20)
    recorded = blake3.blake3(data).hexdigest() if by == "blake3" else None
    done: list[int] = []
    with open(tmp_path / "out", "wb") as out:
        sink = files.VerifyingSink(out, hashlib.sha256(data).hexdigest(), "m@v1", done.append,
                                   recorded)  # fmt: skip
        stream_through(sink, data, 1 << 20)
        sink.check()
    assert (tmp_path / "out").read_bytes() == data
    assert sum(done) == sink.size == len(data)


@pytest.mark.parametrize("by", ["sha256", "blake3"])
def test_a_verifying_sink_refuses_other_bytes(tmp_path: Path, by: str) -> None:
    import blake3

    data = os.urandom(3 << 20)
    recorded = blake3.blake3(data).hexdigest() if by == "blake3" else None
    damaged = data[:-1] + bytes([data[-1] ^ 1])
    with open(tmp_path / "out", "wb") as out:
        sink = files.VerifyingSink(out, hashlib.sha256(data).hexdigest(), "m@v1", lambda n: None,
                                   recorded)  # fmt: skip
        stream_through(sink, damaged, 1 << 20)
        with pytest.raises(IntegrityError, match=f"m@v1 failed verification: expected {by}:"):
            sink.check()
