"""Where a push or an import is carried out: in this process, or by a team server.

`Registry` holds one `Publisher`, chosen with its catalog and store: here,
`LocalPublisher` runs `pushing` and `bundles.exchange` over them; through a
server, `uploads.ServerPublisher` sends the files the server lacks and asks
it to push them, the server's own `LocalPublisher` doing every check.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

if TYPE_CHECKING:
    from registry.catalogs import Catalog
    from registry.progress_bars import Progress
    from registry.pushing import ForClient, PushOptions
    from registry.records import ModelVersion
    from registry.signing import TrustedKey
    from registry.stores import Store


class Publisher(Protocol):
    """What makes new versions: a push of a file, folder or object, an import of a bundle."""

    def push(self, source: Any, options: PushOptions, progress: Progress) -> ModelVersion: ...

    def import_bundle(
        self,
        source: str | os.PathLike[str] | BinaryIO,
        progress: Progress,
        trusted: Sequence[TrustedKey] = (),
    ) -> list[ModelVersion]: ...


class LocalPublisher:
    """Pushes and imports run here, over a catalog and a store this process holds."""

    def __init__(self, catalog: Catalog, store: Store) -> None:
        self.catalog, self.store = catalog, store

    def push(
        self,
        source: Any,
        options: PushOptions,
        progress: Progress,
        for_client: ForClient | None = None,
    ) -> ModelVersion:
        from registry import pushing

        return pushing.run(self.catalog, self.store, source, options, progress, for_client)

    def import_bundle(
        self,
        source: str | os.PathLike[str] | BinaryIO,
        progress: Progress,
        trusted: Sequence[TrustedKey] = (),
        check_name: Callable[[str], None] | None = None,
    ) -> list[ModelVersion]:
        from registry.bundles import exchange

        return exchange.import_(self.catalog, self.store, source, check_name, trusted)


def options_json(options: PushOptions, arch: str | None) -> Mapping[str, Any]:
    """A push's options as a server reads them (`wire.push_request`)."""
    from registry import behaviour

    shape = options.check_input
    return {
        "arch": arch,
        "name": options.name,
        "arch_args": dict(options.arch_args),
        "tags": dict(options.tags),
        "aliases": list(options.aliases),
        "description": options.description,
        "trust_pickle": options.trust_pickle,
        "key": options.key,
        "strip_prefix": options.strip_prefix,
        "parent": options.parent,
        "check_input": None if shape is None else list(behaviour.parse_shape(shape)),
    }
