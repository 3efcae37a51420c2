"""Files written safely: temp names that say who writes them, atomic copies for the user.

A temp file is named `<pid>@<host>@<random>.part` (in the store's `tmp/`,
or `.<name>.<pid>@<host>@<random>.part` beside a user's destination), so
whoever finds one left behind can tell whether its writer is gone. A file
written for the user (a pull) appears complete or not at all; the blob store
keeps its own, durable, writes (`stores.folder`).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from registry.digests import hash_pool
from registry.errors import IntegrityError, NotFoundError, StorageError

CHUNK_SIZE = 8 << 20
# A temp file whose writer runs on another host is left alone for this long.
FOREIGN_TEMP_TIMEOUT_S = 24 * 3600


def as_created(mode: int) -> int:
    """`mode` less the umask: what open() or mkdir() give a new file or folder, where
    mkstemp and mkdtemp give 0600 and 0700."""
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


@contextlib.contextmanager
def atomic_file(destination: Path) -> Iterator[BinaryIO]:
    """A file that appears at `destination` complete, or not at all.

    It is written as a temp file beside the destination and renamed over it,
    so a failed or killed pull never leaves a partial file. Unlike a blob it
    is not fsynced: it is a copy of a blob that is, and like `cp` a pull does
    not wait for the disk (a power cut just after may lose the copy, never
    the blob).
    """
    destination = destination.absolute()
    prefix = f".{destination.name}."
    with storage_errors(destination.parent):
        for stale in destination.parent.glob(f"{glob.escape(prefix)}*@*@*.part"):
            if abandoned(stale, prefix):  # left by a pull that was killed
                stale.unlink(missing_ok=True)
        fd, name = tempfile.mkstemp(
            dir=destination.parent, prefix=prefix + owner_prefix(), suffix=".part"
        )
    temp = Path(name)
    try:
        with storage_errors(destination), open(fd, "wb") as out:  # a full disk, a quota
            yield out
        os.chmod(temp, as_created(0o666))
        with storage_errors(destination):
            os.replace(temp, destination)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class Blake3Check:
    """A copy checked by the BLAKE3 recorded at push; `rehash` gives the SHA-256 to report."""

    digest: str
    rehash: Callable[[], str | None]


def copy_verified(
    source: BinaryIO,
    destination: Path,
    digest: str,
    ref: str,
    verify: bool = True,
    progress: Callable[[int], None] = lambda _n: None,
    blake3: Blake3Check | None = None,
) -> None:
    """Copy `source` (a blob) to `destination`, checking its digest on the way.

    On any failure nothing is left at `destination`, and a file already
    there is kept.
    """
    with source, atomic_file(destination) as out:  # the source is closed whatever fails
        copy_stream_verified(source, out, digest, ref, verify, progress, blake3)


def copy_stream_verified(
    source: BinaryIO,
    sink: BinaryIO,
    digest: str,
    ref: str,
    verify: bool = True,
    progress: Callable[[int], None] = lambda _n: None,
    blake3: Blake3Check | None = None,
) -> None:
    """Copy a blob to a stream, then raise IntegrityError if its bytes were not `digest`'s.

    With the blob's BLAKE3 the bytes are hashed by it, on every core, instead of
    by SHA-256 on one (issue 14); a mismatch is reported with the SHA-256 of the source.
    """
    if verify and blake3 is not None:
        import blake3 as b3  # here, not at import: `registry ls` never hashes

        hasher = b3.blake3(max_threads=b3.blake3.AUTO)
        copy_stream(source, sink, progress, hasher)
        sink.flush()
        if hasher.hexdigest() != blake3.digest:
            raise IntegrityError(ref, digest, blake3.rehash())
        return
    actual = hashlib.sha256()
    copy_stream(source, sink, progress, actual)
    sink.flush()
    if verify and actual.hexdigest() != digest:
        raise IntegrityError(ref, digest, actual.hexdigest())


class Writable(Protocol):
    """What a VerifyingSink writes into: a file, or a file and the cache's copy beside it."""

    def write(self, data: bytes) -> int: ...

    def flush(self) -> None: ...


BATCH = 4 << 20  # what a VerifyingSink hashes and writes at once, of pieces smaller than 1 MiB


