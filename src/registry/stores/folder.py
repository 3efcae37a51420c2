"""Content-addressed blob store on local disk: checkpoint bytes, named by their SHA-256.

    <store>/
      sha256/
        39/
          3979...(64 hex)        a blob: complete, fsynced, read-only
      tmp/
        <pid>@<host>@<random>.part   a write in flight, or left by a killed one

A blob is written to `tmp/`, hashed in the same pass, fsynced, made
read-only and renamed into place, and its folder is fsynced: a blob path
that exists always holds the whole of its bytes. The catalog refers to a
blob only after that, and only `gc` deletes blobs; both hold the blob's
catalog row locked while they touch its file (see `Registry.push`, `Registry.gc`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from functools import cache
from pathlib import Path
from typing import BinaryIO

from registry.digests import Check, Hasher, matches
from registry.errors import ConfigurationError, IntegrityError, StorageError
from registry.files import (
    CHUNK_SIZE,
    abandoned,
    fsync_dir,
    owner_prefix,
    storage_errors,
)


class DurableFile:
    """A file being written whose bytes start going to disk while it is still written.

    An fsync of half a gigabyte at the end costs a quarter of a second; asking
    for writeback every WRITEBACK_EVERY bytes, on another thread, leaves the
    final fsync only the tail to wait for.
    """

    WRITEBACK_EVERY = 64 << 20

    def __init__(self, fd: int) -> None:
        self._file = os.fdopen(fd, "wb")
        self._unsynced = 0
        self._writeback: Future[None] | None = None

    def write(self, data: bytes | memoryview) -> int:
        written = self._file.write(data)
        self._unsynced += written
        if self._unsynced >= self.WRITEBACK_EVERY and (
            self._writeback is None or self._writeback.done()
        ):
            self._file.flush()
            self._writeback = _writeback_pool().submit(os.fdatasync, self._file.fileno())
            self._unsynced = 0
        return written

    def flush(self) -> None:
        self._file.flush()

    def start_sync(self) -> None:
        """Flush, and begin the final fsync on the writeback thread; `sync_and_close`
        waits for it. What comes in between (an upload, reading the weights) overlaps it."""
        self._file.flush()
        self._writeback = _writeback_pool().submit(_after, self._writeback, self._file.fileno())

    def sync_and_close(self) -> None:
        """Flush, fsync and close; an error of an earlier writeback surfaces here."""
        if self._file.closed:
            return
        try:
            if self._writeback is not None:
                self._writeback.result()
            self._file.flush()
            os.fsync(self._file.fileno())
        finally:
            self.close()

    def close(self) -> None:
        if self._writeback is not None:
            self._writeback.exception()  # never close the fd under a running fdatasync
        self._file.close()


def _after(earlier: Future[None] | None, fd: int) -> None:
    if earlier is not None:
        earlier.result()  # its error surfaces in sync_and_close
    os.fsync(fd)


@cache
def _writeback_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="registry-writeback")


class BlobWriter:
    """A file-like sink that hashes what it is given and becomes a blob on `commit`."""

    def __init__(self, store: BlobStore, hasher: Hasher | VerifiedElsewhere | None = None) -> None:
        self._store = store
        fd, name = tempfile.mkstemp(dir=store.tmp_dir, prefix=owner_prefix(), suffix=".part")
        self.temp_path = Path(name)
        self._file = DurableFile(fd)
        self._hasher = hasher or Hasher()
        self._digest: str | None = None
        self.size = 0

    def write(self, data: bytes | memoryview) -> int:
        self._hasher.update(data)
        self.size += len(data)
        return self._file.write(data)

    @property
    def check(self) -> Check:
        """What reads verify the blob against (its BLAKE3), once `finish` has run."""
        assert isinstance(self._hasher, Hasher), "a copy verified elsewhere was not hashed here"
        return self._hasher.check

    def flush(self) -> None:
        self._file.flush()

    def finish(self) -> str:
        """Flush the temp file and begin its fsync; return its digest. The blob is not in
        place yet: `commit` waits for the fsync before the rename."""
        if self._digest is None:
            self._file.start_sync()
            self._digest = self._hasher.hexdigest()
        return self._digest

    def publish(self) -> None:
        """Nothing to send: a local folder is where readers look."""

    def commit(self) -> str:
        """Move the finished temp file into place as a read-only blob; return its digest.

        The caller holds the blob's catalog row locked, so `gc` cannot be deleting it.
        """
        digest = self.finish()
        self._file.sync_and_close()
        final = self._store.path(digest)
        if final.is_file():  # the same bytes are stored already
            self.temp_path.unlink()
            return digest
        new_folder = not final.parent.exists()
        final.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(self.temp_path, 0o444)
        os.replace(self.temp_path, final)
        fsync_dir(final.parent)
        if new_folder:
            fsync_dir(final.parent.parent)
        return digest

    def discard(self) -> None:
        self._file.close()
        self.temp_path.unlink(missing_ok=True)


class VerifiedElsewhere:
    """A BlobWriter's hasher for bytes its caller verifies as they pass (a pull's stream,
    written to the cache beside the pull's file): hashing them twice would slow the pull."""

    def __init__(self, digest: str) -> None:
        self._digest = digest

    def update(self, data: bytes | memoryview) -> None:
        pass

    def hexdigest(self) -> str:
        return self._digest


