"""Shell completion of model names and references, answered in milliseconds.

A TAB must answer at once, so a SQLite catalog is read with the standard
library's sqlite3, read-only, without importing SQLAlchemy or torch (either
takes longer than a user waits). Any other catalog, or a remote registry,
goes through `Registry`. Completion never fails loudly: a catalog it cannot
read completes nothing.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from registry.config import Settings
from registry.errors import RegistryError

SQLITE_PREFIX = "sqlite:///"


def names(options: dict[str, Any], incomplete: str) -> list[str]:
    """Model names that start with `incomplete`."""
    sql = "SELECT name FROM models ORDER BY name"
    found = _query(options, sql, (), lambda reg: [m.name for m in reg.models()])
    return [name for name in found if name.startswith(incomplete)]


def references(options: dict[str, Any], incomplete: str) -> list[str]:
    """Names until an `@` is typed; then `NAME@latest`, `NAME@vN` (newest first), `NAME@ALIAS`."""
    if "@" not in incomplete:
        return names(options, incomplete)
    name = incomplete.split("@", 1)[0]
    numbers = _query(
        options,
        "SELECT 'v' || v.version FROM versions v JOIN models m ON m.id = v.model_id "
        "WHERE m.name = ? ORDER BY v.version DESC",
        (name,),
        lambda reg: [f"v{v.version}" for v in reg.versions(name)],
    )
    aliases = _query(
        options,
        "SELECT a.name FROM aliases a JOIN models m ON m.id = a.model_id "
        "WHERE m.name = ? ORDER BY a.name",
        (name,),
        lambda reg: sorted({a for v in reg.versions(name) for a in v.aliases}),
    )
    found = [f"{name}@{selector}" for selector in ["latest", *numbers, *aliases]]
    return [ref for ref in found if ref.startswith(incomplete)]


def _query(
    options: dict[str, Any],
    sql: str,
    parameters: tuple[str, ...],
    through_registry: Callable[[Any], list[str]],
) -> list[str]:
    settings = Settings.resolve(options.get("home"), options.get("database_url"))
    url = settings.database_url
    if options.get("remote") or not url.startswith(SQLITE_PREFIX):
        try:
            from registry.api import Registry

            with Registry(
                home=options.get("home"),
                database_url=options.get("database_url"),
                **({"remote": options["remote"]} if options.get("remote") else {}),
            ) as reg:
                return through_registry(reg)
        except RegistryError:
            return []
    path = Path(url.removeprefix(SQLITE_PREFIX))
    if not path.is_file():
        return []
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1) as conn:
            return [str(row[0]) for row in conn.execute(sql, parameters)]
    except sqlite3.Error:
        return []
