"""Folder versions where they travel: bundles, `registry serve`, `--remote` and the S3 store.

Each test moves a sharded nn.Linear(4, 3) folder (tests/test_folder_push.py's
`sharded`) and checks that what arrives is the folder pushed, bit-exact and
verified, and that damaged bytes are refused with nothing recorded or sent.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from helpers import Server, moto_endpoint, same_tensors
from test_folder_push import LINEAR, sharded, tree

from registry import (
    AccessDeniedError,
    BundleError,
    IntegrityError,
    ReadOnlyError,
    Registry,
    folders,
)
from registry.records import FolderFile

SHARD = "model-00002-of-00002.safetensors"


def expected_linear() -> torch.nn.Linear:
    torch.manual_seed(0)
    return torch.nn.Linear(4, 3)


def tar_members(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        found = {}
        for member in archive:
            extracted = archive.extractfile(member)
            assert member.isfile() and extracted is not None
            found[member.name] = extracted.read()
        return found


def stored_files(reg: Registry) -> list[Path]:
    return [p for p in Path(reg.store.location).rglob("*") if p.is_file()]


# -- export / import ---------------------------------------------------------------------------


@pytest.fixture
def target(tmp_path: Path) -> Iterator[Registry]:
    """The registry bundles are imported into (SQLite; the source runs on both backends)."""
    registry = Registry(home=tmp_path / "target")
    yield registry
    registry.close()


def folder_bundle(reg: Registry, tmp_path: Path) -> tuple[Path, Path]:
    """A sharded folder pushed as `linear@v1` and exported: (the folder, the bundle)."""
    folder = sharded(tmp_path / "linear")
    reg.push(folder, **LINEAR)
    bundle = tmp_path / "linear.tar"
    assert [v.ref for v in reg.export_bundle(["linear@v1"], bundle)] == ["linear@v1"]
    return folder, bundle


def test_a_bundle_carries_each_file_and_the_file_list_once(reg: Registry, tmp_path: Path) -> None:
    folder = sharded(tmp_path / "linear")
    first = reg.push(folder, **LINEAR)
    (folder / "docs" / "README.md").write_text("changed\n")  # v2 shares both shards with v1
    second = reg.push(folder, **LINEAR)
    bundle = tmp_path / "both.tar"
    reg.export_bundle(["linear@v1", "linear@v2"], bundle)
    with tarfile.open(bundle) as archive:
        names = archive.getnames()
        manifest = json.loads(archive.extractfile("manifest.json").read())  # type: ignore[union-attr]
        members = {n: archive.extractfile(n).read() for n in names[1:]}  # type: ignore[union-attr]
    assert len(names) == len(set(names))
    wanted = {v.sha256 for v in (first, second)}
    wanted |= {f.sha256 for v in (first, second) for f in v.files or ()}
    assert {n.removeprefix("blobs/sha256/") for n in names[1:]} == wanted
    for name, data in members.items():
        assert hashlib.sha256(data).hexdigest() == name.removeprefix("blobs/sha256/")
    assert members[f"blobs/sha256/{first.sha256}"] == folders.file_list(first.files or ())
    entries = {v["ref"]: v for v in manifest["versions"]}
    assert entries["linear@v1"]["files"] == first.to_json()["files"]


def test_a_folder_version_imports_bit_exact_and_verifies(
    reg: Registry, target: Registry, tmp_path: Path
) -> None:
    folder, bundle = folder_bundle(reg, tmp_path)
    source = reg.get("linear@v1")
    [imported] = target.import_bundle(bundle)
    assert (imported.ref, imported.is_new, imported.format) == ("linear@v1", True, "sharded")
    assert (imported.sha256, imported.files, imported.size) == (
        source.sha256,
        source.files,
        source.size,
    )
    assert tree(target.pull("linear@v1", tmp_path / "back")) == tree(folder)
    assert target.verify() == []
    assert target.tensors("linear@v1") == reg.tensors("linear@v1")  # computed from the shards
    model = target.load("linear@v1")
    assert same_tensors(model.state_dict(), expected_linear().state_dict())
    [again] = target.import_bundle(bundle)
    assert (again.ref, again.is_new) == ("linear@v1", False)


def rebuilt(bundle: Path, change) -> bytes:
    """The bundle's members, each passed through `change(info, data)` -> a list of members."""
    out = io.BytesIO()
    with tarfile.open(bundle) as src, tarfile.open(fileobj=out, mode="w") as dst:
        for info in src.getmembers():
            extracted = src.extractfile(info)
            assert extracted is not None
            for new_info, new_data in change(info, extracted.read()):
                new_info.size = len(new_data)
                dst.addfile(new_info, io.BytesIO(new_data))
    return out.getvalue()


