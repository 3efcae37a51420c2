"""Reading through a `registry serve`: its JSON API as the catalog, its files via a verified cache.

    <server>/api/models, /api/models/NAME          what a remote registry asks
    <server>/api/refs/REF[/tensors|/lineage]       (SPEC, "Seeing it": the API table)
    <server>/api/diff?a=REF&b=REF
    <server>/api/files/REF                          a checkpoint as pushed; ETag, Range
    <cache>/                                        a local BlobStore, shared with an s3:// store's
      sha256/39/3979...(64 hex)                     a blob whose bytes matched the server's digest
      tmp/<pid>@<host>@<random>.part                a download in flight (a dead one's: the
                                                    next download removes it)

The server's JSON is data: a record is rebuilt only when its fields have
the types the registry writes, and the digests, names and extensions that
end up naming files are checked first. A blob is fetched with one streamed
GET into the cache's temp folder, hashed on the way, and kept only when its
bytes match the sha256 of the version's JSON; a connection cut off mid-way
goes on with a Range request. A cached blob is verified on every use, as an
S3 store's is, and a damaged copy is evicted so that the next read fetches
it again. The token travels only in the Authorization header: it is never
part of a URL, a message or a repr.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar
from urllib.parse import quote

from registry import extras, jsontext, refs
from registry.blobstore import BlobStore, BlobWriter
from registry.caching import CachedStore
from registry.diffing import kind
from registry.errors import (
    ConfigurationError,
    IntegrityError,
    InvalidReferenceError,
    NotFoundError,
    ReadOnlyError,
    StorageError,
    first_line,
)
from registry.faults import crash_point
from registry.records import (
    DIFF_STATUSES,
    Diff,
    Lineage,
    LineageNode,
    ModelSummary,
    ModelVersion,
    TensorChange,
    TensorInfo,
)

if TYPE_CHECKING:
    import httpx

T = TypeVar("T")

CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 60.0  # the most a server may stay silent mid-answer (a diff reads tensors)
CONNECT_RETRIES = 3  # a refused or failed connection is tried again after 0, 0.5 and 1 s
RESUMES = 3  # a download cut off mid-way goes on from where it stopped this many times

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
MAX_MESSAGE = 400  # characters of a server's error message that are shown
MAX_ERROR_BODY = 64 << 10  # bytes of an error answer read, looking for its message


class Client:
    """HTTP to one registry server: timeouts, retried connections, errors as one line each."""

    def __init__(self, url: str, token: str | None) -> None:
        self.url = url
        self._token = token
        self._http: httpx.Client | None = None

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    @property
    def http(self) -> httpx.Client:
        if self._http is None:
            self._require_httpx()
            import httpx

            headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
            self._http = httpx.Client(
                base_url=self.url,
                headers=headers,
                timeout=httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
                # Retries cover connecting only: an answer cut off mid-way is the caller's
                # to resume. httpx drops the Authorization header on a redirect elsewhere.
                transport=httpx.HTTPTransport(retries=CONNECT_RETRIES),
                follow_redirects=True,
            )
        return self._http

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    def get(self, path: str, ref: str = "", params: Mapping[str, str] | None = None) -> Any:
        """GET a JSON answer; an error status raises the RegistryError it stands for."""
        with self._errors():
            response = self.http.get(path, params=params)
        if not response.is_success:
            self._raise(response.status_code, response.content, path, ref)
        try:
            return jsontext.loads(response.text)
        except ValueError:
            raise self.unexpected(path, "an answer that is not JSON") from None

    def download(self, ref: str, digest: str, sink: BlobWriter) -> None:
        """Stream the file of version `ref` (whose sha256 is `digest`) into `sink`.

        A connection cut off mid-way is resumed with `Range` from the bytes
        received, RESUMES times; `If-Range` makes the server send the whole
        file again should it hold other bytes now, which is refused.
        """
        self._require_httpx()
        import httpx

        path = f"/api/files/{_quoted(ref)}"
        for attempt in range(RESUMES + 1):
            start = sink.size
            headers = {"Accept-Encoding": "identity"}  # ranges count the file's own bytes
            if start:
                headers |= {"Range": f"bytes={start}-", "If-Range": f'"{digest}"'}
            try:
                with self.http.stream("GET", path, headers=headers) as response:
                    if not response.is_success:
                        self._refused_file(response, path, ref, digest)
                    self._check_range(response, ref, start)
                    total = _total_size(response, start)
                    for chunk in response.iter_bytes():  # as they come: a resume loses none
                        sink.write(chunk)
                        if total and sink.size * 2 >= total:
                            crash_point("remote-fill")
                return
            except (httpx.ReadError, httpx.RemoteProtocolError, httpx.ReadTimeout) as exc:
                if attempt == RESUMES:
                    raise self._failure(exc, f"{ref} stopped after {sink.size} bytes") from None
            except httpx.HTTPError as exc:
                during = f"{ref} stopped after {sink.size} bytes" if sink.size else ""
                raise self._failure(exc, during) from None

    def unexpected(self, path: str, what: str) -> StorageError:
        return StorageError(
            f"registry server {self.url} sent {what} for {path}; is it a `registry serve` "
            "of this version?"
        )

    # -- internals ---------------------------------------------------------------------------

    def _refused_file(self, response: httpx.Response, path: str, ref: str, digest: str) -> NoReturn:
        body = b""
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > MAX_ERROR_BODY:
                break
        message = _message(body)
        if response.status_code == 502 and message and "failed verification" in message:
            # The server found its blob damaged and sent none of it.
            actual = re.search(r"hash to sha256:([0-9a-f]{64})", message)
            raise IntegrityError(ref, digest, actual[1] if actual else None)
        self._raise(response.status_code, body, path, ref)

    def _check_range(self, response: httpx.Response, ref: str, start: int) -> None:
        """A resumed download must go on at `start`: bytes hashed so far cannot be taken back."""
        if not start:
            return
        content_range = response.headers.get("content-range", "")
        if response.status_code != 206 or not content_range.startswith(f"bytes {start}-"):
            raise StorageError(
                f"registry server {self.url} did not go on with {ref} from byte {start} "
                f"(HTTP {response.status_code}); run the command again"
            )

    def _raise(self, status: int, body: bytes, path: str, ref: str) -> NoReturn:
        """Raise what an error status stands for, with the server's one-line message."""
        if status == 401:
            if self._token:
                raise ConfigurationError(
                    f"registry server {self.url}: the token was refused; set REGISTRY_TOKEN "
                    "to the token the server was started with"
                )
            raise ConfigurationError(
                f"registry server {self.url} needs a token; set REGISTRY_TOKEN"
            )
        message = _message(body)
        if message is None:
            raise self.unexpected(path, f"HTTP {status} with no registry error")
        if status == 404:
            what, found, hint = message.partition(" not found")
            if found and (not hint or hint.startswith("; ")):
                raise NotFoundError(what, hint.removeprefix("; "))
        if status == 400:
            raise InvalidReferenceError(ref, "reference", message.partition(": ")[2] or message)
        raise StorageError(f"registry server {self.url}: {message} (HTTP {status} for {path})")

    def _require_httpx(self) -> None:
        extras.require("remote", f"remote {self.url}")

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        self._require_httpx()
        import httpx

        try:
            yield
        except httpx.HTTPError as exc:
            raise self._failure(exc) from None

    def _failure(self, exc: Exception, during: str = "") -> StorageError:
        """What httpx raised as one line naming the server; `during` says what it cut off."""
        import httpx

        if isinstance(exc, httpx.ConnectTimeout):
            message = f"cannot reach registry server {self.url}: no answer within "
            message += f"{CONNECT_TIMEOUT_S:g} s"
        elif isinstance(exc, httpx.ConnectError):
            message = f"cannot reach registry server {self.url}: {_reason(exc)}"
        elif isinstance(exc, httpx.TimeoutException):
            message = f"registry server {self.url} sent nothing for {READ_TIMEOUT_S:g} s"
        else:
            message = f"registry server {self.url}: {_reason(exc)}"
        return StorageError(message + (f" ({during})" if during else ""))


