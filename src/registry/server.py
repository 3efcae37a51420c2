"""`registry serve`: a read-only web page and JSON API over a Registry (Starlette on uvicorn).

    /                       models, filtered with ?q=
    /models/NAME            a model's versions, newest first, and a form to diff two
    /refs/REF               one version: fields, tensors, lineage, diff against its parent
    /diff?a=REF&b=REF       two versions compared
    /static/style.css       the only asset: nothing is fetched from elsewhere
    /api/...                JSON in the CLI's --json shapes (SPEC, "Seeing it")
    /api/files/REF          a version's file as pushed (Range); a folder version's files
                            as one tar, the one `pull -o -` writes
    /api/files/REF/PATH     one file of a folder version (Range): REF ends at the first
                            `/` after its `@`, so `team/det@v1/docs/a.md` is path `docs/a.md`

Every route is read-only and every handler a plain function, run on
Starlette's thread pool: the Registry's calls block. Errors become JSON
`{"error": ...}` (or a small page) with a 4xx or 502/503 status; nothing
answers 500 or shows a traceback. With a token, every request carries it as
`Authorization: Bearer` or as the HttpOnly cookie `/?token=` sets; it is
compared in constant time and never logged (uvicorn's access log, which
prints query strings, is off).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import ipaddress
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from registry import extras, folders, jsontext, refs
from registry.errors import (
    ConfigurationError,
    IntegrityError,
    InvalidReferenceError,
    NotFoundError,
    RegistryError,
)

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

    from registry.api import Registry
    from registry.records import FolderFile, ModelVersion

COOKIE = "registry_token"
SUB_RESOURCES = ("tensors", "lineage")
MANIFEST_OPEN_UP_TO = 40  # tensors listed open; a longer manifest starts collapsed
MAX_LOGGED_PATH = 200  # characters of a request's path in the log
SEND_CHUNK = 1 << 20  # bytes of a streamed tar per hop to a worker thread
log = logging.getLogger("registry.serve")


def serve(reg: Registry, host: str, port: int, token: str | None) -> None:
    """Bind, print the URL, serve until SIGINT/SIGTERM (uvicorn finishes in-flight requests)."""
    extras.require("serve", "registry serve")
    import uvicorn

    if not token and not _is_loopback(host):
        raise ConfigurationError(
            f"serving on {host} reaches other machines: a token is needed "
            "(--token or REGISTRY_SERVE_TOKEN)"
        )
    reg.models()  # a catalog that cannot be opened fails here, as one line, not per request
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)  # before the URL is printed: a client may connect at once
    except OSError as exc:
        raise ConfigurationError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    bound_port = sock.getsockname()[1]
    shown_host = f"[{host}]" if family == socket.AF_INET6 else host
    print(f"http://{shown_host}:{bound_port}/", flush=True)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    config = uvicorn.Config(
        create_app(reg, token),
        access_log=False,  # it would print /?token=...; the app logs paths without queries
        log_level="warning",
        timeout_graceful_shutdown=10,
    )
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
    """The ASGI application; `token` None serves without access control."""
    extras.require("serve", "registry serve")
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles
    from starlette.templating import Jinja2Templates

    templates = Jinja2Templates(directory=str(resources.files("registry") / "templates"))
    templates.env.autoescape = True
    pages = _Pages(reg, templates)
    api = _Api(reg)
    read = ["GET", "HEAD"]
    routes = [
        Route("/", pages.models, methods=read),
        Route("/models/{name:path}", pages.model, methods=read),
        Route("/refs/{ref:path}", pages.version, methods=read),
        Route("/diff", pages.diff, methods=read),
        Route("/api/models", api.models, methods=read),
        Route("/api/models/{name:path}", api.model, methods=read),
        Route("/api/refs/{ref:path}", api.ref, methods=read),
        Route("/api/diff", api.diff, methods=read),
        Route("/api/files/{ref:path}", api.file, methods=read),
        Mount("/static", StaticFiles(directory=str(resources.files("registry") / "static"))),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={
            HTTPException: _http_error,
            Exception: _unexpected,
        },
    )
    app.add_middleware(_Access, token=token)
    return app


# -- access and errors ---------------------------------------------------------------------


class _Access:
    """Checks the token, sets the login cookie, logs each request (path only, no query)."""

    def __init__(self, app: Any, token: str | None) -> None:
        self.app, self.token = app, token

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
        if self.token and offered is not None:
            # A browser's login: the token goes into an HttpOnly cookie, out of the address bar.
            response: Response = RedirectResponse("/", status_code=303)
            if self._matches(offered):
                response.set_cookie(COOKIE, offered, httponly=True, samesite="strict")
            await response(scope, receive, record)
        elif (
            self.token
            and not request.url.path.startswith("/static/")  # the stylesheet is no secret
            and not self._matches(_presented(request))
        ):
            await _refused(request)(scope, receive, record)
        else:
            await self.app(scope, receive, record)
        log.info(
            "%s %s %s", request.method, _loggable(request.url.path), status[0] if status else "-"
        )

    def _matches(self, presented: str | None) -> bool:
        assert self.token is not None
        return presented is not None and hmac.compare_digest(
            presented.encode(), self.token.encode()
        )


def _loggable(path: str) -> str:
    """A request's path fit for one line of the log, whoever sent it.

    Control and non-ASCII characters are escaped, so a path cannot forge a
    line, and a long path is cut, so one request cannot flood the log.
    """
    shown = path.encode("unicode_escape").decode("ascii")
    return shown if len(shown) <= MAX_LOGGED_PATH else shown[:MAX_LOGGED_PATH] + "..."


def _presented(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value:
        return value.strip()
    return request.cookies.get(COOKIE)


def _refused(request: Request) -> Response:
    message = "a token is needed: send Authorization: Bearer TOKEN, or open /?token=TOKEN"
    return _error(request, 401, message)


def _is_api(request: Request) -> bool:
    return request.url.path.startswith("/api/")


def _error(request: Request, status: int, message: str) -> Response:
    from starlette.responses import HTMLResponse, JSONResponse

    if _is_api(request):
        return JSONResponse({"error": message}, status_code=status)
    body = (
        "<!doctype html><html><head><meta charset='utf-8'><title>registry: error</title>"
        "<link rel='stylesheet' href='/static/style.css'></head><body>"
        "<header><a href='/'>registry</a></header><main>"
        f"<h1>{status}</h1><p class='error'>{_escape(message)}</p>"
        "<p><a href='/'>All models</a></p></main></body></html>"
    )
    return HTMLResponse(body, status_code=status)


def _escape(text: str) -> str:
    from markupsafe import escape

    return str(escape(text))


async def _http_error(request: Request, exc: Exception) -> Response:
    from starlette.exceptions import HTTPException

    assert isinstance(exc, HTTPException)
    messages = {404: "no such page", 405: "the registry server is read-only: GET and HEAD only"}
    response = _error(request, exc.status_code, messages.get(exc.status_code, str(exc.detail)))
    if exc.status_code == 405:
        response.headers["allow"] = "GET, HEAD"
    return response


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.warning("%s %s failed: %s", request.method, _loggable(request.url.path), type(exc).__name__)
    return _error(request, 503, "the registry could not answer this request")


def _registry_errors(
    handler: Callable[[Any, Request], Response],
) -> Callable[[Any, Request], Response]:
    """Turn RegistryErrors into 400/404/502/503 responses with their one-line message."""

    def wrapped(self: Any, request: Request) -> Response:
        try:
            return handler(self, request)
        except NotFoundError as exc:
            return _error(request, 404, str(exc))
        except InvalidReferenceError as exc:
            return _error(request, 400, str(exc))
        except IntegrityError as exc:  # the stored bytes are bad: nothing of them is sent
            return _error(request, 502, str(exc))
        except RegistryError as exc:
            return _error(request, 503, str(exc))

    wrapped.__name__ = handler.__name__
    return wrapped


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _split_ref(reg: Registry, path: str) -> tuple[str, str | None]:
    """`resnet18@v1/tensors` -> (`resnet18@v1`, `tensors`); a plain reference -> (ref, None).

    `team/tensors` is the model of that name when it exists, else model
    `team`'s tensors: namespaced models make the path ambiguous.
    """
    head, _, tail = path.rpartition("/")
    if tail not in SUB_RESOURCES or not head:
        return path, None
    try:
        refs.parse_ref(head)
    except InvalidReferenceError:
        return path, None
    try:
        reg.get(path)
    except RegistryError:
        return head, tail
    return path, None


def _split_file(path: str) -> tuple[str, str | None]:
    """`team/det@v1/docs/a.md` -> (`team/det@v1`, `docs/a.md`); no `/` after the `@` -> (path,
    None). A name holds no `@` and a version or alias no `/`, so the first `/` after the
    `@` ends the reference."""
    at = path.find("@")
    slash = path.find("/", at) if at >= 0 else -1
    if slash < 0:
        return path, None
    return path[:slash], path[slash + 1 :]


def _checked_path(path: str) -> str:
    """A folder file's path from a URL, refused (400) unless a version could hold it."""
    try:
        return folders.check_path(path)
    except ValueError as exc:
        shown = path.replace("\x00", "?")
        raise InvalidReferenceError(shown, "file path", "it is not a plain relative path") from exc


