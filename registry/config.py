"""Settings: explicit arguments win over environment variables, which win over defaults.

| setting      | env var                 | default                                        |
|--------------|-------------------------|------------------------------------------------|
| home         | REGISTRY_HOME           | $XDG_DATA_HOME/registry, else ~/.local/share/registry |
| database_url | REGISTRY_DATABASE_URL   | sqlite:///<home>/registry.db                    |
| store        | REGISTRY_STORE          | <home>/blobs                                   |
| cache        | REGISTRY_CACHE          | <home>/cache (blobs of a remote store)          |
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    """Where the registry keeps its catalog and blobs."""

    home: Path
    database_url: str
    store: str
    cache: Path

    @classmethod
    def resolve(
        cls,
        home: str | os.PathLike[str] | None = None,
        database_url: str | None = None,
        store: str | os.PathLike[str] | None = None,
        cache: str | os.PathLike[str] | None = None,
    ) -> Settings:
        """Settle each setting from the argument, else its env var, else the default."""
        home_path = Path(home or os.environ.get("REGISTRY_HOME") or _default_home())
        home_path = home_path.expanduser().absolute()
        url = (
            database_url
            or os.environ.get("REGISTRY_DATABASE_URL")
            or f"sqlite:///{home_path / 'registry.db'}"
        )
        store_location = str(store or os.environ.get("REGISTRY_STORE") or home_path / "blobs")
        if "://" not in store_location:
            store_location = str(Path(store_location).expanduser().absolute())
        cache_path = Path(cache or os.environ.get("REGISTRY_CACHE") or home_path / "cache")
        return cls(
            home=home_path,
            database_url=url,
            store=store_location,
            cache=cache_path.expanduser().absolute(),
        )


def _default_home() -> Path:
    data_home = os.environ.get("XDG_DATA_HOME", "")
    if os.path.isabs(data_home):  # the XDG spec says to ignore a relative path
        return Path(data_home) / "registry"
    return Path.home() / ".local/share/registry"
