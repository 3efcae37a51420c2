"""Settings: explicit arguments win over environment variables, which win over defaults.

| setting      | env var                 | default                                        |
|--------------|-------------------------|------------------------------------------------|
| home         | REGISTRY_HOME           | $XDG_DATA_HOME/registry, else ~/.local/share/registry |
| database_url | REGISTRY_DATABASE_URL   | sqlite:///<home>/registry.db                    |
| store        | REGISTRY_STORE          | <home>/blobs                                   |
| cache        | REGISTRY_CACHE          | <home>/cache (blobs of a remote store or server) |
| remote       | REGISTRY_REMOTE         | none: read a catalog and store, not a server   |
| token        | REGISTRY_TOKEN          | none: the server asks for no token             |

A remote (the URL of a `registry serve`) replaces the catalog and the store;
REGISTRY_REMOTE in the environment gives way to a catalog or store passed as
an argument, and giving a remote and either as arguments is an error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from registry.errors import ConfigurationError


@dataclass(frozen=True)
class Settings:
    """Where the registry keeps its catalog and blobs, or the server it reads through."""

    home: Path
    database_url: str
    store: str
    cache: Path
    remote: str | None = None  # http(s)://HOST[:PORT][/PREFIX], without a trailing slash
    token: str | None = field(default=None, repr=False)  # a secret: never shown

    @classmethod
    def resolve(
        cls,
        home: str | os.PathLike[str] | None = None,
        database_url: str | None = None,
        store: str | os.PathLike[str] | None = None,
        cache: str | os.PathLike[str] | None = None,
        remote: str | None = None,
        token: str | None = None,
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
        if remote and (database_url or store):
            raise ConfigurationError(
                "give a remote server or a catalog and store, not both "
                "(--remote reads everything through the server)"
            )
        if not remote and not (database_url or store):
            remote = os.environ.get("REGISTRY_REMOTE") or None
        return cls(
            home=home_path,
            database_url=url,
            store=store_location,
            cache=cache_path.expanduser().absolute(),
            remote=_server_url(remote) if remote else None,
            token=(token or os.environ.get("REGISTRY_TOKEN") or None) if remote else None,
        )


def _server_url(text: str) -> str:
    """A server's URL made canonical; one carrying a password or a query is refused.

    The refusal names only the scheme and host: what it refuses may hold a token.
    """
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError:
        raise ConfigurationError(
            "remote: expected http://HOST[:PORT], the URL `registry serve` prints"
        ) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(
            "remote: expected http://HOST[:PORT], the URL `registry serve` prints"
        )
    if parts.username is not None or parts.password is not None or parts.query or parts.fragment:
        raise ConfigurationError(
            f"remote {parts.scheme}://{parts.hostname}: give the token in REGISTRY_TOKEN "
            "(or token=), not in the URL"
        )
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    netloc = f"{host}:{port}" if port is not None else host
    return f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}"


def _default_home() -> Path:
    data_home = os.environ.get("XDG_DATA_HOME", "")
    if os.path.isabs(data_home):  # the XDG spec says to ignore a relative path
        return Path(data_home) / "registry"
    return Path.home() / ".local/share/registry"
