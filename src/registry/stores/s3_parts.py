"""A multipart upload fed while the blob is written, completed only once it is verified.

An S3 push knows the object's key (the file's SHA-256) from a read-only pass
over the file, so the upload can begin before the copy into the cache: each
part is sent, by a pool of threads, while the next is being copied and
hashed. Nothing is visible in the bucket until `complete`, which the writer
calls only when the bytes it wrote, the very bytes the parts were cut from,
hashed to that key. A kill leaves an incomplete multipart upload, which gc
aborts once it is past its age; any failure leaves the writer to upload
its finished temp file the ordinary way (`S3Store.upload`).
"""

from __future__ import annotations

import contextlib
import functools
import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

from registry.faults import crash_half_way

MIB = 1024 * 1024
# boto3's defaults (TransferConfig): parts of 8 MiB, 10 requests at once.
PART_SIZE = 8 * MIB
CONCURRENCY = 10
MAX_PARTS = 10_000  # S3's limit on one upload
# Parts held in memory, across every upload of the process (a folder's shards at once).
_IN_FLIGHT = threading.BoundedSemaphore(CONCURRENCY)


@functools.cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(CONCURRENCY, thread_name_prefix="registry-s3-part")


def part_size(size: int) -> int:
    """8 MiB parts, or larger ones (whole MiB) where 10,000 of them would not hold `size`."""
    least = -(-size // MAX_PARTS)
    return max(PART_SIZE, -(-least // MIB) * MIB)


class PartUpload:
    """One multipart upload under `key`, its parts cut from what `write` is given."""

    def __init__(self, client: Any, bucket: str, key: str, size: int, checksums: bool) -> None:
        self.client, self.bucket, self.key = client, bucket, key
        # boto3's own choice with its default settings: CRC32 on each part, declared up front.
        self._extra = {"ChecksumAlgorithm": "CRC32"} if checksums else {}
        self.part_size = part_size(size)
        self.failure: BaseException | None = None
        self._sent = crash_half_way("s3-upload", size, lambda n: None)
        self._pending = bytearray()
        self._parts: list[Future[dict[str, Any]]] = []
        self._closed = False
        begun = client.create_multipart_upload(Bucket=bucket, Key=key, **self._extra)
        self.upload_id: str = begun["UploadId"]

    def write(self, data: bytes | memoryview) -> None:
        """Take the next bytes of the blob; each full part is sent at once, in the pool."""
        if self.failure is not None:
            return
        self._pending += data
        while len(self._pending) >= self.part_size:
            self._send(bytes(self._pending[: self.part_size]))
            del self._pending[: self.part_size]

    def close(self) -> None:
        """Send the last part: the blob is written whole."""
        if not self._closed and self.failure is None:
            if self._pending or not self._parts:
                self._send(bytes(self._pending))
            self._pending = bytearray()
        self._closed = True

    def complete(self) -> None:
        """Wait for every part and make the object visible.

        Raises what a part's request raised; the caller then aborts.
        """
        self.close()
        parts = [part.result() for part in self._parts]
        self.client.complete_multipart_upload(
            Bucket=self.bucket,
            Key=self.key,
            UploadId=self.upload_id,
            MultipartUpload={"Parts": parts},
        )

    def abort(self) -> None:
        """Stop sending and drop the parts sent; what fails here is left for gc."""
        self.failure = self.failure or RuntimeError("aborted")
        for part in self._parts:
            part.cancel()
        wait(self._parts)
        with contextlib.suppress(Exception):
            self.client.abort_multipart_upload(
                Bucket=self.bucket, Key=self.key, UploadId=self.upload_id
            )

    def _send(self, body: bytes) -> None:
        _IN_FLIGHT.acquire()  # blocks the copy while CONCURRENCY parts are in flight
        part = _pool().submit(self._upload_part, len(self._parts) + 1, body)
        part.add_done_callback(self._done)
        self._parts.append(part)

    def _done(self, part: Future[dict[str, Any]]) -> None:
        _IN_FLIGHT.release()
        if not part.cancelled() and part.exception() is not None:
            self.failure = self.failure or part.exception()

    def _upload_part(self, number: int, body: bytes) -> dict[str, Any]:
        answer = self.client.upload_part(
            Bucket=self.bucket,
            Key=self.key,
            UploadId=self.upload_id,
            PartNumber=number,
            Body=body,
            **self._extra,
        )
        self._sent(len(body))
        part = {"ETag": answer["ETag"], "PartNumber": number}
        if "ChecksumCRC32" in answer:
            part["ChecksumCRC32"] = answer["ChecksumCRC32"]
        return part
