"""The write API of a team server: blobs sent, pushes, imports, aliases, tags, descriptions, rm.

    POST   /api/blobs/missing                  {"sha256": [...]} -> {"missing": [...]}
    PUT    /api/blobs/SHA256                   the bytes, streamed -> {"sha256", "size"}
    POST   /api/push                           the options and the file(s) by digest -> show --json
    POST   /api/import                         a bundle, streamed -> import --json
    PUT    /api/models/NAME/aliases/ALIAS      {"ref": REF} -> show --json
    DELETE /api/models/NAME/aliases/ALIAS
    POST   /api/refs/REF/tags                  {"set": {K: V}, "delete": [K]} -> show --json
    PUT    /api/refs/REF/description           {"description": TEXT} -> show --json
    DELETE /api/refs/REF                       (admin) -> show --json of what was deleted

A blob is hashed while it is written and kept only if its bytes match the
digest it was sent as; it is never held in memory. A push is this server's
own push of blobs it holds (`pushing.ForClient`): its arch trust policy, its
weights check, nothing recorded unless it commits. Every change runs as the
token's name (`audit.acting_as`), so the log says who made it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from registry import audit, jsontext, progress_bars, refs, wire
from registry.errors import (
    AccessDeniedError,
    InvalidReferenceError,
    NotFoundError,
    RegistryError,
    StorageError,
    UnsafeCheckpointError,
)
from registry.pushing import ForClient, PushOptions, Stored
from registry.server.access import Caller, caller
from registry.server.answers import error, registry_error

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

    from registry.api import Registry
    from registry.records import FolderFile, ModelVersion

T = TypeVar("T")

MAX_JSON = 4 << 20  # bytes of a JSON request (a folder push lists up to wire.MAX_FILES files)
WRITE_CHUNK = 1 << 20  # bytes handed to the store's writer at a time
FRESH_S = 600.0  # a blob sent within this long is read without verifying it once more


def handled(
    handler: Callable[[Any, Request], Any],
) -> Callable[[Any, Request], Any]:
    """An async handler whose RegistryErrors and malformed requests are one-line answers."""

    async def wrapped(self: Any, request: Request) -> Response:
        try:
            response: Response = await handler(self, request)
            return response
        except RegistryError as exc:
            return registry_error(request, exc)
        except (TypeError, ValueError) as exc:  # a request wire does not read
            return error(request, 400, f"invalid request: {exc}", "InvalidReferenceError")

    wrapped.__name__ = handler.__name__
    return wrapped


class WriteApi:
    def __init__(self, reg: Registry) -> None:
        from registry.publishing import LocalPublisher

        self.reg = reg
        self.publisher = LocalPublisher(reg.catalog, reg.store)
        self._fresh: dict[str, float] = {}  # blobs this server verified as they came

    # -- blobs -------------------------------------------------------------------------------

    @handled
    async def missing(self, request: Request) -> Response:
        from starlette.responses import JSONResponse

        _writer(request, "send files")
        asked = wire.typed(await _json(request), dict, "the request").get("sha256")
        digests = [wire.digest(d, "sha256") for d in wire.typed(asked, list, "sha256")]
        if len(digests) > wire.MAX_FILES:
            raise ValueError(f"ask of at most {wire.MAX_FILES} blobs at once")
        lacking = await _threaded(lambda: [d for d in digests if not self._holds(d)])
        return JSONResponse({"missing": lacking})

    def _holds(self, digest: str) -> bool:
        return self.reg.store.exists(digest) and self.reg.catalog.verification(digest) is not None

    @handled
    async def put_blob(self, request: Request) -> Response:
        """Write the body into a blob, hashing as it comes; keep it only if it is `SHA256`."""
        from starlette.requests import ClientDisconnect
        from starlette.responses import JSONResponse

        _writer(request, "send files")
        digest = wire.digest(request.path_params["sha256"], "sha256")
        stack = contextlib.ExitStack()
        try:  # the writer's temp file goes unless the blob is placed
            writer = await _threaded(lambda: stack.enter_context(self.reg.store.writer()))
            await _received_into(request, writer)
            found = await _threaded(writer.finish)
            if found != digest:
                return error(
                    request, 400,
                    f"the bytes sent hash to sha256:{found}, not sha256:{digest}; nothing was kept",
                    "IntegrityError",
                )  # fmt: skip
            await _threaded(self._place, writer)
            self._fresh[digest] = time.monotonic()
            return JSONResponse({"sha256": digest, "size": writer.size}, status_code=201)
        except ClientDisconnect:
            return error(request, 400, "the upload was cut off; nothing was kept")
        finally:
            stack.close()

    def _place(self, writer: Any) -> None:
        writer.publish()  # before the transaction: an upload holds no catalog lock
        with self.reg.catalog.recording() as recording:
            recording.place(writer)

    # -- pushes and imports ------------------------------------------------------------------

    @handled
    async def push(self, request: Request) -> Response:
        from starlette.responses import JSONResponse

        who = _writer(request, "push")
        fields, single, files = wire.push_request(await _json(request))
        if fields["trust_pickle"]:
            raise UnsafeCheckpointError(
                "a registry server never unpickles what a client sends; push the weights "
                "(a state_dict or a .safetensors file) instead"
            )
        signature = fields.pop("signature")
        options = PushOptions(**fields)
        version = await _threaded(self._push, who, options, single, files, signature)
        body = {**version.to_json(), "is_new": version.is_new}
        return JSONResponse(body, status_code=201 if version.is_new else 200)

    def _push(
        self,
        who: Caller,
        options: PushOptions,
        single: FolderFile | None,
        files: tuple[FolderFile, ...],
        signature: dict[str, Any] | None,
    ) -> ModelVersion:
        def check_name(name: str) -> None:
            who.require("write", name, "push to")

        if options.parent is not None:
            who.require("read", refs.parse_ref(options.parent).name, "name as parent")
        silent = progress_bars.silent
        with audit.acting_as(who.principal.name):
            if single is not None:
                stored = self._stored(single)
                client = ForClient(check_name, signature=signature)
                return self.publisher.push(stored, options, silent, client)
            with self._staged(files) as folder:
                sent = ForClient(check_name, {f.path: f.sha256 for f in files}, signature)
                return self.publisher.push(folder, options, silent, sent)

    def _stored(self, file: FolderFile) -> Stored:
        """A blob the client sent before, verified (unless this server just did) and sized."""
        from registry import digests

        store, catalog, digest = self.reg.store, self.reg.catalog, file.sha256
        shown = f"{file.path} (sha256:{digest[:12]})"
        if not store.exists(digest):
            raise NotFoundError(shown, "send it first: PUT /api/blobs/SHA256")
        check = catalog.verification(digest)
        path = store.local_path(digest, shown)
        if time.monotonic() - self._fresh.get(digest, -FRESH_S) >= FRESH_S or check is None:
            store.verify(digest, shown, check)
        if check is None or not check.blake3:
            check = digests.Check(blake3=digests.blake3_of(path))
        if path.stat().st_size != file.size:
            raise InvalidReferenceError(file.path, "file", f"it is not {file.size} bytes")
        return Stored(file.path, digest, file.size, path, check)

    @contextlib.contextmanager
    def _staged(self, files: tuple[FolderFile, ...]) -> Iterator[Path]:
        """The folder the client pushed, made of links to the blobs it sent (copies where the
        store is on another file system); gone afterwards."""
        folder = Path(tempfile.mkdtemp(prefix="registry-push-"))
        try:
            for file in files:
                stored = self._stored(file)
                target = folder / file.path
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(stored.path, target)
                except OSError:
                    shutil.copyfile(stored.path, target)
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    @handled
    async def import_(self, request: Request) -> Response:
        """Spool the bundle to disk as it comes, then import it as a local import does."""
        from starlette.responses import JSONResponse

        who = _writer(request, "import")
        fd, name = tempfile.mkstemp(prefix="registry-import-", suffix=".tar")
        spool = Path(name)
        try:
            with os.fdopen(fd, "wb") as out:
                async for chunk in request.stream():
                    await _threaded(out.write, chunk)

            def check_name(model: str) -> None:
                who.require("write", model, "import into")

            def run() -> list[ModelVersion]:
                with audit.acting_as(who.principal.name):
                    return self.publisher.import_bundle(
                        spool, progress_bars.silent, check_name=check_name
                    )

            versions = await _threaded(run)
        finally:
            spool.unlink(missing_ok=True)
        return JSONResponse([{**v.to_json(), "is_new": v.is_new} for v in versions])

    # -- changes -----------------------------------------------------------------------------

    @handled
    async def ref(self, request: Request) -> Response:
        """POST REF/tags, PUT REF/description, DELETE REF."""
        from starlette.responses import JSONResponse

        path, method = request.path_params["ref"], request.method
        head, _, tail = path.rpartition("/")
        who = _writer(request, "change versions")
        if method == "POST" and tail == "tags":
            who.require("write", refs.parse_ref(head).name, "tag")
            body = wire.typed(await _json(request), dict, "the request")
            tags = wire.typed(body.get("set", {}), dict, "set")
            keys = wire.typed(body.get("delete", []), list, "delete")
            deleted = [wire.text(key, "a key", 128) for key in keys]
            version = await _threaded(_as(who, self.reg.set_tags, head, tags, delete=deleted))
        elif method == "PUT" and tail == "description":
            who.require("write", refs.parse_ref(head).name, "describe")
            body = wire.typed(await _json(request), dict, "the request")
            text = wire.typed(body.get("description"), str, "description")
            version = await _threaded(_as(who, self.reg.describe, head, text))
        elif method == "DELETE":
            who.require("admin", refs.parse_ref(path).name, "delete versions of")
            version = await _threaded(_as(who, self.reg.delete, path))
        else:
            return error(request, 405, f"{method} is not taken here", "ReadOnlyError")
        return JSONResponse(version.to_json())

    @handled
    async def alias(self, request: Request) -> Response:
        """PUT and DELETE NAME/aliases/ALIAS."""
        from starlette.responses import JSONResponse, Response

        name, found, alias = request.path_params["name"].rpartition("/aliases/")
        if not found:
            return error(request, 405, f"{request.method} is not taken here", "ReadOnlyError")
        refs.validate_name(name)
        who = _writer(request, "move aliases")
        who.require("write", name, "move the aliases of")
        if request.method == "DELETE":
            await _threaded(_as(who, self.reg.delete_alias, name, alias))
            return Response(status_code=204)
        body = wire.typed(await _json(request), dict, "the request")
        ref = wire.text(body.get("ref"), "ref", 512)
        if refs.parse_ref(ref).name != name:
            raise InvalidReferenceError(ref, "reference", f"it is not a version of {name}")
        version = await _threaded(_as(who, self.reg.set_alias, ref, alias))
        return JSONResponse(version.to_json())


def _writer(request: Request, action: str) -> Caller:
    """The caller, who must hold a token in its Authorization header: a browser's cookie is
    for the page's own forms, so another site cannot make a browser write here."""
    who = caller(request)
    if who.by_cookie:
        raise AccessDeniedError(
            f"{action} through the API takes the token in an Authorization header, not a cookie"
        )
    who.require("write", action=action)
    return who