def _checked_ref(text: str) -> str:
    """A reference from a URL, refused (400) before any query when it is malformed."""
    if "\x00" in text:
        raise InvalidReferenceError(text.replace("\x00", "?"), "reference", "it holds a NUL byte")
    refs.parse_ref(text)
    return text


# -- the JSON API --------------------------------------------------------------------------


class _Api:
    def __init__(self, reg: Registry) -> None:
        self.reg = reg

    @_registry_errors
    def models(self, request: Request) -> Response:
        from starlette.responses import JSONResponse

        return JSONResponse([m.to_json() for m in self.reg.models()])

    @_registry_errors
    def model(self, request: Request) -> Response:
        from starlette.responses import JSONResponse

        name = refs.validate_name(request.path_params["name"])
        return JSONResponse([v.to_json() for v in self.reg.versions(name)])

    @_registry_errors
    def ref(self, request: Request) -> Response:
        from starlette.responses import JSONResponse, Response

        ref, part = _split_ref(self.reg, request.path_params["ref"])
        ref = _checked_ref(ref)
        if part == "tensors":
            return JSONResponse([t.to_json() for t in self.reg.tensors(ref)])
        if part == "lineage":
            lineage = jsontext.dumps(self.reg.lineage(ref).to_json())  # nests thousands deep
            return Response(lineage, media_type="application/json")
        return JSONResponse(self.reg.get(ref).to_json())

    @_registry_errors
    def diff(self, request: Request) -> Response:
        from starlette.responses import JSONResponse

        a, b = request.query_params.get("a"), request.query_params.get("b")
        if not a:
            raise InvalidReferenceError("", "reference", "give ?a=REF, and ?b=REF or none")
        found = self.reg.diff(_checked_ref(a), _checked_ref(b) if b else None)
        return JSONResponse(found.to_json())

    @_registry_errors
    def file(self, request: Request) -> Response:
        """The checkpoint as pushed, verified first; streamed from disk, with Range.

        A folder version's is a tar of its files, each verified before the first
        byte is sent; `REF/PATH` is one file of it, verified, with Range.
        """
        ref, path = _split_file(request.path_params["ref"])
        version = self.reg.get(_checked_ref(ref))
        if path is not None:
            return self._folder_file(version, _checked_path(path))
        if version.files is not None:
            return self._folder_tar(request, version)
        local = self.reg.local_file(version.ref)  # verified before a byte is sent
        filename = f"{version.name.rsplit('/', 1)[-1]}-v{version.version}{version.extension}"
        return _blob_response(local, filename, version.sha256)

    def _folder_file(self, version: ModelVersion, path: str) -> Response:
        found = next((f for f in version.files or () if f.path == path), None)
        if found is None:
            hint = "" if version.files is not None else f"{version.ref} is one file, not a folder"
            raise NotFoundError(f"file {path!r} of {version.ref}", hint)
        local = self._verified(version, found)
        return _blob_response(local, PurePosixPath(found.path).name, found.sha256)

    def _folder_tar(self, request: Request, version: ModelVersion) -> Response:
        """The folder as the tar `pull -o -` writes, byte for byte, with its length up front."""
        from starlette.responses import Response, StreamingResponse

        from registry.folder_pull import BLOCK, tar_header

        assert version.files is not None
        headers = [tar_header(version, file) for file in version.files]
        length = 2 * BLOCK + sum(
            len(h) + f.size + (-f.size % BLOCK) for h, f in zip(headers, version.files, strict=True)
        )
        verified: dict[str, Path] = {}
        for file in version.files:  # every file before the first byte: a bad one is a 502
            if file.sha256 not in verified:
                verified[file.sha256] = self._verified(version, file)
        name = f"{version.name.rsplit('/', 1)[-1]}-v{version.version}.tar"
        answer = {
            "content-length": str(length),
            "content-disposition": f'attachment; filename="{name}"',
        }
        if request.method == "HEAD":
            return Response(headers=answer, media_type="application/x-tar")
        chunks = _tar_chunks(version, headers, verified)
        return StreamingResponse(chunks, headers=answer, media_type="application/x-tar")

    def _verified(self, version: ModelVersion, file: FolderFile) -> Path:
        """The local copy of one file of a folder version, verified; a remote store's
        damaged cached copy is fetched once more."""
        from registry.folders import file_ref

        store, ref = self.reg.store, file_ref(version, file)
        check = self.reg.catalog.verification(file.sha256)
        try:
            local = store.local_path(file.sha256, ref)
            store.verify(file.sha256, ref, check)
        except IntegrityError:
            if not store.evict(file.sha256):
                raise
            local = store.local_path(file.sha256, ref)
            store.verify(file.sha256, ref, check)
        return local


