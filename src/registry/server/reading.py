"""The read-only JSON API (SPEC "Seeing it"), in the CLI's --json shapes, plus `/api/log`.

Each handler is a plain function run on Starlette's thread pool (the
Registry's calls block), and reads only the models its caller's token reaches.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from registry import jsontext, refs
from registry.errors import IntegrityError, InvalidReferenceError, NotFoundError
from registry.server.access import caller
from registry.server.answers import (
    blob_response,
    checked_path,
    checked_ref,
    registry_errors,
    split_file,
    split_ref,
    tar_chunks,
)

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

    from registry.api import Registry
    from registry.records import FolderFile, ModelVersion

MAX_LOG = 1000  # entries of the log one request gets


def _limit(text: str | None) -> int:
    if text is None:
        return MAX_LOG
    if not text.isdigit() or not 0 < int(text) <= MAX_LOG:
        raise InvalidReferenceError(text[:20], "limit", f"a number from 1 to {MAX_LOG}")
    return int(text)


class ReadApi:
    def __init__(self, reg: Registry) -> None:
        self.reg = reg

    @registry_errors
    def models(self, request: Request) -> Response:
        from starlette.responses import JSONResponse

        principal = caller(request).principal
        listed = [m.to_json() for m in self.reg.models() if principal.reaches(m.name)]
        return JSONResponse(listed)

    @registry_errors
    def model(self, request: Request) -> Response:
        from starlette.responses import JSONResponse

        name = refs.validate_name(request.path_params["name"])
        caller(request).require("read", name)
        return JSONResponse([v.to_json() for v in self.reg.versions(name)])

    @registry_errors
    def log(self, request: Request) -> Response:
        """`registry log [NAME] --json`: the changes to the models this token reaches."""
        from starlette.responses import JSONResponse

        principal = caller(request).principal
        name = request.query_params.get("model") or None
        if name is not None:
            caller(request).require("read", refs.validate_name(name))
        limit = _limit(request.query_params.get("limit"))
        entries = self.reg.log(name, None if principal.models else limit)
        shown = [e for e in entries if principal.reaches(refs.parse_ref(e.ref).name)]
        return JSONResponse([e.to_json() for e in shown[:limit]])

    @registry_errors
    def ref(self, request: Request) -> Response:
        from starlette.responses import JSONResponse, Response

        ref, part = split_ref(self.reg, request.path_params["ref"])
        ref = checked_ref(ref)
        caller(request).require("read", refs.parse_ref(ref).name)
        if part == "tensors":
            return JSONResponse([t.to_json() for t in self.reg.tensors(ref)])
        if part == "lineage":
            lineage = jsontext.dumps(self.reg.lineage(ref).to_json())  # nests thousands deep
            return Response(lineage, media_type="application/json")
        return JSONResponse(self.reg.get(ref).to_json())

    @registry_errors
    def diff(self, request: Request) -> Response:
        from starlette.responses import JSONResponse

        a, b = request.query_params.get("a"), request.query_params.get("b")
        if not a:
            raise InvalidReferenceError("", "reference", "give ?a=REF, and ?b=REF or none")
        for each in (a, b):
            if each:
                caller(request).require("read", refs.parse_ref(checked_ref(each)).name)
        found = self.reg.diff(checked_ref(a), checked_ref(b) if b else None)
        return JSONResponse(found.to_json())

    @registry_errors
    def file(self, request: Request) -> Response:
        """The checkpoint as pushed, verified first; streamed from disk, with Range.

        A folder version's is a tar of its files, each verified before the first
        byte is sent; `REF/PATH` is one file of it, verified, with Range.
        """
        ref, path = split_file(request.path_params["ref"])
        caller(request).require("read", refs.parse_ref(checked_ref(ref)).name)
        version = self.reg.get(ref)
        if path is not None:
            return self._folder_file(version, checked_path(path))
        if version.files is not None:
            return self._folder_tar(request, version)
        local = self.reg.local_file(version.ref)  # verified before a byte is sent
        filename = f"{version.name.rsplit('/', 1)[-1]}-v{version.version}{version.extension}"
        return blob_response(local, filename, version.sha256)

    def _folder_file(self, version: ModelVersion, path: str) -> Response:
        found = next((f for f in version.files or () if f.path == path), None)
        if found is None:
            hint = "" if version.files is not None else f"{version.ref} is one file, not a folder"
            raise NotFoundError(f"file {path!r} of {version.ref}", hint)
        local = self._verified(version, found)
        return blob_response(local, PurePosixPath(found.path).name, found.sha256)

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
        chunks = tar_chunks(version, headers, verified)
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
