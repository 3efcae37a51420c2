"""Store maintenance over a catalog and a store: re-hash, collect the unreferenced, prune."""

from __future__ import annotations

from registry.catalogs import Catalog
from registry.digests import Hasher
from registry.errors import ConfigurationError, IntegrityError
from registry.files import CHUNK_SIZE
from registry.records import ModelVersion, Problem, Reclaimed
from registry.stores import Store
from registry.stores.cache import CachedStore
from registry.stores.folder import BlobStore


def verify(catalog: Catalog, store: Store, versions: list[ModelVersion]) -> list[Problem]:
    """Re-hash each version's blobs (its file or a folder's files, a pickle's safe copy);
    report the bad ones.

    A blob recorded before BLAKE3 that passes gets its BLAKE3 recorded, so
    later reads verify on every core: from the blob itself, or from a remote
    store's cached copy (the bytes reads verify), whose SHA-256 the same pass checks.
    """
    problems = []
    # The files whose BLAKE3 can be recorded: the folder's blobs, or a remote store's cache.
    local = store.cache if isinstance(store, CachedStore) else store
    for version in versions:
        if version.files is None:
            digests: list[tuple[str, int | None]] = [(version.sha256, version.size)]
        else:  # a folder's file list, then each of its files
            digests = [(version.sha256, None), *((f.sha256, f.size) for f in version.files)]
        if version.weights_sha256:
            digests.append((version.weights_sha256, None))
        for digest, size in digests:
            problem = _check_blob(store, version.ref, digest, size)
            if problem is not None:
                problems.append(problem)
            elif isinstance(local, BlobStore):
                _record_blake3(catalog, local, digest)
    return problems


def _record_blake3(catalog: Catalog, store: BlobStore, digest: str) -> None:
    """Record the BLAKE3 of bytes whose SHA-256 is checked in the same pass."""
    found = catalog.verification(digest)
    if found is not None and found.blake3:
        return
    hasher = Hasher()
    try:
        with open(store.path(digest), "rb") as blob:
            while chunk := blob.read(CHUNK_SIZE):
                hasher.update(chunk)
    except FileNotFoundError:  # collected since it was checked, or never cached
        return
    if hasher.hexdigest() == digest and hasher.check.blake3:
        catalog.record_blake3(digest, hasher.check.blake3)


def _check_blob(store: Store, ref: str, digest: str, size: int | None) -> Problem | None:
    try:
        actual = store.hash(digest, ref)
    except IntegrityError:
        return Problem(ref, digest, None, "missing")
    if actual == digest:
        return None
    truncated = size is not None and store.size(digest) < size
    return Problem(ref, digest, actual, "truncated" if truncated else "corrupt")


def gc(catalog: Catalog, store: Store, dry_run: bool) -> Reclaimed:
    """Delete unreferenced blobs, each while its catalog row is locked, and stale temp files.

    The store is listed before the catalog is read: a push places its blob
    before it records the version, so a blob listed here is either
    referenced by then or free to go (see `Registry.push`). A remote store's
    cached copy of an unreferenced blob goes too, also when another
    machine's gc deleted the blob itself.
    """
    on_disk = store.digests()
    cache = store.cache if isinstance(store, CachedStore) else None  # a remote store's copies
    cached = set(cache.digests()) if cache is not None else set()
    listed = set(on_disk) | cached | catalog.blob_digests()
    unreferenced = listed - catalog.referenced_digests()
    blobs = freed = 0
    for digest in sorted(unreferenced):
        copy = cache if cache is not None and digest in cached else None
        if dry_run:
            size = store.size(digest) or (copy.size(digest) if copy else 0)
            blobs, freed = blobs + int(store.exists(digest) or copy is not None), freed + size
            continue

        def remove(digest: str = digest, copy: BlobStore | None = copy) -> tuple[int, int]:
            """(blobs, bytes) removed, while the catalog holds the blob's row locked."""
            if store.exists(digest):  # a remote store drops its cached copy with it
                return 1, store.remove(digest)
            if copy is not None and copy.exists(digest):
                return 1, copy.remove(digest)
            return 0, 0

        removed = catalog.delete_unreferenced(digest, remove)
        if removed is not None:
            blobs, freed = blobs + removed[0], freed + removed[1]
    temps, temp_bytes = store.reclaim_temp_files(dry_run)
    return Reclaimed(blobs=blobs, bytes=freed + temp_bytes, temp_files=temps)


def prune_cache(store: Store, max_size: int, dry_run: bool) -> Reclaimed:
    """Trim a remote store's local cache to `max_size` bytes, least recently used first.

    Temp files of fills whose process is gone go too: with `--remote`, where
    `gc` is refused, this is what reclaims them.
    """
    if not isinstance(store, CachedStore):
        raise ConfigurationError(
            f"store {store.location} is a local folder: it has no cache to prune"
        )
    blobs, freed = store.prune(max_size, dry_run)
    temps, temp_bytes = store.cache.reclaim_temp_files(dry_run)
    return Reclaimed(blobs=blobs, bytes=freed + temp_bytes, temp_files=temps)
