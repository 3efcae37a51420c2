"""Immutable records the API returns, so no database session outlives a call."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class ModelVersion:
    """One registered checkpoint: a numbered version of a named model."""

    name: str
    version: int
    sha256: str
    size: int
    format: str
    arch: str
    arch_args: dict[str, Any]
    description: str
    created_at: datetime
    created_by: str
    num_params: int
    torch_version: str
    extension: str
    weights_sha256: str | None = None  # a safetensors copy of a trusted pickle's weights
    tags: dict[str, str] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    details: dict[str, Any] = field(default_factory=dict)
    # True only on the record `push` returns when it made a new version (not in JSON).
    is_new: bool = field(default=False, compare=False, repr=False)

    @property
    def ref(self) -> str:
        return f"{self.name}@v{self.version}"

    def to_json(self) -> dict[str, Any]:
        data = {"ref": self.ref, **asdict(self)}
        del data["is_new"]
        data["aliases"] = list(self.aliases)
        data["created_at"] = self.created_at.isoformat()
        return data


@dataclass(frozen=True)
class Problem:
    """A version whose blob is missing or does not hash to its recorded digest."""

    ref: str
    expected: str
    actual: str | None  # None: the blob is missing
    status: str  # "missing", "truncated" or "corrupt"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Reclaimed:
    """What `gc` deleted, or would delete with dry_run."""

    blobs: int
    bytes: int
    temp_files: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ModelSummary:
    """A model name with how many versions it has, which is newest, and its aliases."""

    name: str
    num_versions: int
    latest_version: int | None
    updated_at: datetime | None
    size: int = 0  # bytes of all its versions' checkpoints
    aliases: tuple[str, ...] = ()  # "production=v3", ...

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["aliases"] = list(self.aliases)
        data["updated_at"] = self.updated_at.isoformat() if self.updated_at else None
        return data
