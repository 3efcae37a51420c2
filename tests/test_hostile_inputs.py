"""Hostile input (issue #15): bundles, HTTP requests, `--check-input`, `--parent`, store URLs.

Each is refused with one `Error:` line (exit 1; 2 for a usage error) or, over
HTTP, a 4xx status with a JSON error, never a traceback or a 500; nothing is
recorded in the catalog, nothing is left in the store or in the temp folder,
and nothing is written outside the destination. Bundles are imported through
the CLI in-process (an escaping exception fails the test), the server is a
real `registry serve` subprocess, and the crash tests run the installed
`registry` command with `REGISTRY_TEST_KILL_AT` (see `registry.faults`).
"""

from __future__ import annotations

import http.client
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from click.testing import CliRunner
from helpers import LINEAR, LINEAR_ARGS, Server, linear_file
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from registry import Registry
from registry.cli import cli

REGISTRY = Path(sys.executable).parent / "registry"
KILL_AT = "REGISTRY_TEST_KILL_AT"
SLOW_OK = settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


# -- helpers ---------------------------------------------------------------------------------


def one_error_line(stderr: str) -> str:
    """The CLI's failure contract: one `Error: ...` line on stderr, no traceback."""
    ok = stderr.startswith("Error: ") and stderr.endswith("\n") and stderr.count("\n") == 1
    assert ok, stderr
    return stderr


