"""Reading through a `registry serve`: `--remote URL` and `Registry(remote=..., token=...)`.

A real server runs as a subprocess on 127.0.0.1:0 over a home with a few
models; the client is a second home with no catalog or store of its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from helpers import TINY, Server, outputs_equal, same_tensors, tiny
from torch import nn

from registry import ConfigurationError, IntegrityError, ReadOnlyError, Registry
from registry.cli import cli
from registry.files import VerifyingSink

httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")

TOKEN = "s3cret-t0ken-never-shown"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Server]:
    """base@v1, base@v2 (its child, `production`), team/detector@v1, team/lineage@v1, pickled@v1
    (a trusted pickle)."""
    home = tmp_path_factory.mktemp("served")
    import tiny_models

    reg = Registry(home=home)
    reg.push(tiny(0), name="base", tags={"dataset": "toy"}, **TINY)
    reg.push(tiny(1), name="base", aliases=["production"], parent="base@v1", **TINY)
    reg.push(tiny(2), name="team/detector", description="namespaced", **TINY)
    reg.push(tiny(2), name="team/lineage", **TINY)  # not the lineage of a model `team`
    whole = home.parent / "whole.pt"
    torch.save(tiny_models.TinyNet(4, 5), whole)
    reg.push(whole, name="pickled", trust_pickle=True, **TINY)
    reg.close()
    server = Server(home, "--token", TOKEN)
    yield server
    assert TOKEN not in server.stop()


@pytest.fixture(autouse=True)
def no_remote_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REGISTRY_REMOTE", raising=False)
    monkeypatch.delenv("REGISTRY_TOKEN", raising=False)


@pytest.fixture
def remote(served: Server, tmp_path: Path) -> Iterator[Registry]:
    """A registry in a second home, with no catalog or store, reading through the server."""
    reg = Registry(home=tmp_path / "client", remote=served.url, token=TOKEN)
    yield reg
    reg.close()


def local(server: Server) -> Registry:
    return Registry(home=server.home)


def run(*args: str, token: str | None = TOKEN) -> tuple[int, bytes, str]:
    """The CLI in a client home, its token from REGISTRY_TOKEN: (exit code, stdout, stderr)."""
    env = {"REGISTRY_TOKEN": token} if token is not None else {}
    result = CliRunner().invoke(cli, ["--home", "client", *args], env=env)
    return result.exit_code, result.stdout_bytes, result.stderr


def remote_json(server: Server, *args: str) -> object:
    code, out, err = run("--remote", server.url, *args, "--json")
    assert code == 0, err
    return json.loads(out)


def local_json(server: Server, *args: str) -> object:
    result = CliRunner().invoke(cli, ["--home", str(server.home), *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_ls_show_lineage_and_diff_print_what_the_catalog_would(served: Server) -> None:
    commands = [
        ["ls"],
        ["ls", "base"],
        ["ls", "team/detector"],
        ["ls", "base", "--tag", "dataset=toy"],
        ["show", "base@production"],
        ["show", "team/detector@v1", "--tensors"],
        ["show", f"base@sha256:{local(served).get('base@v1').sha256[:12]}"],
        ["lineage", "base@v1"],
        ["lineage", "base@v2"],
        ["diff", "base@v2"],
        ["diff", "base@v1", "team/detector@v1"],
    ]
    for command in commands:
        assert remote_json(served, *command) == local_json(served, *command), command


def test_the_text_views_match_too(served: Server) -> None:
    for command in (["show", "base@v2"], ["diff", "base@v2"], ["lineage", "base@v1"]):
        code, out, err = run("--remote", served.url, *command)
        expected = CliRunner().invoke(cli, ["--home", str(served.home), *command])
        assert expected.exit_code == 0
        assert (code, out.decode(), err) == (0, expected.stdout, ""), command


def test_pull_from_a_home_with_no_catalog_is_bit_exact(served: Server, tmp_path: Path) -> None:
    pushed = local(served).pull("base@v2", tmp_path / "pushed.pt").read_bytes()
    code, out, err = run("--remote", served.url, "pull", "base@production", "-o", "out/")
    assert (code, out.decode().strip(), err) == (0, str(Path("out/base-v2.pt")), "")
    assert Path("out/base-v2.pt").read_bytes() == pushed
    code, out, _ = run("--remote", served.url, "pull", "base@v2", "-o", "-")
    assert (code, out) == (0, pushed)
    assert not Path("registry.db").exists() and not Path("client/registry.db").exists()
    assert not Path("client/blobs").exists()
    assert Path("client/cache/sha256").is_dir()  # the verified cache an S3 store also uses


def test_load_and_state_dict_rebuild_the_pushed_model(
    served: Server, remote: Registry, tmp_path: Path
) -> None:
    loaded = remote.load("base@production")
    assert isinstance(loaded, nn.Module) and not loaded.training
    assert outputs_equal(tiny(1), loaded)
    assert same_tensors(remote.state_dict("team/detector"), tiny(2).state_dict())
    code, out, err = run("--remote", served.url, "load", "base@v1", "--json")
    assert code == 0, err
    assert json.loads(out) == local_json(served, "load", "base@v1")
    assert remote.pull("base@v1", tmp_path / "x.safetensors", format="safetensors").is_file()


def test_the_python_api_reads_through_the_server(served: Server, remote: Registry) -> None:
    here = local(served)
    assert remote.get("base") == here.get("base")
    assert remote.get("base@v2").created_at.tzinfo is not None
    assert remote.models() == here.models()
    assert remote.versions("base", limit=1) == here.versions("base", limit=1)
    assert remote.search(arch=TINY["arch"]) == here.search(arch=TINY["arch"])
    assert remote.search(tags={"dataset": "toy"}) == here.search(tags={"dataset": "toy"})
    assert remote.search(name="nothing") == []
    assert remote.get("team/lineage") == here.get("team/lineage")
    assert remote.lineage("team/lineage") == here.lineage("team/lineage")
    assert remote.lineage("base@v1") == here.lineage("base@v1")
    assert remote.diff("base@v2") == here.diff("base@v2")
    assert [(t.name, t.shape) for t in remote.tensors("base")] == [
        (t.name, t.shape) for t in here.tensors("base")
    ]
    assert remote.prune_cache(dry_run=True).blobs == 0


def test_a_wrong_or_missing_token_is_one_line_without_the_token(served: Server) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    env["REGISTRY_TOKEN"] = "wrong-" + TOKEN
    command = [sys.executable, "-m", "registry", "--remote", served.url, "pull", "base"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == (
        f"Error: registry server {served.url}: the token was refused; set REGISTRY_TOKEN "
        "to the token the server was started with\n"
    )
    assert run("--remote", served.url, "ls", token=None) == (
        1,
        b"",
        f"Error: registry server {served.url} needs a token; set REGISTRY_TOKEN\n",
    )


def test_a_token_never_shows_in_a_repr_or_settings(served: Server, remote: Registry) -> None:
    assert repr(remote) == f"Registry(remote={served.url!r})"
    assert TOKEN not in repr(remote.settings) and TOKEN not in repr(remote.store.__dict__)


def test_a_dead_server_is_one_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert run("--remote", f"http://127.0.0.1:{port}", "show", "base") == (
        1,
        b"",
        f"Error: cannot reach registry server http://127.0.0.1:{port}: connection refused\n",
    )


def test_unknown_and_invalid_references_are_one_line(served: Server) -> None:
    url = served.url
    cases = {
        "base@v9": "Error: base@v9 not found; see `registry ls base` for its versions\n",
        "nothing": "Error: model 'nothing' not found; see `registry ls` for the models there are\n",
    }
    for ref, message in cases.items():
        assert run("--remote", url, "pull", ref) == (1, b"", message)
        assert run("--remote", url, "show", ref)[2] == local_cli_error(served, "show", ref)
    code, out, err = run("--remote", url, "show", "Bad!")
    assert (code, out, err) == (1, b"", local_cli_error(served, "show", "Bad!"))


def local_cli_error(server: Server, *args: str) -> str:
    result = CliRunner().invoke(cli, ["--home", str(server.home), *args])
    assert result.exit_code == 1
    return result.stderr


@pytest.mark.parametrize(
    ("command", "operation"),
    [
        (["gc"], "gc needs a catalog and a store"),
        (["export", "base@v1", "-o", "b.tar"], "export needs a catalog and a store"),
        (["db", "upgrade"], "db upgrade needs a catalog"),
        (["db", "current"], "db current needs a catalog"),
        (["verify"], "verify needs the store itself; run it where the store is"),
        (
            ["check", "base@v1"],
            "check needs the behaviour recorded in the catalog; run it where the catalog is",
        ),
        (
            ["load", "base@v1", "--check"],
            "check needs the behaviour recorded in the catalog; run it where the catalog is",
        ),
    ],
)
def test_writing_commands_are_refused_in_one_line(
    served: Server, command: list[str], operation: str
) -> None:
    Path("model.pt").write_bytes(b"x")
    Path("bundle.tar").write_bytes(b"x")
    expected = f"Error: registry at {served.url} is read-only: {operation}\n"
    assert run("--remote", served.url, *command) == (1, b"", expected)
    assert not Path("b.tar").exists()


@pytest.mark.parametrize(
    "command",
    [
        ["push", "model.pt", "--arch", "resnet18"],
        ["alias", "base@v1", "staging"],
        ["alias", "--delete", "base", "production"],
        ["tag", "base@v1", "k=v"],
        ["tag", "base@v1", "--delete", "dataset"],
        ["rm", "base@v1"],
        ["import", "bundle.tar"],
        ["describe", "base@v1", "text"],
    ],
)
def test_writes_with_the_read_token_are_refused_in_one_line(
    served: Server, command: list[str]
) -> None:
    """A team server's writes (tests/test_team_server.py) need a write token: --token reads."""
    torch.save(tiny(0).state_dict(), "model.pt")
    Path("bundle.tar").write_bytes(b"x")
    before = local(served).log()
    code, out, err = run("--remote", served.url, *command)
    assert (code, out) == (1, b"") and err.count("\n") == 1
    assert err.startswith(f"Error: registry server {served.url}: token 'serve-token' may not ")
    assert err.endswith(": its scope is read, and that needs write\n")
    assert local(served).log() == before


