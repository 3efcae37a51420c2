"""Immutable records the API returns, so no database session outlives a call."""

from __future__ import annotations

from collections.abc import Iterator
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
    parent: str | None = None  # the version it was derived from ("resnet18@v1"), maybe deleted
    check_input: tuple[int, ...] | None = None  # the behaviour check's input shape, if recorded
    files: tuple[FolderFile, ...] | None = None  # a folder version's files; None: one file
    # What `registry.signing` signed, unchecked: only a reader's trusted keys make it proof.
    signature: dict[str, Any] | None = field(default=None, repr=False)
    # True only on the record `push` returns when it made a new version (not in JSON).
    is_new: bool = field(default=False, compare=False, repr=False)

    @property
    def ref(self) -> str:
        return f"{self.name}@v{self.version}"

    @property
    def signed_by(self) -> str | None:
        """The fingerprint of the key its signature names (not checked here), or None."""
        from registry import signing

        return signing.signed_by(self.signature)

    def to_json(self) -> dict[str, Any]:
        data = {"ref": self.ref, **asdict(self)}
        del data["is_new"]
        data["signed_by"] = self.signed_by
        data["aliases"] = list(self.aliases)
        data["created_at"] = self.created_at.isoformat()
        data["check_input"] = list(self.check_input) if self.check_input else None
        data["files"] = None if self.files is None else [asdict(f) for f in self.files]
        return data


@dataclass(frozen=True)
class FolderFile:
    """One file of a folder version: its relative path, size and (once hashed) SHA-256."""

    path: str
    size: int
    sha256: str = ""


@dataclass(frozen=True)
class Fingerprint:
    """What a version's model computed at push on the seeded check input (`--check-input`)."""

    input_shape: tuple[int, ...]
    outputs: list[dict[str, Any]]
    environment: dict[str, str]  # torch, torchvision and the arch's code at push


@dataclass(frozen=True)
class NewVersion:
    """A version to record: what push (or an import) found, before the catalog numbers it.

    The fields named as the catalog's columns are stored as they are; `parent`
    is a reference to a version already recorded.
    """

    name: str
    format: str
    arch: str
    arch_args: dict[str, Any]
    description: str
    created_at: datetime
    created_by: str
    num_params: int
    torch_version: str
    details: dict[str, Any]
    blob_sha256: str = ""
    extension: str = ""
    weights_sha256: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    tensors: tuple[TensorInfo, ...] = ()
    parent: str | None = None
    fingerprint: Fingerprint | None = None
    files: tuple[FolderFile, ...] | None = None  # a folder's; `blob_sha256` is its file list's
    signature: dict[str, Any] | None = None


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


@dataclass(frozen=True)
class TensorInfo:
    """One entry of a version's tensor manifest."""

    name: str
    dtype: str  # "float32"
    shape: tuple[int, ...]
    digest: str | None  # SHA-256 of its bytes

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class LineageNode:
    """A version in a lineage tree; a deleted one keeps its place and its links."""

    ref: str
    deleted: bool = False
    children: tuple[LineageNode, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """`{"ref", "deleted", "children": [...]}`, built without recursion: chains run deep."""
        top: dict[str, Any] = {}
        pending = [(self, top)]
        while pending:
            node, data = pending.pop()
            data.update(ref=node.ref, deleted=node.deleted, children=[])
            for child in node.children:
                data["children"].append({})
                pending.append((child, data["children"][-1]))
        return top

    def walk(self) -> Iterator[tuple[int, LineageNode]]:
        """This node and those under it, depth first, each with its depth (this one 0)."""
        pending: list[tuple[int, LineageNode]] = [(0, self)]
        while pending:
            depth, node = pending.pop()
            yield depth, node
            pending.extend((depth + 1, child) for child in reversed(node.children))


@dataclass(frozen=True)
class Lineage:
    """A version's ancestors, nearest first, and its descendants as a tree."""

    ref: str
    ancestors: tuple[LineageNode, ...]  # without children: a chain
    descendants: tuple[LineageNode, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "ancestors": [a.ref for a in self.ancestors],
            "descendants": [d.to_json() for d in self.descendants],
        }


@dataclass(frozen=True)
class TensorChange:
    """How one tensor differs from A to B: identical, changed, added, removed or reshaped."""

    name: str
    status: str
    max_abs: float | None = None  # changed only: the largest |B - A|
    rel_l2: float | None = None  # changed only: ||B - A|| / ||A||
    detail: str = ""  # added, removed, reshaped: dtype and shape (text output only)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "max_abs": _finite(self.max_abs),
            "rel_l2": _finite(self.rel_l2),
        }


DIFF_STATUSES = ("identical", "changed", "added", "removed", "reshaped")


@dataclass(frozen=True)
class Diff:
    """Two versions compared tensor by tensor, A the older, B the newer."""

    a: str
    b: str
    tensors: tuple[TensorChange, ...]

    @property
    def summary(self) -> dict[str, int]:
        counts = dict.fromkeys(DIFF_STATUSES, 0)
        for change in self.tensors:
            counts[change.status] += 1
        return counts

    def to_json(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "summary": self.summary,
            "tensors": [t.to_json() for t in self.tensors],
        }


@dataclass(frozen=True)
class CheckResult:
    """A behaviour check: the rebuilt model's output on the seeded input against the recorded."""

    ref: str
    matches: bool
    max_abs_diff: float
    tolerance: str  # "|new - recorded| <= 1e-4 + 1e-3 * |recorded|"
    detail: str = ""  # where the largest deviation is, and what changed since the push

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _finite(value: float | None) -> float | None:
    """JSON has no infinity: an unbounded ratio (A was all zeros) is null."""
    return value if value is None or (value == value and abs(value) != float("inf")) else None


# -- a team through its server ---------------------------------------------------------------


@dataclass(frozen=True)
class TokenInfo:
    """A token as `token ls` shows it: everything but the secret, which is never kept."""

    name: str
    scope: str  # read, write or admin
    models: tuple[str, ...]  # fnmatch patterns of the model names it reaches; empty: all
    created_at: datetime
    expires_at: datetime | None = None
    last_used_at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "scope": self.scope,
            "models": list(self.models),
            "created_at": self.created_at.isoformat(),
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "last_used_at": self.last_used_at.isoformat() if self.last_used_at else None,
        }


@dataclass(frozen=True)
class AuditEntry:
    """One change: when, who (a token's name, or user@host), what, on which ref."""

    at: datetime
    actor: str
    action: str  # push, import, alias.set, alias.delete, tag.set, tag.delete, describe, delete
    ref: str
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "at": self.at.isoformat()}


@dataclass(frozen=True)
class HookInfo:
    """A webhook, with how its last delivery went and how many events wait for it."""

    id: int
    url: str
    events: tuple[str, ...]
    models: tuple[str, ...]
    secret_env: str | None
    created_at: datetime
    last_status: str | None = None
    last_attempt_at: datetime | None = None
    pending: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "events": list(self.events),
            "models": list(self.models),
            "created_at": self.created_at.isoformat(),
            "last_attempt_at": self.last_attempt_at.isoformat() if self.last_attempt_at else None,
        }


@dataclass(frozen=True)
class Delivery:
    """One event on its way to one hook, claimed by a deliverer for a while."""

    id: int
    hook_id: int
    url: str
    secret_env: str | None
    body: dict[str, Any]
    attempts: int
