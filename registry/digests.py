"""SHA-256 of a whole blob and of each fixed-size chunk of it, and parallel verification.

The file's SHA-256 is its identity, the digest users see. The chunk digests,
recorded at push, let a load verify the same bytes on every core at once
instead of in one sequential pass: matching chunks imply a matching file.
Both are computed in the one pass that writes the blob, on two threads
(hashlib releases the GIL on large buffers).
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

CHUNK_SIZE = 16 << 20
_PARALLEL_MIN = 1 << 20  # smaller writes are hashed inline: a thread hop costs more


@cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=os.cpu_count() or 2, thread_name_prefix="registry-hash")


class Hasher:
    """Hash a stream fed in order: the whole of it, and each CHUNK_SIZE piece."""

    def __init__(self) -> None:
        self._file = hashlib.sha256()
        self._chunk = hashlib.sha256()
        self._filled = 0
        self.chunks: list[str] = []

    def update(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        if len(view) < _PARALLEL_MIN:
            self._file.update(view)
            self._update_chunks(view)
            return
        whole = _pool().submit(self._file.update, view)
        self._update_chunks(view)
        whole.result()

    def _update_chunks(self, view: memoryview) -> None:
        while view:
            take = min(len(view), CHUNK_SIZE - self._filled)
            self._chunk.update(view[:take])
            self._filled += take
            view = view[take:]
            if self._filled == CHUNK_SIZE:
                self._close_chunk()

    def _close_chunk(self) -> None:
        self.chunks.append(self._chunk.hexdigest())
        self._chunk = hashlib.sha256()
        self._filled = 0

    def hexdigest(self) -> str:
        """The whole stream's digest; also closes the last, partial chunk."""
        if self._filled:
            self._close_chunk()
        return self._file.hexdigest()


def chunks_match(path: Path, chunk_digests: list[str]) -> bool:
    """Whether the file at `path` hashes, chunk by chunk and in parallel, to `chunk_digests`."""
    size = path.stat().st_size
    expected_chunks = -(-size // CHUNK_SIZE)
    if expected_chunks != len(chunk_digests):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        offsets = range(0, size, CHUNK_SIZE)
        actual = _pool().map(lambda offset: _hash_range(fd, offset), offsets)
        return all(a == e for a, e in zip(actual, chunk_digests, strict=True))
    finally:
        os.close(fd)


def _hash_range(fd: int, offset: int) -> str:
    digest = hashlib.sha256()
    buffer = bytearray(4 << 20)
    view = memoryview(buffer)
    remaining = CHUNK_SIZE
    while remaining:
        n = os.preadv(fd, [view[: min(remaining, len(buffer))]], offset)
        if n == 0:
            break
        digest.update(view[:n])
        offset += n
        remaining -= n
    return digest.hexdigest()