def invoke(home: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run the CLI in-process on `home`; an exception that escapes it fails the test."""
    result = CliRunner().invoke(cli, ["--home", str(home), *args], env=env, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def files_under(folder: Path) -> set[str]:
    if not folder.exists():
        return set()
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if not p.is_dir()}


def tar_of(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def member(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, **fields: Any) -> Any:
    info = tarfile.TarInfo(name)
    info.type, info.size = kind, len(data) if kind == tarfile.REGTYPE else 0
    for key, value in fields.items():
        setattr(info, key, value)
    return info, data if kind == tarfile.REGTYPE else None


class Good:
    """A valid bundle of one nn.Linear version: its manifest and blob, to be rearranged."""

    def __init__(self, folder: Path) -> None:
        reg = Registry(home=folder / "source")
        path = linear_file(folder, 0)
        self.version = reg.push(path, arch="torch.nn:Linear", name="lin", arch_args=LINEAR_ARGS)
        reg.export_bundle([self.version.ref], folder / "good.tar")
        reg.close()
        with tarfile.open(folder / "good.tar") as tar:
            self.manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
            self.blob_name = f"blobs/sha256/{self.version.sha256}"
            self.blob = tar.extractfile(self.blob_name).read()  # type: ignore[union-attr]
            self.blob_offset = tar.getmember(self.blob_name).offset_data
        self.bytes = (folder / "good.tar").read_bytes()

    def manifest_bytes(self, edit: Callable[[dict[str, Any]], object] | None = None) -> bytes:
        manifest = json.loads(json.dumps(self.manifest))
        if edit is not None:
            edit(manifest["versions"][0])
        return json.dumps(manifest).encode()

    def with_manifest(self, edit: Callable[[dict[str, Any]], object]) -> bytes:
        return tar_of(member("manifest.json", self.manifest_bytes(edit)), self.blob_member())

    def blob_member(self, data: bytes | None = None) -> tuple[tarfile.TarInfo, bytes | None]:
        return member(self.blob_name, self.blob if data is None else data)


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Good:
    return Good(tmp_path_factory.mktemp("good"))


@pytest.fixture
def clean_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temp folder of this test's own, so a test can assert nothing was left in it."""
    folder = tmp_path / "systmp"
    folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def import_refused(tmp_path: Path, data: bytes, expected: str = "") -> str:
    """Import `data` as a bundle into a fresh home: one line, exit 1, nothing anywhere."""
    home, work = tmp_path / "target", tmp_path / "work"
    work.mkdir(parents=True, exist_ok=True)
    (work / "bundle.tar").write_bytes(data)
    outside = files_under(tmp_path)
    os.chdir(work)
    code, out, err = invoke(home, "import", "bundle.tar")
    assert (code, out) == (1, ""), err
    assert expected in one_error_line(err)
    assert Registry(home=home).search() == []
    assert files_under(home / "blobs") == set()  # no blob, no temp file
    written = {p for p in files_under(tmp_path) if not p.startswith("target/")}
    assert written == outside  # nothing written outside the destination
    return err


# -- bundles, by hand ------------------------------------------------------------------------


def hostile_bundles(good: Good, tmp_path: Path) -> dict[str, tuple[bytes, str]]:
    outside = tmp_path / "outside.txt"
    digest = good.version.sha256
    blob = good.blob_name
    manifest = member("manifest.json", good.manifest_bytes())
    cases: dict[str, tuple[list[Any], str]] = {
        "absolute": ([manifest, member(str(tmp_path / "evil"), b"evil")], "which a registry"),
        "absolute-blob": ([manifest, member("/" + blob, good.blob)], "which a registry"),
        "dotdot": ([manifest, member("../evil", b"evil")], "'../evil'"),
        "dotdot-inside": ([manifest, member(f"blobs/sha256/../../{digest}", good.blob)], "../"),
        "pax-path-dotdot": (
            [manifest, member(blob, good.blob, pax_headers={"path": "../../evil"})],
            "'../../evil'",
        ),
        "long-gnu-name": ([manifest, member("a/" * 120 + "evil", b"x")], "which a registry"),
        "symlink": (
            [manifest, member(blob, kind=tarfile.SYMTYPE, linkname=str(outside))],
            "a link, sparse or special file",
        ),
        "hardlink": (
            [manifest, member(blob, kind=tarfile.LNKTYPE, linkname=str(outside))],
            "a link, sparse or special file",
        ),
        "hardlink-to-manifest": (
            [manifest, member(blob, kind=tarfile.LNKTYPE, linkname="manifest.json")],
            "a link, sparse or special file",
        ),
        "char-device": (
            [manifest, member(blob, kind=tarfile.CHRTYPE, devmajor=1, devminor=3)],
            "a link, sparse or special file",
        ),
        "block-device": (
            [manifest, member(blob, kind=tarfile.BLKTYPE, devmajor=8, devminor=0)],
            "a link, sparse or special file",
        ),
        "fifo": ([manifest, member(blob, kind=tarfile.FIFOTYPE)], "a link, sparse or special"),
        "directory": ([manifest, member(blob, kind=tarfile.DIRTYPE)], "a link, sparse or special"),
        "manifest-as-symlink": (
            [member("manifest.json", kind=tarfile.SYMTYPE, linkname="/etc/passwd")],
            "manifest.json does not come first",
        ),
        "manifest-not-first": ([good.blob_member(), manifest], "does not come first"),
        "duplicate-blob": ([manifest, good.blob_member(), good.blob_member()], "not needed"),
        "duplicate-manifest": ([manifest, manifest, good.blob_member()], "which a registry"),
        "blob-not-in-manifest": (
            [manifest, good.blob_member(), member("blobs/sha256/" + "a" * 64, b"x")],
            "is not needed by its manifest",
        ),
        "blob-missing": ([manifest], "lacks blob"),
        "flipped-byte": (
            [manifest, good.blob_member(good.blob[:-1] + bytes([good.blob[-1] ^ 1]))],
            "does not hash to its name",
        ),
        "other-bytes-same-size": (
            [manifest, good.blob_member(bytes(len(good.blob)))],
            "does not hash to its name",
        ),
        "manifest-names-other-digest": (
            [
                member("manifest.json", good.manifest_bytes(lambda v: v.update(sha256="b" * 64))),
                member("blobs/sha256/" + "b" * 64, good.blob),
            ],
            "does not hash to its name",
        ),
        "size-larger": (
            [
                member("manifest.json", good.manifest_bytes(lambda v: v.update(size=10**12))),
                good.blob_member(),
            ],
            "its manifest says 1,000,000,000,000",
        ),
        "size-smaller": (
            [
                member("manifest.json", good.manifest_bytes(lambda v: v.update(size=1))),
                good.blob_member(),
            ],
            "its manifest says 1",
        ),
        "size-negative": (
            [
                member("manifest.json", good.manifest_bytes(lambda v: v.update(size=-1))),
                good.blob_member(),
            ],
            "out of range",
        ),
        "size-as-string": (
            [
                member("manifest.json", good.manifest_bytes(lambda v: v.update(size="10"))),
                good.blob_member(),
            ],
            "size is missing or not a int",
        ),
        "deep-json": ([member("manifest.json", b"[" * 200_000 + b"]" * 200_000)], "not JSON"),
        "manifest-a-list": ([member("manifest.json", b"[]")], "is not a registry bundle"),
        "manifest-not-utf8": ([member("manifest.json", b"\xff\xfe{}")], "not JSON"),
        "no-versions": (
            [member("manifest.json", json.dumps({**good.manifest, "versions": []}).encode())],
            "lists no versions",
        ),
        "bundle-version-2": (
            [member("manifest.json", json.dumps({**good.manifest, "bundle_version": 2}).encode())],
            "bundle version 2",
        ),
        "twice-the-same-version": (
            [
                member(
                    "manifest.json",
                    json.dumps(
                        {**good.manifest, "versions": good.manifest["versions"] * 2}
                    ).encode(),
                ),
                good.blob_member(),
            ],
            "lists a version twice",
        ),
    }
    for name in ["../x", "/abs", "a//b", "a/b/c", "", "x" * 129, "a\x00b", "a b", "é", ".", "-x"]:
        cases[f"name-{name[:12]!r}"] = (
            [member("manifest.json", good.manifest_bytes(lambda v, n=name: v.update(name=n))),
             good.blob_member()],
            "invalid model name",
        )  # fmt: skip
    for ref in ["lin", "lin@latest", "../x@v1", "lin@v0", 7]:
        cases[f"ref-{ref!r}"] = (
            [member("manifest.json", good.manifest_bytes(lambda v, r=ref: v.update(ref=r))),
             good.blob_member()],
            "version 1 of its manifest",
        )  # fmt: skip
    bundles = {key: (tar_of(*members), expected) for key, (members, expected) in cases.items()}
    bundles["truncated-in-blob"] = (good.bytes[: good.blob_offset + len(good.blob) // 2], "")
    bundles["truncated-in-header"] = (good.bytes[: good.blob_offset - 256], "")
    bundles["empty"] = (b"", "is not a readable tar file")
    bundles["zeros"] = (bytes(10240), "")
    return bundles


HOSTILE_NAMES = [
    "absolute", "absolute-blob", "dotdot", "dotdot-inside", "pax-path-dotdot", "long-gnu-name",
    "symlink", "hardlink", "hardlink-to-manifest", "char-device", "block-device", "fifo",
    "directory", "manifest-as-symlink", "manifest-not-first", "duplicate-blob",
    "duplicate-manifest", "blob-not-in-manifest", "blob-missing", "flipped-byte",
    "other-bytes-same-size", "manifest-names-other-digest", "size-larger", "size-smaller",
    "size-negative", "size-as-string", "deep-json", "manifest-a-list", "manifest-not-utf8",
    "no-versions", "bundle-version-2", "twice-the-same-version", "truncated-in-blob",
    "truncated-in-header", "empty", "zeros",
]  # fmt: skip


def test_every_hostile_bundle_is_one_line_with_nothing_recorded_or_written(
    good: Good, tmp_path: Path, clean_tmp: Path
) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("untouched")
    bundles = hostile_bundles(good, tmp_path)
    assert set(HOSTILE_NAMES) <= set(bundles)
    for case, (data, expected) in bundles.items():
        try:
            import_refused(tmp_path / case.replace("/", "_"), data, expected)
        except AssertionError as exc:
            raise AssertionError(f"{case}: {exc}") from None
    assert outside.read_text() == "untouched"
    assert not (tmp_path / "evil").exists() and not (tmp_path.parent / "evil").exists()
    assert list(clean_tmp.iterdir()) == []


def test_a_manifest_of_100_mb_is_refused_before_it_is_read(
    good: Good, tmp_path: Path, clean_tmp: Path
) -> None:
    size = 100 << 20
    head = good.manifest_bytes()
    padded = head[:-1] + b" " * (size - len(head)) + b"}"  # valid JSON of 100 MB
    path = tmp_path / "big.tar"
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("manifest.json")
        info.size = size
        tar.addfile(info, io.BytesIO(padded))
        blob_info, blob = good.blob_member()
        tar.addfile(blob_info, io.BytesIO(blob or b""))
    del padded
    import_refused(tmp_path, path.read_bytes(), "manifest.json is 104,857,600 bytes, too large")
    assert list(clean_tmp.iterdir()) == []


def test_a_name_the_destination_refuses_leaves_the_blob_unplaced(
    good: Good, tmp_path: Path
) -> None:
    """A manifest of two versions, the second named badly: not even the first is recorded."""
    manifest = json.loads(good.manifest_bytes())
    bad = {**manifest["versions"][0], "name": "../../etc", "ref": "other@v1"}
    manifest["versions"].append(bad)
    data = tar_of(member("manifest.json", json.dumps(manifest).encode()), good.blob_member())
    import_refused(tmp_path, data, "version 2 of its manifest: invalid model name")


# -- bundles, with hypothesis ----------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


def import_any(tmp_path: Path, data: bytes) -> None:
    """Import `data`: either it is a valid bundle and verifies, or one line and nothing recorded."""
    home = Path(tempfile.mkdtemp(dir=tmp_path))
    bundle = home / "bundle.tar"
    bundle.write_bytes(data)
    code, out, err = invoke(home / "h", "import", str(bundle))
    reg = Registry(home=home / "h")
    try:
        if code == 0:
            assert reg.verify() == [] and len(reg.search()) == out.count("\n"), out
        else:
            assert (code, out) == (1, ""), err
            one_error_line(err)
            assert reg.search() == []
            assert files_under(home / "h" / "blobs") == set()
    finally:
        reg.close()


@SLOW_OK
@given(key=st.sampled_from(sorted(
    ["name", "sha256", "size", "format", "arch", "arch_args", "tags", "description",
     "created_at", "created_by", "num_params", "torch_version", "extension", "details",
     "ref", "parent", "parent_sha256", "fingerprint", "weights_sha256", "weights_size"]
)), value=JSON_VALUES)  # fmt: skip
def test_any_manifest_field_value_is_one_line_or_a_verified_import(
    good: Good, tmp_path: Path, key: str, value: Any
) -> None:
    import_any(tmp_path, good.with_manifest(lambda v: v.__setitem__(key, value)))


@SLOW_OK
@given(data=st.data())
def test_any_damaged_bundle_is_one_line_or_a_verified_import(
    good: Good, tmp_path: Path, data: st.DataObject
) -> None:
    raw = bytearray(good.bytes)
    for _ in range(data.draw(st.integers(1, 8))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    import_any(tmp_path, bytes(raw[:cut] if data.draw(st.booleans()) else raw))


# -- import killed, and a full disk ----------------------------------------------------------


def big_bundle(folder: Path) -> tuple[Path, str]:
    """A bundle of one 41 MB nn.Linear version, as a dev registry exports it."""
    source = Registry(home=folder / "dev")
    path = linear_file(folder, 1, 2048, 5000)
    args = {"in_features": 2048, "out_features": 5000}
    version = source.push(path, arch="torch.nn:Linear", name="big", arch_args=args)
    bundle = folder / "big.tar"
    source.export_bundle([version.ref], bundle)
    source.close()
    return bundle, version.sha256


@pytest.mark.long  # 20-30 s a backend: two killed imports of a 41 MB bundle
def test_import_killed_at_each_point_leaves_nothing_gc_cannot_clean(
    database_url: str, tmp_path: Path
) -> None:
    bundle, digest = big_bundle(tmp_path)
    store = tmp_path / "prod-blobs"
    base = ["--database-url", database_url, "--store", str(store)]
    reg = Registry(database_url=database_url, store=store)
    for point in ("import-blob", "import-commit"):
        killed = subprocess.run(
            [str(REGISTRY), *base, "import", str(bundle)],
            env={**os.environ, KILL_AT: point}, capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        assert killed.returncode == -signal.SIGKILL, (point, killed.stderr)
        left = files_under(store)
        if point == "import-blob":  # a half-written temp file, nothing placed
            [temp] = [store / p for p in left if p.startswith("tmp/")]
            assert 0 < temp.stat().st_size < 41_000_000 and not reg.store.exists(digest)
        else:  # the blob placed, no version
            assert reg.store.exists(digest) and f"sha256/{digest[:2]}/{digest}" in left
        assert reg.search() == [] and reg.verify() == []
        result = CliRunner().invoke(cli, [*base, "verify"], catch_exceptions=False)
        assert (result.exit_code, result.stdout) == (0, "all blobs verified\n"), point
        result = CliRunner().invoke(cli, [*base, "gc", "--json"], catch_exceptions=False)
        reclaimed = json.loads(result.stdout)
        expected = (0, 1) if point == "import-blob" else (1, 0)
        assert (reclaimed["blobs"], reclaimed["temp_files"]) == expected, (point, reclaimed)
        assert files_under(store) - {"tmp"} == set(), point
    result = CliRunner().invoke(cli, [*base, "import", str(bundle)], catch_exceptions=False)
    assert (result.exit_code, result.stdout) == (0, "big@v1\n"), result.stderr
    assert reg.verify() == [] and reg.store.hash(digest, "big@v1") == digest
    assert {p for p in files_under(store) if not p.startswith("tmp")} == {
        f"sha256/{digest[:2]}/{digest}"
    }
    reg.close()


@pytest.mark.long
def test_rerun_after_an_import_killed_before_commit_adopts_the_blob(tmp_path: Path) -> None:
    bundle, digest = big_bundle(tmp_path)
    home = tmp_path / "prod"
    killed = subprocess.run(
        [str(REGISTRY), "--home", str(home), "import", str(bundle)],
        env={**os.environ, KILL_AT: "import-commit"}, capture_output=True, timeout=180,
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL
    assert invoke(home, "import", str(bundle)) == (0, "big@v1\n", "")
    code, out, _ = invoke(home, "gc", "--json")
    assert (code, json.loads(out)["blobs"], json.loads(out)["temp_files"]) == (0, 0, 0)
    reg = Registry(home=home)
    assert reg.verify() == [] and reg.get("big@v1").sha256 == digest


FILE_SIZE_LIMIT = 4 << 20
SMALL_DISK = (
    "import os, resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
    f"resource.setrlimit(resource.RLIMIT_FSIZE, ({FILE_SIZE_LIMIT}, {FILE_SIZE_LIMIT})); "
    "os.execv(sys.argv[1], sys.argv[1:])"
)


def test_disk_full_during_import_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    bundle, _ = big_bundle(tmp_path)
    home = tmp_path / "prod"
    Registry(home=home).models()  # the catalog exists: only the blob write hits the limit
    command = [sys.executable, "-c", SMALL_DISK, str(REGISTRY), "--home", str(home)]
    result = subprocess.run(
        [*command, "import", str(bundle)], capture_output=True, text=True, timeout=180
    )
    assert (result.returncode, result.stdout) == (1, ""), result.stderr
    assert "File too large" in one_error_line(result.stderr)
    assert Registry(home=home).search() == []
    assert files_under(home / "blobs") == set()


# -- HTTP -------------------------------------------------------------------------------------


def request(
    server: Server, method: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    """Send `method` and `path` as they are (no client normalises `..` or escapes)."""
    conn = http.client.HTTPConnection("127.0.0.1", urlsplit(server.url).port, timeout=30)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for key, value in (headers or {}).items():
            conn.putheader(key, value)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def raw(server: Server, data: bytes) -> bytes:
    """Send bytes as they are (no client's checks) and return what came back.

    The server answers and hangs up, or hangs up at once (a reset, perhaps before it read
    all of `data`); one that does neither within 10 s fails the test with a TimeoutError.
    """
    with socket.create_connection(("127.0.0.1", urlsplit(server.url).port), timeout=10) as sock:
        chunks = []
        try:
            sock.sendall(data)
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except ConnectionError:
            pass
        return b"".join(chunks)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    home = tmp_path_factory.mktemp("served")
    reg = Registry(home=home)
    args = {"arch": "torch.nn:Linear", "name": "lin", "arch_args": LINEAR_ARGS}
    reg.push(linear_file(home, 0), **args)
    reg.push(linear_file(home, 1), parent="lin@v1", **args)
    reg.close()
    (home / "secret.txt").write_text("outside the store")
    server = Server(home)
    yield server, home
    log = server.stop()
    assert "Traceback" not in log, log
    assert not any(line.startswith("GET /forged") for line in log.splitlines()), log
    assert "\x1b" not in log  # no terminal escape from a path reaches the log
    assert max(map(len, log.splitlines()), default=0) < 300  # a long path is cut in the log


def answered_sanely(status: int, body: bytes, what: object) -> None:
    assert 100 <= status < 500, (what, status, body[:300])
    assert b"Traceback" not in body and b"outside the store" not in body, what
    assert b"sqlite" not in body.lower() or status == 200, what


ODD_PATHS = [
    "/api/refs/%2e%2e/%2e%2e/etc/passwd", "/api/files/..%2f..%2fsecret.txt",
    "/api/files/%2e%2e%2fsecret.txt", "/api/files/lin%40v1/..%2f..%2fsecret.txt",
    "/static/..%2f..%2fsecret.txt", "/static/%2e%2e/%2e%2e/secret.txt", "/static/../secret.txt",
    "/static/%252e%252e/secret.txt", "/api/refs/a%00b", "/api/models/%00", "/api/files/%00",
    "/?q=%00", "/refs/lin@v1%00", "/api/refs/%ff%fe", "/api/models/%C0%AE%C0%AE",
    "/api/refs/%F0%9F%98%80@v1", "/api/refs/lin@v%D9%A1", "/api/refs/lin@v99999999999999999999",
    "/api/refs/lin@v-1", "/api/refs/lin@sha256:", "/api/diff?a=lin@v1&b=lin@v1&a=x",
    "/api/diff?a[]=1", "/api/diff?a=%00&b=%ff", "/api/diff?" + "a=" + "x" * 6000,
    "/?q=" + "%E2%82%AC" * 2000, "/api/models/" + "a/" * 500, "//api//models", "/api/models/.",
    "/api/refs/lin@v1/tensors/../../..", "/api/refs/lin@v1/lineage?depth=-1", "/api/files/",
    "/api/refs/", "/api/diff", "/diff?a=lin@v1&b=%2e%2e", "/models/%2e%2e", "/refs/%2f%2f",
    "/api/refs/x%0aGET%20/forged%20200", "/refs/x%0d%0aGET%20/forged%20200", "/api/refs/%1b[2Jx",
]  # fmt: skip
ODD_METHODS = ["PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "PROPFIND", "FOO", "CONNECT"]
ODD_RANGES = [
    "bytes=abc", "bytes=5-1", "bytes=999999999-", "bytes=-0", "bytes=-999999999999", "bytes=",
    "items=0-1", "bytes=--1", "bytes=0-0," * 500 + "0-0", "bytes=0-1,0-1", "bytes=1-1-1",
    "bytes=18446744073709551616-", "bytes=\u00e9-", "bytes=0-0, 2-1",
]  # fmt: skip


def test_odd_paths_methods_and_ranges_never_get_a_500(served: tuple[Server, Path]) -> None:
    server, _ = served
    for path in ODD_PATHS:
        status, body = request(server, "GET", path)
        answered_sanely(status, body, path)
        if path.startswith("/api/") and status >= 400:
            assert "error" in json.loads(body), path
    for method in ODD_METHODS:
        for path in ("/api/models", "/api/files/lin@v1", "/", "/static/style.css"):
            status, body = request(server, method, path)
            answered_sanely(status, body, (method, path))
            if path.startswith("/api/"):
                assert status in (400, 405), (method, path, status)
    size = len(request(server, "GET", "/api/files/lin@v1")[1])
    for value in ODD_RANGES:
        status, body = request(server, "GET", "/api/files/lin@v1", {"Range": value})
        answered_sanely(status, body, value)
        assert status in (200, 206, 400, 416), (value, status)
        assert status != 200 or len(body) == size, value
    for data in [
        b"GET /api/refs/a\x00b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /api/models/\xff\xfe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /api/models/" + b"a" * 70000 + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /api/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX: "
        + b"y" * 70000
        + b"\r\n\r\n",
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(100),  # a TLS hello
        b"GET /api/models HTTP/9.9\r\nConnection: close\r\n\r\n",
        b"GET\r\n\r\n",
    ]:
        answer = raw(server, data)
        assert not answer.startswith(b"HTTP/1.1 5"), (data[:60], answer[:200])
        assert b"Traceback" not in answer
    assert request(server, "GET", "/api/models")[0] == 200  # still serving


HEADER_TEXT = st.characters(blacklist_categories=("Cc", "Cs"))  # what a header may carry
SEGMENTS = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["..", ".", "%2e%2e", "%2F", "%00", "%ff", "@", "@v1", "lin", "lin@v1", "~"]),
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    prefix=st.sampled_from(["/api/refs/", "/api/files/", "/api/models/", "/static/", "/refs/",
                            "/models/", "/diff?a=", "/api/diff?b=lin@v1&a=", "/?q="]),
    segments=st.lists(SEGMENTS, max_size=5),
    method=st.sampled_from(["GET", "HEAD", "GET", "POST", "OPTIONS"]),
    range_=st.none() | st.text(HEADER_TEXT, max_size=20).map(lambda t: "bytes=" + t),
)  # fmt: skip
def test_no_encoded_path_method_or_range_gets_a_500(
    served: tuple[Server, Path], prefix: str, segments: list[str], method: str, range_: str | None
) -> None:
    from urllib.parse import quote

    server, _ = served
    # An escape such as %2e is sent as it is; any other character that a URL cannot carry
    # as it is (non-ASCII, a space) is escaped, as a client would.
    path = prefix + "/".join(quote(s, safe="@/.~%") for s in segments)
    headers = {"Range": range_.encode("utf-8", "replace").decode("latin-1")} if range_ else {}
    status, body = request(server, method, path, headers)
    answered_sanely(status, body, (method, path, range_))


# -- --check-input and --parent --------------------------------------------------------------


@pytest.fixture
def pushed(tmp_path: Path) -> Path:
    """A home holding lin@v1 and lin@v2 (parent lin@v1); returns the home."""
    home = tmp_path / "home"
    for seed, extra in ((0, []), (1, ["--parent", "lin@v1"])):
        code, _, err = invoke(home, "push", str(linear_file(tmp_path, seed)), "--name", "lin",
                              *LINEAR, *extra)  # fmt: skip
        assert code == 0, err
    return home


def state(home: Path) -> tuple[list[tuple[str, str | None, dict[str, str]]], set[str]]:
    """What a failed command must leave as it was: versions with parents and tags, files."""
    reg = Registry(home=home)
    try:
        versions = [(v.ref, v.parent, dict(v.tags)) for v in reg.search()]
    finally:
        reg.close()
    return versions, files_under(home / "blobs")


def refused_cleanly(home: Path, before: Any, *args: str) -> str:
    code, out, err = invoke(home, *args)
    assert (code, out) == (1, ""), (args, code, out, err)
    one_error_line(err)
    assert state(home) == before, args
    return err


SHAPES_OF_NUMBERS = st.lists(
    st.one_of(st.integers(-3, 9), st.sampled_from([0, -1, 2**31, 2**63, 10**30])),
    min_size=0, max_size=4,
).flatmap(lambda sizes: st.sampled_from([",", ", ", ";", "x", " ", ",,"]).map(
    lambda sep: sep.join(map(str, sizes))))  # fmt: skip


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(shape=st.one_of(st.text(max_size=30), SHAPES_OF_NUMBERS))
def test_push_with_any_check_input_is_one_line_or_a_checked_version(
    pushed: Path, tmp_path: Path, shape: str
) -> None:
    from registry import behaviour
    from registry.errors import CheckInputError

    before = state(pushed)
    path = linear_file(tmp_path, 2)
    args = ["push", str(path), "--name", "lin", *LINEAR, "--check-input", shape]
    code, out, err = invoke(pushed, *args)
    if code == 0:  # a shape the model takes
        parsed = behaviour.parse_shape(shape)
        ref = out.split()[0]  # lin@v3, or later: an earlier example's version was removed
        assert parsed[-1] == 4 and re.fullmatch(r"lin@v([3-9]|[1-9]\d+)", ref), (shape, out)
        assert invoke(pushed, "check", ref)[0] == 0
        assert invoke(pushed, "rm", ref)[0] == 0
        assert invoke(pushed, "gc")[0] == 0
        return
    assert (code, out) == (1, ""), (shape, err)
    one_error_line(err)
    assert state(pushed) == before
    try:
        parsed = behaviour.parse_shape(shape)
    except CheckInputError:
        return
    assert parsed[-1] != 4 and "check input" in err, (shape, err)  # a shape the model refuses


MALFORMED_PARENTS = [
    "", "@", "lin@", "@v1", "../x@v1", "/abs@v1", "lin@v0", "lin@v-1", "lin@v1.5",
    "lin@v99999999999999999999999", "a\x00b@v1", "x" * 300 + "@v1", "lin@" + "x" * 200,
    "lin@sha256:zz", "lin@sha256:", "lin@@v1", "lin@v1@v2", " lin@v1", "lin@v1\n",
]  # fmt: skip
PARENT_SHAPED = r"[a-z/]{0,6}@(v-?\d{0,25}|sha256:[0-9a-g]{0,70}|\w{0,8})"
MISSING_PARENTS = ["nope@v1", "lin@v9", "lin@nosuchalias", "lin@sha256:" + "0" * 12, "team/x@v1"]


def test_malformed_missing_self_and_looping_parents_are_one_line_and_change_nothing(
    pushed: Path, tmp_path: Path
) -> None:
    before = state(pushed)
    fresh = str(linear_file(tmp_path, 3))
    for parent in MALFORMED_PARENTS + MISSING_PARENTS:
        refused_cleanly(pushed, before, "push", fresh, "--name", "lin", *LINEAR,
                        "--parent", parent, "--tag", "k=v")  # fmt: skip
    v1 = str(linear_file(tmp_path, 0))  # lin@v1's bytes: pushing them again changes lin@v1
    err = refused_cleanly(pushed, before, "push", v1, "--name", "lin", *LINEAR,
                          "--parent", "lin@v1", "--tag", "k=v")  # fmt: skip
    assert "cannot be its own ancestor" in err, err
    err = refused_cleanly(pushed, before, "push", v1, "--name", "lin", *LINEAR,
                          "--parent", "lin@v2", "--tag", "k=v")  # fmt: skip
    assert "cannot be its own ancestor" in err, err
    # lin@v2 holds a parent already: pushing its bytes again with another parent keeps it
    v2 = str(linear_file(tmp_path, 1))
    code, _, err = invoke(pushed, "push", v2, "--name", "lin", *LINEAR, "--parent", "lin@v2")
    assert code in (0, 1), err
    assert [(ref, parent) for ref, parent, _ in state(pushed)[0]] == [
        (ref, parent) for ref, parent, _ in before[0]
    ]


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(parent=st.text(max_size=40) | st.from_regex(PARENT_SHAPED, fullmatch=True))
def test_push_with_any_parent_text_is_one_line_or_a_linked_version(
    pushed: Path, tmp_path: Path, parent: str
) -> None:
    before = state(pushed)
    fresh = str(linear_file(tmp_path, 4))
    code, out, err = invoke(pushed, "push", fresh, "--name", "lin", *LINEAR, "--parent", parent)
    if code == 0:
        assert out.startswith("lin@v3 "), out
        assert Registry(home=pushed).get("lin@v3").parent in ("lin@v1", "lin@v2")
        assert invoke(pushed, "rm", "lin@v3")[0] == 0 and invoke(pushed, "gc")[0] == 0
        return
    assert (code, out) == (1, ""), (parent, err)
    one_error_line(err)
    assert state(pushed) == before


# -- REGISTRY_STORE --------------------------------------------------------------------------

BAD_STORES = [
    "s3://", "s3:///x", "s3://bucket/../x", "s3://bucket/./x", "s3://bucket/a/../../x",
    "s3://../x", "s3://Bucket_Upper/x", "s3://ab", "s3://bucket?x=1", "s3://bucket#frag",
    "s3://me:s3cr3t@bucket/x", "gs://me:s3cr3t@bucket/x", "file://me:s3cr3t@host/x",
    "s3://bucket:9000/x", "s3://[::1/x", "gs://bucket/x", "ftp://host/x",
    "http://host/x", "S3://bucket", "unknown+scheme://x", "://x", " ", "\t\n",
]  # fmt: skip
STORE_COMMANDS = [["gc"], ["verify"], ["push", "w.pth", *LINEAR], ["pull", "lin@v1"],
                  ["import", "b.tar"], ["export", "--all", "-o", "out.tar"], ["ls"]]  # fmt: skip


@pytest.mark.parametrize("store", BAD_STORES)
def test_bad_store_urls_are_one_line_from_every_command(tmp_path: Path, store: str) -> None:
    linear_file(tmp_path, 0).rename(tmp_path / "w.pth")
    (tmp_path / "b.tar").write_bytes(b"")
    before = files_under(tmp_path)
    for how in ("env", "option"):
        for command in STORE_COMMANDS:
            args = ["--store", store] if how == "option" else []
            env = {"REGISTRY_STORE": store} if how == "env" else None
            result = CliRunner().invoke(
                cli, ["--home", str(tmp_path / "home"), *args, *command], env=env,
                catch_exceptions=False,
            )  # fmt: skip
            assert (result.exit_code, result.stdout) == (1, ""), (how, command, result.output)
            err = one_error_line(result.stderr)
            assert "store" in err and "s3cr3t" not in err, err
    assert files_under(tmp_path) == before  # no folder named after the URL, no catalog


def test_an_empty_store_variable_means_the_default_store(tmp_path: Path) -> None:
    """REGISTRY_STORE= (empty), as every REGISTRY_ variable: unset, not a folder named ''."""
    code, _, err = invoke(tmp_path / "home", "gc", env={"REGISTRY_STORE": ""})
    assert code == 0, err
    assert Registry(home=tmp_path / "home", store=None).store.location == str(
        tmp_path / "home" / "blobs"
    )
