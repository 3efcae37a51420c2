"""SHA-256 and BLAKE3 in one pass, and the parallel checks reads use (BLAKE3, legacy chunks)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import blake3
import pytest

from registry.digests import CHUNK_SIZE, Check, Hasher, blake3_of, chunks_match, matches


def chunked(data: bytes) -> list[str]:
    return [
        hashlib.sha256(data[i : i + CHUNK_SIZE]).hexdigest()
        for i in range(0, len(data), CHUNK_SIZE)
    ]


@pytest.mark.parametrize(
    "size", [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 2 * CHUNK_SIZE + 12345]
)
def test_hasher_matches_hashlib_whatever_the_write_sizes(size: int) -> None:
    data = os.urandom(size)
    for piece in (777, 1 << 20, 3 << 20, CHUNK_SIZE + 5):
        hasher = Hasher()
        for start in range(0, size, piece):
            hasher.update(data[start : start + piece])
        assert hasher.hexdigest() == hashlib.sha256(data).hexdigest()
        assert hasher.check == Check(blake3=blake3.blake3(data).hexdigest())


def test_chunks_match_detects_any_change(tmp_path: Path) -> None:
    data = bytearray(os.urandom(2 * CHUNK_SIZE + 100))
    path = tmp_path / "blob"
    path.write_bytes(data)
    digests = chunked(bytes(data))
    assert chunks_match(path, digests)
    data[CHUNK_SIZE + 7] ^= 0x80
    path.write_bytes(data)
    assert not chunks_match(path, digests)
    path.write_bytes(data[: 2 * CHUNK_SIZE])  # truncated: one chunk short
    assert not chunks_match(path, digests)
    path.write_bytes(b"")
    assert not chunks_match(path, digests)
    assert chunks_match(path, [])


def test_blake3_of_a_file_matches_the_one_recorded_and_catches_a_flip(tmp_path: Path) -> None:
    data = bytearray(os.urandom(3 * CHUNK_SIZE + 5))
    path = tmp_path / "blob"
    path.write_bytes(data)
    recorded = Check(blake3=blake3.blake3(bytes(data)).hexdigest())
    assert blake3_of(path) == recorded.blake3 and matches(path, recorded)
    data[2 * CHUNK_SIZE + 1] ^= 0x01
    path.write_bytes(data)
    assert not matches(path, recorded)
    path.write_bytes(b"")
    assert blake3_of(path) == blake3.blake3(b"").hexdigest()
    assert matches(path, Check(chunks=[])) is False  # nothing recorded: nothing vouched
