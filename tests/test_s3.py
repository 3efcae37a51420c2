"""The S3 store against a real S3-protocol server on loopback (moto's ThreadedMotoServer).

Every call goes over HTTP through boto3 as it would to AWS or MinIO; nothing is
patched in-process. Credentials and endpoint come from the standard AWS
environment variables, as a team's machines would set them.
"""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from helpers import TINY_ARCH, TINY_ARGS, moto_endpoint, outputs_equal
from sqlalchemy import text
from torch import nn

from registry import IntegrityError, Registry, StorageError, db
from registry.digests import Check
from registry.records import Reclaimed

pytest.importorskip("boto3")
moto_server = pytest.importorskip("moto.server")

ARCH, ARGS = TINY_ARCH, TINY_ARGS  # as other suites import them
SECRET = "s3cr3t-never-printed"


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with moto_endpoint() as url:
        yield url


@pytest.fixture
def aws(endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "registry-test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    return endpoint


@pytest.fixture
def bucket(aws: str) -> str:
    import boto3

    name = f"models-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


@pytest.fixture
def team(bucket: str, tmp_path: Path, database_url: str) -> Iterator[Registry]:
    """A registry on the bucket, under a key prefix, with its own cache; both catalogs."""
    reg = Registry(home=tmp_path / "me", store=f"s3://{bucket}/team", database_url=database_url)
    yield reg
    reg.close()


def objects(bucket: str) -> dict[str, int]:
    import boto3

    listing = boto3.client("s3").list_objects_v2(Bucket=bucket)
    return {item["Key"]: item["Size"] for item in listing.get("Contents", [])}


def test_push_uploads_one_object_per_blob_and_everything_reads_back(
    team: Registry, bucket: str, tiny_model: nn.Module, tmp_path: Path
) -> None:
    path = tmp_path / "tiny.pt"
    torch.save(tiny_model.state_dict(), path)
    version = team.push(path, arch=ARCH, name="tiny", arch_args=ARGS)
    assert objects(bucket) == {f"team/sha256/{version.sha256}": version.size}
    assert team.pull(version.ref, tmp_path / "back.pt").read_bytes() == path.read_bytes()
    assert outputs_equal(tiny_model, team.load(version.ref))
    assert team.verify() == []

    elsewhere = Registry(
        database_url=team.settings.database_url, store=team.store.location, home=tmp_path / "b"
    )  # another machine: same catalog and bucket, an empty cache
    assert outputs_equal(tiny_model, elsewhere.load(version.ref))
    assert (tmp_path / "b" / "cache" / "sha256" / version.sha256[:2] / version.sha256).is_file()
    elsewhere.close()


def test_an_object_in_the_bucket_is_not_uploaded_again(
    team: Registry, bucket: str, tiny_model: nn.Module
) -> None:
    import boto3

    first = team.push(tiny_model, arch=ARCH, name="tiny", arch_args=ARGS)
    key = f"team/sha256/{first.sha256}"
    s3 = boto3.client("s3")
    s3.copy_object(  # mark the object: an upload of the same key would replace the mark
        Bucket=bucket, Key=key, CopySource={"Bucket": bucket, "Key": key},
        Metadata={"mark": "first"}, MetadataDirective="REPLACE",
    )  # fmt: skip
    team.push(tiny_model, arch=ARCH, name="copy", arch_args=ARGS)
    assert s3.head_object(Bucket=bucket, Key=key)["Metadata"] == {"mark": "first"}


def damage(cached: Path) -> bytes:
    """Flip a byte in the middle of a cached blob; return its good bytes."""
    good = cached.read_bytes()
    data = bytearray(good)
    data[len(data) // 2] ^= 0xFF
    cached.chmod(0o644)
    cached.write_bytes(bytes(data))
    return good


@pytest.mark.parametrize("read", ["load", "pull"])
def test_the_read_that_finds_a_damaged_cached_copy_fetches_it_again(
    team: Registry, tiny_model: nn.Module, tmp_path: Path, read: str
) -> None:
    """Only bytes that match the catalog's digest are used, and the cache heals."""
    version = team.push(tiny_model, arch=ARCH, name="tiny", arch_args=ARGS)
    cached = team.settings.cache / "sha256" / version.sha256[:2] / version.sha256
    good = damage(cached)
    if read == "load":
        assert outputs_equal(tiny_model, team.load(version.ref))
    else:
        assert team.pull(version.ref, tmp_path / "out.pt").read_bytes() == good
    assert cached.read_bytes() == good
    assert team.verify() == []  # the bucket itself was never damaged


def test_a_damaged_cached_copy_of_a_tampered_object_is_refused(
    team: Registry, bucket: str, tiny_model: nn.Module
) -> None:
    """The fresh copy must match too: a tampered object is refused, and nothing is cached."""
    import boto3

    version = team.push(tiny_model, arch=ARCH, name="tiny", arch_args=ARGS)
    cached = team.settings.cache / "sha256" / version.sha256[:2] / version.sha256
    damage(cached)
    boto3.client("s3").put_object(
        Bucket=bucket, Key=f"team/sha256/{version.sha256}", Body=b"not the checkpoint"
    )
    with pytest.raises(IntegrityError):
        team.load(version.ref)
    assert not cached.exists()


def test_a_warm_cache_loads_while_the_bucket_is_unreachable(
    team: Registry, tiny_model: nn.Module, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    version = team.push(tiny_model, arch=ARCH, name="tiny", arch_args=ARGS)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed_port()}")
    offline = Registry(
        home=tmp_path / "me", store=team.store.location, database_url=team.settings.database_url
    )
    assert outputs_equal(tiny_model, offline.load(version.ref))
    assert offline.pull(version.ref, tmp_path / "x.pt").stat().st_size == version.size
    assert [v.ref for v in offline.search()] == [version.ref]  # ls needs no store
    offline.close()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_missing_bucket_is_one_line_naming_bucket_and_endpoint(
    aws: str, tmp_path: Path, tiny_model: nn.Module
) -> None:
    reg = Registry(home=tmp_path / "me", store="s3://no-such-bucket-here/x")
    with pytest.raises(StorageError) as caught:
        reg.push(tiny_model, arch=ARCH, name="tiny", arch_args=ARGS)
    host_port = aws.removeprefix("http://")
    assert str(caught.value) == (
        f"store s3://no-such-bucket-here/x/ at {host_port}: "
        "bucket 'no-such-bucket-here' does not exist"
    )
    assert reg.search() == []
    reg.close()


def test_an_unreachable_endpoint_is_one_line_and_nothing_recorded(
    aws: str, tmp_path: Path, tiny_model: nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = closed_port()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    reg = Registry(home=tmp_path / "me", store="s3://models/x")
    with pytest.raises(StorageError) as caught:
        reg.push(tiny_model, arch=ARCH, name="tiny", arch_args=ARGS)
    message = str(caught.value)
    assert message.startswith(f"store s3://models/x/ at 127.0.0.1:{port}: ")
    assert "\n" not in message and SECRET not in message
    assert reg.search() == []
    assert SECRET not in repr(reg)
    reg.close()


def test_cli_errors_name_the_bucket_and_print_no_secret(
    aws: str, tmp_path: Path, small_file
) -> None:
    from click.testing import CliRunner

    from registry.cli import cli

    result = CliRunner().invoke(
        cli,
        ["--home", str(tmp_path / "me"), "--store", "s3://absent-bucket", "push",
         str(small_file), "--arch", "shufflenet_v2_x0_5", "--arg", "num_classes=10"],
    )  # fmt: skip
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: store s3://absent-bucket/ at 127.0.0.1:")
    assert result.stderr.count("\n") == 1 and SECRET not in result.stderr
    listed = CliRunner().invoke(
        cli, ["--home", str(tmp_path / "me"), "--store", "s3://absent-bucket", "ls"]
    )
    assert (listed.exit_code, listed.stdout) == (
        0,
        "NAME  VERSIONS  LATEST  SIZE  UPDATED  ALIASES\n",
    )


def test_gc_deletes_unreferenced_objects_and_stale_multipart_uploads(
    team: Registry, bucket: str, tiny_model: nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    import boto3

    from registry.stores import s3 as s3store

    kept = team.push(tiny_model, arch=ARCH, name="kept", arch_args=ARGS)
    tiny_model.head.bias.data += 1
    gone = team.push(tiny_model, arch=ARCH, name="gone", arch_args=ARGS)
    team.delete(gone.ref)
    client = boto3.client("s3")
    client.create_multipart_upload(Bucket=bucket, Key="team/sha256/" + "a" * 64)
    monkeypatch.setattr(s3store, "STALE_UPLOAD", s3store.timedelta(0))
    reclaimed = team.gc()
    assert (reclaimed.blobs, reclaimed.temp_files) == (1, 1)
    assert list(objects(bucket)) == [f"team/sha256/{kept.sha256}"]
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert team.verify() == []


def test_cache_prune_removes_least_recently_used_first(
    team: Registry, tiny_model: nn.Module
) -> None:
    old = team.push(tiny_model, arch=ARCH, name="old", arch_args=ARGS)
    tiny_model.head.bias.data += 1
    new = team.push(tiny_model, arch=ARCH, name="new", arch_args=ARGS)
    old_cached = team.settings.cache / "sha256" / old.sha256[:2] / old.sha256
    os.utime(old_cached, (1, 1))  # used long ago
    assert team.prune_cache(max_size=new.size, dry_run=True).blobs == 1
    assert old_cached.exists()
    assert (team.prune_cache(max_size=new.size).blobs, old_cached.exists()) == (1, False)
    assert outputs_equal(tiny_model, team.load(new.ref))
    team.load(old.ref)  # fetched again
    assert team.prune_cache().blobs == 2


def test_cache_prune_reclaims_the_temp_file_of_a_fill_whose_process_died(
    team: Registry, tiny_model: nn.Module
) -> None:
    kept = team.push(tiny_model, arch=ARCH, name="kept", arch_args=ARGS)
    tmp = team.settings.cache / "tmp"
    tmp.mkdir(exist_ok=True)
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid no process has any more, as a killed fill leaves
    half = tmp / f"{dead.pid}@{socket.gethostname()}@fill.part"
    half.write_bytes(b"x" * 1000)
    running = tmp / f"{os.getpid()}@{socket.gethostname()}@fill.part"  # this process: alive
    running.write_bytes(b"y" * 10)
    roomy = 100 * kept.size  # no blob is pruned
    assert team.prune_cache(roomy, dry_run=True) == Reclaimed(blobs=0, bytes=1000, temp_files=1)
    assert half.exists()
    assert team.prune_cache(roomy) == Reclaimed(blobs=0, bytes=1000, temp_files=1)
    assert sorted(p.name for p in tmp.iterdir()) == [running.name]
    running.unlink()
    assert outputs_equal(tiny_model, team.load(kept.ref))


def test_verify_records_blake3_of_an_old_object_from_its_checked_cached_copy(
    team: Registry, tiny_model: nn.Module
) -> None:
    from registry.digests import blake3_of

    version = team.push(tiny_model, arch=ARCH, name="old", arch_args=ARGS)
    with db.session(team.engine, write=True) as s:  # as a blob recorded before schema 0004
        s.execute(text("UPDATE blobs SET blake3 = NULL WHERE sha256 = :d"), {"d": version.sha256})
    assert team.catalog.verification(version.sha256) is None  # reads fall back to SHA-256
    assert team.verify() == []
    cached = team.settings.cache / "sha256" / version.sha256[:2] / version.sha256
    assert team.catalog.verification(version.sha256) == Check(blake3=blake3_of(cached))


def test_cache_prune_on_a_local_store_says_there_is_none(run) -> None:
    code, out, err = run("cache", "prune")
    assert (code, out) == (1, "")
    assert err.startswith("Error: store ") and err.endswith(
        "is a local folder: it has no cache to prune\n"
    )


def test_a_tampered_object_is_refused_on_pull_and_load(
    team: Registry, bucket: str, tiny_model: nn.Module, tmp_path: Path
) -> None:
    import boto3

    version = team.push(tiny_model, arch=ARCH, name="tiny", arch_args=ARGS)
    boto3.client("s3").put_object(
        Bucket=bucket, Key=f"team/sha256/{version.sha256}", Body=b"not the checkpoint"
    )
    cold = Registry(
        home=tmp_path / "cold", store=team.store.location, database_url=team.settings.database_url
    )  # a machine whose cache never saw the good bytes
    with pytest.raises(IntegrityError):
        cold.pull(version.ref, tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()
    with pytest.raises(IntegrityError):
        cold.load(version.ref)
    assert [p.ref for p in team.verify()] == [version.ref]  # verify reads the bucket itself
    cold.close()


def test_bundles_move_between_s3_and_local_stores(
    team: Registry, tiny_model: nn.Module, tmp_path: Path
) -> None:
    version = team.push(tiny_model, arch=ARCH, name="tiny", arch_args=ARGS)
    team.export_bundle([version.ref], tmp_path / "from-s3.tar")
    local = Registry(home=tmp_path / "local")
    [imported] = local.import_bundle(tmp_path / "from-s3.tar")
    assert outputs_equal(tiny_model, local.load(imported.ref))
    tiny_model.head.bias.data += 1
    local.push(tiny_model, arch=ARCH, name="tiny", arch_args=ARGS)
    local.export_bundle(["tiny@v2"], tmp_path / "from-local.tar")
    [back] = team.import_bundle(tmp_path / "from-local.tar")
    assert (back.ref, back.is_new) == ("tiny@v2", True)
    assert outputs_equal(tiny_model, team.load(back.ref))
    assert team.verify() == []
    local.close()


@pytest.mark.timeout(120)
def test_a_multipart_sized_blob_uploads_and_fetches(team: Registry, tmp_path: Path) -> None:
    """Above boto3's 8 MB threshold: a multipart upload, and a fetch into a cold cache."""
    big = nn.Linear(2048, 2560)  # 21 MB of float32
    version = team.push(big, arch="torch.nn:Linear", name="big",
                        arch_args={"in_features": 2048, "out_features": 2560})  # fmt: skip
    cold = Registry(
        home=tmp_path / "cold", store=team.store.location, database_url=team.settings.database_url
    )
    loaded = cold.load(version.ref)
    assert torch.equal(loaded.weight, big.weight)
    cold.close()
