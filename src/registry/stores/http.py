"""HttpStore: a registry server's checkpoint files, read through the verified local cache.

    <cache>/                                        a local BlobStore, shared with an s3:// store's
      sha256/39/3979...(64 hex)                     a blob whose bytes matched the server's digest
      tmp/<pid>@<host>@<random>.part                a download in flight (a dead one's: the
                                                    next download removes it)

This store only streams a file from the server into the cache (`_download`);
`CachedStore` keeps the blob only when its bytes match the sha256 of the
version's JSON, and verifies a cached blob on every use, as an S3 store's is.
Each file of a folder version is fetched on its own, as `NAME@vN/PATH`, and
kept by the sha256 its version's file list gives it.
"""

from __future__ import annotations

import contextlib
import os
from typing import NoReturn

from registry.errors import ReadOnlyError
from registry.remote import Client
from registry.stores.cache import CachedStore, Sink
from registry.stores.folder import BlobStore, BlobWriter


class HttpStore(CachedStore):
    """A registry server's checkpoint files, read through a verified local cache.

    The read side of the Store protocol; whatever would write or delete a blob
    is refused: only the server's own registry does that.
    """

    # A fill left half-done by a process that died (killed, the machine rebooted) is a
    # temp file nobody reads, and gc is refused here: the next fill removes it, as a
    # pull removes a dead pull's temp file beside its destination.
    reclaims_before_fill = True

    def __init__(self, client: Client, cache: str | os.PathLike[str]) -> None:
        self.client = client
        self.cache = BlobStore(cache)

    @property
    def location(self) -> str:
        return self.client.url

    def writer(self) -> contextlib.AbstractContextManager[BlobWriter]:
        self._refuse("writing a blob")

    def exists(self, digest: str) -> bool:
        """Whether the cache holds the blob (the server is not asked)."""
        return self.cache.exists(digest)

    def size(self, digest: str) -> int:
        return self.cache.size(digest)

    def hash(self, digest: str, ref: str) -> str:
        self._refuse("verify", "the store itself; run it where the store is")

    def digests(self) -> list[str]:
        self._refuse("listing the blobs")

    def remove(self, digest: str) -> int:
        self._refuse("deleting a blob")

    def reclaim_temp_files(self, dry_run: bool = False) -> tuple[int, int]:
        """The cache's temp files whose downloader is gone."""
        return self.cache.reclaim_temp_files(dry_run)

    def _download(self, digest: str, ref: str, sink: Sink) -> None:
        """Stream version `ref`'s file from the server into `sink`."""
        self.client.download(ref, digest, sink)

    def _refuse(self, operation: str, need: str = "a catalog and a store") -> NoReturn:
        raise ReadOnlyError(self.client.url, operation, need)
