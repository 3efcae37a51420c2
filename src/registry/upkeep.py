"""The Registry's upkeep of its store and its moves between registries: verify, gc, cache
prune, export and import (a part of `Registry`, split out of `api`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from registry.catalogs import Catalog
    from registry.progress_bars import Progress
    from registry.publishing import Publisher
    from registry.records import ModelVersion, Problem, Reclaimed
    from registry.signing import TrustedKey
    from registry.stores import Store


class UpkeepMethods:
    """`Registry` methods over the whole store, and bundles in and out."""

    catalog: Catalog
    store: Store
    _progress: Progress
    _publisher: Publisher

    if TYPE_CHECKING:  # Registry's own

        def get(self, ref: str) -> ModelVersion: ...

        def search(self) -> list[ModelVersion]: ...

        def trusted_keys(
            self, also: Sequence[str | os.PathLike[str]] | None = None
        ) -> tuple[TrustedKey, ...]: ...

    def verify(self, ref: str | None = None) -> list[Problem]:
        """Re-hash the blobs of one version (or all); report each missing or damaged one.

        Raises:
            NotFoundError: `ref` names no version.

        Example:
            >>> reg.verify()
            []
        """
        from registry import maintenance

        self.catalog.require_local("verify", "the store itself; run it where the store is")
        versions = [self.get(ref)] if ref is not None else self.search()
        return maintenance.verify(self.catalog, self.store, versions)

    def gc(self, dry_run: bool = False) -> Reclaimed:
        """Delete blobs no version references, and temp files of writers that are gone.

        Each blob is deleted while its catalog row is locked, so a push that is
        about to reference the same bytes waits, then writes them again.

        Raises:
            StorageError: a blob cannot be deleted.
            DatabaseError: the catalog cannot be reached.

        Example:
            >>> reg.gc(dry_run=True).bytes
            553433881
        """
        from registry import maintenance

        self.catalog.require_local("gc")
        return maintenance.gc(self.catalog, self.store, dry_run)

    def prune_cache(self, max_size: int = 0, dry_run: bool = False) -> Reclaimed:
        """Remove the least recently used blobs from a remote store's cache down to `max_size`.

        Raises:
            ConfigurationError: the store is a local folder, which has no cache.

        Example:
            >>> reg.prune_cache(max_size=10 * 2**30).bytes
            1234567890
        """
        from registry import maintenance

        return maintenance.prune_cache(self.store, max_size, dry_run)

    # -- moving models between registries ---------------------------------------------------

    def export_bundle(
        self, refs: Sequence[str] | None, destination: str | os.PathLike[str] | BinaryIO
    ) -> list[ModelVersion]:
        """Write versions (None: every version) and their blobs to a bundle (a tar file).

        `destination` is a path, written atomically, or a binary stream such as
        `sys.stdout.buffer`. Each blob is checked against its digest while it is
        written; a damaged one stops the export and leaves no file.

        Raises:
            NotFoundError: a reference names no version.
            IntegrityError: a blob does not match its digest.
            StorageError: the destination cannot be written.

        Example:
            >>> [v.ref for v in reg.export_bundle(["vgg16@v3"], "models.tar")]
            ['vgg16@v3']
        """
        from registry.bundles import exchange

        self.catalog.require_local("export")
        found = self.search() if refs is None else [self.get(ref) for ref in refs]
        # Oldest first, each once: the destination numbers them in this order.
        unique = {v.ref: v for v in found}
        versions = sorted(unique.values(), key=lambda v: (v.name, v.version))
        with self._progress("export", sum(v.size for v in versions)) as advance:
            exchange.export(self.catalog, self.store, versions, destination, advance)
        return versions

    def import_bundle(
        self,
        source: str | os.PathLike[str] | BinaryIO,
        trusted_keys: Sequence[str | os.PathLike[str]] | None = None,
    ) -> list[ModelVersion]:
        """Record the versions of a bundle, each as the next version of its model.

        The bundle is untrusted: every field is validated and every blob verified
        before anything is recorded, and nothing in it is unpickled or called. A
        version equal to one already here (bytes, arch, arguments) is not made
        twice; the records say which are new (`is_new`). Aliases are not carried.
        Through a team server, the bundle is streamed to it, which imports it so.
        With trusted keys (`trusted_keys`, the registry's), a bundle is refused
        unless one of them signed each of its versions, before a blob is read.

        Raises:
            BundleError: the bundle is damaged or holds what a registry never writes.
            NotFoundError: the file does not exist.
            SignatureError: trusted keys are set and a version is not signed by one.

        Example:
            >>> [(v.ref, v.is_new) for v in reg.import_bundle("models.tar")]
            [('vgg16@v1', True)]
        """
        trusted = self.trusted_keys(trusted_keys)
        return self._publisher.import_bundle(source, self._progress, trusted)
