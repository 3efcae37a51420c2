"""The verified local cache that remote stores (S3, a `registry serve`) read through.

    <cache>/                         a BlobStore: what loading memory-maps
      sha256/39/3979...(64 hex)      atomic, read-only, verified on every use
      tmp/<pid>@<host>@<random>.part a fill in flight, or a dead one's

A remote store only moves a blob's bytes into the cache (`_download`); the
rest is here: the fill around them (a temp file, kept only if its bytes
match the digest), handing out the cached copy, remembering its use for
`prune` (least recently used first), and evicting a copy that failed
verification, so that reading again fetches a fresh one.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, ClassVar, Protocol

from registry.digests import Check
from registry.errors import IntegrityError
from registry.files import VerifyingSink
from registry.stores.folder import BlobStore


class Sink(Protocol):
    """Where `_download` writes: the cache's writer, or a pull's file as it is verified."""

    @property
    def size(self) -> int:
        """The bytes written so far."""
        ...

    def write(self, data: bytes | memoryview) -> int: ...

    def flush(self) -> None: ...


class CachedStore:
    """The read side every remote store shares, over `self.cache`."""

    cache: BlobStore
    # Whether a fill first removes the temp files of fills whose process died: for a
    # cache that no gc cleans (HttpStore); an S3 store's gc counts and removes them.
    reclaims_before_fill: ClassVar[bool] = False

    def _download(self, digest: str, ref: str, sink: Sink) -> None:
        """Write the blob's bytes into `sink`; `_fetch` verifies and keeps them."""
        raise NotImplementedError

    def _fetch(self, digest: str, ref: str) -> None:
        """Bring a blob into the cache, keeping it only if its bytes match `digest`."""
        if self.reclaims_before_fill:
            with contextlib.suppress(OSError):  # cleaning up never fails the read itself
                self.cache.reclaim_temp_files()
        with self.cache.writer() as writer:
            self._download(digest, ref, writer)
            actual = writer.finish()
            if actual != digest:
                raise IntegrityError(ref, digest, actual)
            writer.commit()

    def fetch_into(
        self,
        digest: str,
        ref: str,
        sink: BinaryIO,
        progress: Callable[[int], None],
        blake3: str | None = None,
    ) -> bool:
        """Where the cache lacks the blob, stream it straight into `sink`, verified on the
        way (by `blake3` where the catalog recorded it); False: the cache has it, read it there.

        The cache is left as it was: a pull's file is the user's to change, so it
        shares nothing with the cache, and a second copy written beside it would
        cost a pull 1.6 times a GET here (issue 24). IntegrityError when the bytes
        were not the blob's: `sink` got them, so the caller drops it.
        """
        if self.cache.exists(digest):
            return False
        verifying = VerifyingSink(sink, digest, ref, progress, blake3)
        self._download(digest, ref, verifying)
        verifying.check()
        return True

    def local_path(self, digest: str, ref: str) -> Path:
        """The cached copy, fetched first when the cache lacks it; its use is remembered."""
        path = self.cache.path(digest)
        if self.cache.exists(digest):
            with contextlib.suppress(OSError):
                os.utime(path)  # least recently used goes first in `prune`
        else:
            self._fetch(digest, ref)
        return path

    def open(self, digest: str, ref: str) -> BinaryIO:
        self.local_path(digest, ref)
        return self.cache.open(digest, ref)

    def verify(self, digest: str, ref: str, check: Check | None = None) -> None:
        """Verify the cached copy; a damaged one is evicted, so reading again fetches it.

        This still raises: it runs while the caller reads the copy, so what the
        caller built came from bad bytes and must be built again.
        """
        try:
            self.cache.verify(digest, ref, check)
        except IntegrityError:
            self.evict(digest)
            raise

    def evict(self, digest: str) -> bool:
        """Drop a blob's cached copy, whose bytes did not verify; True: reading again fetches it."""
        self.cache.remove(digest)
        return True

    def prune(self, max_bytes: int, dry_run: bool = False) -> tuple[int, int]:
        """Remove the least recently used cached blobs until the cache holds `max_bytes`."""
        blobs = [self.cache.path(d) for d in self.cache.digests()]
        stats = sorted(((p.stat().st_mtime, p.stat().st_size, p) for p in blobs), reverse=True)
        kept = removed = freed = 0
        for _, size, path in stats:  # newest first: keep while it fits
            if kept + size <= max_bytes:
                kept += size
                continue
            removed, freed = removed + 1, freed + size
            if not dry_run:
                path.unlink(missing_ok=True)
        return removed, freed
