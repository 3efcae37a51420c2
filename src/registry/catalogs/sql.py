"""SqlCatalog: the Catalog interface over SQLAlchemy, on SQLite or PostgreSQL.

Each method is one session and one transaction; the queries themselves are
in `queries` (and the lineage walks in `lineage`). The engine is opened,
and a brand-new catalog created, on first use. Rows stay here: callers get
records.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import fields, replace
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, TypeVar

from registry import db, refs
from registry.catalogs import queries, team
from registry.records import Fingerprint, ModelVersion, NewVersion, TensorInfo
from registry.tables import Fingerprint as FingerprintRow
from registry.tables import Model, Version

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session

    from registry.digests import Check
    from registry.records import (
        AuditEntry,
        Delivery,
        Diff,
        HookInfo,
        Lineage,
        ModelSummary,
        TokenInfo,
    )
    from registry.stores import BlobWriting


T = TypeVar("T")


class SqlCatalog:
    """A catalog in a SQL database, named by its SQLAlchemy URL."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._engine: Engine | None = None

    @property
    def location(self) -> str:
        return db.safe_url(self.url)

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            engine = db.open_engine(self.url)
            db.ensure_schema(engine)
            self._engine = engine
        return self._engine

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def require_local(self, operation: str, need: str = "a catalog and a store") -> None:
        """Nothing to refuse: this catalog is the database itself."""

    def schema_revision(self) -> str | None:
        return db.current_revision(db.open_engine(self.url))  # creates nothing

    def upgrade(self) -> str:
        engine = db.open_engine(self.url)
        db.upgrade(engine)
        return db.current_revision(engine) or "none"

    # -- reading ---------------------------------------------------------------------------

    def get(self, ref: str) -> ModelVersion:
        with db.session(self.engine) as s:
            return queries.lookup(s, refs.parse_ref(ref))

    def versions(
        self, name: str, arch: str | None, tags: Mapping[str, str] | None, limit: int | None
    ) -> list[ModelVersion]:
        with db.session(self.engine) as s:
            found = queries.search(s, name=name, arch=arch, tags=tags, limit=limit)
            if not found:
                queries.model_row(s, name)  # raises if there is no such model
            return found

    def search(
        self,
        name: str | None,
        arch: str | None,
        tags: Mapping[str, str] | None,
        limit: int | None,
    ) -> list[ModelVersion]:
        with db.session(self.engine) as s:
            return queries.search(s, name=name, arch=arch, tags=tags, limit=limit)

    def models(self) -> list[ModelSummary]:
        with db.session(self.engine) as s:
            return queries.summaries(s)

    def tensors(self, version: ModelVersion) -> list[TensorInfo]:
        with db.session(self.engine) as s:
            return queries.tensors(s, _row(s, version).id)

    def lineage(self, ref: str) -> Lineage:
        from registry.catalogs import lineage

        with db.session(self.engine) as s:
            return lineage.of(s, *queries.resolve(s, refs.parse_ref(ref)))

    def diff(self, older: ModelVersion, newer: ModelVersion) -> Diff | None:
        return None  # compared here, from the manifests and the blobs

    def fingerprint(self, version: ModelVersion) -> Fingerprint | None:
        with db.session(self.engine) as s:
            found = queries.fingerprint(s, _row(s, version).id)
            if found is None:
                return None
            return Fingerprint(tuple(found.input_shape), found.outputs, found.environment)

    def verification(self, digest: str) -> Check | None:
        with db.session(self.engine) as s:
            return queries.verification(s, digest)

    # -- writing ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def recording(self, action: str = "push") -> Iterator[SqlRecording]:
        with db.session(self.engine, write=True) as s:
            yield SqlRecording(s, action)

    def add_tensors(self, version: ModelVersion, tensors: list[TensorInfo]) -> None:
        with db.session(self.engine, write=True) as s:
            queries.add_tensors(s, _row(s, version).id, tensors)

    # Each change below writes its audit entry and webhook events in its own transaction.

    def set_alias(self, ref: str, alias: str) -> ModelVersion:
        with db.session(self.engine, write=True) as s:
            model, row = queries.resolve(s, refs.parse_ref(ref))
            before = queries.alias_target(s, model, alias)
            queries.set_alias(s, model, alias, row)
            record = _record(s, model, row)
            moved = {"alias": alias, "from": before}
            team.record_change(s, "alias.set", record.ref, record, moved)
            return record

    def delete_alias(self, name: str, alias: str) -> None:
        with db.session(self.engine, write=True) as s:
            model = queries.model_row(s, name)
            target = queries.alias_row(s, model, alias)
            queries.delete_alias(s, model, alias)
            if target is not None:
                record = _record(s, model, target)
                team.record_change(s, "alias.delete", record.ref, record, {"alias": alias})

    def set_tags(self, ref: str, tags: Mapping[str, str], delete: Iterable[str]) -> ModelVersion:
        deleted = list(delete)
        with db.session(self.engine, write=True) as s:
            model, row = queries.resolve(s, refs.parse_ref(ref))
            for key in deleted:
                queries.delete_tag(s, row, f"{model.name}@v{row.version}", key)
            queries.set_tags(s, row, tags)
            record = _record(s, model, row)
            if deleted:
                team.record_change(s, "tag.delete", record.ref, record, {"keys": deleted})
            if tags:
                team.record_change(s, "tag.set", record.ref, record, {"tags": dict(tags)})
            return record

    def describe(self, ref: str, description: str) -> ModelVersion:
        with db.session(self.engine, write=True) as s:
            model, row = queries.resolve(s, refs.parse_ref(ref))
            row.description = description
            s.flush()
            record = _record(s, model, row)
            team.record_change(s, "describe", record.ref, record, {})
            return record

    def delete(self, ref: str) -> ModelVersion:
        with db.session(self.engine, write=True) as s:
            model, row = queries.resolve(s, refs.parse_ref(ref))
            record = _record(s, model, row)
            queries.delete_version(s, row)
            team.record_change(s, "delete", record.ref, record, {"sha256": record.sha256})
            return record

    # -- the team: log, tokens, hooks ------------------------------------------------------

    def log(self, name: str | None, limit: int | None) -> list[AuditEntry]:
        with db.session(self.engine) as s:
            return team.log(s, name, limit)

    def add_token(self, info: TokenInfo, digest: str) -> None:
        with db.session(self.engine, write=True) as s:
            team.add_token(s, info, digest)

    def tokens(self) -> list[TokenInfo]:
        with db.session(self.engine) as s:
            return team.tokens(s)

    def revoke_token(self, name: str) -> None:
        with db.session(self.engine, write=True) as s:
            team.revoke_token(s, name)

    def find_token(self, digest: str) -> TokenInfo | None:
        with db.session(self.engine) as s:
            return team.find_token(s, digest)

    def touch_token(self, name: str) -> None:
        with db.session(self.engine, write=True) as s:
            team.touch_token(s, name, datetime.now(timezone.utc))

    def add_hook(self, hook: HookInfo) -> HookInfo:
        with db.session(self.engine, write=True) as s:
            return team.add_hook(s, hook)

    def hooks(self) -> list[HookInfo]:
        with db.session(self.engine) as s:
            return team.hooks(s)

    def remove_hook(self, hook_id: int) -> None:
        with db.session(self.engine, write=True) as s:
            team.remove_hook(s, hook_id)

    def claim_deliveries(self, lease: timedelta, limit: int) -> list[Delivery]:
        with db.session(self.engine) as s:
            if not team.any_due(s, datetime.now(timezone.utc)):
                return []
        with db.session(self.engine, write=True) as s:
            return team.claim_deliveries(s, datetime.now(timezone.utc), lease, limit)

    def finish_delivery(self, delivery: Delivery, status: str, retry_at: datetime | None) -> None:
        with db.session(self.engine, write=True) as s:
            team.finish_delivery(s, delivery, status, retry_at, datetime.now(timezone.utc))

    # -- maintenance -----------------------------------------------------------------------

    def referenced_digests(self) -> set[str]:
        with db.session(self.engine) as s:
            return queries.referenced_digests(s)

    def blob_digests(self) -> set[str]:
        with db.session(self.engine) as s:
            return queries.blob_digests(s)

    def delete_unreferenced(self, digest: str, remove: Callable[[], T]) -> T | None:
        with db.session(self.engine, write=True) as s:
            if not queries.lock_unreferenced_blob(s, digest):
                return None
            return remove()  # before the commit: a push of the same bytes waits for it

    def record_blake3(self, digest: str, blake3: str) -> None:
        with db.session(self.engine, write=True) as s:
            queries.record_blake3(s, digest, blake3)