def test_a_trusted_pickle_pulls_but_does_not_load(served: Server, remote: Registry) -> None:
    version = remote.get("pickled")
    assert version.weights_sha256 is not None
    pulled = remote.pull(version.ref, "whole.pt")
    assert pulled.read_bytes() == local(served).pull(version.ref, "here.pt").read_bytes()
    with pytest.raises(ReadOnlyError, match="pickled@v1's weights needs their safe copy"):
        remote.load(version.ref)
    with pytest.raises(ReadOnlyError):
        remote.state_dict(version.ref)


def test_a_damaged_cached_copy_is_fetched_again(served: Server, remote: Registry) -> None:
    version = remote.get("base@v1")
    remote.pull(version.ref, "first.pt")  # fills the cache
    cached = remote.settings.cache / "sha256" / version.sha256[:2] / version.sha256
    good = cached.read_bytes()
    cached.chmod(0o644)
    cached.write_bytes(good[:-1] + bytes([good[-1] ^ 0xFF]))
    # The read that meets the damage evicts the copy; a Registry that reads again after
    # Store.evict (as tests/test_s3.py asks of S3) heals it within that read.
    with contextlib.suppress(IntegrityError):
        remote.load(version.ref)
    assert outputs_equal(tiny(0), remote.load(version.ref))
    assert cached.read_bytes() == good


