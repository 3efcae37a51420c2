"""S3 transfers: CRC checksums where the endpoint takes them, one read of a pulled object.

moto takes them; Cloudflare R2, MinIO and other S3-compatible servers have refused
them (boto/boto3#4392). `ClockProxy` (test_s3_clock), on loopback in front of moto,
plays such a server. A push that is refused sends again without the checksums,
and the cache remembers that endpoint, so that later pushes do not try.

These tests push a 9.4 MB file: a multipart upload of two parts.
A pull on a cold cache writes its file and the cache's copy from one read of the
object, checked on the way by the BLAKE3 recorded at push.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from test_s3 import aws, bucket, objects, team
from test_s3_clock import ClockProxy, endpoint, moto, proxy, uploads
from test_s3_faults import BIG_ARCH, BIG_ARGS, big_model

from registry import IntegrityError, Registry
from registry.stores.s3 import REFUSING_CHECKSUMS

pytest.importorskip("boto3")
pytest.importorskip("moto.server")

# test_s3's fixtures, served here through test_s3_clock's proxy
__all__ = ["aws", "bucket", "endpoint", "moto", "proxy", "team"]


def big_file(folder: Path, seed: int) -> Path:
    model = big_model()
    with torch.no_grad():
        model.weight[0, 0] = seed
    path = folder / f"big-{seed}.pt"
    torch.save(model.state_dict(), path)
    return path


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_an_endpoint_that_takes_checksums_gets_them(
    team: Registry, bucket: str, proxy: ClockProxy, tmp_path: Path
) -> None:
    path = big_file(tmp_path, 1)
    version = team.push(path, arch=BIG_ARCH, name="big", arch_args=BIG_ARGS)
    assert proxy.checksummed >= 3  # the upload's start and each of its two parts
    assert objects(bucket) == {f"team/sha256/{version.sha256}": path.stat().st_size}
    assert uploads(bucket) == []
    cold = Registry(
        home=tmp_path / "cold", store=team.settings.store, database_url=team.settings.database_url
    )
    assert sha256_of(cold.pull(version.ref, tmp_path / "back.pt")) == sha256_of(path)
    assert not (team.settings.cache / REFUSING_CHECKSUMS).exists()
    cold.close()


def test_an_endpoint_that_refuses_checksums_gets_the_push_without_them_and_is_remembered(
    team: Registry, bucket: str, proxy: ClockProxy, tmp_path: Path
) -> None:
    proxy.refuse_checksums = True
    first, second = big_file(tmp_path, 1), big_file(tmp_path, 2)
    v1 = team.push(first, arch=BIG_ARCH, name="big", arch_args=BIG_ARGS)
    assert uploads(bucket) == []  # nothing of the refused upload is left
    remembered = (team.settings.cache / REFUSING_CHECKSUMS).read_text().split()
    assert remembered == [proxy.url]

    # Another process with the same cache: its pushes carry no checksum at all.
    refused = proxy.checksummed
    again = Registry(
        home=team.settings.home, store=team.settings.store, database_url=team.settings.database_url
    )
    v2 = again.push(second, arch=BIG_ARCH, name="big", arch_args=BIG_ARGS)
    assert proxy.checksummed == refused
    assert objects(bucket) == {
        f"team/sha256/{v.sha256}": p.stat().st_size for v, p in [(v1, first), (v2, second)]
    }
    cold = Registry(
        home=tmp_path / "cold", store=team.settings.store, database_url=team.settings.database_url
    )
    for version, path in [(v1, first), (v2, second)]:
        pulled = cold.pull(version.ref, tmp_path / f"back-{version.version}.pt")
        assert sha256_of(pulled) == sha256_of(path)
    again.close()
    cold.close()


def test_a_cold_pull_reads_the_object_once_for_its_file_and_the_cache(
    team: Registry, bucket: str, proxy: ClockProxy, tmp_path: Path
) -> None:
    """The file is the user's to change: it shares no inode with the cache's copy."""
    path = big_file(tmp_path, 1)
    version = team.push(path, arch=BIG_ARCH, name="big", arch_args=BIG_ARGS)
    key = f"/{bucket}/team/sha256/{version.sha256}"
    cold = Registry(
        home=tmp_path / "cold", store=team.settings.store, database_url=team.settings.database_url
    )
    proxy.requests.clear()
    pulled = cold.pull(version.ref, tmp_path / "out" / "back.pt")
    assert [r for r in proxy.requests if r.startswith("GET ")] == [f"GET {key}"]
    assert sha256_of(pulled) == sha256_of(path)
    cached = cold.store.cache.path(version.sha256)  # type: ignore[attr-defined]
    assert sha256_of(cached) == sha256_of(path)
    assert sorted(p.name for p in pulled.parent.iterdir()) == ["back.pt"]  # no temp file left
    assert list((cold.settings.cache / "tmp").iterdir()) == []
    proxy.requests.clear()
    again = cold.pull(version.ref, tmp_path / "again.pt")  # from the cache: no GET
    assert [r for r in proxy.requests if r.startswith("GET ")] == []
    assert sha256_of(again) == sha256_of(path)
    assert len({pulled.stat().st_ino, again.stat().st_ino, cached.stat().st_ino}) == 3
    cold.close()


def test_a_cold_pull_is_checked_by_the_blake3_recorded_at_push(
    team: Registry, bucket: str, tmp_path: Path
) -> None:
    import boto3

    path = big_file(tmp_path, 1)
    version = team.push(path, arch=BIG_ARCH, name="big", arch_args=BIG_ARGS)
    tampered = bytearray(path.read_bytes())
    tampered[len(tampered) // 2] ^= 0xFF
    boto3.client("s3").put_object(
        Bucket=bucket, Key=f"team/sha256/{version.sha256}", Body=bytes(tampered)
    )
    cold = Registry(
        home=tmp_path / "cold", store=team.settings.store, database_url=team.settings.database_url
    )
    with pytest.raises(IntegrityError, match=r"big@v1 failed verification: expected blake3:"):
        cold.pull(version.ref, tmp_path / "out" / "back.pt")
    assert list((tmp_path / "out").iterdir()) == []  # neither the file nor its temp file
    assert [p for p in cold.settings.cache.rglob("*") if p.is_file()] == []
    cold.close()