def _blob_response(path: Path, filename: str, digest: str) -> Response:
    """A verified local file, streamed from disk with Range; its ETag is its digest."""
    from starlette.responses import FileResponse

    class BlobResponse(FileResponse):
        # Each read is a hop to a worker thread: 1 MiB, not 64 KiB, makes them 16x
        # fewer (a 500 MB download took 8,000 hops, each waiting behind API calls).
        chunk_size = 1 << 20

    return BlobResponse(
        path,
        filename=filename,
        media_type="application/octet-stream",
        headers={"etag": f'"{digest}"'},
        stat_result=os.stat(path),
    )


def _tar_chunks(
    version: ModelVersion, headers: list[bytes], verified: dict[str, Path]
) -> Iterator[bytes]:
    """A folder's tar, one file's header and bytes at a time, each file hashed once more
    on the way: bytes changed since they were verified end the stream short of its length."""
    from registry.folder_pull import BLOCK
    from registry.folders import file_ref

    assert version.files is not None
    for header, file in zip(headers, version.files, strict=True):
        yield header
        hasher, sent = hashlib.sha256(), 0
        with open(verified[file.sha256], "rb") as stream:
            while sent < file.size and (chunk := stream.read(min(SEND_CHUNK, file.size - sent))):
                hasher.update(chunk)
                sent += len(chunk)
                yield chunk
        if sent != file.size or hasher.hexdigest() != file.sha256:
            log.warning(
                "%s changed while it was sent; the tar was cut short", file_ref(version, file)
            )
            raise IntegrityError(file_ref(version, file), file.sha256, hasher.hexdigest())
        yield b"\0" * (-file.size % BLOCK)
    yield b"\0" * (2 * BLOCK)