class VerifyingSink:
    """A stream written to `sink`, each chunk hashed on another thread while the next comes.

    Hashed by the BLAKE3 recorded at push where there is one (one hash, and the
    faster), else by SHA-256; `check` raises IntegrityError unless the bytes
    were the blob's. The writer's thread only writes: a cold pull over the
    network then runs at the speed of a GET into a file (issue 24).
    """

    def __init__(
        self,
        sink: Writable,
        digest: str,
        ref: str,
        progress: Callable[[int], None],
        blake3: str | None,
    ) -> None:
        self._sink, self._ref, self._progress = sink, ref, progress
        self._hasher: Any
        if blake3:
            import blake3 as b3  # here, not at import: `registry ls` never hashes

            self._named, self._expected, self._hasher = "blake3:", blake3, b3.blake3()
        else:
            self._named, self._expected, self._hasher = "", digest, hashlib.sha256()
        self._hashing: Future[Any] | None = None
        self._pending: list[bytes] = []  # small pieces, gathered into one batch
        self._pending_size = 0
        self.size = 0

    def write(self, data: bytes | memoryview) -> int:
        chunk = data if isinstance(data, bytes) else bytes(data)  # the hashing thread reads it
        self.size += len(chunk)
        self._progress(len(chunk))
        if not self._pending and len(chunk) >= BATCH // 4:
            self._send(chunk)
            return len(chunk)
        # An HTTP client hands on 64 KiB at a time: hashing and writing each on its own
        # costs a thread's turn per piece, so they go in batches of BATCH.
        self._pending.append(chunk)
        self._pending_size += len(chunk)
        if self._pending_size >= BATCH:
            self._drain()
        return len(chunk)

    def flush(self) -> None:
        self._drain()
        self._sink.flush()

    def check(self) -> None:
        """Raise IntegrityError unless the bytes written were the blob's."""
        self._drain()
        self._wait()
        self._sink.flush()
        actual = self._hasher.hexdigest()
        if actual != self._expected:  # a bare digest is SHA-256 (errors._named)
            raise IntegrityError(self._ref, self._named + self._expected, self._named + actual)

    def _drain(self) -> None:
        if self._pending:
            batch = b"".join(self._pending)
            self._pending, self._pending_size = [], 0
            self._send(batch)

    def _send(self, chunk: bytes) -> None:
        self._wait()
        self._hashing = hash_pool().submit(self._hasher.update, chunk)
        self._sink.write(chunk)

    def _wait(self) -> None:
        if self._hashing is not None:
            self._hashing.result()


def copy_stream(
    source: BinaryIO,
    sink: Any,
    progress: Callable[[int], None],
    digest: Any = None,
) -> None:
    """Copy `source` to `sink` in large chunks, closing `source`; update `digest` on the way."""
    buffer = bytearray(CHUNK_SIZE)
    view = memoryview(buffer)
    with source:
        while n := source.readinto(buffer):  # type: ignore[attr-defined]
            chunk = view[:n]
            if digest is not None:
                digest.update(chunk)
            sink.write(chunk)
            progress(n)


def owner_prefix() -> str:
    """How a temp file's name says which process writes it: `<pid>@<host>@`."""
    return f"{os.getpid()}@{socket.gethostname()}@"


def abandoned(temp: Path, prefix: str = "") -> bool:
    """Whether the process that named this temp file is gone (or a day passed, elsewhere)."""
    pid, _, rest = temp.name.removeprefix(prefix).partition("@")
    host = rest.partition("@")[0]
    if host == socket.gethostname() and pid.isdigit():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
    try:
        return time.time() - temp.stat().st_mtime > FOREIGN_TEMP_TIMEOUT_S
    except FileNotFoundError:
        return False


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def storage_errors(path: Path) -> Iterator[None]:
    """Report an OSError as a one-line StorageError naming the path involved."""
    try:
        yield
    except FileNotFoundError:
        raise NotFoundError(f"folder {path}") from None
    except OSError as exc:
        if isinstance(exc, StorageError):
            raise
        raise StorageError(f"cannot write {path}: {exc.strerror or exc}") from None
