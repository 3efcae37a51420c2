"""The catalog's tables, as SQLAlchemy 2 declarative classes (a "model" elsewhere is an nn.Module).

    models ──< versions >── blobs        a version's signature (0008) and size (0009) are columns
                 │  ├──< tags
                 │  ├──< tensors            the tensor manifest, in state_dict order
                 │  ╰──── fingerprints      a behaviour check's recorded output
    models ──< aliases >── versions
    models ──< lineage >── models           (model, version) -> (parent model, version)

`models.last_version` is the counter version numbers are drawn from, so a
number is never handed out twice, even after its version is deleted. That
makes (model, number) a version's lasting name: `lineage` links versions by
it, so a deleted version's children keep their parent and their ancestors.
Migrations never import this module; `tests/test_migrations.py` checks the two agree.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Model(Base):
    __tablename__ = "models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    last_version: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # What `ls` shows, kept by every push, import and delete (0005): listing the models
    # reads one row each instead of aggregating every version.
    num_versions: Mapped[int] = mapped_column(Integer, default=0)
    latest_version: Mapped[int | None] = mapped_column(Integer)
    updated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    size: Mapped[int] = mapped_column(BigInteger, default=0)  # bytes of its versions' files


class Blob(Base):
    """A stored file; its row is the lock that `push` and `gc` take before touching it."""

    __tablename__ = "blobs"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # SHA-256 of each registry.digests.CHUNK_SIZE piece, for parallel verification (0002).
    chunk_size: Mapped[int | None] = mapped_column(Integer)
    chunk_digests: Mapped[list[str] | None] = mapped_column(JSON)
    # BLAKE3 of the bytes, what reads verify against on every core (0004); older blobs
    # verify with their chunk digests until `registry verify` records it.
    blake3: Mapped[str | None] = mapped_column(String(64))


class Version(Base):
    __tablename__ = "versions"
    __table_args__ = (
        UniqueConstraint("model_id", "version", name="uq_versions_model_id_version"),
        Index("ix_versions_blob_sha256", "blob_sha256"),
        Index("ix_versions_weights_sha256", "weights_sha256"),
        Index("ix_versions_arch", "arch"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    blob_sha256: Mapped[str] = mapped_column(ForeignKey("blobs.sha256"))
    # A safe copy of the weights (safetensors) when the original needs unpickling.
    weights_sha256: Mapped[str | None] = mapped_column(ForeignKey("blobs.sha256"))
    format: Mapped[str] = mapped_column(String(32))
    extension: Mapped[str] = mapped_column(String(32))
    arch: Mapped[str] = mapped_column(String(256))
    arch_args: Mapped[dict[str, Any]] = mapped_column(JSON)
    description: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_by: Mapped[str] = mapped_column(String(256))
    num_params: Mapped[int] = mapped_column(BigInteger)
    torch_version: Mapped[str] = mapped_column(String(64))
    details: Mapped[dict[str, Any]] = mapped_column(JSON)
    # Its signature document (`registry.signing`), null when unsigned (0008).
    signature: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # What its record reports: a folder's files' total, else its blob's (0009).
    size: Mapped[int] = mapped_column(BigInteger)


class VersionFile(Base):
    """One file of a folder version, by relative path; its bytes are the blob `sha256` (0006)."""

    __tablename__ = "version_files"
    __table_args__ = (Index("ix_version_files_sha256", "sha256"),)

    version_id: Mapped[int] = mapped_column(
        ForeignKey("versions.id", ondelete="CASCADE"), primary_key=True
    )
    path: Mapped[str] = mapped_column(Text, primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(ForeignKey("blobs.sha256"))


class Tag(Base):
    __tablename__ = "tags"
    __table_args__ = (Index("ix_tags_key_value", "key", "value"),)

    version_id: Mapped[int] = mapped_column(
        ForeignKey("versions.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Alias(Base):
    __tablename__ = "aliases"
    __table_args__ = (Index("ix_aliases_version_id", "version_id"),)

    model_id: Mapped[int] = mapped_column(
        ForeignKey("models.id", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id", ondelete="CASCADE"))


class Tensor(Base):
    """One entry of a version's state_dict: read by `show --tensors` and `diff` per version."""

    __tablename__ = "tensors"

    version_id: Mapped[int] = mapped_column(
        ForeignKey("versions.id", ondelete="CASCADE"), primary_key=True
    )
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    dtype: Mapped[str] = mapped_column(String(32))
    shape: Mapped[list[int]] = mapped_column(JSON)
    # `blake3:<hex>` (older rows: SHA-256 hex) of the tensor's bytes; equal digests make a
    # diff skip reading both (registry/manifests.py).
    digest: Mapped[str | None] = mapped_column(String(64))


class Lineage(Base):
    """A version's parent, by model and number: neither side's deletion removes the link."""

    __tablename__ = "lineage"
    __table_args__ = (
        Index("ix_lineage_parent_model_id_parent_version", "parent_model_id", "parent_version"),
    )

    model_id: Mapped[int] = mapped_column(
        ForeignKey("models.id", ondelete="CASCADE"), primary_key=True
    )
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    parent_model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    parent_version: Mapped[int] = mapped_column(Integer)


class Fingerprint(Base):
    """What a version's model computed at push on the seeded check input (`--check-input`)."""

    __tablename__ = "fingerprints"

    version_id: Mapped[int] = mapped_column(
        ForeignKey("versions.id", ondelete="CASCADE"), primary_key=True
    )
    input_shape: Mapped[list[int]] = mapped_column(JSON)
    outputs: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    # torch, torchvision and the arch's code as they were at push, for the mismatch message.
    environment: Mapped[dict[str, str]] = mapped_column(JSON)


# -- a team through its server (0007) ------------------------------------------------------


class Token(Base):
    """A token a server accepts: only the SHA-256 of its secret is kept, never the secret."""

    __tablename__ = "tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    scope: Mapped[str] = mapped_column(String(16))  # read, write or admin
    models: Mapped[list[str]] = mapped_column(JSON)  # fnmatch patterns; empty: every model
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class AuditEntry(Base):
    """One change, written in the change's own transaction: when, who, what, on which ref."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_model", "model"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    actor: Mapped[str] = mapped_column(String(256))
    action: Mapped[str] = mapped_column(String(32))
    model: Mapped[str] = mapped_column(String(128))  # by name: it outlives the model's rows
    ref: Mapped[str] = mapped_column(String(256))
    details: Mapped[dict[str, Any]] = mapped_column(JSON)


class Hook(Base):
    """A webhook: where to POST which events; its secret stays in the server's environment."""

    __tablename__ = "hooks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    url: Mapped[str] = mapped_column(Text)
    events: Mapped[list[str]] = mapped_column(JSON)
    models: Mapped[list[str]] = mapped_column(JSON)
    secret_env: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_status: Mapped[str | None] = mapped_column(Text)  # "200", "timeout", ...
    last_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Delivery(Base):
    """The outbox: one event for one hook, written with its change, sent until it lands."""

    __tablename__ = "deliveries"
    __table_args__ = (Index("ix_deliveries_due_at", "due_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    event_id: Mapped[str] = mapped_column(String(64))  # the body's "id": repeats share it
    hook_id: Mapped[int] = mapped_column(ForeignKey("hooks.id", ondelete="CASCADE"))
    body: Mapped[dict[str, Any]] = mapped_column(JSON)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    due_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # None: delivered
    last_status: Mapped[str | None] = mapped_column(Text)
