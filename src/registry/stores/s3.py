"""Blobs in S3-compatible object storage, read through a verified local cache.

    s3://<bucket>/<prefix>sha256/<hex>     one object per blob, never overwritten
    <cache>/                               a local BlobStore: what loading memory-maps
      sha256/39/3979...(64 hex)
      tmp/

A push copies its file into the cache, hashing it, then uploads that copy
(boto3's transfer manager) while the copy's fsync runs, when the bucket lacks
it. The version is recorded only once the upload completed, so an
interrupted upload leaves no visible object (an incomplete multipart upload,
which gc aborts once it is a day old).
Uploads carry boto3's CRC32 checksums unless the endpoint refused them once
(remembered in the cache folder). A read the cache lacks streams the object
into it (`_download`, one GET), and a pull streams it into its own file;
`CachedStore` keeps the blob only if its bytes match,
verifies it on every use as a local one is, and drops a damaged copy so that
it is fetched again; gc removes a killed fill's temp file. Credentials,
region and endpoint come from the standard AWS chain; nothing secret is kept
in a message.
"""

from __future__ import annotations

import contextlib
import email.utils
import functools
import hashlib
import os
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from registry import extras
from registry.digests import Check
from registry.errors import ConfigurationError, IntegrityError, StorageError
from registry.faults import crash_half_way, crash_point
from registry.files import CHUNK_SIZE
from registry.stores.cache import CachedStore, Sink
from registry.stores.folder import BlobStore, BlobWriter

# Incomplete multipart uploads older than this, by the S3 server's clock, are a killed
# push's: gc aborts them.
STALE_UPLOAD = timedelta(days=1)
# Tries of each request (throttling, 5xx, a dropped connection) unless AWS_MAX_ATTEMPTS
# or the config file's max_attempts says otherwise.
MAX_ATTEMPTS = 6
# In the cache folder: the endpoints that refused boto3's CRC checksums, one a line.
REFUSING_CHECKSUMS = "refusing-checksums"


