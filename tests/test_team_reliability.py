"""Team-scale reliability (issue #15): machines that share one catalog and one store race.

A "machine" is an OS process with its own home (so its own S3 cache) that
shares the catalog (PostgreSQL, or one SQLite file) and the store (a bucket
on a moto server over HTTP on loopback, or one folder) with the others.
Nothing serialises the machines but the catalog's locks. Workers are started
by test_reliability's forkserver and released together by a barrier.
docs/reliability.md maps each guarantee to its test here.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import fresh_catalog_url
from helpers import TINY_ARCH, TINY_ARGS, tiny_file
from test_reliability import mp_context, run_processes, sha256_of
from test_s3 import aws, bucket, endpoint

from registry import Registry

pytest.importorskip("boto3")
pytest.importorskip("moto.server")

__all__ = ["aws", "bucket", "endpoint"]  # test_s3's fixtures: one moto server for this module

SHORT_ROUNDS = 20
LONG_ROUNDS = 200


def _environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(("AWS_", "REGISTRY_"))}


def _machine(environment: dict[str, str], home: str, database_url: str, store: str) -> Registry:
    # A forkserver started by an earlier test has an older environment: set this one's.
    os.environ.update(environment)
    return Registry(home=home, database_url=database_url, store=store)


def _push_remove_push(
    environment: dict[str, str], home: str, database_url: str, store: str, path: str, rounds: int,
    done: Any,
) -> dict[str, Any]:  # fmt: skip
    """Machine A: push X, check it is stored and verifies, remove the version; again and again.

    Every removal makes X's blob garbage, and machine B's gc may be deleting it
    while the next push claims the same bytes. The last push is kept. Returns the
    number each push got, how many versions verified and how many were removed.
    """
    reg = _machine(environment, home, database_url, store)
    digest = sha256_of(Path(path))
    numbers: list[int] = []
    verified = removed = 0
    started = time.monotonic()
    try:
        for number in range(1, rounds + 2):
            version = reg.push(path, arch=TINY_ARCH, name="x", arch_args=TINY_ARGS)
            numbers.append(version.version)
            assert (version.version, version.sha256, version.is_new) == (number, digest, True)
            assert reg.store.exists(digest), f"v{number}: its blob is not in the store"
            assert reg.verify(version.ref) == [], f"v{number} does not verify"
            verified += 1
            if number <= rounds:
                reg.delete(version.ref)
                removed += 1
    finally:
        done.value = 1
        reg.close()
    return {
        "seconds": time.monotonic() - started, "numbers": numbers, "verified": verified,
        "removed": removed,
    }  # fmt: skip


def _collect(
    environment: dict[str, str], home: str, database_url: str, store: str, done: Any
) -> dict[str, int]:
    """Machine B: gc in a loop until machine A is done; how often, and the blobs it deleted."""
    reg = _machine(environment, home, database_url, store)
    rounds = blobs = 0
    try:
        while not done.value or rounds == 0:
            blobs += reg.gc().blobs
            rounds += 1
    finally:
        reg.close()
    return {"gc_rounds": rounds, "blobs": blobs}


def _store_for(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if kind == "folder":
        return str(tmp_path / "shared-folder")
    name = request.getfixturevalue("bucket")
    return f"s3://{name}/team"


def _leftovers(reg: Registry, homes: list[Path]) -> list[str]:
    """Temp files in the shared folder or in any machine's cache, and open multipart uploads."""
    folders = [home / "cache" / "tmp" for home in homes]
    store = reg.store
    if hasattr(store, "bucket"):
        import boto3

        uploads = boto3.client("s3").list_multipart_uploads(Bucket=store.bucket)
        left = [f"upload {u['Key']}" for u in uploads.get("Uploads", [])]
    else:
        folders.append(Path(store.location) / "tmp")
        left = []
    return left + [str(p) for folder in folders if folder.is_dir() for p in folder.iterdir()]