# -- the pages -----------------------------------------------------------------------------


class _Pages:
    def __init__(self, reg: Registry, templates: Any) -> None:
        self.reg, self.templates = reg, templates

    def _render(self, request: Request, template: str, **context: Any) -> Response:
        return self.templates.TemplateResponse(  # type: ignore[no-any-return]
            request, template, {"quote": _quote, **context}
        )

    @_registry_errors
    def models(self, request: Request) -> Response:
        query = request.query_params.get("q", "").strip()
        models = [m for m in self.reg.models() if query.lower() in m.name]
        return self._render(request, "models.html", models=models, query=query)

    @_registry_errors
    def model(self, request: Request) -> Response:
        name = refs.validate_name(request.path_params["name"])
        return self._render(request, "model.html", name=name, versions=self.reg.versions(name))

    @_registry_errors
    def version(self, request: Request) -> Response:
        version = self.reg.get(_checked_ref(request.path_params["ref"]))
        tensors = self.reg.tensors(version.ref)
        lineage = self.reg.lineage(version.ref)
        descendants = [pair for child in lineage.descendants for pair in child.walk()]
        parent_diff = parent_problem = None
        if version.parent is None:
            parent_problem = "no parent"
        else:
            try:
                parent_diff = self.reg.diff(version.ref)
            except NotFoundError:
                parent_problem = f"its parent {version.parent} was deleted"
        fields = version.to_json()
        return self._render(
            request,
            "version.html",
            version=version,
            fields=fields,
            tensors=tensors,
            collapsed=len(tensors) > MANIFEST_OPEN_UP_TO,
            lineage=lineage,
            ancestors=list(reversed(lineage.ancestors)),
            descendants=descendants,
            files_collapsed=len(version.files or ()) > MANIFEST_OPEN_UP_TO,
            diff=parent_diff,
            parent_problem=parent_problem,
        )

    @_registry_errors
    def diff(self, request: Request) -> Response:
        a, b = request.query_params.get("a", ""), request.query_params.get("b", "")
        found = self.reg.diff(_checked_ref(a), _checked_ref(b) if b else None)
        return self._render(request, "diff.html", diff=found)


def _quote(ref: str) -> str:
    """A reference as a URL path segment: `team/resnet@v1` keeps its `/` and `@`."""
    return quote(ref, safe="/@")
