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
    tags: dict[str, str] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ref(self) -> str:
        return f"{self.name}@v{self.version}"

    def to_json(self) -> dict[str, Any]:
        data = {"ref": self.ref, **asdict(self)}
        data["aliases"] = list(self.aliases)
        data["created_at"] = self.created_at.isoformat()
        return data


@dataclass(frozen=True)
class ModelSummary:
    """A model name with how many versions it has and which is newest."""

    name: str
    num_versions: int
    latest_version: int | None
    updated_at: datetime | None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["updated_at"] = self.updated_at.isoformat() if self.updated_at else None
        return data
