"""The SQL catalog's queries and writes, each inside the caller's session and transaction.

Every listing is one or a few indexed SQL queries; nothing loads every
version into Python. Only `catalogs.sql` calls these: rows never leave the
SQL catalog, whose callers get the frozen records of `registry.records`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import (
    JSON,
    ColumnElement,
    Select,
    bindparam,
    delete,
    exists,
    func,
    literal_column,
    select,
    type_coerce,
    update,
)
from sqlalchemy.orm import Session

from registry import refs, signing
from registry.digests import CHUNK_SIZE, Check
from registry.errors import AmbiguousReferenceError, InvalidReferenceError, NotFoundError
from registry.records import FolderFile, ModelSummary, ModelVersion, TensorInfo
from registry.tables import (
    Alias,
    Blob,
    Fingerprint,
    Lineage,
    Model,
    Tag,
    Tensor,
    Version,
    VersionFile,
)

if TYPE_CHECKING:
    from typing_extensions import Unpack

T = TypeVar("T")
# The tables as Core sees them: statements over them skip the ORM's compile and load steps.
_versions, _models = Version.__table__, Model.__table__
AnySelect = TypeVar("AnySelect", bound="Select[Unpack[tuple[Any, ...]]]")


def resolve(s: Session, ref: refs.Ref) -> tuple[Model, Version]:
    """The model and version row a parsed reference names, in one query when it exists."""
    query = select(Model, Version).join(Version, Version.model_id == Model.id)
    matches = s.execute(_selecting(query, ref.selector), _values(ref)).all()
    model, version = _one(s, ref, matches, [v.version for _, v in matches])
    return model, version


def lookup(s: Session, ref: refs.Ref) -> ModelVersion:
    """The record of the version a parsed reference names, in one query when it exists.

    What `Registry.get` costs (issue #24): the version's row and all else its
    record needs come in one round trip, as plain rows, never loaded into the
    session, by a statement built once (so compiled once) per kind of reference.
    """
    statement = _lookup(s.get_bind().dialect.name, ref.selector)
    matches = s.execute(statement, _values(ref)).mappings().all()
    found = _one(s, ref, matches, [m["version"] for m in matches])
    return _record(found["name"], found, found)


@functools.cache
def _lookup(dialect: str, selector: refs.Selector) -> Select[Unpack[tuple[Any, ...]]]:
    """The statement of `lookup` for one kind of reference."""
    return _selecting(_described(dialect), selector)


def _selecting(query: AnySelect, selector: refs.Selector) -> AnySelect:
    """`query`, of versions joined to their models, narrowed to those a reference may name.

    The reference's parts are the parameters `name` and `value` (`_values`).
    """
    v, models = _versions.c, _models.c
    query = query.where(models.name == bindparam("name"))
    if selector == "latest":
        # Not ORDER BY version DESC LIMIT 1, for which PostgreSQL sorted all of the model's
        # versions: the newest number, by the model's id, is one probe of the unique index.
        newest = _versions.alias("newest").c
        return query.where(
            v.version
            == select(func.max(newest.version))
            .where(newest.model_id == models.id)
            .scalar_subquery()
        )
    if selector == "version":
        return query.where(v.version == bindparam("value"))
    if selector == "alias":
        aliases = Alias.__table__
        return query.join(aliases, aliases.c.version_id == v.id).where(
            aliases.c.model_id == models.id, aliases.c.name == bindparam("value")
        )
    # A digest prefix is lowercase hex (refs.parse_ref): no LIKE wildcard to escape in it.
    return query.where(v.blob_sha256.startswith(bindparam("value"))).order_by(v.version).limit(10)


def _values(ref: refs.Ref) -> dict[str, Any]:
    """The parameters of a `_selecting` statement."""
    return {"name": ref.name, "value": ref.value}


def _one(s: Session, ref: refs.Ref, matches: Sequence[T], numbers: Sequence[int]) -> T:
    """The one match of `ref` (version `numbers`); else the error saying what is missing."""
    if len(matches) > 1:
        raise AmbiguousReferenceError(str(ref), [f"{ref.name}@v{n}" for n in numbers])
    if not matches:
        model_row(s, ref.name)  # raises if it is the model that is missing
        raise NotFoundError(str(ref), f"see `registry ls {ref.name}` for its versions")
    return matches[0]


def model_row(s: Session, name: str) -> Model:
    model = s.scalar(select(Model).where(Model.name == name))
    if model is None:
        raise NotFoundError(f"model {name!r}", "see `registry ls` for the models there are")
    return model


def lock_model(s: Session, name: str, now: datetime) -> Model:
    """Get or create a model's row, locked until commit, so its counter can move safely.

    SQLite already holds the database write lock (BEGIN IMMEDIATE); PostgreSQL
    takes the row lock of SELECT ... FOR UPDATE, and a concurrent first push
    of the same name is absorbed by ON CONFLICT DO NOTHING.
    """
    new_model = _insert(s, Model).values(name=name, last_version=0, created_at=now)
    s.execute(new_model.on_conflict_do_nothing(index_elements=["name"]))
    # populate_existing: a row the session read before the lock (resolving a parent)
    # would otherwise keep its stale counters.
    locked = select(Model).where(Model.name == name).with_for_update()
    return s.scalars(locked.execution_options(populate_existing=True)).one()


def claim_blob(s: Session, digest: str, size: int, check: Check, now: datetime) -> None:
    """Create or lock a blob's row until commit: `gc` cannot delete the blob meanwhile.

    The row gains the BLAKE3 reads verify against (a blob recorded before
    BLAKE3 keeps its chunk digests too).
    """
    found = {"size": size, "blake3": check.blake3}
    blob = _insert(s, Blob).values(sha256=digest, created_at=now, **found)
    s.execute(blob.on_conflict_do_update(index_elements=["sha256"], set_=found))


def verification(s: Session, digest: str) -> Check | None:
    """What reads of a blob verify against: its BLAKE3, else chunk digests of today's size."""
    row = s.execute(
        select(Blob.blake3, Blob.chunk_size, Blob.chunk_digests).where(Blob.sha256 == digest)
    ).first()
    if row is None:
        return None
    if row.blake3:
        return Check(blake3=row.blake3)
    if row.chunk_size != CHUNK_SIZE or not row.chunk_digests:
        return None
    return Check(chunks=list(row.chunk_digests))


def record_blake3(s: Session, digest: str, value: str) -> None:
    """Record the BLAKE3 of a blob recorded before BLAKE3 (`verify` checked its SHA-256 first)."""
    s.execute(update(Blob).where(Blob.sha256 == digest, Blob.blake3.is_(None)).values(blake3=value))


def lock_unreferenced_blob(s: Session, digest: str) -> bool:
    """Lock a blob's row and delete it if no version refers to the blob.

    Returns whether it was unreferenced; the caller deletes the file before committing.
    """
    claim = _insert(s, Blob).values(sha256=digest, size=0, created_at=datetime.now(timezone.utc))
    s.execute(claim.on_conflict_do_nothing(index_elements=["sha256"]))
    s.execute(select(Blob.sha256).where(Blob.sha256 == digest).with_for_update())
    used = s.scalar(
        select(exists().where((Version.blob_sha256 == digest) | (Version.weights_sha256 == digest)))
    ) or s.scalar(select(exists().where(VersionFile.sha256 == digest)))
    if used:
        return False
    s.execute(delete(Blob).where(Blob.sha256 == digest))
    return True


def newest_with_blob(s: Session, name: str, sha256: str) -> str | None:
    """The reference of the newest version of model `name` whose file is `sha256`."""
    query = (
        select(Version.version)
        .join(Model, Model.id == Version.model_id)
        .where(Model.name == name, Version.blob_sha256 == sha256)
        .order_by(Version.version.desc())
        .limit(1)
    )
    number = s.scalar(query)
    return f"{name}@v{number}" if number is not None else None


def blob_digests(s: Session) -> set[str]:
    return set(s.scalars(select(Blob.sha256)))


def add_version(
    s: Session,
    name: str,
    version: Version,
    tags: Mapping[str, str],
    aliases: Sequence[str],
    tensors: Sequence[TensorInfo] = (),
    parent: tuple[Model, Version] | None = None,
    fingerprint: Fingerprint | None = None,
    files: Sequence[FolderFile] | None = None,
) -> tuple[ModelVersion, bool]:
    """Record a pushed version, or find the identical one already there.

    Returns the version and whether it is new. Identical means the same
    bytes, arch and arguments under the same model name; an identical version
    keeps its manifest, and its parent and fingerprint if it has them, else
    gains those given, and a signature given replaces its own (a re-push with
    `--sign` signs a version again: key rotation). The caller has claimed the
    version's blobs already.
    """
    now = version.created_at
    model = lock_model(s, name, now)
    candidates = s.scalars(
        select(Version).where(
            Version.model_id == model.id,
            Version.blob_sha256 == version.blob_sha256,
            Version.arch == version.arch,
        )
    ).all()
    row = next((v for v in candidates if _same_weights(v, version)), None)
    is_new = row is None
    if row is None:
        model.last_version += 1
        version.model_id = model.id
        version.version = model.last_version
        if files is not None:  # a folder's size is its files', not its file list's
            version.size = sum(f.size for f in files)
        else:
            blob_size = select(Blob.size).where(Blob.sha256 == version.blob_sha256)
            version.size = s.scalars(blob_size).one()
        s.add(version)
        s.flush()
        row = version
        add_tensors(s, row.id, tensors)
        if files is not None:
            s.execute(
                _insert(s, VersionFile).values(
                    [{"version_id": row.id, **dataclasses.asdict(f)} for f in files]
                )
            )
        model.num_versions += 1
        model.latest_version = row.version
        when = utc(row.created_at)
        model.updated_at = max(utc(model.updated_at), when) if model.updated_at else when
        model.size += row.size
    elif version.signature is not None:
        row.signature = version.signature
    if parent is not None and s.get(Lineage, (model.id, row.version)) is None:
        _link(s, model, row, *parent)
    if fingerprint is not None and s.get(Fingerprint, row.id) is None:
        fingerprint.version_id = row.id
        s.add(fingerprint)
    s.flush()
    set_tags(s, row, tags)
    for alias in aliases:
        set_alias(s, model, alias, row)
    return records(s, [(name, row)])[0], is_new


def _link(s: Session, model: Model, row: Version, parent_model: Model, parent: Version) -> None:
    """Record `parent` as the version's parent, unless that would close a loop."""
    from registry.catalogs import lineage

    loop = (parent_model.id, parent.version) == (model.id, row.version) or any(
        node.ref == f"{model.name}@v{row.version}"
        for node in lineage.ancestors(s, parent_model.id, parent.version)
    )
    if loop:
        raise InvalidReferenceError(
            f"{parent_model.name}@v{parent.version}",
            "parent",
            f"it descends from {model.name}@v{row.version}, which cannot be its own ancestor",
        )
    s.add(
        Lineage(
            model_id=model.id,
            version=row.version,
            parent_model_id=parent_model.id,
            parent_version=parent.version,
        )
    )


def _same_weights(a: Version, b: Version) -> bool:
    """Same arguments, and the same weights taken from the file (key, prefix)."""
    picked = ("key", "stripped_prefix")
    return a.arch_args == b.arch_args and all(a.details.get(k) == b.details.get(k) for k in picked)


def set_tags(s: Session, version: Version, tags: Mapping[str, str]) -> None:
    for key, value in tags.items():
        statement = _insert(s, Tag).values(version_id=version.id, key=key, value=value)
        s.execute(
            statement.on_conflict_do_update(
                index_elements=["version_id", "key"], set_={"value": value}
            )
        )


def set_alias(s: Session, model: Model, alias: str, version: Version) -> None:
    """Create or move an alias in one statement, so a reader sees the old target or the new."""
    statement = _insert(s, Alias).values(model_id=model.id, name=alias, version_id=version.id)
    s.execute(
        statement.on_conflict_do_update(
            index_elements=["model_id", "name"], set_={"version_id": version.id}
        )
    )


def alias_row(s: Session, model: Model, alias: str) -> Version | None:
    """The version an alias points to, if the model has that alias."""
    query = select(Version).join(Alias, Alias.version_id == Version.id)
    return s.scalar(query.where(Alias.model_id == model.id, Alias.name == alias))


def alias_target(s: Session, model: Model, alias: str) -> str | None:
    row = alias_row(s, model, alias)
    return f"{model.name}@v{row.version}" if row is not None else None


def delete_alias(s: Session, model: Model, alias: str) -> None:
    gone = s.execute(delete(Alias).where(Alias.model_id == model.id, Alias.name == alias))
    if gone.rowcount == 0:  # type: ignore[attr-defined]  # a CursorResult
        raise NotFoundError(f"alias {model.name}@{alias}")


def delete_tag(s: Session, version: Version, ref: str, key: str) -> None:
    gone = s.execute(delete(Tag).where(Tag.version_id == version.id, Tag.key == key))
    if gone.rowcount == 0:  # type: ignore[attr-defined]  # a CursorResult
        raise NotFoundError(f"tag {key!r} on {ref}")


def add_tensors(s: Session, version_id: int, tensors: Sequence[TensorInfo]) -> None:
    """Record a version's tensor manifest; a manifest recorded meanwhile is kept."""
    if not tensors:
        return
    rows = [
        {
            "version_id": version_id,
            "position": i,
            "name": t.name,
            "dtype": t.dtype,
            "shape": list(t.shape),
            "digest": t.digest,
        }
        for i, t in enumerate(tensors)
    ]
    s.execute(_insert(s, Tensor).values(rows).on_conflict_do_nothing())


def tensors(s: Session, version_id: int) -> list[TensorInfo]:
    """A version's tensor manifest in state_dict order; empty if none was recorded."""
    query = select(Tensor).where(Tensor.version_id == version_id).order_by(Tensor.position)
    return [TensorInfo(t.name, t.dtype, tuple(t.shape), t.digest) for t in s.scalars(query)]


def fingerprint(s: Session, version_id: int) -> Fingerprint | None:
    return s.get(Fingerprint, version_id)


def delete_version(s: Session, version: Version) -> None:
    """Remove a version; its tags and aliases go with it (ON DELETE CASCADE).

    Its model's summary is computed again from the versions left, under the
    model's row lock.
    """
    locked = select(Model).where(Model.id == version.model_id).with_for_update()
    model = s.scalars(locked.execution_options(populate_existing=True)).one()
    s.execute(delete(Version).where(Version.id == version.id))
    count, latest, updated, size = s.execute(
        select(
            func.count(Version.id),
            func.max(Version.version),
            func.max(Version.created_at),
            func.coalesce(func.sum(Version.size), 0),
        ).where(Version.model_id == model.id)
    ).one()
    model.num_versions, model.latest_version, model.updated_at = count, latest, updated
    model.size = int(size)


def search(
    s: Session,
    name: str | None = None,
    arch: str | None = None,
    tags: Mapping[str, str] | None = None,
    limit: int | None = None,
) -> list[ModelVersion]:
    """Versions matching every given filter, newest first (by model name, then version)."""
    wanted = dict(tags or {})
    dialect = s.get_bind().dialect.name
    statement = _search(dialect, name is not None, arch is not None, len(wanted), limit is not None)
    values: dict[str, Any] = {"name": name, "arch": arch, "limit": limit}
    for i, (key, value) in enumerate(wanted.items()):
        values[f"key_{i}"], values[f"value_{i}"] = key, value
    return [_record(row["name"], row, row) for row in s.execute(statement, values).mappings()]


@functools.cache
def _search(
    dialect: str, named: bool, by_arch: bool, tag_count: int, limited: bool
) -> Select[Unpack[tuple[Any, ...]]]:
    """The statement of one shape of `search`, its filters' values left as parameters."""
    v, models, tags = _versions.c, _models.c, Tag.__table__.c
    query = _described(dialect)
    order: tuple[ColumnElement[Any], ...] = (models.name, v.version.desc())
    if named:
        # By the model's id, not its name, and in version order alone: PostgreSQL then reads
        # the versions in the unique index's order and stops at the limit, where it sorted
        # all of them first.
        named_model = select(models.id).where(models.name == bindparam("name"))
        query = query.where(v.model_id == named_model.scalar_subquery())
        order = (v.version.desc(),)
    if by_arch:
        query = query.where(v.arch == bindparam("arch"))
    for i in range(tag_count):
        tagged = (tags.key == bindparam(f"key_{i}")) & (tags.value == bindparam(f"value_{i}"))
        query = query.where(exists().where(tags.version_id == v.id, tagged))
    query = query.order_by(*order)
    return query.limit(bindparam("limit")) if limited else query


def summaries(s: Session) -> list[ModelSummary]:
    """Every model with its version count, newest version, total size and aliases.

    One row per model, kept by push and delete: no aggregate over the versions.
    """
    rows = s.scalars(select(Model).order_by(Model.name)).all()
    aliases: dict[int, list[str]] = {}
    alias_rows = select(Alias.model_id, Alias.name, Version.version).join(
        Version, Version.id == Alias.version_id
    )
    for model_id, alias, number in s.execute(alias_rows.order_by(Alias.name)):
        aliases.setdefault(model_id, []).append(f"{alias}=v{number}")
    return [
        ModelSummary(
            name=m.name,
            num_versions=m.num_versions,
            latest_version=m.latest_version,
            updated_at=utc(m.updated_at) if m.updated_at else None,
            size=int(m.size),
            aliases=tuple(aliases.get(m.id, ())),
        )
        for m in rows
    ]


def referenced_digests(s: Session) -> set[str]:
    """Every blob some version needs: its file (a folder's file list), a safe weights copy,
    or a folder's file."""
    originals = set(s.scalars(select(Version.blob_sha256).distinct()))
    copies = s.scalars(select(Version.weights_sha256).where(Version.weights_sha256.is_not(None)))
    folder_files = set(s.scalars(select(VersionFile.sha256).distinct()))
    return originals | folder_files | {digest for digest in copies if digest is not None}


@functools.cache
def _described(dialect: str) -> Select[Unpack[tuple[Any, ...]]]:
    """Versions, each as one row of its columns, its model's name and all else its record needs."""
    query = select(*_versions.c, _models.c.name, *_related(dialect))
    return query.join(_models, _models.c.id == _versions.c.model_id)


def records(s: Session, rows: Sequence[tuple[str, Version]]) -> list[ModelVersion]:
    """Turn version rows into ModelVersion records, fetching what else they need in one query."""
    query = select(_versions.c.id, *_related(s.get_bind().dialect.name))
    query = query.where(_versions.c.id.in_([v.id for _, v in rows]))
    found = {related["id"]: related for related in s.execute(query).mappings()}
    columns = [column.key for column in _versions.c]
    return [_record(name, {c: getattr(v, c) for c in columns}, found[v.id]) for name, v in rows]


def _record(name: str, v: Mapping[Any, Any], related: Mapping[Any, Any]) -> ModelVersion:
    """A version's record, from its columns and what `_related` found for it.

    Both by key: a Core row's `_mapping` answers in a tenth of the time its
    attributes take, which for the 50 records of a listing was most of its cost.
    """
    files = None
    if related["files"]:
        listed = (FolderFile(path, size, sha256) for path, size, sha256 in related["files"])
        files = tuple(sorted(listed, key=lambda f: f.path.encode()))
    parent, check_input = related["parent"], related["check_input"]
    return ModelVersion(
        name=name,
        version=v["version"],
        sha256=v["blob_sha256"],
        size=v["size"],
        format=v["format"],
        arch=v["arch"],
        arch_args=dict(v["arch_args"]),
        description=v["description"],
        created_at=utc(v["created_at"]),
        created_by=v["created_by"],
        num_params=v["num_params"],
        torch_version=v["torch_version"],
        extension=v["extension"],
        weights_sha256=v["weights_sha256"],
        tags=dict(related["tags"] or ()),
        aliases=tuple(alias for (alias,) in related["aliases"] or ()),
        details=dict(v["details"]),
        parent=f"{parent[0][0]}@v{parent[0][1]}" if parent else None,
        check_input=tuple(check_input) if check_input is not None else None,
        files=files,
        signature=None if v["signature"] is None else signing.well_formed(v["signature"]),
    )


@functools.cache
def _related(dialect: str) -> tuple[ColumnElement[Any], ...]:
    """A version's parent, check input, tags, aliases and files, as its columns.

    Each is a subquery correlated to `versions`, so a statement gains no join
    for them to plan (PostgreSQL took longer to plan such a join than to run
    it). Tags, aliases and files are many rows per version, and the parent two
    columns, so these come as one JSON array of rows each.
    """
    v = _versions.c
    fingerprints = Fingerprint.__table__.c
    lineage, parents = Lineage.__table__.c, _models.alias("parent_models").c
    # Aliased: a reference to an alias joins `aliases` itself, which the subquery must not see.
    tags = Tag.__table__.alias("version_tags").c
    aliases = Alias.__table__.alias("version_aliases").c
    files = VersionFile.__table__.alias("folder_files").c
    linked = (lineage.model_id == v.model_id) & (lineage.version == v.version)
    return (
        _gathered(
            dialect,
            (parents.name, lineage.parent_version),
            linked & (parents.id == lineage.parent_model_id),
            lineage.parent_version,
        ).label("parent"),
        select(fingerprints.input_shape)
        .where(fingerprints.version_id == v.id)
        .scalar_subquery()
        .label("check_input"),
        _gathered(dialect, (tags.key, tags.value), tags.version_id == v.id, tags.key).label("tags"),
        _gathered(dialect, (aliases.name,), aliases.version_id == v.id, aliases.name).label(
            "aliases"
        ),
        _gathered(
            dialect, (files.path, files.size, files.sha256), files.version_id == v.id, files.path
        ).label("files"),
    )


def _gathered(
    dialect: str,
    columns: tuple[ColumnElement[Any], ...],
    where: ColumnElement[bool],
    order_by: ColumnElement[Any],
) -> ColumnElement[Any]:
    """The rows of a correlated subquery as one JSON array of arrays, ordered; NULL: no rows.

    NULL rather than an empty array, so that none is decoded (most versions
    have no parent, no alias and no files).
    """
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import aggregate_order_by

        rows = func.json_agg(aggregate_order_by(func.json_build_array(*columns), order_by))
        return type_coerce(select(rows).where(where).correlate(_versions).scalar_subquery(), JSON)
    # SQLite aggregates a FROM-clause subquery's rows in its ORDER BY: it keeps that ORDER BY
    # under any aggregate but count(), min() and max() (case 4 of the comment on dropping
    # such an ORDER BY in SQLite's select.c), which PostgreSQL does not promise (above).
    ordered = select(*columns).where(where).correlate(_versions).order_by(order_by).subquery()
    rows = func.nullif(func.json_group_array(func.json_array(*ordered.c)), literal_column("'[]'"))
    return type_coerce(select(rows).scalar_subquery(), JSON)


def utc(moment: datetime) -> datetime:
    """Every time stored is UTC; SQLite hands it back naive, PostgreSQL in the session's zone."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def _insert(s: Session, table: type) -> Any:
    """The dialect's INSERT, which knows ON CONFLICT (imported here: `ls` never needs it)."""
    if s.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects import postgresql

        return postgresql.insert(table)
    from sqlalchemy.dialects import sqlite

    return sqlite.insert(table)
