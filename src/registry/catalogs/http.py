"""HttpCatalog: the Catalog interface asked of a registry server's read-only JSON API.

The server's JSON is data: each answer is read by `registry.wire`, which
rebuilds a record only when its fields have the types the registry writes.
What would write the catalog raises ReadOnlyError: only the server's own
registry does that.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from registry import refs, wire
from registry.diffing import kind
from registry.errors import (
    InvalidReferenceError,
    NotFoundError,
)
from registry.records import (
    Diff,
    Lineage,
    ModelSummary,
    ModelVersion,
    TensorInfo,
)
from registry.remote import Client, quoted, ref_path

T = TypeVar("T")


class HttpCatalog:
    """What a catalog answers, asked of a registry server: versions, models, manifests, ..."""

    def __init__(self, client: Client) -> None:
        self.client = client

    @property
    def url(self) -> str:
        return self.client.url

    def get(self, ref: str) -> ModelVersion:
        wanted = refs.parse_ref(ref)  # a bad reference fails here, as it does locally
        path = f"/api/refs/{ref_path(ref)}"
        version = self._parse(path, wire.version, self.client.get(path, ref))
        if version.name != wanted.name:
            raise self.client.unexpected(path, f"the record of {version.ref}")
        return version

    def search(
        self,
        name: str | None = None,
        arch: str | None = None,
        tags: Mapping[str, str] | None = None,
        limit: int | None = None,
    ) -> list[ModelVersion]:
        """Versions matching every filter, by model name then newest first, as the catalog's.

        The API lists a model's versions whole, so the filters apply here. With
        `name`, a model the server lacks is a NotFoundError.
        """
        names = [name] if name is not None else [m.name for m in self.models()]
        found = []
        for each in names:
            path = f"/api/models/{quoted(each)}"
            try:
                answer = self.client.get(path)
            except NotFoundError:
                if name is not None:
                    raise
                continue  # deleted since it was listed
            found += self._parse(path, wire.each(wire.version), answer)
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

    def tensors(self, ref: str) -> list[TensorInfo]:
        refs.parse_ref(ref)
        path = f"/api/refs/{ref_path(ref)}/tensors"
        return self._parse(path, wire.each(wire.tensor), self.client.get(path, ref))

    def lineage(self, ref: str) -> Lineage:
        refs.parse_ref(ref)
        path = f"/api/refs/{ref_path(ref)}/lineage"
        return self._parse(path, wire.lineage, self.client.get(path, ref))

    def diff(self, a: str, b: str) -> Diff:
        """The server's diff of two versions, with the kinds the text view shows filled in."""
        path = "/api/diff"
        found = self._parse(path, wire.diff, self.client.get(path, a, params={"a": a, "b": b}))
        # The JSON leaves out an added, removed or reshaped tensor's dtype and shape.
        old = {t.name: t for t in self.tensors(a)}
        new = {t.name: t for t in self.tensors(b)}
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

    def _parse(self, path: str, parse: Callable[[Any], T], data: Any) -> T:
        """`parse(data)`, or one line saying the server sent something else."""
        try:
            return parse(data)
        except (KeyError, TypeError, ValueError, AttributeError, InvalidReferenceError):
            raise self.client.unexpected(path, "an answer the registry does not write") from None
