"""`Registry`: every operation of the product, over a catalog and a blob store."""

from __future__ import annotations

import getpass
import os
import socket
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from registry import db, refs
from registry.blobstore import BlobStore, BlobWriter, Progress, copy_into, no_progress
from registry.config import Settings
from registry.errors import (
    AmbiguousReferenceError,
    ArchitectureError,
    CheckpointError,
    InvalidReferenceError,
    NotFoundError,
    StorageError,
)
from registry.models import Alias, Blob, Model, Tag, Version
from registry.records import ModelSummary, ModelVersion

if TYPE_CHECKING:
    import torch
    from sqlalchemy import Engine
    from torch import nn

IN_MEMORY_EXTENSION = ".pt"


class Registry:
    """A model registry: a catalog (SQLite or PostgreSQL) plus a content-addressed blob store.

    Arguments override the REGISTRY_HOME, REGISTRY_DATABASE_URL and
    REGISTRY_STORE environment variables. The catalog is opened, and a
    brand-new one created, on first use.
    """

    def __init__(
        self,
        home: str | os.PathLike[str] | None = None,
        database_url: str | None = None,
        store: str | os.PathLike[str] | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.settings = Settings.resolve(home, database_url, store)
        self.store = BlobStore(self.settings.store)
        self._progress = progress or no_progress
        self._engine: Engine | None = None

    def __repr__(self) -> str:
        url, store = self.safe_database_url, str(self.store.root)
        return f"Registry(database_url={url!r}, store={store!r})"

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            engine = db.open_engine(self.settings.database_url)
            db.ensure_schema(engine)
            self._engine = engine
        return self._engine

    @property
    def safe_database_url(self) -> str:
        """The catalog URL with any password masked, fit to print."""
        return db.safe_url(self.settings.database_url)

    def schema_revision(self) -> str | None:
        """The catalog's schema revision, without creating or migrating anything."""
        return db.current_revision(db.open_engine(self.settings.database_url))

    def upgrade(self) -> str:
        """Migrate the catalog to the newest schema; return the revision it is now at."""
        engine = db.open_engine(self.settings.database_url)
        db.upgrade(engine)
        return db.current_revision(engine) or "none"

    # -- writing -------------------------------------------------------------

    def push(
        self,
        source: str | os.PathLike[str] | nn.Module | Mapping[str, torch.Tensor],
        arch: str,
        name: str | None = None,
        arch_args: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
        aliases: Sequence[str] = (),
        description: str = "",
    ) -> ModelVersion:
        """Register a checkpoint file, an nn.Module or a state_dict as the next version.

        The weights are checked against `arch` before anything is stored. Bytes
        identical to an existing version with the same arch and arguments give
        back that version, with any new tags and aliases added to it.
        """
        from registry import architectures

        arch_args = dict(arch_args or {})
        tags = {refs.validate_tag_key(k): str(v) for k, v in (tags or {}).items()}
        aliases = [refs.validate_alias(a) for a in aliases]
        resolved = architectures.resolve(arch)
        name = refs.validate_name(name) if name is not None else _default_name(resolved.name)
        model = resolved.build(arch_args)

        with self.store.writer() as writer:
            if isinstance(source, (str, os.PathLike)):
                extension, weights = self._write_file(Path(source), writer, resolved.name, model)
            else:
                extension, weights = (
                    IN_MEMORY_EXTENSION,
                    _write_object(source, writer, resolved.name, model),
                )
            digest = writer.commit()
        details = _describe(weights)
        if resolved.torchvision:
            import torchvision

            details["torchvision_version"] = torchvision.__version__
        import torch

        version = Version(
            blob_sha256=digest,
            format=weights.format,
            extension=extension,
            arch=resolved.name,
            arch_args=arch_args,
            description=description,
            created_at=datetime.now(timezone.utc),
            created_by=_user_at_host(),
            num_params=architectures.count_params(model),
            torch_version=torch.__version__,
            details=details,
        )
        with db.session(self.engine, write=True) as s:
            return self._record(s, name, version, writer.size, tags, aliases)

    def _write_file(
        self, path: Path, writer: BlobWriter, arch: str, model: nn.Module
    ) -> tuple[str, Any]:
        """Copy a checkpoint file into the writer, then find weights in it that fit."""
        from registry import checkpoints

        if not path.exists():
            raise NotFoundError(f"file {str(path)!r}")
        checkpoints.sniff(path)  # refuse garbage before copying gigabytes
        try:
            source = open(path, "rb")  # noqa: SIM115 -- copy_into closes it
        except OSError as exc:
            raise CheckpointError(f"cannot read {path}: {exc.strerror}") from None
        size = os.fstat(source.fileno()).st_size
        with self._progress(f"push {path.name}", size) as advance:
            copy_into(source, writer, advance)
        writer.finish()
        # Read the copy, not the original: what is checked is exactly what is stored.
        candidates = list(checkpoints.read(writer.temp_path))
        return path.suffix or IN_MEMORY_EXTENSION, _fitting(arch, model, candidates, path)

    def _record(
        self,
        s: Session,
        name: str,
        version: Version,
        size: int,
        tags: Mapping[str, str],
        aliases: Sequence[str],
    ) -> ModelVersion:
        """Insert the version, its blob row, tags and aliases in the caller's transaction."""
        now = version.created_at
        model = _lock_model(s, name, now)
        existing = s.scalars(
            select(Version).where(
                Version.model_id == model.id,
                Version.blob_sha256 == version.blob_sha256,
                Version.arch == version.arch,
            )
        ).all()
        same = next((v for v in existing if v.arch_args == version.arch_args), None)
        if same is None:
            if s.get(Blob, version.blob_sha256) is None:
                s.add(Blob(sha256=version.blob_sha256, size=size, created_at=now))
            model.last_version += 1
            s.flush()
            version.model_id = model.id
            version.version = model.last_version
            s.add(version)
            s.flush()
            same = version
        for key, value in tags.items():
            s.merge(Tag(version_id=same.id, key=key, value=value))
        for alias in aliases:
            s.merge(Alias(model_id=model.id, name=alias, version_id=same.id))
        s.flush()
        return _records(s, [(name, same)])[0]

    # -- reading -------------------------------------------------------------

    def get(self, ref: str) -> ModelVersion:
        """The version a reference names (`vgg16`, `vgg16@v3`, `vgg16@production`, ...)."""
        with db.session(self.engine) as s:
            row = _resolve(s, refs.parse_ref(ref))
            return _records(s, [(row[0], row[1])])[0]

    def versions(self, name: str) -> list[ModelVersion]:
        """Every version of a model, newest first."""
        refs.validate_name(name)
        with db.session(self.engine) as s:
            model = _model(s, name)
            rows = s.scalars(
                select(Version).where(Version.model_id == model.id).order_by(Version.version.desc())
            ).all()
            return _records(s, [(name, v) for v in rows])

    def models(self) -> list[ModelSummary]:
        """Every model with its version count and newest version, by name."""
        query = (
            select(
                Model.name,
                func.count(Version.id),
                func.max(Version.version),
                func.max(Version.created_at),
            )
            .outerjoin(Version, Version.model_id == Model.id)
            .group_by(Model.id, Model.name)
            .order_by(Model.name)
        )
        with db.session(self.engine) as s:
            return [
                ModelSummary(name, count, latest, _utc(updated) if updated else None)
                for name, count, latest, updated in s.execute(query)
            ]

    def pull(
        self, ref: str, destination: str | os.PathLike[str] | None = None, verify: bool = True
    ) -> Path:
        """Write a version's original checkpoint file, bit-exact and verified; return its path.

        The default destination is `./NAME-vN.<ext>` in the current folder; a
        folder as destination gets that file name inside it.
        """
        version = self.get(ref)
        filename = f"{version.name.rsplit('/', 1)[-1]}-v{version.version}{version.extension}"
        target = Path(destination) if destination is not None else Path(filename)
        if target.is_dir() or str(destination).endswith(os.sep):
            target = target / filename
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create folder {target.parent}: {exc.strerror}") from None
        with self._progress(f"pull {version.ref}", version.size) as advance:
            self.store.copy_out(version.sha256, target, version.ref, verify, advance)
        return target

    def state_dict(self, ref: str, verify: bool = True) -> dict[str, torch.Tensor]:
        """A version's weights as a state_dict, memory-mapped where the format allows."""
        return self._state_dict(self.get(ref), verify)

    def load(self, ref: str, device: str | None = None, verify: bool = True) -> nn.Module:
        """Rebuild a version's model with its weights, in eval mode, ready for inference."""
        from registry import architectures

        version = self.get(ref)
        state = self._state_dict(version, verify)
        try:
            arch = architectures.resolve(version.arch)
        except ArchitectureError as exc:
            raise ArchitectureError(f"cannot rebuild {version.ref}: {exc}") from None
        model = architectures.instantiate(arch, version.arch_args, state)
        if device is not None:
            model = model.to(device)
        return model.eval()

    def _state_dict(self, version: ModelVersion, verify: bool) -> dict[str, torch.Tensor]:
        from registry import checkpoints

        if verify:
            self.store.verify(version.sha256, version.ref)
        path = self.store.path(version.sha256)
        if not path.is_file():
            self.store.verify(version.sha256, version.ref)  # raises: the blob is missing
        return checkpoints.load(path, version.format, version.details)


def _records(s: Session, rows: Sequence[tuple[str, Version]]) -> list[ModelVersion]:
    """Turn version rows into ModelVersion records, fetching tags, aliases and sizes in bulk."""
    ids = [v.id for _, v in rows]
    tags: dict[int, dict[str, str]] = {i: {} for i in ids}
    aliases: dict[int, list[str]] = {i: [] for i in ids}
    for tag in s.scalars(select(Tag).where(Tag.version_id.in_(ids)).order_by(Tag.key)):
        tags[tag.version_id][tag.key] = tag.value
    for alias in s.scalars(select(Alias).where(Alias.version_id.in_(ids)).order_by(Alias.name)):
        aliases[alias.version_id].append(alias.name)
    digests = {v.blob_sha256 for _, v in rows}
    blobs = s.execute(select(Blob.sha256, Blob.size).where(Blob.sha256.in_(digests)))
    sizes = {digest: size for digest, size in blobs}
    return [
        ModelVersion(
            name=name,
            version=v.version,
            sha256=v.blob_sha256,
            size=sizes[v.blob_sha256],
            format=v.format,
            arch=v.arch,
            arch_args=dict(v.arch_args),
            description=v.description,
            created_at=_utc(v.created_at),
            created_by=v.created_by,
            num_params=v.num_params,
            torch_version=v.torch_version,
            extension=v.extension,
            tags=tags[v.id],
            aliases=tuple(aliases[v.id]),
            details=dict(v.details),
        )
        for name, v in rows
    ]


def _resolve(s: Session, ref: refs.Ref) -> tuple[str, Version]:
    """Find the version row a parsed reference names."""
    model = _model(s, ref.name)
    query = select(Version).where(Version.model_id == model.id)
    if ref.selector == "latest":
        row = s.scalar(query.order_by(Version.version.desc()).limit(1))
    elif ref.selector == "version":
        row = s.scalar(query.where(Version.version == ref.value))
    elif ref.selector == "alias":
        row = s.scalar(
            query.join(Alias, Alias.version_id == Version.id).where(
                Alias.model_id == model.id, Alias.name == ref.value
            )
        )
    else:
        matches = s.scalars(
            query.where(Version.blob_sha256.startswith(str(ref.value)))
            .order_by(Version.version)
            .limit(10)
        ).all()
        if len(matches) > 1:
            raise AmbiguousReferenceError(str(ref), [f"{ref.name}@v{v.version}" for v in matches])
        row = matches[0] if matches else None
    if row is None:
        raise NotFoundError(str(ref), f"see `registry ls {ref.name}` for its versions")
    return ref.name, row


def _lock_model(s: Session, name: str, now: datetime) -> Model:
    """Get or create a model's row, locked until commit, so its counter can be bumped safely.

    SQLite holds the database write lock already (BEGIN IMMEDIATE); PostgreSQL
    takes the row lock of SELECT ... FOR UPDATE, and a concurrent first push
    of the same name is absorbed by ON CONFLICT DO NOTHING.
    """
    dialect = s.get_bind().dialect.name
    insert = postgresql_insert if dialect == "postgresql" else sqlite_insert
    new_model = insert(Model).values(name=name, last_version=0, created_at=now)
    s.execute(new_model.on_conflict_do_nothing(index_elements=["name"]))
    return s.scalars(select(Model).where(Model.name == name).with_for_update()).one()


def _model(s: Session, name: str) -> Model:
    model = s.scalar(select(Model).where(Model.name == name))
    if model is None:
        raise NotFoundError(f"model {name!r}", "see `registry ls` for the models there are")
    return model


def _fitting(arch: str, model: nn.Module, candidates: Iterable[Any], origin: Any) -> Any:
    """The first candidate state_dict that fits the model; else the first one's mismatch."""
    from registry import architectures

    first_error = None
    for weights in candidates:
        error = architectures.mismatch(arch, model, weights.state_dict)
        if error is None:
            return weights
        first_error = first_error or error
    if first_error is None:
        raise CheckpointError(f"{origin} holds no weights")
    raise first_error


def _write_object(source: Any, writer: BlobWriter, arch: str, model: nn.Module) -> Any:
    """Save an nn.Module's or a state_dict's weights into the writer, after checking they fit."""
    from torch import nn

    from registry import checkpoints

    if isinstance(source, nn.Module):
        state = source.state_dict()
    elif isinstance(source, Mapping):
        state = dict(source)
    else:
        raise CheckpointError(
            f"cannot push a {type(source).__name__}: give a file path, an nn.Module or a state_dict"
        )
    weights = checkpoints.Weights(state, "state_dict", {"serialization": "zip"})
    _fitting(arch, model, [weights], f"the {type(source).__name__}")
    checkpoints.save(state, writer)
    writer.finish()
    return weights


def _describe(weights: Any) -> dict[str, Any]:
    """What `show` reports about the tensors: their count and a dtype summary."""
    dtypes: dict[str, int] = {}
    for tensor in weights.state_dict.values():
        dtype = str(tensor.dtype).removeprefix("torch.")
        dtypes[dtype] = dtypes.get(dtype, 0) + 1
    return {**weights.details, "num_tensors": len(weights.state_dict), "dtypes": dtypes}


def _default_name(arch: str) -> str:
    """The name used when --name is not given: `vgg16`, or `tinynet` for `mymodels:TinyNet`."""
    candidate = arch.rsplit(":", 1)[-1].rsplit(".", 1)[-1].lower()
    try:
        return refs.validate_name(candidate)
    except InvalidReferenceError:
        raise InvalidReferenceError(
            candidate, "model name", f"derived from arch {arch!r}; pass --name"
        ) from None


def _user_at_host() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _utc(moment: datetime) -> datetime:
    """Every time stored is UTC; SQLite hands it back naive, PostgreSQL in the session's zone."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)