class S3Store(CachedStore):
    """Blobs as objects in a bucket, with a local cache to read them from."""

    def __init__(self, url: str, cache: str | os.PathLike[str]) -> None:
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ConfigurationError(f"store {url!r}: expected s3://BUCKET[/PREFIX]")
        self.bucket = parsed.netloc
        prefix = parsed.path.strip("/")
        self.prefix = f"{prefix}/" if prefix else ""
        self.cache = BlobStore(cache)
        # gc aborts incomplete multipart uploads older than this (None: STALE_UPLOAD);
        # an upload still running elsewhere is younger.
        self.stale_upload: timedelta | None = None
        self.checksums = True  # whether uploads carry boto3's CRC32
        self._client: Any = None

    @property
    def location(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    @property
    def client(self) -> Any:
        """boto3's client with its default checksums, or without them for an endpoint
        that refused them (see `_sending`)."""
        if self._client is None:
            self._client = self._make_client(checksums=True)
            if self._client.meta.endpoint_url in self._refusing_checksums():
                self._client, self.checksums = self._make_client(checksums=False), False
        return self._client

    def _make_client(self, checksums: bool) -> Any:
        self._require_boto3()
        import boto3
        import botocore.session
        from botocore.config import Config

        # A session of its own reads the credentials when this store is first used,
        # not when the process first used boto3 (boto3's default session keeps those).
        session = botocore.session.get_session()
        session.register_component("data_loader", _service_descriptions())
        attempts = session.get_config_variable("max_attempts") or MAX_ATTEMPTS
        config = Config(
            retries={"total_max_attempts": attempts, "mode": "standard"},
            # boto3 >= 1.36 sends a CRC32 of each upload, which MinIO, R2 and others
            # refuse (boto/boto3#4392): off for an endpoint that did. Answers are not
            # CRC-checked: every read is verified by its SHA-256 or BLAKE3 anyway.
            request_checksum_calculation="when_supported" if checksums else "when_required",
            response_checksum_validation="when_required",
        )
        return boto3.Session(botocore_session=session).client("s3", config=config)

    def key(self, digest: str) -> str:
        return f"{self.prefix}sha256/{digest}"

    # -- writing ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def writer(self) -> Iterator[_UploadingWriter]:
        """A cache writer that uploads on `publish`."""
        with self.cache.writer() as writer:
            yield _UploadingWriter(self, writer)

    def upload(self, path: Path, digest: str) -> None:
        """Upload a finished, hashed blob unless the bucket holds it already."""
        if self.exists(digest):
            return
        from boto3.s3.transfer import TransferConfig

        sent = crash_half_way("s3-upload", path.stat().st_size, lambda n: None)
        with self._errors():
            self._sending(
                lambda client: client.upload_file(
                    str(path), self.bucket, self.key(digest), Config=TransferConfig(), Callback=sent
                )
            )

    def _sending(self, send: Callable[[Any], None]) -> None:
        """Run `send(client)`; where the endpoint refuses boto3's CRC checksums, run it
        once more without them and remember that endpoint (in this cache)."""
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import ClientError

        try:
            send(self.client)
            return
        except (ClientError, S3UploadFailedError) as exc:
            cause = exc.__context__ if isinstance(exc, S3UploadFailedError) else exc
            if not (self.checksums and isinstance(cause, ClientError) and _refusal(cause)):
                raise
        plain = self._make_client(checksums=False)
        send(plain)  # what it raises is not about checksums
        self._client, self.checksums = plain, False
        with contextlib.suppress(OSError), open(self.cache.root / REFUSING_CHECKSUMS, "a") as f:
            f.write(f"{plain.meta.endpoint_url}\n")

    def _refusing_checksums(self) -> set[str]:
        try:
            return set((self.cache.root / REFUSING_CHECKSUMS).read_text().split())
        except OSError:
            return set()

    # -- reading ---------------------------------------------------------------------------

    def exists(self, digest: str) -> bool:
        return self._head(digest) is not None

    def size(self, digest: str) -> int:
        head = self._head(digest)
        return int(head["ContentLength"]) if head else 0

    def hash(self, digest: str, ref: str) -> str:
        """Re-hash the object in the bucket itself, not the cache."""
        hasher = hashlib.sha256()
        with self._errors(ref, digest):
            body = self.client.get_object(Bucket=self.bucket, Key=self.key(digest))["Body"]
            for chunk in body.iter_chunks(CHUNK_SIZE):
                hasher.update(chunk)
        return hasher.hexdigest()

    def digests(self) -> list[str]:
        found = []
        with self._errors():
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.key("")
            )
            for page in pages:
                found += [item["Key"].rpartition("/")[2] for item in page.get("Contents", [])]
        return sorted(d for d in found if len(d) == 64)

    # -- deleting ----------------------------------------------------------------------------

    def remove(self, digest: str) -> int:
        size = self.size(digest)
        with self._errors():
            self.client.delete_object(Bucket=self.bucket, Key=self.key(digest))
        self.cache.remove(digest)
        return size

    def reclaim_temp_files(self, dry_run: bool = False) -> tuple[int, int]:
        """The cache's temp files, and multipart uploads older than `stale_upload` (a day)."""
        count, freed = self.cache.reclaim_temp_files(dry_run)
        with self._errors():
            for upload in self._stale_uploads():
                count += 1
                if not dry_run:
                    self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
        return count, freed

    def _stale_uploads(self) -> Iterator[dict[str, Any]]:
        """The incomplete multipart uploads older than `stale_upload`, by the server's clock.

        The server stamps `Initiated`, so each listing is aged by its own Date: a
        machine whose clock runs a day ahead must not abort another's running upload.
        """
        age = STALE_UPLOAD if self.stale_upload is None else self.stale_upload
        pages = self.client.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.bucket, Prefix=self.key("")
        )
        for page in pages:
            cutoff = _server_time(page) - age
            yield from (u for u in page.get("Uploads", []) if u["Initiated"] < cutoff)

    # -- internals ---------------------------------------------------------------------------

    def _head(self, digest: str) -> dict[str, Any] | None:
        self._require_boto3()
        from botocore.exceptions import ClientError

        try:
            with self._errors(passthrough=ClientError):
                head: dict[str, Any] = self.client.head_object(
                    Bucket=self.bucket, Key=self.key(digest)
                )
                return head
        except ClientError as exc:
            if _code(exc) not in _NOT_FOUND:
                raise self._storage_error(exc) from None
        with self._errors():  # a missing object, or a missing bucket?
            self.client.head_bucket(Bucket=self.bucket)
        return None

    def _download(self, digest: str, ref: str, sink: Sink) -> None:
        """Stream the object into `sink`; a missing one is an IntegrityError for `ref`.

        One streamed GET: boto3's ranged download into a stream that cannot
        seek stalled on multi-part objects here.
        """
        with self._errors(ref, digest):
            got = self.client.get_object(Bucket=self.bucket, Key=self.key(digest))
            filled = crash_half_way("s3-download", int(got["ContentLength"]), lambda n: None)
            for chunk in got["Body"].iter_chunks(CHUNK_SIZE):
                sink.write(chunk)
                sink.flush()  # what a kill leaves is on disk, for gc to find
                filled(len(chunk))

    @contextlib.contextmanager
    def _errors(
        self, ref: str = "", digest: str = "", passthrough: type[BaseException] | None = None
    ) -> Iterator[None]:
        """Turn what botocore raises into one line naming the bucket and endpoint."""
        self._require_boto3()
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except S3UploadFailedError as exc:  # boto3's upload_file wraps a request's ClientError
            cause = exc.__context__
            raise self._storage_error(cause if isinstance(cause, ClientError) else exc) from None
        except (BotoCoreError, ClientError) as exc:
            if passthrough is not None and isinstance(exc, passthrough):
                raise
            if ref and isinstance(exc, ClientError) and _code(exc) in _NOT_FOUND:
                raise IntegrityError(ref, digest, None) from None
            raise self._storage_error(exc) from None

    def _require_boto3(self) -> None:
        extras.require("s3", f"store {self.location}")

    def _storage_error(self, exc: Exception) -> StorageError:
        """One line naming the bucket and the endpoint's host:port; never a secret."""
        from botocore.exceptions import (
            ClientError,
            IncompleteReadError,
            NoCredentialsError,
            PartialCredentialsError,
        )

        endpoint = urlparse(self.client.meta.endpoint_url)
        port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
        code = _code(exc) if isinstance(exc, ClientError) else ""
        if code in (*_NOT_FOUND, "NoSuchBucket"):
            reason = f"bucket {self.bucket!r} does not exist"
        elif isinstance(exc, ClientError) and (code in _DENIED or _status(exc) == 403):
            reason = (
                f"access denied ({code}): check the credentials (AWS_ACCESS_KEY_ID, "
                "AWS_SECRET_ACCESS_KEY, AWS_PROFILE) and that they may use this bucket"
            )
        elif isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
            reason = f"{exc}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"
        elif isinstance(exc, IncompleteReadError):
            got, size = exc.kwargs["actual_bytes"], exc.kwargs["expected_bytes"]
            reason = f"the connection closed after {got} of {size} bytes"
        else:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            url = getattr(exc, "kwargs", {}).get("endpoint_url")
            if url:  # the request's URL: the endpoint is named already, the key is noise
                reason = reason.replace(f'"{url}"', "").rstrip(": .")
        secret = os.environ.get("AWS_SECRET_ACCESS_KEY")
        if secret:
            reason = reason.replace(secret, "***")
        return StorageError(f"store {self.location} at {endpoint.hostname}:{port}: {reason}")


