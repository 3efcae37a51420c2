"""`registry serve`: a web page and JSON API over a Registry (Starlette on uvicorn).

    /                       models, filtered with ?q= and ?tag=K=V, 50 a ?page=
    /models/NAME            a model's versions, newest first (?tag=, ?page=), a diff form
    /refs/REF               one version: fields, tensors, lineage, diff against its parent;
                            with a write token, forms that POST to REF/aliases[/delete],
                            REF/tags[/delete] and REF/description (`pages`)
    /diff?a=REF&b=REF       two versions compared
    /static/style.css       the only asset: nothing is fetched from elsewhere
    /api/...                JSON in the CLI's --json shapes (SPEC, "Seeing it")
    /api/files/REF          a version's file as pushed (Range); a folder version's files
                            as one tar, the one `pull -o -` writes
    /api/files/REF/PATH     one file of a folder version (Range): REF ends at the first
                            `/` after its `@`, so `team/det@v1/docs/a.md` is path `docs/a.md`
    /api/log                the audit log (`registry log --json`), ?model=NAME
    writes                  `server.writing` lists them: blobs, push, import, changes

The modules: `access` (who is asking: tokens, the cookie, the request log),
`answers` (errors, files, paths from URLs), `reading` (the JSON API),
`writing` (its writes), `pages` (the web page). Errors become JSON
`{"error": ..., "kind": ...}` (or a small page) with a 4xx or 502/503
status; nothing answers 500 or shows a traceback. uvicorn's access log,
which prints query strings, is off. Each server also delivers its catalog's
webhook events (`hooks`), one deliverer per event across servers.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import signal
import socket
import sys
from collections.abc import Iterator
from importlib import resources
from typing import TYPE_CHECKING, Any

from registry import extras
from registry.errors import ConfigurationError, RegistryError

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from registry.api import Registry


def serve(reg: Registry, host: str, port: int, token: str | None, log_level: str = "info") -> None:
    """Bind, print the URL, serve until SIGINT/SIGTERM (uvicorn finishes in-flight requests)."""
    extras.require("serve", "registry serve")
    import uvicorn

    reg.models()  # a catalog that cannot be opened fails here, as one line, not per request
    if not token and not _is_loopback(host) and not _has_tokens(reg):
        raise ConfigurationError(
            f"serving on {host} reaches other machines: a token is needed "
            "(--token or REGISTRY_SERVE_TOKEN, or tokens made with `registry token create`)"
        )
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio turns TCP_NODELAY on only then, and without it every
    # answer waits about 40 ms on the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)  # before the URL is printed: a client may connect at once
    except OSError as exc:
        raise ConfigurationError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    bound_port = sock.getsockname()[1]
    shown_host = f"[{host}]" if family == socket.AF_INET6 else host
    print(f"http://{shown_host}:{bound_port}/", flush=True)
    logging.basicConfig(level=log_level.upper(), format="%(message)s", stream=sys.stderr)
    from registry import hooks

    config = uvicorn.Config(
        create_app(reg, token),
        access_log=False,  # it would print /?token=...; the app logs paths without queries
        log_level="debug" if log_level == "debug" else "warning",
        timeout_graceful_shutdown=10,
    )
    with hooks.delivering(reg.catalog):  # this catalog's webhook events, while it serves
        _server_class()(config).run(sockets=[sock])


def _server_class() -> Any:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, except that a stop on SIGINT/SIGTERM is an exit 0, as asked.

        uvicorn re-raises the signal once it has shut down gracefully, which
        makes the command die of SIGTERM, or print click's "Aborted!" on SIGINT.
        """

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            handled = (signal.SIGINT, signal.SIGTERM)
            original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)

    return Server


def create_app(reg: Registry, token: str | None = None) -> Starlette:
    """The ASGI application; `token` (or the catalog's tokens) controls access."""
    extras.require("serve", "registry serve")
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles
    from starlette.templating import Jinja2Templates

    from registry.server.access import Access
    from registry.server.answers import http_error, unexpected
    from registry.server.pages import Pages
    from registry.server.reading import ReadApi
    from registry.server.writing import WriteApi

    templates = Jinja2Templates(directory=str(resources.files("registry") / "templates"))
    templates.env.autoescape = True
    pages, api, writes = Pages(reg, templates), ReadApi(reg), WriteApi(reg)
    read = ["GET", "HEAD"]
    routes = [
        Route("/", pages.models, methods=read),
        Route("/models/{name:path}", pages.model, methods=read),
        Route("/refs/{ref:path}", pages.version, methods=read),
        Route("/refs/{ref:path}/aliases", pages.set_alias, methods=["POST"]),
        Route("/refs/{ref:path}/aliases/delete", pages.delete_alias, methods=["POST"]),
        Route("/refs/{ref:path}/tags", pages.set_tag, methods=["POST"]),
        Route("/refs/{ref:path}/tags/delete", pages.delete_tag, methods=["POST"]),
        Route("/refs/{ref:path}/description", pages.describe, methods=["POST"]),
        Route("/diff", pages.diff, methods=read),
        Route("/api/models", api.models, methods=read),
        Route("/api/models/{name:path}", api.model, methods=read),
        Route("/api/models/{name:path}", writes.alias, methods=["PUT", "DELETE"]),
        Route("/api/refs/{ref:path}", api.ref, methods=read),
        Route("/api/refs/{ref:path}", writes.ref, methods=["POST", "PUT", "DELETE"]),
        Route("/api/diff", api.diff, methods=read),
        Route("/api/files/{ref:path}", api.file, methods=read),
        Route("/api/log", api.log, methods=read),
        Route("/api/blobs/missing", writes.missing, methods=["POST"]),
        Route("/api/blobs/{sha256}", writes.put_blob, methods=["PUT"]),
        Route("/api/push", writes.push, methods=["POST"]),
        Route("/api/import", writes.import_, methods=["POST"]),
        Mount("/static", StaticFiles(directory=str(resources.files("registry") / "static"))),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={
            HTTPException: http_error,
            Exception: unexpected,
        },
    )
    app.add_middleware(Access, catalog=reg.catalog, token=token)
    return app


def _has_tokens(reg: Registry) -> bool:
    try:
        return bool(reg.tokens())
    except RegistryError:
        return False


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