def shard_digest(reg: Registry) -> str:
    files = reg.get("linear@v1").files or ()
    return next(f.sha256 for f in files if f.path == SHARD)


def test_a_tampered_file_blob_is_refused_with_nothing_recorded(
    reg: Registry, target: Registry, tmp_path: Path
) -> None:
    _, bundle = folder_bundle(reg, tmp_path)
    name = f"blobs/sha256/{shard_digest(reg)}"

    def flip(info: tarfile.TarInfo, data: bytes) -> list[tuple[tarfile.TarInfo, bytes]]:
        return [(info, data[:-1] + bytes([data[-1] ^ 1]) if info.name == name else data)]

    hostile = tmp_path / "hostile.tar"
    hostile.write_bytes(rebuilt(bundle, flip))
    with pytest.raises(BundleError, match="does not hash to its name"):
        target.import_bundle(hostile)
    assert target.search() == [] and stored_files(target) == []


def test_a_bundle_lacking_a_file_blob_is_refused(
    reg: Registry, target: Registry, tmp_path: Path
) -> None:
    _, bundle = folder_bundle(reg, tmp_path)
    name = f"blobs/sha256/{shard_digest(reg)}"

    def drop(info: tarfile.TarInfo, data: bytes) -> list[tuple[tarfile.TarInfo, bytes]]:
        return [] if info.name == name else [(info, data)]

    hostile = tmp_path / "hostile.tar"
    hostile.write_bytes(rebuilt(bundle, drop))
    with pytest.raises(BundleError, match=f"lacks blob {shard_digest(reg)}"):
        target.import_bundle(hostile)
    assert target.search() == [] and stored_files(target) == []


def test_a_consistent_lie_about_a_file_size_is_refused(
    reg: Registry, target: Registry, tmp_path: Path
) -> None:
    """The manifest, the file list and its digest agree on a size the blob does not have."""
    _, bundle = folder_bundle(reg, tmp_path)
    old_list = folders.file_list(reg.get("linear@v1").files or ())
    state: dict[str, bytes] = {}

    def lie(info: tarfile.TarInfo, data: bytes) -> list[tuple[tarfile.TarInfo, bytes]]:
        if info.name == "manifest.json":
            manifest = json.loads(data)
            entry = manifest["versions"][0]
            for file in entry["files"]:
                if file["path"] == SHARD:
                    file["size"] += 1
            entry["size"] += 1
            listed = [FolderFile(**f) for f in entry["files"]]
            state["list"] = folders.file_list(listed)
            entry["sha256"] = hashlib.sha256(state["list"]).hexdigest()
            return [(info, json.dumps(manifest).encode())]
        if data == old_list:
            renamed = tarfile.TarInfo(f"blobs/sha256/{hashlib.sha256(state['list']).hexdigest()}")
            return [(renamed, state["list"])]
        return [(info, data)]

    hostile = tmp_path / "hostile.tar"
    hostile.write_bytes(rebuilt(bundle, lie))
    with pytest.raises(BundleError, match="its manifest says"):
        target.import_bundle(hostile)
    assert target.search() == [] and stored_files(target) == []


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda v: v["files"].reverse(), "not sorted by path"),
        (lambda v: v["files"][0].update(path="../evil"), "not a plain relative path"),
        (lambda v: v["files"][0].update(sha256="0" * 64), "not the digest of the file list"),
        (lambda v: v.update(files=None), "without files"),
    ],
)
def test_a_hostile_file_list_is_refused(
    reg: Registry, target: Registry, tmp_path: Path, edit, expected: str
) -> None:
    _, bundle = folder_bundle(reg, tmp_path)

    def change(info: tarfile.TarInfo, data: bytes) -> list[tuple[tarfile.TarInfo, bytes]]:
        if info.name != "manifest.json":
            return [(info, data)]
        manifest = json.loads(data)
        edit(manifest["versions"][0])
        return [(info, json.dumps(manifest).encode())]

    hostile = tmp_path / "hostile.tar"
    hostile.write_bytes(rebuilt(bundle, change))
    with pytest.raises(BundleError, match=expected):
        target.import_bundle(hostile)
    assert target.search() == [] and stored_files(target) == []


