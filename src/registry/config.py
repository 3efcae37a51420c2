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
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from registry.errors import ConfigurationError


@dataclass(frozen=True)
class Settings:
    """Where the registry keeps its catalog and blobs, or the server it reads through."""

    home: Path
    database_url: str = field(repr=False)  # may hold a password: `__repr__` masks it
    store: str
    cache: Path
    remote: str | None = None  # http(s)://HOST[:PORT][/PREFIX], without a trailing slash
    token: str | None = field(default=None, repr=False)  # a secret: never shown

    def where(self) -> str:
        """Where the registry is, fit to print: its server, or its catalog and store."""
        if self.remote is not None:
            return f"remote={self.remote!r}"
        from registry.db import safe_url

        return f"database_url={safe_url(self.database_url)!r}, store={self.store!r}"

    def __repr__(self) -> str:
        return (
            f"Settings(home={self.home!r}, database_url={masked_url(self.database_url)!r}, "
            f"store={self.store!r}, cache={self.cache!r}, remote={self.remote!r})"
        )

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
        if store is not None and not str(store).strip():  # given, but blank: not the default
            _store_location(str(store))
        store_location = _store_location(
            str(store or os.environ.get("REGISTRY_STORE") or home_path / "blobs")
        )
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


# S3's rules for a bucket name: 3-63 lowercase letters, digits, dots and hyphens.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_STORE_FORM = "a folder, file://PATH or s3://BUCKET[/PREFIX]"


def _store_location(text: str) -> str:
    """A store setting checked: a folder made absolute, or an `s3://BUCKET[/PREFIX]` URL.

    What is refused is named by its scheme and bucket only: it may hold credentials.
    """
    if not text.strip():
        raise ConfigurationError(f"store {text!r} is blank: expected {_STORE_FORM}")
    if "\x00" in text:
        raise ConfigurationError(f"store holds a NUL byte: expected {_STORE_FORM}")
    if "://" not in text:
        return str(Path(text).expanduser().absolute())
    scheme, rest = text.split("://", 1)
    _, at, host = rest.split("/", 1)[0].rpartition("@")
    if at:
        raise ConfigurationError(
            f"store {scheme[:16]}://{host[:80]}: credentials go in AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), not in the store URL"
        )
    if scheme.lower() != "s3":
        return text  # file://PATH, or an unknown scheme the folder store refuses
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise ConfigurationError(f"store s3://...: expected {_STORE_FORM}") from None
    bucket = parts.netloc
    if not _BUCKET.fullmatch(bucket) or ".." in bucket or port is not None:
        raise ConfigurationError(
            f"store {text[:200]!r}: {bucket[:80]!r} is not a bucket name "
            f"(3-63 lowercase letters, digits, dots, hyphens); expected {_STORE_FORM}"
        )
    segments = [part for part in parts.path.split("/") if part]
    if parts.query or parts.fragment or any(part in (".", "..") for part in segments):
        raise ConfigurationError(
            f"store {text[:200]!r}: a prefix is plain folder names, "
            f"without '.', '..', '?' or '#'; expected {_STORE_FORM}"
        )
    return text


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


def masked_url(url: str) -> str:
    """A URL with the password of its user part masked: the one masker of printed URLs.

    For URLs SQLAlchemy cannot parse too (db.safe_url renders those it can).
    """
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in credentials:
        return url
    return f"{scheme}://{credentials.split(':', 1)[0]}:***@{host}"


def _default_home() -> Path:
    data_home = os.environ.get("XDG_DATA_HOME", "")
    if os.path.isabs(data_home):  # the XDG spec says to ignore a relative path
        return Path(data_home) / "registry"
    return Path.home() / ".local/share/registry"