class RemoteCatalog:
    """What a catalog answers, asked of a registry server: versions, models, manifests, ..."""

    def __init__(self, client: Client) -> None:
        self.client = client

    @property
    def url(self) -> str:
        return self.client.url

    def get(self, ref: str) -> ModelVersion:
        wanted = refs.parse_ref(ref)  # a bad reference fails here, as it does locally
        path = f"/api/refs/{_ref_path(ref)}"
        version = self._parse(path, _version, self.client.get(path, ref))
        if version.name != wanted.name:
            raise self.client.unexpected(path, f"the record of {version.ref}")
        return version

    def search(
        self,
        name: str | None = None,
        arch: str | None = None,
        tags: Mapping[str, str] | None = None,
        limit: int | None = None,
    ) -> list[ModelVersion]:
        """Versions matching every filter, by model name then newest first, as the catalog's.

        The API lists a model's versions whole, so the filters apply here. With
        `name`, a model the server lacks is a NotFoundError.
        """
        names = [name] if name is not None else [m.name for m in self.models()]
        found = []
        for each in names:
            path = f"/api/models/{_quoted(each)}"
            try:
                answer = self.client.get(path)
            except NotFoundError:
                if name is not None:
                    raise
                continue  # deleted since it was listed
            found += self._parse(path, _each(_version), answer)
        matching = [
            v
            for v in found
            if (arch is None or v.arch == arch)
            and all(v.tags.get(k) == value for k, value in (tags or {}).items())
        ]
        return matching[:limit] if limit is not None else matching

    def models(self) -> list[ModelSummary]:
        path = "/api/models"
        return self._parse(path, _each(_summary), self.client.get(path))

    def tensors(self, ref: str) -> list[TensorInfo]:
        refs.parse_ref(ref)
        path = f"/api/refs/{_ref_path(ref)}/tensors"
        return self._parse(path, _each(_tensor), self.client.get(path, ref))

    def lineage(self, ref: str) -> Lineage:
        refs.parse_ref(ref)
        path = f"/api/refs/{_ref_path(ref)}/lineage"
        return self._parse(path, _lineage, self.client.get(path, ref))

    def diff(self, a: str, b: str) -> Diff:
        """The server's diff of two versions, with the kinds the text view shows filled in."""
        path = "/api/diff"
        found = self._parse(path, _diff, self.client.get(path, a, params={"a": a, "b": b}))
        # The JSON leaves out an added, removed or reshaped tensor's dtype and shape.
        old = {t.name: t for t in self.tensors(a)}
        new = {t.name: t for t in self.tensors(b)}
        changes = []
        for change in found.tensors:
            if change.status == "added" and change.name in new:
                change = dataclasses.replace(change, detail=kind(new[change.name]))
            elif change.status == "removed" and change.name in old:
                change = dataclasses.replace(change, detail=kind(old[change.name]))
            elif change.status == "reshaped" and change.name in old and change.name in new:
                kinds = f"{kind(old[change.name])} -> {kind(new[change.name])}"
                change = dataclasses.replace(change, detail=kinds)
            changes.append(change)
        return dataclasses.replace(found, tensors=tuple(changes))

    def _parse(self, path: str, parse: Callable[[Any], T], data: Any) -> T:
        """`parse(data)`, or one line saying the server sent something else."""
        try:
            return parse(data)
        except (KeyError, TypeError, ValueError, AttributeError, InvalidReferenceError):
            raise self.client.unexpected(path, "an answer the registry does not write") from None


