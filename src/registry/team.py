"""The Registry's team operations (SPEC "A team through its server"): the audit log, the
tokens a server accepts, the webhooks it calls (a part of `Registry`, split out of `api`)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from registry import audit, refs, tokens
from registry.errors import InvalidReferenceError
from registry.records import AuditEntry, HookInfo, TokenInfo

if TYPE_CHECKING:
    from registry.catalogs import Catalog


class TeamMethods:
    """`Registry` methods for a team: who changed what, who may, and who is told."""

    catalog: Catalog

    def log(self, name: str | None = None, limit: int | None = None) -> list[AuditEntry]:
        """Every change (push, import, alias, tag, description, deletion), newest first.

        Each entry was written in its change's transaction: when, who (a token's
        name, or `user@host` for a change made here), what and on which ref.

        Raises:
            InvalidReferenceError: `name` is not a valid model name.

        Example:
            >>> [(e.action, e.ref, e.actor) for e in reg.log("vgg16", limit=1)]
            [('alias.set', 'vgg16@v2', 'ci-bot')]
        """
        if name is not None:
            refs.validate_name(name)
        return self.catalog.log(name, limit)

    def create_token(
        self,
        name: str,
        scope: str = "read",
        models: Sequence[str] = (),
        expires: str | None = None,
    ) -> tuple[TokenInfo, str]:
        """Make a token for a team server; return it and its secret, which is shown only now.

        `scope` is `read` (every GET), `write` (also push, import, aliases, tags,
        descriptions) or `admin` (also rm); `models` are fnmatch patterns of the
        model names it reaches (none: every model); `expires` is a duration
        such as `90d`, `12h`. The catalog keeps only the secret's SHA-256.

        Raises:
            InvalidReferenceError: a bad name, scope or duration, or a name in use.

        Example:
            >>> info, secret = reg.create_token("ci-bot", "write", ["team/*"], "90d")
        """
        tokens.validate_name(name)
        tokens.validate_scope(scope)
        for pattern in models:
            if not pattern or refs.CONTROL.search(pattern) or len(pattern) > 128:
                raise InvalidReferenceError(pattern, "model pattern", "a pattern such as team/*")
        now = datetime.now(timezone.utc)
        info = TokenInfo(name, scope, tuple(models), now, tokens.expiry(expires, now))
        secret = tokens.new_secret()
        self.catalog.add_token(info, tokens.digest(secret))
        return info, secret

    def tokens(self) -> list[TokenInfo]:
        """Every token, by name: scope, models, created, expires, last used; never a secret.

        Raises:
            ReadOnlyError: the registry works through a server (tokens need the catalog).

        Example:
            >>> [(t.name, t.scope) for t in reg.tokens()]
            [('ci-bot', 'write')]
        """
        return self.catalog.tokens()

    def revoke_token(self, name: str) -> None:
        """Remove a token: a server refuses it (401) from its next request on.

        Raises:
            NotFoundError: no token of that name.

        Example:
            >>> reg.revoke_token("ci-bot")
        """
        self.catalog.revoke_token(name)

    def add_hook(
        self,
        url: str,
        events: Sequence[str] = audit.EVENTS,
        models: Sequence[str] = (),
        secret_env: str | None = None,
    ) -> HookInfo:
        """Have every `registry serve` of this catalog POST each matching change to `url`.

        `events` are among push, alias, tag, describe and delete; `models` are
        fnmatch patterns (none: every model); `secret_env` names the server's
        environment variable holding the HMAC secret (the secret itself is
        never stored in the catalog).

        Raises:
            InvalidReferenceError: a URL that is not http(s), an unknown event.

        Example:
            >>> reg.add_hook("https://ci.internal/hooks", ["push"], secret_env="HOOK_SECRET").id
            1
        """
        if not _sendable(url):
            raise InvalidReferenceError(url, "hook URL", "give an http:// or https:// URL")
        unknown = [e for e in events if e not in audit.EVENTS]
        if unknown or not events:
            raise InvalidReferenceError(
                ",".join(unknown), "event", f"events are {', '.join(audit.EVENTS)}"
            )
        if secret_env is not None and not secret_env.isidentifier():
            raise InvalidReferenceError(secret_env, "variable name", "a name such as HOOK_SECRET")
        hook = HookInfo(
            0, url, tuple(dict.fromkeys(events)), tuple(models), secret_env,
            datetime.now(timezone.utc),
        )  # fmt: skip
        return self.catalog.add_hook(hook)

    def hooks(self) -> list[HookInfo]:
        """Every webhook, with its last delivery's status and how many events wait.

        Raises:
            ReadOnlyError: the registry works through a server (hooks need the catalog).

        Example:
            >>> [(h.id, h.last_status) for h in reg.hooks()]
            [(1, '200')]
        """
        return self.catalog.hooks()

    def remove_hook(self, hook_id: int) -> None:
        """Remove a webhook and the events still waiting for it.

        Raises:
            NotFoundError: no hook with that id.

        Example:
            >>> reg.remove_hook(1)
        """
        self.catalog.remove_hook(hook_id)


def _sendable(url: str) -> bool:
    """An http(s) URL with a host and, if any, a port a request can go to."""
    if refs.CONTROL.search(url) or " " in url:
        return False
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # a port that is no number, or out of range
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and port != 0
