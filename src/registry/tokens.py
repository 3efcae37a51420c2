"""Tokens of a team server (SPEC "A team through its server"): made, kept as digests, checked.

A token is `reg_` and 32 random bytes (URL-safe base64); the catalog keeps only
its SHA-256, so a leaked catalog gives no token. A secret that random needs
no slow hash: finding one by its digest is the whole check. A scope is
`read` (every GET), `write` (also push, import, aliases, tags, descriptions)
or `admin` (also rm); model patterns (fnmatch) limit which models it reaches.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from registry.errors import AccessDeniedError, InvalidReferenceError

SCOPES = ("read", "write", "admin")
PREFIX = "reg_"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}")
_DURATION = re.compile(r"(\d{1,6})([mhdw])")
_UNIT = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def matches(name: str, patterns: Sequence[str]) -> bool:
    """Whether model `name` is one of `patterns` (fnmatch, case-sensitive); none: every model."""
    return not patterns or any(fnmatch.fnmatchcase(name, p) for p in patterns)


def new_secret() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


def validate_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        rule = "use letters, digits, '.', '_', '@' and '-', starting with a letter or digit"
        raise InvalidReferenceError(name, "token name", rule)
    return name


def validate_scope(scope: str) -> str:
    if scope not in SCOPES:
        raise InvalidReferenceError(scope, "scope", f"it is one of {', '.join(SCOPES)}")
    return scope


def expiry(text: str | None, now: datetime | None = None) -> datetime | None:
    """When a token made now with `--expires 90d` (m, h, d or w) stops working; None: never."""
    if text is None:
        return None
    found = _DURATION.fullmatch(text.strip())
    if found is None or int(found[1]) == 0:
        raise InvalidReferenceError(text, "expiry", "give a number and m, h, d or w: 90d, 12h")
    moment = now or datetime.now(timezone.utc)
    return moment + timedelta(**{_UNIT[found[2]]: int(found[1])})


@dataclass(frozen=True)
class Principal:
    """Who a server request is made by: a token's name, scope and model patterns."""

    name: str
    scope: str
    models: tuple[str, ...] = ()

    def reaches(self, model: str) -> bool:
        return matches(model, self.models)

    def require(self, scope: str, model: str | None = None, action: str = "") -> None:
        """Raise AccessDeniedError (403) unless this token may do `action` ("push to", "tag")
        needing `scope` on `model` (None: any model it reaches)."""
        doing = action or {"read": "read", "write": "write", "admin": "administer"}[scope]
        if model is not None:
            doing += f" model {model!r}"
        if SCOPES.index(self.scope) < SCOPES.index(scope):
            raise AccessDeniedError(
                f"token {self.name!r} may not {doing}: its scope is {self.scope}, "
                f"and that needs {scope}"
            )
        if model is not None and not self.reaches(model):
            raise AccessDeniedError(
                f"token {self.name!r} may not {doing}: it reaches only " + ", ".join(self.models)
            )