class RemoteStore(CachedStore):
    """A registry server's checkpoint files, read through a verified local cache.

    The read side of the Store protocol; whatever would write or delete a blob
    is refused: only the server's own registry does that.
    """

    def __init__(self, client: Client, cache: str | os.PathLike[str]) -> None:
        self.client = client
        self.cache = BlobStore(cache)

    @property
    def location(self) -> str:
        return self.client.url

    def writer(self) -> contextlib.AbstractContextManager[BlobWriter]:
        self._refuse("writing a blob")

    def exists(self, digest: str) -> bool:
        """Whether the cache holds the blob (the server is not asked)."""
        return self.cache.exists(digest)

    def size(self, digest: str) -> int:
        return self.cache.size(digest)

    def hash(self, digest: str, ref: str) -> str:
        self._refuse("verify", "the store itself; run it where the store is")

    def digests(self) -> list[str]:
        self._refuse("listing the blobs")

    def remove(self, digest: str) -> int:
        self._refuse("deleting a blob")

    def reclaim_temp_files(self, dry_run: bool = False) -> tuple[int, int]:
        """The cache's temp files whose downloader is gone."""
        return self.cache.reclaim_temp_files(dry_run)

    def _fetch(self, digest: str, ref: str) -> None:
        """Download a blob into the cache, keeping it only if its bytes match `digest`.

        A fill left half-done by a process that died (killed, the machine
        rebooted) is a temp file nobody reads: it is removed first, as a pull
        removes a dead pull's temp file beside its destination.
        """
        with contextlib.suppress(OSError):  # cleaning up never fails the read itself
            self.cache.reclaim_temp_files()
        with self.cache.writer() as writer:
            self.client.download(ref, digest, writer)
            actual = writer.finish()
            if actual != digest:
                raise IntegrityError(ref, digest, actual)
            writer.commit()

    def _refuse(self, operation: str, need: str = "a catalog and a store") -> NoReturn:
        raise ReadOnlyError(self.client.url, operation, need)