def test_a_plain_folder_imports_with_no_manifest(
    reg: Registry, target: Registry, tmp_path: Path
) -> None:
    folder = tmp_path / "notes"
    (folder / "a").mkdir(parents=True)
    (folder / "a" / "b.txt").write_bytes(b"b")
    (folder / "c.txt").write_bytes(b"b")  # the same bytes as a/b.txt: one blob
    reg.push(folder)
    reg.export_bundle(["notes@v1"], tmp_path / "notes.tar")
    [imported] = target.import_bundle(tmp_path / "notes.tar")
    assert imported.format == "folder" and target.tensors("notes@v1") == []
    assert tree(target.pull("notes@v1", tmp_path / "back")) == tree(folder)


# -- registry serve ----------------------------------------------------------------------------

TOKEN = "folder-t0ken"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Server]:
    """team/linear@v1 (a sharded folder) and single@v1 (one file), served with a token."""
    home = tmp_path_factory.mktemp("served")
    reg = Registry(home=home)
    folder = sharded(home.parent / "team-linear")
    (folder / "docs" / "notes @ 50%.txt").write_text("odd name\n")
    reg.push(folder, name="team/linear", **LINEAR)
    torch.manual_seed(0)
    single = home.parent / "single.pth"
    torch.save(torch.nn.Linear(4, 3).state_dict(), single)
    reg.push(single, name="single", **LINEAR)
    reg.close()
    server = Server(home, "--token", TOKEN)
    yield server
    server.stop()


