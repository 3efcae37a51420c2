"""What `Registry` needs from whatever holds the version records: the Catalog interface.

`Registry` speaks only this protocol, as it speaks only `stores.Store` for
the bytes. `sql.SqlCatalog` implements it over SQLAlchemy (SQLite or
PostgreSQL); `http.HttpCatalog` asks a `registry serve`, and raises
ReadOnlyError itself for whatever would write. Every method returns the
frozen records of `registry.records`: no ORM row leaves a catalog.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Protocol, TypeVar

if TYPE_CHECKING:
    from datetime import datetime, timedelta

    from sqlalchemy import Engine

    from registry.digests import Check
    from registry.records import (
        AuditEntry,
        Delivery,
        Diff,
        Fingerprint,
        HookInfo,
        Lineage,
        ModelSummary,
        ModelVersion,
        NewVersion,
        TensorInfo,
        TokenInfo,
    )
    from registry.stores import BlobWriting


T = TypeVar("T")


class Recording(Protocol):
    """One write transaction: blobs placed and versions recorded together, or neither."""

    def place(self, writer: BlobWriting) -> None:
        """Claim a written blob's row (locked until commit: gc waits), then put it in place."""
        ...

    def keep(self, digest: str, size: int, check: Check) -> None:
        """Claim the row of a blob stored already (locked until commit: gc waits)."""
        ...

    def add(self, new: NewVersion) -> ModelVersion:
        """Record the next version of `new.name`, or find the identical one (`is_new` says)."""
        ...

    def find(self, name: str, sha256: str) -> str | None:
        """The reference of the newest version of `name` whose file is `sha256`, if any."""
        ...


class Catalog(Protocol):
    """Versions, models, aliases, tags, manifests, lineage and behaviour checks."""

    @property
    def location(self) -> str:
        """Where the catalog is, fit to print (a password masked, never a token)."""
        ...

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine; only a SQL catalog has one."""
        ...

    def close(self) -> None: ...

    def require_local(self, operation: str, need: str = "a catalog and a store") -> None:
        """Raise ReadOnlyError, naming `operation`, where the catalog is read through a server."""
        ...

    def schema_revision(self) -> str | None: ...

    def upgrade(self) -> str: ...

    # -- reading

    def get(self, ref: str) -> ModelVersion: ...

    def versions(
        self, name: str, arch: str | None, tags: Mapping[str, str] | None, limit: int | None
    ) -> list[ModelVersion]:
        """A model's versions, newest first; NotFoundError if there is no such model."""
        ...

    def search(
        self,
        name: str | None,
        arch: str | None,
        tags: Mapping[str, str] | None,
        limit: int | None,
    ) -> list[ModelVersion]: ...

    def models(self) -> list[ModelSummary]: ...

    def tensors(self, version: ModelVersion) -> list[TensorInfo]:
        """The recorded tensor manifest; empty for a version recorded before manifests."""
        ...

    def lineage(self, ref: str) -> Lineage: ...

    def diff(self, older: ModelVersion, newer: ModelVersion) -> Diff | None:
        """The diff a server computed, or None: this process compares manifests and blobs."""
        ...

    def fingerprint(self, version: ModelVersion) -> Fingerprint | None: ...

    def verification(self, digest: str) -> Check | None:
        """What a read of the blob verifies against; None: one SHA-256 pass."""
        ...

    # -- writing

    def recording(self, action: str = "push") -> AbstractContextManager[Recording]:
        """A write transaction whose versions are logged as `action` (push or import)."""
        ...

    def add_tensors(self, version: ModelVersion, tensors: list[TensorInfo]) -> None:
        """Keep a manifest computed from an old version's blob (a server keeps its own)."""
        ...

    def set_alias(self, ref: str, alias: str) -> ModelVersion: ...

    def delete_alias(self, name: str, alias: str) -> None: ...

    def set_tags(
        self, ref: str, tags: Mapping[str, str], delete: Iterable[str]
    ) -> ModelVersion: ...

    def describe(self, ref: str, description: str) -> ModelVersion: ...

    def delete(self, ref: str) -> ModelVersion: ...

    # -- the team: every change above is logged (and sent to hooks) in its own transaction

    def log(self, name: str | None, limit: int | None) -> list[AuditEntry]:
        """The audit log, newest first, of one model or all."""
        ...

    def add_token(self, info: TokenInfo, digest: str) -> None: ...

    def tokens(self) -> list[TokenInfo]: ...

    def revoke_token(self, name: str) -> None: ...

    def find_token(self, digest: str) -> TokenInfo | None: ...

    def touch_token(self, name: str) -> None:
        """Move a token's `last_used_at` to now."""
        ...

    def add_hook(self, hook: HookInfo) -> HookInfo: ...

    def hooks(self) -> list[HookInfo]: ...

    def remove_hook(self, hook_id: int) -> None: ...

    def claim_deliveries(self, lease: timedelta, limit: int) -> list[Delivery]:
        """Due webhook events, leased to this deliverer; another's are skipped."""
        ...

    def finish_delivery(self, delivery: Delivery, status: str, retry_at: datetime | None) -> None:
        """An attempt's outcome: delivered (`retry_at` None) or due again then."""
        ...

    # -- maintenance

    def referenced_digests(self) -> set[str]:
        """Every blob some version needs: its original file, or its safe weights copy."""
        ...

    def blob_digests(self) -> set[str]:
        """Every blob the catalog has a row for."""
        ...

    def delete_unreferenced(self, digest: str, remove: Callable[[], T]) -> T | None:
        """`remove()` run while the blob's row is locked and gone, or None: a version needs it."""
        ...

    def record_blake3(self, digest: str, blake3: str) -> None: ...
