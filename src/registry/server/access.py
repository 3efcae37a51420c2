"""Who a request is made by: a catalog token, the one `--token`, or nobody; and the log.

A request presents its token as `Authorization: Bearer TOKEN` or as the
HttpOnly, SameSite=Strict cookie a browser gets by opening `/?token=TOKEN`
once. `--token` (REGISTRY_SERVE_TOKEN) acts as one `read` token, compared in
constant time; a catalog token is found by the SHA-256 of its secret and
refused (401) once revoked or expired. A server with neither lets anyone
read and nobody write. Writes to /api/ take the header only: a cookie
authorises the page's own forms, which carry a CSRF token (`pages`).
Each request is logged as method, path (no query) and status: never a token.
"""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from registry import tokens
from registry.errors import AccessDeniedError, RegistryError
from registry.server.answers import error, log, loggable
from registry.tokens import Principal

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

    from registry.catalogs import Catalog

COOKIE = "registry_token"
ANONYMOUS = "anonymous"
SERVE_TOKEN = "serve-token"  # the name `--token` acts under
TOKENS_CHECKED_S = 5.0  # how long "the catalog has tokens" is taken as known
LAST_USED_STEP = timedelta(minutes=1)  # `last_used_at` moves at most this often


@dataclass(frozen=True)
class Caller:
    """A request's principal, and whether it came in the cookie (a browser's)."""

    principal: Principal
    by_cookie: bool = False

    def require(self, scope: str, model: str | None = None, action: str = "") -> None:
        if self.principal.name == ANONYMOUS and scope != "read":
            raise AccessDeniedError(
                f"{action or 'writing'} needs a token with {scope} scope: send "
                "Authorization: Bearer TOKEN",
                401,
            )
        self.principal.require(scope, model, action)


def caller(request: Request) -> Caller:
    found: Caller = request.scope["state"]["caller"]
    return found


class Access:
    """The middleware: identifies each request's caller, sets the login cookie, logs."""

    def __init__(self, app: Any, catalog: Catalog, token: str | None) -> None:
        self.app, self.catalog, self.token = app, catalog, token
        self._has_tokens: tuple[float, bool] = (0.0, False)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        from starlette.requests import Request
        from starlette.responses import RedirectResponse

        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        status: list[int] = []

        async def record(message: Any) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        offered = request.query_params.get("token") if request.url.path == "/" else None
        try:
            if offered is not None:
                # A browser's login: the token goes into an HttpOnly cookie, out of the address bar.
                response: Response = RedirectResponse("/", status_code=303)
                try:
                    found = await self._identify(offered, by_cookie=True)
                except AccessDeniedError:  # no cookie: the page then asks for a token
                    found = Caller(Principal(ANONYMOUS, "read"))
                if found.principal.name != ANONYMOUS:
                    response.set_cookie(COOKIE, offered, httponly=True, samesite="strict")
                await response(scope, receive, record)
            elif request.url.path.startswith("/static/"):  # the stylesheet is no secret
                await self.app(scope, receive, record)
            else:
                presented, by_cookie = _presented(request)
                found = await self._identify(presented, by_cookie)
                scope.setdefault("state", {})["caller"] = found
                await self.app(scope, receive, record)
        except AccessDeniedError as exc:
            await error(request, exc.status, str(exc), type(exc).__name__)(scope, receive, record)
        log.info(
            "%s %s %s", request.method, loggable(request.url.path), status[0] if status else "-"
        )

    async def _identify(self, presented: str | None, by_cookie: bool) -> Caller:
        """The caller a presented token stands for; AccessDeniedError (401) if it is refused."""
        from starlette.concurrency import run_in_threadpool

        if presented is None:
            if await self._closed():
                raise AccessDeniedError(
                    "a token is needed: send Authorization: Bearer TOKEN, or open /?token=TOKEN",
                    401,
                )
            return Caller(Principal(ANONYMOUS, "read"))
        if self.token and hmac.compare_digest(presented.encode(), self.token.encode()):
            return Caller(Principal(SERVE_TOKEN, "read"), by_cookie)
        info = await run_in_threadpool(self._find, tokens.digest(presented))
        if info is None:
            if not await self._closed():
                return Caller(Principal(ANONYMOUS, "read"))  # an open server: any token reads
            raise AccessDeniedError("the token was refused: it is unknown or was revoked", 401)
        now = datetime.now(timezone.utc)
        if info.expires_at is not None and info.expires_at <= now:
            raise AccessDeniedError(
                f"token {info.name!r} expired at {info.expires_at.isoformat(timespec='seconds')}",
                401,
            )
        if info.last_used_at is None or now - info.last_used_at >= LAST_USED_STEP:
            await run_in_threadpool(self._touch, info.name)
        return Caller(Principal(info.name, info.scope, info.models), by_cookie)

    async def _closed(self) -> bool:
        """Whether every request needs a token: --token was given, or the catalog has tokens."""
        from starlette.concurrency import run_in_threadpool

        return bool(self.token) or await run_in_threadpool(self._catalog_has_tokens)

    def _find(self, digest: str) -> Any:
        try:
            return self.catalog.find_token(digest)
        except RegistryError:
            return None

    def _touch(self, name: str) -> None:
        try:
            self.catalog.touch_token(name)
        except RegistryError as exc:  # a busy catalog must not refuse the request
            log.warning("could not record that token %r was used: %s", name, type(exc).__name__)

    def _catalog_has_tokens(self) -> bool:
        checked_at, known = self._has_tokens
        if time.monotonic() - checked_at < TOKENS_CHECKED_S:
            return known
        try:
            known = bool(self.catalog.tokens())
        except RegistryError:
            known = False
        self._has_tokens = (time.monotonic(), known)
        return known


def _presented(request: Request) -> tuple[str | None, bool]:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip(), False
    cookie = request.cookies.get(COOKIE)
    return cookie, cookie is not None