def test_a_blob_the_server_finds_damaged_is_refused(
    tmp_path: Path, models_dir: Path, tiny_model: nn.Module
) -> None:
    home = tmp_path / "served"
    version = Registry(home=home).push(tiny_model, name="tiny", **TINY)
    blob = home / "blobs" / "sha256" / version.sha256[:2] / version.sha256
    blob.chmod(0o644)
    data = bytearray(blob.read_bytes())
    data[-10] ^= 0xFF
    blob.write_bytes(bytes(data))
    server = Server(home)
    try:
        reg = Registry(home=tmp_path / "client", remote=server.url)
        with pytest.raises(IntegrityError, match="tiny@v1 failed verification"):
            reg.pull("tiny", tmp_path / "out.pt")
        assert not (tmp_path / "out.pt").exists()
        assert list((tmp_path / "client" / "cache").rglob("*.part")) == []
        assert not reg.store.exists(version.sha256)
    finally:
        server.stop()


def test_a_server_killed_mid_download_leaves_nothing_behind(
    tmp_path: Path, models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL once the first bytes reach the pull: no file at the destination, no temp file."""
    home = tmp_path / "served"
    torch.manual_seed(0)
    # 32 MB: more than loopback's socket buffers hold, so the server is still sending.
    big = {"weight": torch.randn(4096, 2048), "bias": torch.randn(4096)}
    linear = {"arch": "torch.nn:Linear", "arch_args": {"in_features": 2048, "out_features": 4096}}
    Registry(home=home).push(big, name="big", **linear)
    server = Server(home)
    write = VerifyingSink.write

    def kill_on_first_bytes(self: VerifyingSink, data: bytes | memoryview) -> int:
        if server.process.poll() is None:
            server.process.send_signal(signal.SIGKILL)
            server.process.wait()
        return write(self, data)

    monkeypatch.setattr(VerifyingSink, "write", kill_on_first_bytes)
    code, out, err = run("--remote", server.url, "pull", "big", "-o", "out/", token=None)
    server.stop()
    assert (code, out) == (1, b"")
    assert err.startswith(f"Error: cannot reach registry server {server.url}: connection refused")
    assert err.count("\n") == 1
    assert list(Path("out").iterdir()) == []  # no big-v1.pt, no .big-v1.pt.*.part
    assert [p for p in Path("client/cache").rglob("*") if p.is_file()] == []
    monkeypatch.setattr(VerifyingSink, "write", write)
    again = Server(home)  # once it is back, the same pull succeeds
    try:
        assert run("--remote", again.url, "pull", "big", "-o", "out/", token=None)[0] == 0
        assert (
            Path("out/big-v1.pt").read_bytes() == local(again).pull("big", "here.pt").read_bytes()
        )
    finally:
        again.stop()


def test_remote_settings_come_from_the_environment(
    served: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REGISTRY_REMOTE", served.url + "/")
    monkeypatch.setenv("REGISTRY_TOKEN", TOKEN)
    code, out, _ = run("ls", "--json", token=TOKEN)
    assert code == 0 and json.loads(out) == local_json(served, "ls")
    assert Registry().get("base").ref == "base@v2"
    # An explicit catalog or store wins over REGISTRY_REMOTE.
    assert repr(Registry(store="blobs")).startswith("Registry(database_url=")


def test_a_remote_with_a_catalog_or_a_token_in_its_url_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="not both"):
        Registry(remote="http://127.0.0.1:8765", database_url="sqlite:///x.db")
    with pytest.raises(ConfigurationError) as refused:
        Registry(remote=f"http://127.0.0.1:8765/?token={TOKEN}")
    assert TOKEN not in str(refused.value)
    with pytest.raises(ConfigurationError, match="expected http://HOST"):
        Registry(remote="127.0.0.1:8765")


def test_a_dropped_connection_resumes_with_range(tmp_path: Path) -> None:
    """The stream stops after 1000 bytes; the client goes on with Range from there."""
    import hashlib

    from registry.remote import Client
    from registry.stores.http import HttpStore

    data = os.urandom(5000)
    digest = hashlib.sha256(data).hexdigest()
    asked: list[str | None] = []

    class Cut(httpx.SyncByteStream):
        def __iter__(self) -> Iterator[bytes]:
            yield data[:1000]
            raise httpx.ReadError("connection reset")

    def answer(request: httpx.Request) -> httpx.Response:
        asked.append(request.headers.get("range"))
        if "range" not in request.headers:
            return httpx.Response(200, stream=Cut(), headers={"etag": f'"{digest}"'})
        assert request.headers["if-range"] == f'"{digest}"'
        headers = {"content-range": "bytes 1000-4999/5000"}
        return httpx.Response(206, content=data[1000:], headers=headers)

    client = Client("http://server.test", None)
    client._http = httpx.Client(base_url=client.url, transport=httpx.MockTransport(answer))
    store = HttpStore(client, tmp_path / "cache")
    assert store.local_path(digest, "x@v1").read_bytes() == data
    assert asked == [None, "bytes=1000-"]