def _as(who: Caller, change: Callable[..., T], *args: Any, **kwargs: Any) -> Callable[[], T]:
    """`change(*args, **kwargs)`, to run on a worker thread as the caller's token."""

    def run() -> T:
        with audit.acting_as(who.principal.name):
            return change(*args, **kwargs)

    return run


async def _received_into(request: Request, writer: Any) -> None:
    """Write the request's body into `writer` in WRITE_CHUNK pieces on a worker thread while
    the next piece arrives: receiving and writing overlap, one piece written at a time."""
    import asyncio

    loop = asyncio.get_running_loop()
    writing: asyncio.Future[Any] | None = None
    pending = bytearray()
    try:
        async for chunk in request.stream():
            pending += chunk
            if len(pending) >= WRITE_CHUNK:
                if writing is not None:
                    await writing
                writing = loop.run_in_executor(None, writer.write, bytes(pending))
                pending.clear()
        if writing is not None:
            await writing
        if pending:
            await _threaded(writer.write, bytes(pending))
    finally:  # the writer is closed after this: no write may still run then
        if writing is not None and not writing.done():
            await asyncio.wait([writing])


async def _threaded(function: Callable[..., T], *args: Any) -> T:
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(function, *args)


async def _json(request: Request) -> Any:
    """The request's JSON body, read up to MAX_JSON bytes."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_JSON:
            raise StorageError(f"the request is over {MAX_JSON >> 20} MiB of JSON")
    try:
        return jsontext.loads(body.decode("utf-8")) if body else {}
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise ValueError("the body is not JSON") from None
