"""cache: the fill every remote store shares (temp file, verify, commit) and its clean-up."""

from __future__ import annotations

import hashlib
import os
import socket
import stat
import subprocess
from pathlib import Path

import pytest

from registry.errors import IntegrityError, StorageError
from registry.stores.cache import CachedStore
from registry.stores.folder import BlobStore, BlobWriter

DATA = b"checkpoint bytes " * 1000
DIGEST = hashlib.sha256(DATA).hexdigest()
REF = "tiny@v1"


class MemoryStore(CachedStore):
    """A remote store whose objects are bytes in memory: the hook writes them in two halves."""

    def __init__(self, cache: Path, objects: dict[str, bytes]) -> None:
        self.cache = BlobStore(cache)
        self.objects = objects
        self.downloads = 0

    def _download(self, digest: str, ref: str, sink: BlobWriter) -> None:
        self.downloads += 1
        data = self.objects[digest]
        sink.write(data[: len(data) // 2])
        sink.flush()
        self.half_way(sink)
        sink.write(data[len(data) // 2 :])

    def half_way(self, sink: BlobWriter) -> None:
        """What happens once half the bytes are in the temp file: nothing, here."""


class CutOffStore(MemoryStore):
    """The connection drops half-way: the hook raises with half the bytes written."""

    def half_way(self, sink: BlobWriter) -> None:
        assert sink.temp_path.stat().st_size == len(DATA) // 2  # a temp file to clean up
        raise StorageError(f"cannot reach the server: connection reset ({sink.size} bytes)")


class ReclaimingStore(MemoryStore):
    """A cache no gc cleans, as HttpStore's: each fill first removes dead fills' temp files."""

    reclaims_before_fill = True


def temp_files(store: CachedStore) -> list[str]:
    folder = store.cache.tmp_dir
    return sorted(os.listdir(folder)) if folder.is_dir() else []


def dead_fill(store: CachedStore) -> Path:
    """The temp file of a fill whose process was killed: its pid names no process now."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    store.cache.tmp_dir.mkdir(parents=True, exist_ok=True)
    half = store.cache.tmp_dir / f"{dead.pid}@{socket.gethostname()}@fill.part"
    half.write_bytes(DATA[: len(DATA) // 2])
    return half


def running_fill(store: CachedStore) -> Path:
    """The temp file of a fill in this process, which is alive."""
    store.cache.tmp_dir.mkdir(parents=True, exist_ok=True)
    live = store.cache.tmp_dir / f"{os.getpid()}@{socket.gethostname()}@fill.part"
    live.write_bytes(b"y" * 10)
    return live


def test_a_fill_whose_bytes_match_is_committed_and_read_from_the_cache(tmp_path: Path) -> None:
    store = MemoryStore(tmp_path / "cache", {DIGEST: DATA})
    path = store.local_path(DIGEST, REF)
    assert path == store.cache.path(DIGEST) == tmp_path / "cache" / "sha256" / DIGEST[:2] / DIGEST
    assert path.read_bytes() == DATA
    assert stat.S_IMODE(path.stat().st_mode) == 0o444
    assert temp_files(store) == []
    with store.open(DIGEST, REF) as f:
        assert f.read() == DATA
    store.verify(DIGEST, REF)
    assert store.downloads == 1  # the second read came from the cache


def test_a_fill_whose_bytes_do_not_match_leaves_neither_blob_nor_temp_file(
    tmp_path: Path,
) -> None:
    other = DATA[:-1] + b"?"
    store = MemoryStore(tmp_path / "cache", {DIGEST: other})
    with pytest.raises(IntegrityError) as caught:
        store.local_path(DIGEST, REF)
    assert (caught.value.ref, caught.value.expected) == (REF, DIGEST)
    assert caught.value.actual == hashlib.sha256(other).hexdigest()
    assert not store.cache.exists(DIGEST) and store.cache.digests() == []
    assert temp_files(store) == []
    store.objects[DIGEST] = DATA  # the source is fixed: reading again fetches afresh
    assert store.local_path(DIGEST, REF).read_bytes() == DATA
    assert store.downloads == 2


def test_a_fill_removes_the_temp_file_of_a_fill_whose_process_died(tmp_path: Path) -> None:
    store = ReclaimingStore(tmp_path / "cache", {DIGEST: DATA})
    dead, live = dead_fill(store), running_fill(store)
    assert store.local_path(DIGEST, REF).read_bytes() == DATA
    assert not dead.exists()
    assert temp_files(store) == [live.name]  # a running fill's is kept


def test_a_store_that_leaves_dead_fills_to_gc_keeps_their_temp_files(tmp_path: Path) -> None:
    store = MemoryStore(tmp_path / "cache", {DIGEST: DATA})  # as S3Store: gc counts them
    dead = dead_fill(store)
    assert store.local_path(DIGEST, REF).read_bytes() == DATA
    assert temp_files(store) == [dead.name]
    assert store.cache.reclaim_temp_files() == (1, len(DATA) // 2)
    assert temp_files(store) == []


def test_a_hook_that_raises_half_way_leaves_no_temp_file(tmp_path: Path) -> None:
    store = CutOffStore(tmp_path / "cache", {DIGEST: DATA})
    with pytest.raises(StorageError, match="connection reset"):
        store.local_path(DIGEST, REF)
    assert temp_files(store) == [] and store.cache.digests() == []
    healed = MemoryStore(tmp_path / "cache", {DIGEST: DATA})  # the connection is back
    assert healed.local_path(DIGEST, REF).read_bytes() == DATA