# -- records from the server's JSON -------------------------------------------------------------

_VERSION_TYPES: dict[str, type | tuple[type, ...]] = {
    "name": str,
    "version": int,
    "sha256": str,
    "size": int,
    "format": str,
    "arch": str,
    "arch_args": dict,
    "description": str,
    "created_at": str,
    "created_by": str,
    "num_params": int,
    "torch_version": str,
    "extension": str,
    "weights_sha256": (str, type(None)),
    "tags": dict,
    "aliases": list,
    "details": dict,
    "parent": (str, type(None)),
    "check_input": (list, type(None)),
}


def _version(data: dict[str, Any]) -> ModelVersion:
    """A ModelVersion from its `to_json()`, refused unless it is what a registry writes."""
    values = {
        # A field that may be null may also be missing: a server of an older registry.
        key: _typed(data.get(key) if isinstance(kind, tuple) else data[key], kind)
        for key, kind in _VERSION_TYPES.items()
    }
    refs.validate_name(values["name"])
    if values["version"] < 1 or not refs.is_extension(values["extension"]):
        raise ValueError("not a version")
    for digest in (values["sha256"], values["weights_sha256"]):
        if digest is not None and not refs.is_sha256(digest):
            raise ValueError(f"not a sha256: {digest!r}")
    values["created_at"] = datetime.fromisoformat(values["created_at"])
    values["aliases"] = tuple(_typed(a, str) for a in values["aliases"])
    check = values["check_input"]
    values["check_input"] = tuple(_typed(n, int) for n in check) if check else None
    return ModelVersion(**values)


def _summary(data: dict[str, Any]) -> ModelSummary:
    updated = _typed(data["updated_at"], (str, type(None)))
    return ModelSummary(
        name=refs.validate_name(_typed(data["name"], str)),
        num_versions=_typed(data["num_versions"], int),
        latest_version=_typed(data["latest_version"], (int, type(None))),
        updated_at=datetime.fromisoformat(updated) if updated else None,
        size=_typed(data["size"], int),
        aliases=tuple(_typed(a, str) for a in _typed(data["aliases"], list)),
    )