class BlobStore:
    """Blobs under one folder, addressed by the hex SHA-256 of their bytes."""

    def __init__(self, location: str | os.PathLike[str]) -> None:
        location = str(location)
        if location.startswith("file://"):
            location = location[len("file://") :]
        elif "://" in location:
            raise ConfigurationError(
                f"store {location!r}: a folder, file://PATH or s3://BUCKET[/PREFIX]"
            )
        self.root = Path(location).expanduser().absolute()
        self.tmp_dir = self.root / "tmp"

    @property
    def location(self) -> str:
        return str(self.root)

    def path(self, digest: str) -> Path:
        return self.root / "sha256" / digest[:2] / digest

    def local_path(self, digest: str, ref: str) -> Path:
        """The blob's own file: a local store needs no cache."""
        if not self.exists(digest):
            raise IntegrityError(ref, digest, None)
        return self.path(digest)

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def digests(self) -> list[str]:
        """Every blob on disk."""
        folder = self.root / "sha256"
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.glob("??/*") if len(p.name) == 64)

    def size(self, digest: str) -> int:
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            return 0

    def remove(self, digest: str) -> int:
        """Delete a blob (the caller holds its catalog row locked); return the bytes freed."""
        path = self.path(digest)
        size = self.size(digest)
        with storage_errors(path):
            path.unlink(missing_ok=True)
        return size

    def reclaim_temp_files(self, dry_run: bool = False) -> tuple[int, int]:
        """Delete temp files whose writer is gone (a dead process here, or a day old elsewhere).

        Returns how many there were and their bytes.
        """
        if not self.tmp_dir.is_dir():
            return 0, 0
        temps = [p for p in self.tmp_dir.iterdir() if p.is_file() and abandoned(p)]
        freed = 0
        for temp in temps:
            with contextlib.suppress(FileNotFoundError):
                freed += temp.stat().st_size
                if not dry_run:
                    temp.unlink()
        return len(temps), freed

    def new_writer(self, verified_as: str | None = None) -> BlobWriter:
        """A BlobWriter, whose caller discards it unless it commits it; with `verified_as`,
        the caller checks the bytes against that digest before `commit`."""
        with storage_errors(self.tmp_dir):
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
            return BlobWriter(self, VerifiedElsewhere(verified_as) if verified_as else None)

    @contextlib.contextmanager
    def writer(self) -> Iterator[BlobWriter]:
        """A BlobWriter whose temp file is removed unless it was committed."""
        writer = self.new_writer()
        try:
            with storage_errors(self.root):
                yield writer
        finally:
            writer.discard()

    def fetch_into(
        self,
        digest: str,
        ref: str,
        sink: BinaryIO,
        progress: Callable[[int], None],
        blake3: str | None = None,
    ) -> bool:
        """Nothing to fetch: the blobs are here."""
        return False

    def open(self, digest: str, ref: str) -> BinaryIO:
        """Open a blob for reading; a missing blob is an IntegrityError for `ref`."""
        try:
            return open(self.path(digest), "rb")
        except FileNotFoundError:
            raise IntegrityError(ref, digest, None) from None
        except OSError as exc:
            raise StorageError(f"cannot read blob {self.path(digest)}: {exc.strerror}") from None

    def hash(self, digest: str, ref: str) -> str:
        """Re-hash a stored blob and return the digest of its actual bytes."""
        hasher = hashlib.sha256()  # hashlib.file_digest is Python 3.11+
        with self.open(digest, ref) as f:
            while chunk := f.read(CHUNK_SIZE):
                hasher.update(chunk)
        return hasher.hexdigest()

    def evict(self, digest: str) -> bool:
        """A local store's blob is the only copy: nothing to fetch again, nothing dropped."""
        return False

    def verify(self, digest: str, ref: str, check: Check | None = None) -> None:
        """Raise IntegrityError unless the blob is present and its bytes match `digest`.

        With the BLAKE3 (or chunk digests) recorded at push, the file is hashed
        on every core; a mismatch is confirmed, and reported, by its SHA-256.
        """
        if check is not None and (check.blake3 or check.chunks):
            if not self.exists(digest):
                raise IntegrityError(ref, digest, None)
            if matches(self.path(digest), check):
                return
        actual = self.hash(digest, ref)
        if actual != digest:
            raise IntegrityError(ref, digest, actual)