def _race(
    kind: str, backend: str, rounds: int, tmp_path: Path, request: pytest.FixtureRequest
) -> dict[str, Any]:
    database_url = fresh_catalog_url(backend, tmp_path)
    store = _store_for(kind, tmp_path, request)
    homes = [tmp_path / "machine-a", tmp_path / "machine-b"]
    checker = Registry(home=tmp_path / "checker", database_url=database_url, store=store)
    checker.models()  # the catalog exists: a concurrent first use is test_reliability's
    path = str(tiny_file(tmp_path, 1))
    done, env = mp_context().Value("i", 0), _environment()
    started = time.monotonic()
    (pushed, collected) = run_processes(
        [
            (_push_remove_push, (env, str(homes[0]), database_url, store, path, rounds, done)),
            (_collect, (env, str(homes[1]), database_url, store, done)),
        ],
        timeout=60 + 2 * rounds,
    )
    seconds = time.monotonic() - started
    # Every push took the next number and verified, and every round removed its version;
    # gc can have deleted X at most once for each time a removal made it garbage.
    assert pushed["numbers"] == list(range(1, rounds + 2)), pushed["numbers"]
    assert (pushed["verified"], pushed["removed"]) == (rounds + 1, rounds)
    assert 0 <= collected["blobs"] <= rounds, collected
    # Nothing referenced is missing, and no number was reused.
    assert [v.version for v in checker.versions("x")] == [rounds + 1]
    referenced = {v.sha256 for v in checker.search()}
    assert referenced == {sha256_of(Path(path))}
    assert checker.verify() == []
    # The race left exactly X: the last push re-placed it, and nothing else was ever stored.
    assert set(checker.store.digests()) == referenced
    assert checker.gc().blobs == 0
    assert set(checker.store.digests()) == referenced
    # Nothing temporary is left either.
    assert _leftovers(checker, homes) == []
    checker.close()
    return {"seconds": seconds, **pushed, **collected}


# A team's set-up (a bucket and PostgreSQL) and a shared folder with a shared SQLite file;
# the long runs add the shared folder on PostgreSQL.
SHORT_CASES = [("s3", "postgresql"), ("folder", "sqlite")]
LONG_CASES = [*SHORT_CASES, ("folder", "postgresql")]


@pytest.mark.parametrize(("kind", "backend"), SHORT_CASES)
def test_gc_on_one_machine_while_another_pushes_the_same_bytes(
    kind: str, backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The short run: 20 rounds of push, check, remove against a gc loop, every one checked.

    Whether gc took X between two pushes depends on timing: only the long run asks that.
    """
    figures = _race(kind, backend, SHORT_ROUNDS, tmp_path, request)
    print(f"{kind} on {backend}: {SHORT_ROUNDS} rounds: {figures}")  # _race checked them


@pytest.mark.long
@pytest.mark.parametrize(("kind", "backend"), LONG_CASES)
def test_gc_on_one_machine_while_another_pushes_the_same_bytes_200_times(
    kind: str, backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The long run: 200 rounds, every one checked; gc must have taken X at least once."""
    figures = _race(kind, backend, LONG_ROUNDS, tmp_path, request)
    print(f"{kind} on {backend}: {LONG_ROUNDS} rounds: {figures}")
    assert figures["blobs"] >= 1  # the race really ran: gc deleted X between pushes


def test_gc_drops_a_cached_copy_of_a_blob_another_machine_collected(
    bucket: str, tmp_path: Path
) -> None:
    """Machine B's gc deletes the object; machine A's next gc drops A's cached copy of it."""
    database_url, store = fresh_catalog_url("sqlite", tmp_path), f"s3://{bucket}/team"
    a = Registry(home=tmp_path / "a", database_url=database_url, store=store)
    b = Registry(home=tmp_path / "b", database_url=database_url, store=store)
    kept = a.push(tiny_file(tmp_path, 1), arch=TINY_ARCH, name="x", arch_args=TINY_ARGS)
    gone = a.push(tiny_file(tmp_path, 2), arch=TINY_ARCH, name="x", arch_args=TINY_ARGS)
    a.delete(gone.ref)
    cache = tmp_path / "a" / "cache" / "sha256"
    assert {p.name for p in cache.glob("??/*")} == {kept.sha256, gone.sha256}
    assert (b.gc().blobs, b.store.digests()) == (1, [kept.sha256])
    assert a.gc(dry_run=True).blobs == 1
    reclaimed = a.gc()
    assert (reclaimed.blobs, reclaimed.bytes) == (1, gone.size)
    assert {p.name for p in cache.glob("??/*")} == {kept.sha256}  # only what is referenced
    assert a.verify() == [] and a.gc().blobs == 0
    a.close()
    b.close()
