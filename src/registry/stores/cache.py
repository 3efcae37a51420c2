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
from registry.files import VerifyingSink, storage_errors
from registry.stores.folder import BlobStore, BlobWriter


class Sink(Protocol):
    """Where `_download` writes: the cache's writer, or a pull's file and the cache's copy."""

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
        self._reclaim()
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
        """Where the cache lacks the blob, stream it into `sink` and into the cache at once,
        verified on the way (by `blake3` where the catalog recorded it) and kept in the
        cache only then; False: the cache has it, read it there.

        One read of the network, two writes, hashed once on another thread (issue 24).
        The pull's file is its own inode, the user's to change. IntegrityError when
        the bytes were not the blob's: `sink` got them, so the caller drops it.
        """
        if self.cache.exists(digest):
            return False
        self._reclaim()
        copy = self.cache.new_writer(verified_as=digest)
        try:
            both = _Tee(sink, copy, self.cache.root)
            verifying = VerifyingSink(both, digest, ref, progress, blake3)
            self._download(digest, ref, verifying)
            verifying.check()
            with storage_errors(self.cache.root):
                copy.commit()
        finally:
            copy.discard()
        return True

    def _reclaim(self) -> None:
        """Remove dead fills' temp files first where no gc does (`reclaims_before_fill`)."""
        if self.reclaims_before_fill:
            with contextlib.suppress(OSError):  # cleaning up never fails the read itself
                self.cache.reclaim_temp_files()

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


class _Tee:
    """A pull's file and the cache's copy beside it, written alike; an error names the
    cache only when its copy failed (the pull's file reports its own)."""

    def __init__(self, sink: BinaryIO, copy: BlobWriter, cache: Path) -> None:
        self._sink, self._copy, self._cache = sink, copy, cache

    def write(self, data: bytes) -> int:
        self._sink.write(data)
        with storage_errors(self._cache):
            return self._copy.write(data)

    def flush(self) -> None:
        self._sink.flush()
        with storage_errors(self._cache):
            self._copy.flush()