class SqlRecording:
    """The write transaction of a push or an import (see `Catalog.recording`)."""

    def __init__(self, session: Session, action: str) -> None:
        self._s, self._action = session, action

    def place(self, writer: BlobWriting) -> None:
        digest = writer.finish()
        now = datetime.now(timezone.utc)
        queries.claim_blob(self._s, digest, writer.size, writer.check, now)
        writer.commit()  # in place before any version refers to it

    def keep(self, digest: str, size: int, check: Check) -> None:
        queries.claim_blob(self._s, digest, size, check, datetime.now(timezone.utc))

    def add(self, new: NewVersion) -> ModelVersion:
        s = self._s
        parent = queries.resolve(s, refs.parse_ref(new.parent)) if new.parent else None
        fingerprint = None
        if new.fingerprint is not None:
            found = new.fingerprint
            shape = list(found.input_shape)
            fingerprint = FingerprintRow(
                input_shape=shape, outputs=found.outputs, environment=found.environment
            )
        record, is_new = queries.add_version(
            s,
            new.name,
            Version(**{column: getattr(new, column) for column in _VERSION_COLUMNS}),
            new.tags,
            new.aliases,
            new.tensors,
            parent,
            fingerprint,
            new.files,
        )
        s.flush()
        said: dict[str, Any] = {"new": is_new}
        if new.signature is not None:  # a re-push that signs again says by whom, in the log
            said["signed_by"] = record.signed_by
        team.record_change(s, self._action, record.ref, record, said)
        return replace(record, is_new=is_new)

    def find(self, name: str, sha256: str) -> str | None:
        return queries.newest_with_blob(self._s, name, sha256)


# The fields of a NewVersion that are columns of `versions`, stored as they are.
_VERSION_COLUMNS = tuple(f.name for f in fields(NewVersion) if f.name in Version.__table__.columns)


def _record(s: Session, model: Model, row: Version) -> ModelVersion:
    return queries.records(s, [(model.name, row)])[0]


def _row(s: Session, version: ModelVersion) -> Version:
    """The row of a version already looked up (a deleted one: NotFoundError)."""
    return queries.resolve(s, refs.parse_ref(version.ref))[1]
