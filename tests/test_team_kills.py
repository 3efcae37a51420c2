"""SIGKILL at every step of a push to an S3 store and of a cache fill from it (issue #15).

The installed `registry` command runs against a moto server over HTTP on
loopback and SIGKILLs itself at a point of `registry.faults`
(REGISTRY_TEST_KILL_AT). Afterwards `registry verify` is clean, the catalog
references no missing object, the same operation succeeds bit-exact, and
`gc` reclaims what the kill left: the cache's temp files, an orphan object,
and an incomplete multipart upload once it is past its age. A full disk
while filling the cache is one `Error:` line and leaves the cache valid.
docs/reliability.md maps each guarantee to its test here.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import fresh_catalog_url
from test_reliability import (
    ARCH,
    ARGS,
    KILL_AT,
    REGISTRY,
    SMALL_DISK,
    one_error_line,
    run_registry,
    sha256_of,
    tiny_file,
)
from test_s3 import aws, bucket, endpoint

from registry import Registry

pytest.importorskip("boto3")
pytest.importorskip("moto.server")

__all__ = ["aws", "bucket", "endpoint"]  # test_s3's fixtures: one moto server for this module

# A TinyNet of 10.3 MB: two parts of boto3's 8 MiB multipart upload, and two 8 MiB chunks
# of a copy or a cache fill, so a kill "half-way" leaves a part of the bytes.
BIG_ARGS = {"width": 1024, "num_classes": 2500}
BIG_CLI_ARGS = ["--arch", ARCH, "--arg", "width=1024", "--arg", "num_classes=2500"]
PUSH_POINTS = ["push-copy", "push-hashed", "s3-upload", "s3-uploaded", "push-blob-placed",
               "push-commit"]  # fmt: skip
SHORT = {"s3-upload", "s3-download"}  # run by `make test`, on SQLite


def cases(points: list[str]) -> list[Any]:
    """Every point on PostgreSQL, the team's catalog (long); SHORT's on SQLite too (not long)."""
    short = [pytest.param("sqlite", point) for point in points if point in SHORT]
    return short + [pytest.param("postgresql", p, marks=pytest.mark.long) for p in points]


def cli(home: Path, database_url: str, store: str) -> list[str]:
    return ["--home", str(home), "--database-url", database_url, "--store", store]


def objects(bucket: str) -> set[str]:
    """The digests of the blobs in the bucket."""
    import boto3

    listing = boto3.client("s3").list_objects_v2(Bucket=bucket, Prefix="team/sha256/")
    return {item["Key"].rpartition("/")[2] for item in listing.get("Contents", [])}


def uploads(bucket: str) -> list[str]:
    """The keys of incomplete multipart uploads."""
    import boto3

    listing = boto3.client("s3").list_multipart_uploads(Bucket=bucket)
    return [upload["Key"] for upload in listing.get("Uploads", [])]


def temp_files(home: Path) -> list[Path]:
    folder = home / "cache" / "tmp"
    return sorted(folder.iterdir()) if folder.is_dir() else []


def cached(home: Path) -> set[str]:
    return {p.name for p in (home / "cache" / "sha256").glob("??/*")}


def referenced(reg: Registry) -> set[str]:
    return {v.sha256 for v in reg.search()}


@pytest.fixture
def big_file(tmp_path: Path) -> Path:
    return tiny_file(tmp_path, 7, BIG_ARGS)


def gc_json(home: Path, database_url: str, store: str) -> dict[str, int]:
    done = run_registry(*cli(home, database_url, store), "gc", "--json")
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    figures: dict[str, int] = json.loads(done.stdout)
    return figures


def assert_verified(reg: Registry) -> None:
    """`verify` is clean (it re-hashes the objects in the bucket), and none is missing."""
    assert reg.verify() == []
    assert referenced(reg) <= objects(reg.store.bucket)  # type: ignore[attr-defined]


@pytest.mark.parametrize(("backend", "point"), cases(PUSH_POINTS))
def test_s3_push_killed_at_each_point_leaves_nothing_gc_cannot_clean(
    backend: str, point: str, bucket: str, tmp_path: Path, big_file: Path
) -> None:
    database_url, store, home = (
        fresh_catalog_url(backend, tmp_path),
        f"s3://{bucket}/team",
        tmp_path / "me",
    )
    reg = Registry(home=home, database_url=database_url, store=store)
    reg.push(tiny_file(tmp_path, 1), arch=ARCH, name="tiny", arch_args=ARGS)
    retired = reg.push(tiny_file(tmp_path, 2), arch=ARCH, name="tiny", arch_args=ARGS)
    reg.delete(retired.ref)  # the counter is at 2; v2's object waits for gc
    before, digest = objects(bucket), sha256_of(big_file)

    push = ["push", str(big_file), "--name", "tiny", *BIG_CLI_ARGS]
    killed = run_registry(*cli(home, database_url, store), *push, env={KILL_AT: point})
    assert (killed.returncode, killed.stdout) == (-signal.SIGKILL, ""), killed.stderr

    # What the kill left: the cache's temp file until the blob is placed; a multipart
    # upload while the copy is uploaded; the object (and its cached copy) once it is.
    left, placed = temp_files(home), objects(bucket) - before
    uploading = point == "s3-upload"
    if point in ("push-copy", "push-hashed", "s3-upload", "s3-uploaded"):
        assert len(left) == 1
        assert cached(home).isdisjoint({digest})
    else:
        assert left == [] and digest in cached(home)
    if point == "push-copy":
        assert 0 < left[0].stat().st_size < big_file.stat().st_size  # killed half-way
    assert placed == (
        {digest} if point in ("s3-uploaded", "push-blob-placed", "push-commit") else set()
    )
    assert uploads(bucket) == (["team/sha256/" + digest] if uploading else [])
    assert [v.version for v in reg.versions("tiny")] == [1]
    assert_verified(reg)

    # gc takes the orphan object, v2's and the temp file. A multipart upload younger than
    # its age may be another machine's, still running: it is left (moto dates every upload
    # 2010-11-10, so "younger" is an age of a century here) until it is past its age.
    reg.store.stale_upload = timedelta(days=36500)  # type: ignore[attr-defined]
    figures = reg.gc()
    assert (figures.blobs, figures.temp_files) == (len(placed) + 1, len(left))
    assert uploads(bucket) == (["team/sha256/" + digest] if uploading else [])
    aborted = gc_json(home, database_url, store)  # the default age: a day
    assert (aborted["blobs"], aborted["temp_files"]) == (0, int(uploading))
    assert uploads(bucket) == [] and temp_files(home) == []
    assert objects(bucket) == referenced(reg)

    again = reg.push(big_file, arch=ARCH, name="tiny", arch_args=BIG_ARGS)
    assert (again.version, again.is_new, again.sha256) == (3, True, digest)  # v2 stays retired
    cold = Registry(home=tmp_path / "cold", database_url=database_url, store=store)
    assert sha256_of(cold.pull(again.ref, tmp_path / "back.pth")) == digest  # from the bucket
    assert reg.verify() == [] and objects(bucket) == referenced(reg)
    cold.close()
    reg.close()


@pytest.mark.parametrize(("backend", "point"), cases(["s3-download"]))
def test_cache_fill_killed_half_way_leaves_nothing_gc_cannot_clean(
    backend: str, point: str, bucket: str, tmp_path: Path, big_file: Path
) -> None:
    database_url, store = fresh_catalog_url(backend, tmp_path), f"s3://{bucket}/team"
    pusher = Registry(home=tmp_path / "me", database_url=database_url, store=store)
    version = pusher.push(big_file, arch=ARCH, name="tiny", arch_args=BIG_ARGS)
    home = tmp_path / "cold"  # another machine: a cold cache

    load = ["load", version.ref]  # a load reads through the cache
    killed = run_registry(*cli(home, database_url, store), *load, env={KILL_AT: point})
    assert (killed.returncode, killed.stdout) == (-signal.SIGKILL, ""), killed.stderr
    left = temp_files(home)
    half = left[0].stat().st_size if len(left) == 1 else 0
    assert 0 < half < version.size, left  # one half-filled entry
    assert cached(home) == set()

    reg = Registry(home=home, database_url=database_url, store=store)
    assert_verified(reg)
    reg.load(version.ref)  # the same read, again
    assert cached(home) == {version.sha256}
    figures = gc_json(home, database_url, store)
    assert (figures["blobs"], figures["bytes"], figures["temp_files"]) == (0, half, 1)
    assert temp_files(home) == [] and cached(home) == {version.sha256}
    assert reg.verify() == []
    reg.close()
    pusher.close()


@pytest.mark.parametrize(("backend", "point"), cases(["s3-download"]))
def test_a_pull_killed_mid_download_leaves_two_temp_files_that_are_cleaned(
    backend: str, point: str, bucket: str, tmp_path: Path, big_file: Path
) -> None:
    """A pull writes its file and the cache's copy from one stream: a kill leaves a hidden
    temp file of each, the next pull into that folder removes its own, gc the cache's."""
    database_url, store = fresh_catalog_url(backend, tmp_path), f"s3://{bucket}/team"
    pusher = Registry(home=tmp_path / "me", database_url=database_url, store=store)
    version = pusher.push(big_file, arch=ARCH, name="tiny", arch_args=BIG_ARGS)
    home, out = tmp_path / "cold", tmp_path / "out"
    out.mkdir()

    pull = ["pull", version.ref, "-o", f"{out}/"]
    killed = run_registry(*cli(home, database_url, store), *pull, env={KILL_AT: point})
    assert (killed.returncode, killed.stdout) == (-signal.SIGKILL, ""), killed.stderr
    [partial] = out.iterdir()
    assert partial.name.startswith(".tiny-v1.pth.") and partial.name.endswith(".part")
    [half_fill] = temp_files(home)
    half = half_fill.stat().st_size
    assert 0 < partial.stat().st_size == half < version.size  # the same bytes, in each
    assert cached(home) == set()

    reg = Registry(home=home, database_url=database_url, store=store)
    assert_verified(reg)
    reg.pull(version.ref, out)  # the same pull, again
    assert [p.read_bytes() for p in out.iterdir()] == [big_file.read_bytes()]
    assert cached(home) == {version.sha256}
    figures = gc_json(home, database_url, store)
    assert (figures["blobs"], figures["bytes"], figures["temp_files"]) == (0, half, 1)
    assert temp_files(home) == [] and cached(home) == {version.sha256}
    reg.close()
    pusher.close()