@functools.cache
def _service_descriptions() -> Any:
    """botocore's reader of API descriptions, shared by every store's session: parsed once."""
    import botocore.loaders

    return botocore.loaders.create_loader()


_NOT_FOUND = ("404", "NoSuchKey", "NotFound")
# How S3-compatible servers refused boto3's CRC checksums (boto/boto3#4392 and its kin).
_CHECKSUM_REFUSALS = (
    "NotImplemented", "InvalidArgument", "InvalidRequest", "BadRequest", "Unauthorized",
    "XAmzContentSHA256Mismatch", "AuthorizationHeaderMalformed", "MissingContentMD5",
    "InvalidDigest",
)  # fmt: skip
_DENIED = ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken")


def _code(exc: Any) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _refusal(exc: Any) -> bool:
    """Whether an upload's error may be an endpoint refusing the checksum it carried."""
    return _status(exc) == 501 or (_status(exc) in (400, 401) and _code(exc) in _CHECKSUM_REFUSALS)


def _status(exc: Any) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _server_time(answer: dict[str, Any]) -> datetime:
    """When the server sent `answer`, by its Date header; the local clock without a usable one."""
    date = answer.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date", "")
    try:
        sent = email.utils.parsedate_to_datetime(date)
    except ValueError:  # no Date header, or not a date
        return datetime.now(timezone.utc)
    return sent if sent.tzinfo else sent.replace(tzinfo=timezone.utc)  # "-0000" is UTC too


class _UploadingWriter:
    """A cache writer whose commit uploads the blob first: in the bucket, then in the cache.

    Sending the parts while the file is copied was slower here (1.35x `upload_file`
    against 1.23x): on two cores the copy and the upload compete (issue 24).
    """

    def __init__(self, store: S3Store, writer: BlobWriter) -> None:
        self._store, self._writer = store, writer
        self.temp_path = writer.temp_path

    @property
    def size(self) -> int:
        return self._writer.size

    @property
    def check(self) -> Check:
        return self._writer.check

    def write(self, data: bytes | memoryview) -> int:
        return self._writer.write(data)

    def flush(self) -> None:
        self._writer.flush()

    def finish(self) -> str:
        return self._writer.finish()

    def publish(self) -> None:
        """Upload the finished copy; its fsync, begun by `finish`, runs meanwhile."""
        self._store.upload(self._writer.temp_path, self._writer.finish())
        crash_point("s3-uploaded")

    def commit(self) -> str:
        digest = self._writer.finish()
        self._store.upload(self._writer.temp_path, digest)  # a gc since publish: upload again
        return self._writer.commit()
