"""HTTP to one registry server (`registry serve`): timeouts, retries, resumed downloads.

    <server>/api/models, /api/models/NAME          what a remote registry asks
    <server>/api/refs/REF[/tensors|/lineage]       (SPEC, "Seeing it": the API table)
    <server>/api/diff?a=REF&b=REF
    <server>/api/files/REF                          a checkpoint as pushed; ETag, Range
    <server>/api/files/NAME@vN/PATH                 one file of a folder version; ETag, Range

A failed request is one line naming the server; an error answer becomes the
RegistryError it stands for. A download is one streamed GET, and a
connection cut off mid-way goes on with a Range request. The token travels
only in the Authorization header: it is never part of a URL, a message or
a repr. `catalogs.http` and `stores.http` read through this client.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar
from urllib.parse import quote

from registry import extras, jsontext, refs
from registry.errors import (
    AccessDeniedError,
    ConfigurationError,
    IntegrityError,
    InvalidReferenceError,
    NotFoundError,
    StorageError,
    first_line,
    from_server,
)
from registry.faults import crash_point
from registry.stores.cache import Sink

if TYPE_CHECKING:
    import httpx

T = TypeVar("T")

CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 60.0  # the most a server may stay silent mid-answer (a diff reads tensors)
CONNECT_RETRIES = 3  # a refused or failed connection is tried again after 0, 0.5 and 1 s
RESUMES = 3  # a download cut off mid-way goes on from where it stopped this many times

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

    def send(
        self,
        method: str,
        path: str,
        ref: str = "",
        json_body: Any = None,
        content: Any = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = READ_TIMEOUT_S,
    ) -> Any:
        """A write: `json_body` as JSON, or `content` (bytes or an iterator of them) streamed;
        the JSON answer, or the RegistryError an error status stands for."""
        import httpx

        sent = {"content": content} if content is not None else {"json": json_body}
        with self._errors():
            response = self.http.request(
                method,
                path,
                headers=headers,
                timeout=httpx.Timeout(timeout, connect=CONNECT_TIMEOUT_S),
                **sent,
            )
        if not response.is_success:
            self._raise(response.status_code, response.content, path, ref)
        try:
            return jsontext.loads(response.text) if response.content else None
        except ValueError:
            raise self.unexpected(path, "an answer that is not JSON") from None

    def download(self, ref: str, digest: str, sink: Sink) -> None:
        """Stream the file of version `ref` (whose sha256 is `digest`) into `sink`.

        `ref` may name one file of a folder version, `NAME@vN/PATH`
        (`folders.file_ref`); `digest` is then that file's.

        A connection cut off mid-way is resumed with `Range` from the bytes
        received, RESUMES times; `If-Range` makes the server send the whole
        file again should it hold other bytes now, which is refused.
        """
        self._require_httpx()
        import httpx

        path = f"/api/files/{quoted(ref)}"
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
        message = _message(body)
        if status == 403 and message:
            raise AccessDeniedError(f"registry server {self.url}: {message}", status)
        if status == 401 and message and "expired" in message:
            raise AccessDeniedError(f"registry server {self.url}: {message}", status)
        named = from_server(_kind(body), message) if message and status != 401 else None
        if named is not None:
            raise named
        if status == 401:
            if self._token:
                raise ConfigurationError(
                    f"registry server {self.url}: the token was refused; set REGISTRY_TOKEN "
                    "to the token the server was started with"
                )
            raise ConfigurationError(
                f"registry server {self.url} needs a token; set REGISTRY_TOKEN"
            )
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


def quoted(ref: str) -> str:
    """A reference or model name as a URL path: `team/resnet@v1` keeps its `/` and `@`."""
    return quote(ref, safe="/@")


def ref_path(ref: str) -> str:
    """A reference as a URL path that always names a version.

    `/api/refs/team/tensors` would be read as the manifest of model `team`,
    not as model `team/tensors`: `@latest` keeps the two apart.
    """
    return quoted(ref if "@" in ref else f"{ref}@latest")


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
    text = refs.CONTROL.sub(" ", data["error"]).strip()
    return text[:MAX_MESSAGE] + ("..." if len(text) > MAX_MESSAGE else "")


def _kind(body: bytes) -> str:
    """The class name of the error an answer names (`{"kind": ...}`), or ""."""
    try:
        kind = json.loads(body).get("kind")
    except (ValueError, RecursionError, AttributeError):
        return ""
    return kind if isinstance(kind, str) and kind.isidentifier() else ""


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
