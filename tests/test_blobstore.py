"""blobstore: content-addressed writes, read-only blobs, verified copies out."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from registry.blobstore import BlobStore, copy_into
from registry.errors import ConfigurationError, IntegrityError, NotFoundError, StorageError

DATA = b"checkpoint bytes " * 1000
DIGEST = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs")


def put(store: BlobStore, data: bytes = DATA) -> str:
    with store.writer() as writer:
        writer.write(data)
        return writer.commit()


def corrupt(store: BlobStore, digest: str, data: bytes = b"tampered") -> None:
    path = store.path(digest)
    path.chmod(0o644)
    path.write_bytes(data)


def temp_files(store: BlobStore) -> list[str]:
    return sorted(os.listdir(store.tmp_dir))


# --- locations --------------------------------------------------------------------------


def test_root_is_absolute(tmp_path: Path) -> None:
    assert BlobStore("blobs").root == tmp_path / "blobs"
    assert BlobStore(f"file://{tmp_path}/elsewhere").root == tmp_path / "elsewhere"


@pytest.mark.parametrize("url", ["s3://bucket/models", "gs://bucket", "https://example.com/b"])
def test_non_local_store_is_a_configuration_error(url: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        BlobStore(url)
    assert str(caught.value) == f"store {url!r}: only local folders are supported so far"


# --- writing ----------------------------------------------------------------------------


def test_commit_places_a_read_only_blob(store: BlobStore) -> None:
    digest = put(store)
    assert digest == DIGEST
    path = store.root / "sha256" / DIGEST[:2] / DIGEST
    assert store.path(digest) == path
    assert path.read_bytes() == DATA
    assert stat.S_IMODE(path.stat().st_mode) == 0o444
    assert store.exists(digest)
    assert temp_files(store) == []


def test_writer_tracks_size_and_digest_across_writes(store: BlobStore) -> None:
    with store.writer() as writer:
        for start in range(0, len(DATA), 777):
            writer.write(memoryview(DATA)[start : start + 777])
        assert writer.size == len(DATA)
        assert writer.finish() == DIGEST
        assert not store.exists(DIGEST)  # finished, not yet in place
        assert writer.commit() == DIGEST
    assert store.path(DIGEST).read_bytes() == DATA


def test_same_bytes_twice_make_one_blob(store: BlobStore) -> None:
    first = put(store)
    inode = store.path(first).stat().st_ino
    second = put(store)
    assert first == second == DIGEST
    assert os.listdir(store.root / "sha256" / DIGEST[:2]) == [DIGEST]
    assert store.path(DIGEST).stat().st_ino == inode  # the stored blob was not rewritten
    assert temp_files(store) == []


def test_uncommitted_write_leaves_nothing(store: BlobStore) -> None:
    with store.writer() as writer:
        writer.write(DATA)
        assert writer.temp_path.parent == store.tmp_dir
        assert writer.temp_path.exists()
    assert not writer.temp_path.exists()
    assert temp_files(store) == []
    assert not store.exists(DIGEST)


def test_exception_inside_writer_removes_temp(store: BlobStore) -> None:
    with pytest.raises(KeyboardInterrupt), store.writer() as writer:
        writer.write(DATA)
        raise KeyboardInterrupt
    assert temp_files(store) == []
    assert not store.exists(DIGEST)


def test_os_error_inside_writer_is_a_storage_error(store: BlobStore) -> None:
    with pytest.raises(StorageError) as caught, store.writer() as writer:
        writer.write(DATA)
        raise OSError(28, "No space left on device")
    assert str(caught.value) == f"cannot write {store.root}: No space left on device"
    assert temp_files(store) == []


def test_blob_committed_before_an_exception_stays(store: BlobStore) -> None:
    with pytest.raises(RuntimeError), store.writer() as writer:
        writer.write(DATA)
        writer.commit()
        raise RuntimeError("the catalog write failed")
    assert store.path(DIGEST).read_bytes() == DATA
    assert temp_files(store) == []


def test_copy_into_streams_a_file(store: BlobStore, tmp_path: Path) -> None:
    source = tmp_path / "weights.pth"
    source.write_bytes(DATA)
    done: list[int] = []
    with store.writer() as writer, source.open("rb") as f:
        copy_into(f, writer, done.append)
        digest = writer.commit()
    assert digest == DIGEST
    assert sum(done) == len(DATA)


# --- reading and verifying ---------------------------------------------------------------


def test_copy_out_is_bit_exact(store: BlobStore, tmp_path: Path) -> None:
    put(store)
    destination = tmp_path / "out" / "weights.pth"
    destination.parent.mkdir()
    done: list[int] = []
    store.copy_out(DIGEST, destination, "m@v1", progress=done.append)
    assert destination.read_bytes() == DATA
    assert sum(done) == len(DATA)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(destination.stat().st_mode) == 0o666 & ~umask
    assert os.listdir(destination.parent) == ["weights.pth"]


def test_copy_out_replaces_an_existing_file(store: BlobStore, tmp_path: Path) -> None:
    put(store)
    destination = tmp_path / "weights.pth"
    destination.write_bytes(b"old")
    store.copy_out(DIGEST, destination, "m@v1")
    assert destination.read_bytes() == DATA


def test_copy_out_of_corrupted_blob_writes_nothing(store: BlobStore, tmp_path: Path) -> None:
    put(store)
    corrupt(store, DIGEST)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(IntegrityError) as caught:
        store.copy_out(DIGEST, out / "weights.pth", "m@v1")
    error = caught.value
    assert (error.ref, error.expected) == ("m@v1", DIGEST)
    assert error.actual == hashlib.sha256(b"tampered").hexdigest()
    assert str(error) == (
        f"m@v1 failed verification: expected sha256:{DIGEST} but its bytes hash to "
        f"sha256:{error.actual}; the store is corrupt (run `registry verify`)"
    )
    assert os.listdir(out) == []


def test_copy_out_of_corrupted_blob_keeps_existing_destination(
    store: BlobStore, tmp_path: Path
) -> None:
    put(store)
    corrupt(store, DIGEST)
    destination = tmp_path / "weights.pth"
    destination.write_bytes(b"the user's file")
    with pytest.raises(IntegrityError):
        store.copy_out(DIGEST, destination, "m@v1")
    assert destination.read_bytes() == b"the user's file"
    assert not any(name.startswith(".weights.pth.") for name in os.listdir(tmp_path))


def test_copy_out_without_verify_copies_what_is_there(store: BlobStore, tmp_path: Path) -> None:
    put(store)
    corrupt(store, DIGEST)
    destination = tmp_path / "weights.pth"
    store.copy_out(DIGEST, destination, "m@v1", verify=False)
    assert destination.read_bytes() == b"tampered"


def test_copy_out_of_missing_blob(store: BlobStore, tmp_path: Path) -> None:
    destination = tmp_path / "weights.pth"
    with pytest.raises(IntegrityError) as caught:
        store.copy_out(DIGEST, destination, "m@v1")
    assert (caught.value.expected, caught.value.actual) == (DIGEST, None)
    assert str(caught.value) == (
        f"m@v1 failed verification: expected sha256:{DIGEST} but the blob is missing; "
        "the store is corrupt (run `registry verify`)"
    )
    assert not destination.exists()


def test_copy_out_into_missing_folder(store: BlobStore, tmp_path: Path) -> None:
    put(store)
    with pytest.raises(NotFoundError):
        store.copy_out(DIGEST, tmp_path / "nowhere" / "weights.pth", "m@v1")
    assert not (tmp_path / "nowhere").exists()


def test_copy_out_into_missing_folder_names_the_folder(store: BlobStore, tmp_path: Path) -> None:
    put(store)
    with pytest.raises(NotFoundError) as caught:
        store.copy_out(DIGEST, tmp_path / "nowhere" / "weights.pth", "m@v1")
    assert str(caught.value) == f"folder {tmp_path / 'nowhere'} not found"


def test_copy_out_onto_a_folder(store: BlobStore, tmp_path: Path) -> None:
    put(store)
    destination = tmp_path / "out" / "weights.pth"
    destination.mkdir(parents=True)
    with pytest.raises(StorageError, match="Is a directory"):
        store.copy_out(DIGEST, destination, "m@v1")
    assert destination.is_dir()
    assert os.listdir(destination.parent) == ["weights.pth"]


def test_copy_out_onto_a_folder_names_the_destination(store: BlobStore, tmp_path: Path) -> None:
    put(store)
    destination = tmp_path / "weights.pth"
    destination.mkdir()
    with pytest.raises(StorageError) as caught:
        store.copy_out(DIGEST, destination, "m@v1")
    assert str(caught.value) == f"cannot write {destination}: Is a directory"


def test_verify_passes_intact_blob(store: BlobStore) -> None:
    put(store)
    store.verify(DIGEST, "m@v1")
    assert store.hash(DIGEST, "m@v1") == DIGEST


def test_verify_reports_corrupted_blob(store: BlobStore) -> None:
    put(store)
    corrupt(store, DIGEST, DATA[:-1])  # truncated by one byte
    with pytest.raises(IntegrityError) as caught:
        store.verify(DIGEST, "m@v1")
    assert caught.value.ref == "m@v1"
    assert caught.value.expected == DIGEST
    assert caught.value.actual == hashlib.sha256(DATA[:-1]).hexdigest()


def test_verify_reports_missing_blob(store: BlobStore) -> None:
    with pytest.raises(IntegrityError) as caught:
        store.verify(DIGEST, "m@v2")
    assert (caught.value.ref, caught.value.expected, caught.value.actual) == ("m@v2", DIGEST, None)
