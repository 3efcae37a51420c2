"""What the server answers besides its pages and records: errors, files, paths read from URLs.

An error is JSON `{"error": message, "kind": class name}` on /api/ (a small
page elsewhere) with a 4xx or 502/503 status: nothing answers 500 or shows a
traceback. `kind` lets a client raise the same RegistryError a local call
would.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from registry import folders, refs
from registry.errors import (
    AccessDeniedError,
    ArchitectureError,
    ArchitectureMismatchError,
    BundleError,
    CheckInputError,
    CheckpointError,
    ConfigurationError,
    IntegrityError,
    InvalidReferenceError,
    NotFoundError,
    ReadOnlyError,
    RegistryError,
    SignatureError,
)

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

    from registry.api import Registry
    from registry.records import ModelVersion

SUB_RESOURCES = ("tensors", "lineage")
MAX_LOGGED_PATH = 200  # characters of a request's path in the log
SEND_CHUNK = 1 << 20  # bytes of a streamed tar per hop to a worker thread
log = logging.getLogger("registry.serve")

# The status of each error a request can cause, most specific first.
STATUSES: tuple[tuple[type[RegistryError], int], ...] = (
    (NotFoundError, 404),
    (InvalidReferenceError, 400),
    (IntegrityError, 502),  # the stored bytes are bad: nothing of them is sent
    (ArchitectureMismatchError, 422),
    (ArchitectureError, 422),
    (CheckpointError, 422),
    (CheckInputError, 422),
    (BundleError, 422),
    (SignatureError, 422),  # a client's signature that does not vouch for what is recorded
    (ReadOnlyError, 405),
    (ConfigurationError, 503),
)


def is_api(request: Request) -> bool:
    return request.url.path.startswith("/api/")


def error(request: Request, status: int, message: str, kind: str = "") -> Response:
    from starlette.responses import HTMLResponse, JSONResponse

    if is_api(request):
        body = {"error": message, **({"kind": kind} if kind else {})}
        return JSONResponse(body, status_code=status)
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>registry: error</title>"
        "<link rel='stylesheet' href='/static/style.css'></head><body>"
        "<header><a href='/'>registry</a></header><main>"
        f"<h1>{status}</h1><p class='error'>{escape(message)}</p>"
        "<p><a href='/'>All models</a></p></main></body></html>"
    )
    return HTMLResponse(page, status_code=status)


def registry_error(request: Request, exc: RegistryError) -> Response:
    """A RegistryError as its status, its one-line message and its class name."""
    if isinstance(exc, AccessDeniedError):
        return error(request, exc.status, str(exc), type(exc).__name__)
    status = next((code for kind, code in STATUSES if isinstance(exc, kind)), 503)
    return error(request, status, str(exc), type(exc).__name__)


def escape(text: str) -> str:
    from markupsafe import escape as markup_escape

    return str(markup_escape(text))


async def http_error(request: Request, exc: Exception) -> Response:
    from starlette.exceptions import HTTPException

    assert isinstance(exc, HTTPException)
    messages = {404: "no such page", 405: "this route does not take that method"}
    response = error(request, exc.status_code, messages.get(exc.status_code, str(exc.detail)))
    if exc.status_code == 405 and exc.headers and "allow" in {k.lower() for k in exc.headers}:
        allowed = next(v for k, v in exc.headers.items() if k.lower() == "allow")
        response.headers["allow"] = allowed
    return response


async def unexpected(request: Request, exc: Exception) -> Response:
    log.warning("%s %s failed: %s", request.method, loggable(request.url.path), type(exc).__name__)
    return error(request, 503, "the registry could not answer this request")


def registry_errors(
    handler: Callable[[Any, Request], Response],
) -> Callable[[Any, Request], Response]:
    """Turn RegistryErrors into 4xx/502/503 responses with their one-line message."""

    def wrapped(self: Any, request: Request) -> Response:
        try:
            return handler(self, request)
        except RegistryError as exc:
            return registry_error(request, exc)

    wrapped.__name__ = handler.__name__
    return wrapped


def loggable(path: str) -> str:
    """A request's path fit for one line of the log, whoever sent it.

    Control and non-ASCII characters are escaped, so a path cannot forge a
    line, and a long path is cut, so one request cannot flood the log.
    """
    shown = path.encode("unicode_escape").decode("ascii")
    return shown if len(shown) <= MAX_LOGGED_PATH else shown[:MAX_LOGGED_PATH] + "..."


# -- paths read from URLs --------------------------------------------------------------------


def split_ref(reg: Registry, path: str) -> tuple[str, str | None]:
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


def split_file(path: str) -> tuple[str, str | None]:
    """`team/det@v1/docs/a.md` -> (`team/det@v1`, `docs/a.md`); no `/` after the `@` -> (path,
    None). A name holds no `@` and a version or alias no `/`, so the first `/` after the
    `@` ends the reference."""
    at = path.find("@")
    slash = path.find("/", at) if at >= 0 else -1
    if slash < 0:
        return path, None
    return path[:slash], path[slash + 1 :]


def checked_path(path: str) -> str:
    """A folder file's path from a URL, refused (400) unless a version could hold it."""
    try:
        return folders.check_path(path)
    except ValueError as exc:
        shown = path.replace("\x00", "?")
        raise InvalidReferenceError(shown, "file path", "it is not a plain relative path") from exc


def checked_ref(text: str) -> str:
    """A reference from a URL, refused (400) before any query when it is malformed."""
    if "\x00" in text:
        raise InvalidReferenceError(text.replace("\x00", "?"), "reference", "it holds a NUL byte")
    refs.parse_ref(text)
    return text


def quote_ref(ref: str) -> str:
    """A reference as a URL path segment: `team/resnet@v1` keeps its `/` and `@`."""
    return quote(ref, safe="/@")


# -- files -----------------------------------------------------------------------------------


def blob_response(path: Path, filename: str, digest: str) -> Response:
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


def tar_chunks(
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
