"""What `Registry` needs from whatever holds the checkpoint bytes: the Store interface.

`Registry` speaks only this protocol. `stores.folder.BlobStore` implements it on
a local folder. A remote store (object storage) keeps its objects elsewhere
and hands out local paths from a verified cache, because loading
memory-maps a local file.

Every blob is named by the hex SHA-256 of its bytes. A blob is written
through a `BlobWriting` that hashes on the way and places the blob only on
`commit`, which the caller runs while it holds the blob's catalog row locked
(see `pushing.run`, `maintenance.gc`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import BinaryIO, Protocol

from registry.digests import Check


class BlobWriting(Protocol):
    """A file-like sink that hashes what it is given and becomes a blob on `commit`."""

    @property
    def temp_path(self) -> Path:
        """The bytes written so far, on local disk, readable before `commit`."""
        ...

    @property
    def size(self) -> int: ...

    def write(self, data: bytes | memoryview) -> int: ...

    def finish(self) -> str:
        """Make the written bytes durable and return their digest; nothing is placed yet."""
        ...

    @property
    def check(self) -> Check:
        """What reads verify the blob against (its BLAKE3), once `finish` has run."""
        ...

    def publish(self) -> None:
        """Send the finished bytes where other machines read them (an upload), if anywhere.

        Runs before the catalog transaction, so a long upload holds no lock.
        """
        ...

    def commit(self) -> str:
        """Place the blob where readers find it (not again if it is there); return its digest.

        Runs inside the transaction that holds the blob's row, so gc is not
        deleting it meanwhile; whatever a gc removed since `publish` is put back.
        """
        ...


class Store(Protocol):
    """Content-addressed blobs: written once, verified on every read, deleted only by gc."""

    @property
    def location(self) -> str:
        """Where the blobs are, fit to print (no secrets)."""
        ...

    def writer(self) -> AbstractContextManager[BlobWriting]:
        """A writer whose bytes are dropped unless it was committed."""
        ...

    def exists(self, digest: str) -> bool: ...

    def size(self, digest: str) -> int:
        """The blob's size in bytes, 0 if it is missing."""
        ...

    def local_path(self, digest: str, ref: str) -> Path:
        """A local file holding the blob, to memory-map; IntegrityError for `ref` if missing."""
        ...

    def open(self, digest: str, ref: str) -> BinaryIO:
        """The blob's bytes as a stream; IntegrityError for `ref` if missing."""
        ...

    def fetch_into(
        self,
        digest: str,
        ref: str,
        sink: BinaryIO,
        progress: Callable[[int], None],
        blake3: str | None = None,
    ) -> bool:
        """Where the blob is not on this machine, stream it into `sink`, verified (by
        `blake3` if given, else its SHA-256); False: it is here, read it with `open`."""
        ...

    def hash(self, digest: str, ref: str) -> str:
        """Re-hash the stored bytes and return their actual digest."""
        ...

    def verify(self, digest: str, ref: str, check: Check | None = None) -> None:
        """Raise IntegrityError unless the blob is present and its bytes match `digest`."""
        ...

    def evict(self, digest: str) -> bool:
        """Drop a local copy of a blob that did not verify; True if reading again fetches it.

        A remote store's cache can fetch the blob again; a local store holds the only copy.
        """
        ...

    def digests(self) -> list[str]:
        """Every blob stored."""
        ...

    def remove(self, digest: str) -> int:
        """Delete a blob (the caller holds its catalog row locked); return the bytes freed."""
        ...

    def reclaim_temp_files(self, dry_run: bool = False) -> tuple[int, int]:
        """Delete what writers that are gone left behind; return (files, bytes)."""
        ...


def open_store(location: str, cache: str | os.PathLike[str]) -> Store:
    """The store a location names: `s3://BUCKET[/PREFIX]` (read through `cache`), else a folder."""
    if location.startswith("s3://"):
        from registry.stores.s3 import S3Store

        return S3Store(location, cache)
    from registry.stores.folder import BlobStore

    return BlobStore(location)