def _tensor(data: dict[str, Any]) -> TensorInfo:
    shape = tuple(_typed(n, int) for n in _typed(data["shape"], list))
    return TensorInfo(_typed(data["name"], str), _typed(data["dtype"], str), shape, None)


def _lineage(data: dict[str, Any]) -> Lineage:
    """The lineage's tree rebuilt without recursion: chains run thousands deep."""
    roots = _typed(data["descendants"], list)
    order, pending = [], list(roots)
    while pending:  # parents before their children
        node = _typed(pending.pop(), dict)
        order.append(node)
        pending.extend(_typed(node["children"], list))
    built: dict[int, LineageNode] = {}
    for node in reversed(order):  # children before their parents
        children = tuple(built.pop(id(child)) for child in node["children"])
        built[id(node)] = LineageNode(
            _typed(node["ref"], str), _typed(node["deleted"], bool), children
        )
    return Lineage(
        ref=_typed(data["ref"], str),
        # The JSON does not say which ancestors were deleted.
        ancestors=tuple(LineageNode(_typed(a, str)) for a in _typed(data["ancestors"], list)),
        descendants=tuple(built[id(root)] for root in roots),
    )


def _diff(data: dict[str, Any]) -> Diff:
    changes = []
    for item in _typed(data["tensors"], list):
        status = _typed(item["status"], str)
        if status not in DIFF_STATUSES:
            raise ValueError(f"not a diff status: {status!r}")
        number = (int, float, type(None))
        changes.append(
            TensorChange(
                _typed(item["name"], str),
                status,
                _typed(item["max_abs"], number),
                _typed(item["rel_l2"], number),
            )
        )
    return Diff(_typed(data["a"], str), _typed(data["b"], str), tuple(changes))


def _each(parse: Callable[[Any], T]) -> Callable[[Any], list[T]]:
    """A parser of a JSON list whose items `parse` reads."""
    return lambda data: [parse(item) for item in _typed(data, list)]


def _typed(value: Any, kind: type | tuple[type, ...]) -> Any:
    """`value` if it has the JSON type `kind` (a bool is not an int here), else TypeError."""
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise TypeError(f"unexpected {value!r}")
    if not isinstance(value, kind):
        raise TypeError(f"unexpected {type(value).__name__}")
    return value


def _quoted(ref: str) -> str:
    """A reference or model name as a URL path: `team/resnet@v1` keeps its `/` and `@`."""
    return quote(ref, safe="/@")


def _ref_path(ref: str) -> str:
    """A reference as a URL path that always names a version.

    `/api/refs/team/tensors` would be read as the manifest of model `team`,
    not as model `team/tensors`: `@latest` keeps the two apart.
    """
    return _quoted(ref if "@" in ref else f"{ref}@latest")


def _total_size(response: httpx.Response, start: int) -> int | None:
    """The whole file's size, as the answer tells it (a resumed one counts from `start`)."""
    length = response.headers.get("content-length", "")
    return start + int(length) if length.isdigit() else None


def _message(body: bytes) -> str | None:
    """The server's `{"error": ...}` as one printable line, or None if it sent no such JSON."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("error"), str):
        return None
    text = _CONTROL.sub(" ", data["error"]).strip()
    return text[:MAX_MESSAGE] + ("..." if len(text) > MAX_MESSAGE else "")


def _reason(exc: BaseException) -> str:
    """The cause of a failed request in a few words: an OS error's own, else httpx's line."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, OSError) and cause.strerror:
            text = cause.strerror
            return text[0].lower() + text[1:]
        cause = cause.__cause__ or cause.__context__
    text = first_line(exc)
    return text[0].lower() + text[1:] if text else type(exc).__name__
