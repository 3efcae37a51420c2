"""HttpCatalog: the Catalog interface asked of a registry server's read-only JSON API.

The server's JSON is data: each answer is read by `registry.wire`, which
rebuilds a record only when its fields have the types the registry writes.
A change (an alias, tags, a description, a deletion) is asked of the server,
which checks the token's scope, makes it and logs it; tokens, hooks and
maintenance need the catalog itself and raise ReadOnlyError.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from registry import refs, wire
from registry.diffing import kind
from registry.errors import InvalidReferenceError, NotFoundError, ReadOnlyError
from registry.records import (
    AuditEntry,
    Delivery,
    Diff,
    Fingerprint,
    HookInfo,
    Lineage,
    ModelSummary,
    ModelVersion,
    TensorInfo,
    TokenInfo,
)
from registry.remote import Client, quoted, ref_path

if TYPE_CHECKING:
    from contextlib import AbstractContextManager
    from datetime import datetime, timedelta

    from sqlalchemy import Engine

    from registry.catalogs import Recording
    from registry.digests import Check

T = TypeVar("T")


class HttpCatalog:
    """What a catalog answers, asked of a registry server: versions, models, manifests, ..."""

    def __init__(self, client: Client) -> None:
        self.client = client

    @property
    def location(self) -> str:
        return self.client.url  # never the token

    @property
    def engine(self) -> Engine:
        self.require_local("this", "a catalog")

    def close(self) -> None:
        self.client.close()

    def require_local(self, operation: str, need: str = "a catalog and a store") -> NoReturn:
        raise ReadOnlyError(self.client.url, operation, need)

    def schema_revision(self) -> str | None:
        self.require_local("db current", "a catalog")

    def upgrade(self) -> str:
        self.require_local("db upgrade", "a catalog")

    def get(self, ref: str) -> ModelVersion:
        wanted = refs.parse_ref(ref)  # a bad reference fails here, as it does locally
        path = f"/api/refs/{ref_path(ref)}"
        version = self._parse(path, wire.version, self.client.get(path, ref))
        if version.name != wanted.name:
            raise self.client.unexpected(path, f"the record of {version.ref}")
        return version

    def versions(
        self, name: str, arch: str | None, tags: Mapping[str, str] | None, limit: int | None
    ) -> list[ModelVersion]:
        return self._matching(self._listed(name), arch, tags, limit)

    def search(
        self,
        name: str | None,
        arch: str | None,
        tags: Mapping[str, str] | None,
        limit: int | None,
    ) -> list[ModelVersion]:
        """Versions matching every filter, by model name then newest first, as the catalog's.

        The API lists a model's versions whole, so the filters apply here.
        """
        names = [name] if name is not None else [m.name for m in self.models()]
        found = []
        for each in names:
            try:
                found += self._listed(each)
            except NotFoundError:  # no such model (or deleted since it was listed): no versions
                continue
        return self._matching(found, arch, tags, limit)

    def _listed(self, name: str) -> list[ModelVersion]:
        path = f"/api/models/{quoted(name)}"
        return self._parse(path, wire.each(wire.version), self.client.get(path))

    @staticmethod
    def _matching(
        found: list[ModelVersion],
        arch: str | None,
        tags: Mapping[str, str] | None,
        limit: int | None,
    ) -> list[ModelVersion]:
        matching = [
            v
            for v in found
            if (arch is None or v.arch == arch)
            and all(v.tags.get(k) == value for k, value in (tags or {}).items())
        ]
        return matching[:limit] if limit is not None else matching

    def models(self) -> list[ModelSummary]:
        path = "/api/models"
        return self._parse(path, wire.each(wire.summary), self.client.get(path))

    def tensors(self, version: ModelVersion) -> list[TensorInfo]:
        path = f"/api/refs/{ref_path(version.ref)}/tensors"
        return self._parse(path, wire.each(wire.tensor), self.client.get(path, version.ref))

    def lineage(self, ref: str) -> Lineage:
        refs.parse_ref(ref)
        path = f"/api/refs/{ref_path(ref)}/lineage"
        return self._parse(path, wire.lineage, self.client.get(path, ref))

    def diff(self, older: ModelVersion, newer: ModelVersion) -> Diff:
        """The server's diff of two versions, with the kinds the text view shows filled in."""
        path, a, b = "/api/diff", older.ref, newer.ref
        found = self._parse(path, wire.diff, self.client.get(path, a, params={"a": a, "b": b}))
        # The JSON leaves out an added, removed or reshaped tensor's dtype and shape.
        old = {t.name: t for t in self.tensors(older)}
        new = {t.name: t for t in self.tensors(newer)}
        changes = []
        for change in found.tensors:
            if change.status == "added" and change.name in new:
                change = dataclasses.replace(change, detail=kind(new[change.name]))
            elif change.status == "removed" and change.name in old:
                change = dataclasses.replace(change, detail=kind(old[change.name]))
            elif change.status == "reshaped" and change.name in old and change.name in new:
                kinds = f"{kind(old[change.name])} -> {kind(new[change.name])}"
                change = dataclasses.replace(change, detail=kinds)
            changes.append(change)
        return dataclasses.replace(found, tensors=tuple(changes))

    def fingerprint(self, version: ModelVersion) -> Fingerprint | None:
        self.require_local(
            "check", "the behaviour recorded in the catalog; run it where the catalog is"
        )

    def verification(self, digest: str) -> Check | None:
        return None  # the server sends no chunk digests: a read is one SHA-256 pass

    # -- writes: the server checks the token's scope, makes the change and logs it

    def recording(self, action: str = "push") -> AbstractContextManager[Recording]:
        self.require_local(action, "a catalog; a push through a server sends its files")

    def add_tensors(self, version: ModelVersion, tensors: list[TensorInfo]) -> None:
        """Nothing to keep: the server fills and keeps an old version's manifest itself."""

    def set_alias(self, ref: str, alias: str) -> ModelVersion:
        wanted = refs.parse_ref(ref)
        path = f"/api/models/{quoted(wanted.name)}/aliases/{quoted(alias)}"
        return self._changed(path, self.client.send("PUT", path, ref, {"ref": ref}))

    def delete_alias(self, name: str, alias: str) -> None:
        path = f"/api/models/{quoted(name)}/aliases/{quoted(alias)}"
        self.client.send("DELETE", path, f"{name}@{alias}")

    def set_tags(self, ref: str, tags: Mapping[str, str], delete: Iterable[str]) -> ModelVersion:
        path = f"/api/refs/{ref_path(ref)}/tags"
        body = {"set": dict(tags), "delete": list(delete)}
        return self._changed(path, self.client.send("POST", path, ref, body))

    def describe(self, ref: str, description: str) -> ModelVersion:
        path = f"/api/refs/{ref_path(ref)}/description"
        body = {"description": description}
        return self._changed(path, self.client.send("PUT", path, ref, body))

    def delete(self, ref: str) -> ModelVersion:
        path = f"/api/refs/{ref_path(ref)}"
        return self._changed(path, self.client.send("DELETE", path, ref))

    def _changed(self, path: str, data: Any) -> ModelVersion:
        return self._parse(path, wire.version, data)

    # -- the team: the log is read through the server; tokens and hooks need the catalog

    def log(self, name: str | None, limit: int | None) -> list[AuditEntry]:
        path = "/api/log"
        params = {"model": name} if name is not None else {}
        if limit is not None:
            params["limit"] = str(limit)
        return self._parse(path, wire.each(wire.audit_entry), self.client.get(path, params=params))

    def add_token(self, info: TokenInfo, digest: str) -> None:
        self.require_local("token create", "a catalog")

    def tokens(self) -> list[TokenInfo]:
        self.require_local("token ls", "a catalog")

    def revoke_token(self, name: str) -> None:
        self.require_local("token revoke", "a catalog")

    def find_token(self, digest: str) -> TokenInfo | None:
        return None  # a server over a server takes only its own --token

    def touch_token(self, name: str) -> None:
        """Nothing: no token of this catalog is ever found."""

    def add_hook(self, hook: HookInfo) -> HookInfo:
        self.require_local("hook add", "a catalog")

    def hooks(self) -> list[HookInfo]:
        self.require_local("hook ls", "a catalog")

    def remove_hook(self, hook_id: int) -> None:
        self.require_local("hook rm", "a catalog")

    def claim_deliveries(self, lease: timedelta, limit: int) -> list[Delivery]:
        return []  # the server whose catalog it is delivers its events

    def finish_delivery(self, delivery: Delivery, status: str, retry_at: datetime | None) -> None:
        """Nothing: no delivery is ever claimed here."""

    def referenced_digests(self) -> set[str]:
        self.require_local("gc")

    def blob_digests(self) -> set[str]:
        self.require_local("gc")

    def delete_unreferenced(self, digest: str, remove: Callable[[], T]) -> T | None:
        self.require_local("gc")

    def record_blake3(self, digest: str, blake3: str) -> None:
        self.require_local("verify", "the store itself; run it where the store is")

    def _parse(self, path: str, parse: Callable[[Any], T], data: Any) -> T:
        """`parse(data)`, or one line saying the server sent something else."""
        try:
            return parse(data)
        except (KeyError, TypeError, ValueError, AttributeError, InvalidReferenceError):
            raise self.client.unexpected(path, "an answer the registry does not write") from None