@pytest.fixture
def http(served: Server) -> Iterator[object]:
    httpx = pytest.importorskip("httpx")
    with httpx.Client(base_url=served.url, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        yield c


def source_folder(served: Server) -> Path:
    return served.home.parent / "team-linear"


def test_the_files_of_a_folder_version_are_served_as_a_tar(served: Server, http) -> None:
    response = http.get("/api/files/team/linear@v1")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/x-tar"
    assert 'filename="linear-v1.tar"' in response.headers["content-disposition"]
    assert int(response.headers["content-length"]) == len(response.content)
    assert tar_members(response.content) == tree(source_folder(served))
    with Registry(home=served.home) as reg:  # the tar `pull -o -` writes, byte for byte
        sink = io.BytesIO()
        reg.write_to("team/linear@v1", sink)
    assert response.content == sink.getvalue()
    head = http.head("/api/files/team/linear@v1")
    assert head.status_code == 200 and head.headers["content-length"] == str(len(sink.getvalue()))


def test_one_file_of_a_folder_version_is_served_with_range(served: Server, http) -> None:
    from urllib.parse import quote

    expected = tree(source_folder(served))
    for path, data in expected.items():
        response = http.get(f"/api/files/team/linear@v1/{quote(path)}")
        assert response.status_code == 200, (path, response.text)
        assert response.content == data
        assert response.headers["etag"] == f'"{hashlib.sha256(data).hexdigest()}"'
    shard = expected[SHARD]
    part = http.get(f"/api/files/team/linear@v1/{SHARD}", headers={"Range": "bytes=10-"})
    assert part.status_code == 206 and part.content == shard[10:]
    latest = http.get(f"/api/files/team/linear@latest/{SHARD}")
    assert latest.content == shard


def test_a_missing_file_path_or_a_path_of_a_single_file_is_not_found(http) -> None:
    for path in (
        "/api/files/team/linear@v1/nope.bin",
        "/api/files/team/linear@v1/docs",
        "/api/files/single@v1/weights.bin",
    ):
        response = http.get(path)
        assert response.status_code == 404, path
        assert "not found" in response.json()["error"]
    assert http.get("/api/files/team/linear@v9").status_code == 404
    for hostile in ("%2e%2e/%2e%2e/etc/passwd", "docs/%2e%2e/%2e%2e/x", "docs//README.md", "a%00b"):
        response = http.get(f"/api/files/team/linear@v1/{hostile}")
        assert response.status_code == 400, hostile
        assert "not a plain relative path" in response.json()["error"]
    assert http.get("/api/files/single@v1").status_code == 200  # one file, as before


def test_the_version_page_lists_its_files(served: Server, http) -> None:
    page = http.get("/refs/team/linear@v1")
    assert page.status_code == 200
    assert 'id="files"' in page.text
    with Registry(home=served.home) as reg:
        for file in reg.get("team/linear@v1").files or ():
            assert file.sha256 in page.text
    assert "/api/files/team/linear@v1/docs/README.md" in page.text
    assert "notes @ 50%.txt" in page.text  # shown as text, linked quoted
    assert "/api/files/team/linear@v1/docs/notes%20@%2050%25.txt" in page.text
    assert "linear-v1.tar" in page.text
    single = http.get("/refs/single@v1")
    assert single.status_code == 200 and 'id="files"' not in single.text


def test_a_damaged_file_is_refused_before_a_byte_is_sent(tmp_path: Path, models_dir: Path) -> None:
    httpx = pytest.importorskip("httpx")
    home = tmp_path / "damaged"
    with Registry(home=home) as reg:
        version = reg.push(sharded(tmp_path / "linear"), **LINEAR)
        digest = next(f.sha256 for f in version.files or () if f.path == SHARD)
        blob = reg.store.path(digest)
    blob.chmod(0o644)
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    server = Server(home)
    try:
        for path in ("/api/files/linear@v1", f"/api/files/linear@v1/{SHARD}"):
            response = httpx.get(server.url + path)
            assert response.status_code == 502, path
            assert "failed verification" in response.json()["error"]
        assert httpx.get(server.url + "/api/files/linear@v1/docs/README.md").status_code == 200
    finally:
        server.stop()


# -- --remote ----------------------------------------------------------------------------------


@pytest.fixture
def remote(served: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Registry]:
    pytest.importorskip("httpx")
    monkeypatch.delenv("REGISTRY_REMOTE", raising=False)
    reg = Registry(home=tmp_path / "client", remote=served.url, token=TOKEN)
    yield reg
    reg.close()


def test_a_folder_version_reads_through_the_server(
    served: Server, remote: Registry, tmp_path: Path
) -> None:
    with Registry(home=served.home) as local:
        here = local.get("team/linear@v1")
        tensors = local.tensors("team/linear@v1")
    version = remote.get("team/linear@v1")
    assert version == here and version.files is not None
    shown = [(t.name, t.dtype, t.shape) for t in tensors]  # the API sends no digests
    assert [(t.name, t.dtype, t.shape) for t in remote.tensors("team/linear@v1")] == shown
    expected = expected_linear().state_dict()
    assert same_tensors(remote.state_dict("team/linear@v1"), expected)
    model = remote.load("team/linear@v1")
    assert not model.training and same_tensors(model.state_dict(), expected)
    pulled = remote.pull("team/linear@v1", tmp_path / "pulled")
    assert tree(pulled) == tree(source_folder(served))
    sink = io.BytesIO()
    remote.write_to("team/linear@v1", sink)
    assert tar_members(sink.getvalue()) == tree(source_folder(served))
    cache = tmp_path / "client" / "cache"
    cached = {p.name for p in cache.rglob("*") if p.is_file() and len(p.name) == 64}
    assert cached == {f.sha256 for f in version.files}  # each file once, by its digest


def test_a_damaged_cached_file_is_fetched_again(
    served: Server, remote: Registry, tmp_path: Path
) -> None:
    version = remote.get("team/linear@v1")
    remote.state_dict("team/linear@v1")
    digest = next(f.sha256 for f in version.files or () if f.path == SHARD)
    [cached] = [p for p in (tmp_path / "client" / "cache").rglob(digest)]
    cached.chmod(0o644)
    data = bytearray(cached.read_bytes())
    data[-1] ^= 0xFF
    cached.write_bytes(bytes(data))
    assert same_tensors(remote.state_dict("team/linear@v1"), expected_linear().state_dict())
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == digest


def test_the_cli_pulls_a_folder_through_the_server(
    served: Server, remote: Registry, tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from registry.cli import cli

    def run(*args: str) -> tuple[int, bytes, str]:
        result = CliRunner().invoke(
            cli,
            ["--home", str(tmp_path / "cli"), "--remote", served.url, *args],
            env={"REGISTRY_TOKEN": TOKEN},
        )
        return result.exit_code, result.stdout_bytes, result.stderr

    code, out, err = run("pull", "team/linear@v1", "-o", str(tmp_path / "out"))
    assert code == 0, err
    assert tree(tmp_path / "out") == tree(source_folder(served))
    code, out, err = run("pull", "team/linear@v1", "-o", "-")
    assert code == 0, err
    assert tar_members(out) == tree(source_folder(served))
    code, out, err = run("show", "team/linear@v1", "--json")
    assert code == 0, err
    assert [f["path"] for f in json.loads(out)["files"]] == sorted(tree(source_folder(served)))
    code, _, err = run("push", str(sharded(tmp_path / "again")), "--arch", "torch.nn:Linear")
    assert code != 0 and err.count("Error:") == 1


def test_writes_stay_refused_through_the_server(remote: Registry, tmp_path: Path) -> None:
    with pytest.raises(AccessDeniedError, match="its scope is read"):  # --token only reads
        remote.push(sharded(tmp_path / "linear"), **LINEAR)
    with pytest.raises(ReadOnlyError):
        remote.export_bundle(["team/linear@v1"], tmp_path / "b.tar")
    with pytest.raises(ReadOnlyError):
        remote.gc()


# -- the S3 store ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    pytest.importorskip("boto3")
    pytest.importorskip("moto.server")
    with moto_endpoint() as url:
        yield url


@pytest.fixture
def bucket(endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    import boto3

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "registry-test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    name = f"models-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


def objects(bucket: str) -> dict[str, int]:
    import boto3

    listing = boto3.client("s3").list_objects_v2(Bucket=bucket)
    return {item["Key"]: item["Size"] for item in listing.get("Contents", [])}


def test_a_folder_version_on_the_s3_store(bucket: str, database_url: str, tmp_path: Path) -> None:
    folder = sharded(tmp_path / "linear")
    team = Registry(home=tmp_path / "me", store=f"s3://{bucket}/team", database_url=database_url)
    try:
        version = team.push(folder, **LINEAR)
        assert version.files is not None
        digests = {version.sha256} | {f.sha256 for f in version.files}
        assert {k.rsplit("/", 1)[-1] for k in objects(bucket)} == digests
        cold = Registry(
            home=tmp_path / "cold", store=f"s3://{bucket}/team", database_url=database_url
        )
        try:
            assert tree(cold.pull("linear@v1", tmp_path / "back")) == tree(folder)
            model = cold.load("linear@v1")
            assert same_tensors(model.state_dict(), expected_linear().state_dict())
        finally:
            cold.close()
        assert team.verify() == []
        (folder / "docs" / "README.md").write_text("v2\n")
        team.push(folder, **LINEAR)
        team.delete("linear@v1")
        reclaimed = team.gc()
        assert reclaimed.blobs == 2  # v1's README and its file list; the shards are v2's too
        assert team.verify() == []
        assert tree(team.pull("linear@v2", tmp_path / "v2")) == tree(folder)
    finally:
        team.close()


def test_a_tampered_object_of_a_folder_is_refused(
    bucket: str, database_url: str, tmp_path: Path
) -> None:
    import boto3

    team = Registry(home=tmp_path / "me", store=f"s3://{bucket}/team", database_url=database_url)
    try:
        version = team.push(sharded(tmp_path / "linear"), **LINEAR)
        digest = next(f.sha256 for f in version.files or () if f.path == SHARD)
        [key] = [k for k in objects(bucket) if k.endswith(digest)]
        s3 = boto3.client("s3")
        s3.put_object(Bucket=bucket, Key=key, Body=b"not the shard")
        cold = Registry(
            home=tmp_path / "cold", store=f"s3://{bucket}/team", database_url=database_url
        )
        try:
            with pytest.raises(IntegrityError):
                cold.pull("linear@v1", tmp_path / "back")
            assert not (tmp_path / "back").exists()
            with pytest.raises(IntegrityError):
                cold.load("linear@v1")
        finally:
            cold.close()
        assert [p.ref for p in team.verify()] == ["linear@v1"]
    finally:
        team.close()