# -- a full disk while filling the cache ----------------------------------------------------


def test_disk_full_while_filling_the_cache_is_one_line_and_leaves_the_cache_valid(
    bucket: str, tmp_path: Path, big_file: Path
) -> None:
    """RLIMIT_FSIZE (test_reliability's SMALL_DISK, 4 MiB) stops the fill of a 20 MB blob."""
    database_url, store = f"sqlite:///{tmp_path / 'catalog.db'}", f"s3://{bucket}/team"
    small = Registry(home=tmp_path / "me", database_url=database_url, store=store)
    small_version = small.push(tiny_file(tmp_path, 1), arch=ARCH, name="small", arch_args=ARGS)
    version = small.push(big_file, arch=ARCH, name="tiny", arch_args=BIG_ARGS)
    home = tmp_path / "cold"
    reg = Registry(home=home, database_url=database_url, store=store)
    reg.load(small_version.ref)  # the cache holds a blob already

    command = [sys.executable, "-c", SMALL_DISK, str(REGISTRY), *cli(home, database_url, store),
               "load", version.ref]  # fmt: skip
    full = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert (full.returncode, full.stdout) == (1, ""), full.stderr
    assert "File too large" in one_error_line(full.stderr)
    assert temp_files(home) == []  # no partial file
    assert cached(home) == {small_version.sha256}  # the cache is as it was, and valid
    assert reg.verify() == []
    assert sha256_of(reg.pull(small_version.ref, tmp_path / "again.pth")) == small_version.sha256
    reg.load(version.ref)  # room again
    assert cached(home) == {small_version.sha256, version.sha256}
    reg.close()
    small.close()
