"""blobstore: content-addressed writes, read-only blobs, verification."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest
from helpers import outputs_equal

from registry import Registry
from registry.errors import ConfigurationError, IntegrityError, StorageError
from registry.files import copy_stream
from registry.stores import open_store
from registry.stores.folder import BlobStore

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


@pytest.mark.parametrize("url", ["gs://bucket", "https://example.com/b"])
def test_unknown_store_url_is_a_configuration_error(url: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as caught:
        open_store(url, tmp_path / "cache")
    assert str(caught.value) == f"store {url!r}: a folder, file://PATH or s3://BUCKET[/PREFIX]"


def test_store_urls_pick_their_store(tmp_path: Path) -> None:
    assert type(open_store("s3://bucket/models", tmp_path)).__name__ == "S3Store"
    assert isinstance(open_store(str(tmp_path / "blobs"), tmp_path), BlobStore)


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


def test_copy_stream_into_a_writer(store: BlobStore, tmp_path: Path) -> None:
    source = tmp_path / "weights.pth"
    source.write_bytes(DATA)
    done: list[int] = []
    with store.writer() as writer, source.open("rb") as f:
        copy_stream(f, writer, done.append)
        digest = writer.commit()
    assert digest == DIGEST
    assert sum(done) == len(DATA)


# --- reading and verifying ---------------------------------------------------------------


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


def test_verify_records_blake3_for_a_blob_recorded_before_it(reg: Registry, tiny_model) -> None:
    """A pre-0004 blob verifies with its chunk digests until `verify` records its BLAKE3."""
    from sqlalchemy import select, update

    from registry.digests import blake3_of
    from registry.tables import Blob

    version = reg.push(
        tiny_model, arch="tiny_models:TinyNet", arch_args={"width": 4, "num_classes": 5}
    )
    with reg.engine.begin() as conn:
        conn.execute(update(Blob).values(blake3=None))
    assert outputs_equal(tiny_model, reg.load(version.ref))  # verified by SHA-256 instead
    assert reg.verify() == []
    with reg.engine.connect() as conn:
        recorded = conn.execute(select(Blob.blake3).where(Blob.sha256 == version.sha256)).scalar()
    assert recorded == blake3_of(reg.store.path(version.sha256))  # type: ignore[attr-defined]


def test_a_flipped_byte_fails_the_blake3_check_and_names_the_actual_sha256(
    reg: Registry, tiny_model
) -> None:
    version = reg.push(
        tiny_model, arch="tiny_models:TinyNet", arch_args={"width": 4, "num_classes": 5}
    )
    blob = reg.store.path(version.sha256)  # type: ignore[attr-defined]
    blob.chmod(0o644)
    data = bytearray(blob.read_bytes())
    data[100] ^= 0x01
    blob.write_bytes(bytes(data))
    with pytest.raises(IntegrityError) as caught:
        reg.load(version.ref)
    assert caught.value.actual == hashlib.sha256(bytes(data)).hexdigest()
