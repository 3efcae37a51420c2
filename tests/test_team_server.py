"""A team through its server (SPEC): tokens and their scopes, writes through `registry serve`,
the audit log, the server's own checks, and pushes cut off at any point.

One server over a SQLite home serves the module; each test pushes models of its own
names. Clients are `Registry(remote=..., token=...)` or the CLI with `--remote`, each
in a home of its own, as another machine would be.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import torch
from helpers import MARKER, TINY, TINY_ARGS, TINY_CLI, Server, log_so_far, outputs_equal, tiny
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from registry import (
    AccessDeniedError,
    ArchitectureMismatchError,
    ConfigurationError,
    NotFoundError,
    Registry,
    UnsafeCheckpointError,
    UntrustedArchError,
)

SCOPES = ("read", "write", "admin")


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = subprocess.run(
        [sys.executable, "-m", "registry", *args],
        capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})},
    )  # fmt: skip
    return result.returncode, result.stdout, result.stderr


class Team:
    """The server's home, its server, and one secret per token name."""

    def __init__(self, home: Path, server: Server, secrets: dict[str, str]) -> None:
        self.home, self.server, self.secrets = home, server, secrets

    @property
    def url(self) -> str:
        return self.server.url

    def local(self) -> Registry:
        return Registry(home=self.home)

    def client(self, token: str, home: Path) -> Registry:
        return Registry(home=home, remote=self.url, token=self.secrets[token])

    def cli(self, token: str, home: Path, *args: str) -> tuple[int, str, str]:
        environment = {"REGISTRY_TOKEN": self.secrets[token]}
        return run("--home", str(home), "--remote", self.url, *args, env=environment)


@pytest.fixture(scope="module")
def team(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Team]:
    home = tmp_path_factory.mktemp("team-home")
    reg = Registry(home=home)
    secrets = {}
    for name, scope, models in [
        ("reader", "read", ()),
        ("writer", "write", ()),
        ("admin", "admin", ()),
        ("team-writer", "write", ("team/*",)),
        ("team-reader", "read", ("team/*",)),
    ]:
        secrets[name] = reg.create_token(name, scope, models)[1]
    secrets["expired"] = reg.create_token("expired", "admin", (), "1m")[1]
    with reg.engine.begin() as conn:  # as if a minute had passed
        conn.execute(
            text("UPDATE tokens SET expires_at = '2020-01-01 00:00:00' WHERE name = 'expired'")
        )
    secrets["revoked"] = reg.create_token("revoked", "admin")[1]
    reg.revoke_token("revoked")
    reg.close()
    server = Server(home)
    yield Team(home, server, secrets)
    server.stop()


def saved(path: Path, seed: int = 0, **args: int) -> Path:
    torch.save(tiny(seed, **args).state_dict(), path)
    return path


def unique(prefix: str = "m") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# -- tokens and scopes, from both sides ---------------------------------------------------


def test_token_ls_never_shows_a_secret_and_tracks_last_use(team: Team, tmp_path: Path) -> None:
    team.client("reader", tmp_path).models()
    code, out, err = run("--home", str(team.home), "token", "ls", "--json")
    assert code == 0, err
    listed = {t["name"]: t for t in json.loads(out)}
    assert set(listed["reader"]) == {
        "name", "scope", "models", "created_at", "expires_at", "last_used_at"
    }  # fmt: skip
    assert listed["reader"]["last_used_at"] is not None
    assert listed["team-writer"]["models"] == ["team/*"]
    assert "revoked" not in listed
    assert not any(secret in out for secret in team.secrets.values())


def test_token_create_prints_the_secret_once_and_refuses_bad_input(tmp_path: Path) -> None:
    home = str(tmp_path / "h")
    code, out, err = run("--home", home, "token", "create", "ci-bot", "--scope", "write")
    assert code == 0 and out.startswith("reg_") and len(out.strip()) > 40, err
    assert run("--home", home, "token", "create", "ci-bot")[0] == 1  # the name is taken
    code, _, err = run("--home", home, "token", "create", "x", "--expires", "soon")
    assert code == 1 and err.startswith("Error: invalid expiry 'soon'")
    assert run("--home", home, "token", "create", "x", "--scope", "root")[0] == 2
    code, _, err = run("--home", home, "token", "revoke", "nobody")
    assert code == 1 and "token 'nobody' not found" in err


def test_every_scope_does_what_it_allows_and_not_the_next_step_up(
    team: Team, tmp_path: Path
) -> None:
    name = unique()
    team.local().push(saved(tmp_path / "w.pt"), name=name, **TINY)
    ref = f"{name}@v1"

    def attempts(reg: Registry) -> dict[str, Any]:
        return {
            "read": lambda: reg.get(ref),
            "write": lambda: reg.set_tags(ref, {"by": "test"}),
            "admin": lambda: reg.delete(ref),
        }

    for index, scope in enumerate(SCOPES):
        client = team.client(
            {"read": "reader", "write": "writer", "admin": "admin"}[scope], tmp_path / scope
        )
        tries = attempts(client)
        for allowed in SCOPES[: index + 1]:
            if allowed != "admin":
                tries[allowed]()  # works
        if index + 1 < len(SCOPES):
            step_up = SCOPES[index + 1]
            with pytest.raises(
                AccessDeniedError, match=f"its scope is {scope}, and that needs {step_up}"
            ):
                tries[step_up]()
    team.client("admin", tmp_path / "admin").delete(ref)  # admin's own step: rm
    assert team.local().versions(name) == []


def test_model_patterns_reach_only_their_models(team: Team, tmp_path: Path) -> None:
    inside, outside = f"team/{unique()}", unique("other")
    writer = team.client("team-writer", tmp_path / "w")
    assert writer.push(saved(tmp_path / "a.pt"), name=inside, **TINY).ref == f"{inside}@v1"
    with pytest.raises(AccessDeniedError, match=f"may not push to model '{outside}'.*team/\\*"):
        writer.push(saved(tmp_path / "b.pt", 1), name=outside, **TINY)
    team.local().push(saved(tmp_path / "c.pt", 2), name=outside, **TINY)
    reader = team.client("team-reader", tmp_path / "r")
    names = [m.name for m in reader.models()]
    assert inside in names and outside not in names
    with pytest.raises(AccessDeniedError, match=f"may not read model '{outside}'"):
        reader.get(outside)
    with pytest.raises(AccessDeniedError, match="its scope is read"):
        reader.set_alias(f"{inside}@v1", "prod")
    assert all(e.ref.startswith("team/") for e in reader.log())


def test_expired_and_revoked_tokens_get_401(team: Team, tmp_path: Path) -> None:
    for name in ("expired", "revoked"):
        response = httpx.get(
            team.url + "/api/models", headers={"Authorization": f"Bearer {team.secrets[name]}"}
        )
        assert response.status_code == 401, name
    assert (
        "expired"
        in httpx.get(
            team.url + "/api/models", headers={"Authorization": f"Bearer {team.secrets['expired']}"}
        ).json()["error"]
    )
    with pytest.raises(ConfigurationError, match="the token was refused"):
        team.client("revoked", tmp_path).models()
    code, out, err = team.cli("revoked", tmp_path, "ls")
    assert code == 1 and out == "" and err.count("\n") == 1


def test_a_cookie_cannot_write_through_the_api(team: Team) -> None:
    response = httpx.post(
        team.url + "/api/blobs/missing", json={"sha256": []},
        cookies={"registry_token": team.secrets["admin"]},
    )  # fmt: skip
    assert response.status_code == 403
    assert "Authorization header" in response.json()["error"]


# -- writes through the server: as local, with the same output --------------------------------


def test_cli_writes_through_the_server_print_what_local_ones_do(team: Team, tmp_path: Path) -> None:
    name = unique()
    weights = saved(tmp_path / "w.pt")
    local_home = tmp_path / "local"
    outputs = []
    for remote in (False, True):

        def cli(*args: str, remote: bool = remote) -> tuple[int, str, str]:
            if remote:
                return team.cli("admin", tmp_path / "client", *args)
            return run("--home", str(local_home), *args)

        pushed = cli("push", str(weights), *TINY_CLI, "--name", name, "--tag", "k=v")
        outputs.append(
            [
                pushed,
                cli("push", str(weights), *TINY_CLI, "--name", name),  # the same bytes again
                cli("alias", f"{name}@v1", "prod"),
                cli("tag", f"{name}@v1", "x=1"),
                cli("tag", f"{name}@v1", "--delete", "x"),
                cli("describe", f"{name}@v1", "*fine*"),
                cli("alias", "--delete", name, "prod"),
                cli("rm", f"{name}@v1"),
                cli("rm", f"{name}@v1"),  # gone: the same error
                cli("tag", "bad ref!", "k=v"),
            ]
        )
    local, remote = outputs
    assert remote == local  # the same bytes, the same digests; errors are the same lines


def test_the_python_api_pushes_files_folders_and_modules_through_the_server(
    team: Team, tmp_path: Path
) -> None:
    client = team.client("writer", tmp_path / "client")
    name = unique()
    model = tiny(3)
    version = client.push(model, name=name, aliases=["staging"], description="d", **TINY)
    assert version.is_new and version.aliases == ("staging",)
    assert outputs_equal(model, team.local().load(version.ref))
    assert outputs_equal(model, client.load(f"{name}@staging"))
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    (folder / "README.md").write_text("hello")
    (folder / "sub" / "data.bin").write_bytes(os.urandom(3000))
    pushed = client.push(folder, name=f"{name}-files")
    assert pushed.format == "folder" and [f.path for f in pushed.files or ()] == [
        "README.md", "sub/data.bin"
    ]  # fmt: skip
    pulled = team.local().pull(pushed.ref, tmp_path / "out")
    assert (pulled / "sub" / "data.bin").read_bytes() == (folder / "sub" / "data.bin").read_bytes()


def test_bytes_the_server_holds_are_not_sent_again(team: Team, tmp_path: Path) -> None:
    weights = saved(tmp_path / "w.pt", 4)
    client_home = tmp_path / "client"
    names = [unique(), unique()]
    team.cli("writer", client_home, "push", str(weights), *TINY_CLI, "--name", names[0])
    before = _puts(team)
    code, out, err = team.cli(
        "writer", tmp_path / "other-machine", "push", str(weights), *TINY_CLI, "--name", names[1]
    )
    assert code == 0, err
    assert out.startswith(f"{names[1]}@v1 sha256:")
    assert _puts(team) == before  # the second model's push sent no bytes


def _puts(team: Team) -> int:
    """How many blobs the server was sent so far (its log says so, line by line)."""
    return log_so_far(team.server).count("PUT /api/blobs/")


def test_the_server_keeps_only_bytes_that_match_their_digest(team: Team) -> None:
    headers = {"Authorization": f"Bearer {team.secrets['writer']}"}
    claimed = "0" * 64
    response = httpx.put(
        team.url + f"/api/blobs/{claimed}", content=b"other bytes", headers=headers
    )
    assert response.status_code == 400 and "nothing was kept" in response.json()["error"]
    missing = httpx.post(
        team.url + "/api/blobs/missing", json={"sha256": [claimed]}, headers=headers
    )
    assert missing.json() == {"missing": [claimed]}
    push = {"file": {"path": "w.pt", "size": 11, "sha256": claimed}, "arch": "resnet18"}
    response = httpx.post(team.url + "/api/push", json=push, headers=headers)
    assert response.status_code == 404 and "send it first" in response.json()["error"]


def test_the_server_checks_weights_against_the_arch(team: Team, tmp_path: Path) -> None:
    client = team.client("writer", tmp_path / "client")
    name = unique()
    wrong = saved(tmp_path / "wrong.pt", num_classes=7)
    with pytest.raises(ArchitectureMismatchError, match=r"head\.weight"):
        client.push(wrong, name=name, **TINY)
    assert name not in [m.name for m in team.local().models()]
    with pytest.raises(UnsafeCheckpointError, match="never unpickles"):
        client.push(wrong, name=name, trust_pickle=True, **TINY)


def test_the_server_never_calls_a_builder_it_does_not_trust(team: Team, tmp_path: Path) -> None:
    weights = saved(tmp_path / "w.pt")
    marker = tmp_path / MARKER
    code, out, err = team.cli(
        "admin", tmp_path / "c", "push", str(weights), "--arch", "subprocess:run",
        "--arg", f"args={json.dumps(['touch', str(marker)])}", "--name", unique(),
    )  # fmt: skip
    assert code == 1 and out == "" and "subprocess:run" in err, err
    assert not marker.exists()
    with pytest.raises(UntrustedArchError):
        team.client("admin", tmp_path / "c").push(
            weights, arch="tiny_models:tiny", arch_args=TINY_ARGS, name=unique()
        )


def test_a_server_that_trusts_a_builder_calls_it(tmp_path: Path) -> None:
    home = tmp_path / "home"
    secret = Registry(home=home).create_token("w", "write")[1]
    server = Server(home, env={"REGISTRY_TRUSTED_ARCHS": "tiny_models:tiny"})
    try:
        client = Registry(home=tmp_path / "c", remote=server.url, token=secret)
        version = client.push(
            saved(tmp_path / "w.pt"), arch="tiny_models:tiny", arch_args=TINY_ARGS, name="t"
        )
        assert version.arch == "tiny_models:tiny"
    finally:
        server.stop()


def test_concurrent_remote_pushes_get_consecutive_versions(team: Team, tmp_path: Path) -> None:
    name = unique()
    files = [saved(tmp_path / f"w{i}.pt", 10 + i) for i in range(6)]
    refs: list[str] = []
    errors: list[BaseException] = []

    def push(path: Path, index: int) -> None:
        try:
            client = team.client("writer", tmp_path / f"client{index}")
            refs.append(client.push(path, name=name, **TINY).ref)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=push, args=(f, i)) for i, f in enumerate(files)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(refs) == [f"{name}@v{i}" for i in range(1, 7)]


# -- the audit log -----------------------------------------------------------------------------


def test_every_write_path_leaves_an_audit_entry(team: Team, tmp_path: Path) -> None:
    name = unique()
    local = Registry(home=team.home)
    client = team.client("admin", tmp_path / "c")
    client.push(saved(tmp_path / "a.pt", 20), name=name, **TINY)
    local.push(saved(tmp_path / "b.pt", 21), name=name, **TINY)
    client.set_alias(f"{name}@v1", "prod")
    local.set_alias(f"{name}@v2", "prod")
    client.set_tags(f"{name}@v1", {"k": "v"})
    local.delete_tag(f"{name}@v1", "k")
    client.describe(f"{name}@v2", "remote")
    local.describe(f"{name}@v1", "local")
    client.delete_alias(name, "prod")
    bundle = tmp_path / "b.tar"
    local.export_bundle([f"{name}@v1"], bundle)
    client.import_bundle(bundle)
    client.delete(f"{name}@v2")
    entries = list(reversed(local.log(name)))
    me = entries[1].actor  # the local push's: user@host
    assert [(e.action, e.actor) for e in entries] == [
        ("push", "admin"),
        ("push", me),
        ("alias.set", "admin"),
        ("alias.set", me),
        ("tag.set", "admin"),
        ("tag.delete", me),
        ("describe", "admin"),
        ("describe", me),
        ("alias.delete", "admin"),
        ("import", "admin"),
        ("delete", "admin"),
    ]
    assert "@" in me
    assert entries[3].details == {"alias": "prod", "from": f"{name}@v1"}
    assert [e.to_json() for e in client.log(name)] == [e.to_json() for e in local.log(name)]
    _, out, _ = run("--home", str(team.home), "log", name, "--json")
    assert json.loads(out)[0]["action"] == "delete"
    assert set(json.loads(out)[0]) == {"at", "actor", "action", "ref", "details"}


def test_a_refused_change_leaves_no_entry(team: Team, tmp_path: Path) -> None:
    name = unique()
    reg = team.local()
    with pytest.raises(ArchitectureMismatchError):
        reg.push(saved(tmp_path / "w.pt", num_classes=9), name=name, **TINY)
    assert reg.log(name) == []


# -- a push cut off at any point -----------------------------------------------------------


def big_file(path: Path) -> Path:
    """A Linear(4096, 4096) state_dict, 64 MiB: long enough an upload to cut."""
    torch.manual_seed(0)
    torch.save(torch.nn.Linear(4096, 4096).state_dict(), path)
    return path


BIG = ["--arch", "torch.nn:Linear", "--arg", "in_features=4096", "--arg", "out_features=4096"]


def _throttled_push(
    team_url: str, secret: str, home: Path, path: Path, name: str
) -> subprocess.Popen[str]:
    """A CLI push whose upload crawls: 1 MiB each quarter second, 16 s for BIG, longer than
    a stopping server waits for requests in flight (10 s)."""
    script = (
        "import time, registry.uploads as u\n"
        "original = u._chunks\n"
        "def slow(stream, advance):\n"
        "    for chunk in original(stream, advance):\n"
        "        time.sleep(0.25)\n"
        "        yield chunk\n"
        "u._chunks = slow\n"
        "from registry.cli import cli\n"
        f"cli(['--home', {str(home)!r}, '--remote', {team_url!r}, 'push', {str(path)!r}, "
        f"*{BIG!r}, '--name', {name!r}])\n"
    )
    return subprocess.Popen(
        [sys.executable, "-c", script], env={**os.environ, "REGISTRY_TOKEN": secret},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _uploading(home: Path, timeout: float = 60) -> None:
    """Wait until a temp file of an upload grows in the server's store."""
    deadline = time.monotonic() + timeout
    tmp = home / "blobs" / "tmp"
    while time.monotonic() < deadline:
        if tmp.is_dir() and any(p.stat().st_size > 4 << 20 for p in tmp.iterdir()):
            return
        time.sleep(0.05)
    raise AssertionError("no upload began")


def _nothing_visible(home: Path, name: str, before: set[str]) -> None:
    reg = Registry(home=home)
    assert name not in [m.name for m in reg.models()]
    assert set(reg.store.digests()) == before
    assert reg.log(name) == []


def test_a_client_killed_mid_upload_records_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    secret = Registry(home=home).create_token("w", "write")[1]
    server = Server(home)
    try:
        before = set(Registry(home=home).store.digests())
        push = _throttled_push(
            server.url, secret, tmp_path / "c", big_file(tmp_path / "big.pt"), "big"
        )
        _uploading(home)
        push.kill()
        push.wait(30)
        time.sleep(0.5)
        _nothing_visible(home, "big", before)
        assert not any((home / "blobs" / "tmp").iterdir())  # the server dropped the part
    finally:
        server.stop()


def test_a_server_stopped_mid_upload_records_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    secret = Registry(home=home).create_token("w", "write")[1]
    server = Server(home)
    before = set(Registry(home=home).store.digests())
    push = _throttled_push(server.url, secret, tmp_path / "c", big_file(tmp_path / "big.pt"), "big")
    try:
        _uploading(home)
        server.stop(signal.SIGTERM)
        _, err = push.communicate(timeout=120)
        assert push.returncode == 1 and err.count("Error:") == 1, err
        _nothing_visible(home, "big", before)
        reclaimed = Registry(home=home).gc()  # whatever a killed writer left, gc takes
        assert reclaimed.blobs == 0
        assert not (home / "blobs" / "tmp").is_dir() or not any((home / "blobs" / "tmp").iterdir())
    finally:
        push.kill()
        server.kill()


# -- secrets -------------------------------------------------------------------------------


@pytest.mark.parametrize("level", ["debug", "info", "warning"])
def test_no_token_appears_in_any_output_or_log(tmp_path: Path, level: str) -> None:
    home = tmp_path / "home"
    reg = Registry(home=home)
    secret = reg.create_token("w", "admin")[1]
    read_token = "shared-read-" + uuid.uuid4().hex
    server = Server(home, "--token", read_token, "--log-level", level)
    outputs = []
    try:
        env = {"REGISTRY_TOKEN": secret, "REGISTRY_DEBUG": "1"}
        weights = saved(tmp_path / "w.pt")
        client = ["--home", str(tmp_path / "c"), "--remote", server.url]
        outputs.append(run(*client, "push", str(weights), *TINY_CLI, "--name", "m", env=env))
        outputs.append(run(*client, "tag", "m@v1", "k=v", env=env))
        outputs.append(run(*client, "rm", "nothing@v1", env=env))  # an error, with a traceback
        outputs.append(run(*client, "ls", env={"REGISTRY_TOKEN": "wrong-" + secret}))
        for token in (secret, read_token, "bogus-" + secret):
            httpx.get(server.url + f"/?token={token}")
            httpx.get(server.url + "/api/models", headers={"Authorization": f"Bearer {token}"})
            httpx.post(server.url + f"/api/push?token={token}", json={"token": token})
        outputs.append(run("--home", str(home), "token", "ls"))
        outputs.append(run("--home", str(home), "log"))
    finally:
        logged = server.stop()
    text = logged + "".join(out + err for _, out, err in outputs)
    assert "GET /api/models" in logged or level == "warning"
    assert secret not in text and read_token not in text


# -- several servers over one catalog and store ---------------------------------------------------


def test_two_servers_answer_alike_and_take_writes_side_by_side(
    database_url: str, tmp_path: Path
) -> None:
    store = tmp_path / "blobs"
    options = ["--database-url", database_url, "--store", str(store)]
    local = Registry(database_url=database_url, store=store)
    secret = local.create_token("w", "write")[1]
    servers = [Server(tmp_path / f"server{i}", options=options) for i in range(2)]
    try:
        name = "shared"
        files = [saved(tmp_path / f"w{i}.pt", 30 + i) for i in range(6)]
        refs: list[str] = []
        errors: list[BaseException] = []

        def push(index: int) -> None:
            server = servers[index % 2]
            try:
                client = Registry(home=tmp_path / f"c{index}", remote=server.url, token=secret)
                refs.append(client.push(files[index], name=name, **TINY).ref)
                client.set_tags(refs[-1], {"by": f"server{index % 2}"})
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=push, args=(i,)) for i in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert sorted(refs) == [f"{name}@v{i}" for i in range(1, 7)]
        headers = {"Authorization": f"Bearer {secret}"}
        answers = [
            [httpx.get(s.url + path, headers=headers).json() for s in servers]
            for path in ("/api/models", f"/api/models/{name}", f"/api/refs/{name}@v3", "/api/log")
        ]
        for first, second in answers:
            assert first == second
        assert len(local.log(name)) == 12
    finally:
        for server in servers:
            server.stop()
        local.close()


# -- no request to a write route gets a 500 -----------------------------------------------------

WRITE_ROUTES = [
    ("POST", "/api/blobs/missing"),
    ("PUT", "/api/blobs/{sha}"),
    ("POST", "/api/push"),
    ("POST", "/api/import"),
    ("PUT", "/api/models/{name}/aliases/{alias}"),
    ("DELETE", "/api/models/{name}/aliases/{alias}"),
    ("POST", "/api/refs/{ref}/tags"),
    ("PUT", "/api/refs/{ref}/description"),
    ("DELETE", "/api/refs/{ref}"),
]
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
segment = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=24)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    route=st.sampled_from(WRITE_ROUTES),
    name=st.one_of(st.sampled_from(["fuzz", "team/x", ""]), segment),
    alias=segment,
    sha=st.one_of(st.just("0" * 64), segment),
    token=st.sampled_from(["writer", "admin", "reader", "team-writer", None]),
    body=st.one_of(
        json_values,
        st.fixed_dictionaries(
            {
                "file": st.fixed_dictionaries(
                    {
                        "path": segment,
                        "size": st.integers(-5, 10**20),
                        "sha256": st.one_of(st.just("0" * 64), segment),
                    }
                ),
                "arch": st.one_of(st.sampled_from(["resnet18", "subprocess:run", "x"]), segment),
                "arch_args": json_values,
                "tags": json_values,
                "aliases": json_values,
            },
        ),
        st.fixed_dictionaries({"set": json_values, "delete": json_values}),
        st.fixed_dictionaries({"ref": st.one_of(st.just("fuzz@v1"), segment)}),
        st.binary(max_size=200),
    ),
)
def test_no_request_to_a_write_route_gets_a_500(
    team: Team, route: tuple[str, str], name: str, alias: str, sha: str, token: str | None,
    body: Any,
) -> None:  # fmt: skip
    method, template = route
    path = template.format(
        sha=quote(sha, safe=""), name=quote(name, safe="/"), alias=quote(alias, safe=""),
        ref=quote(f"{name}@v1", safe="/@"),
    )  # fmt: skip
    headers = {"Authorization": f"Bearer {team.secrets[token]}"} if token else {}
    sent = {"content": body} if isinstance(body, bytes) else {"json": body}
    response = httpx.request(method, team.url + path, headers=headers, timeout=60, **sent)
    assert response.status_code < 500 or response.status_code in (502, 503), response.text
    assert response.status_code != 503 or "could not answer" not in response.text, response.text
    if response.status_code >= 400:
        assert isinstance(response.json()["error"], str)


def test_a_description_renders_as_markdown_with_nothing_that_runs_or_fetches() -> None:
    from registry.server.pages import rendered

    html = str(rendered("**bold** <script>alert(1)</script> ![x](http://e/x.png) [a](http://a)"))
    assert "<strong>bold</strong>" in html and "&lt;script&gt;" in html
    assert "<img" not in html and "<script" not in html
    assert 'rel="noopener noreferrer nofollow"' in html
    assert "href" not in str(rendered("[j](javascript:alert(1))"))


def test_a_blob_a_gc_took_before_its_push_is_sent_again(
    team: Team, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sent blobs wait for their push unreferenced; a gc on the server in between takes them,
    and the client, told so, sends them once more."""
    from registry.uploads import ServerPublisher

    original, sends = ServerPublisher._send, []

    def send_then_gc(self: ServerPublisher, *args: Any) -> None:
        original(self, *args)
        sends.append(Registry(home=team.home).gc().blobs)

    monkeypatch.setattr(ServerPublisher, "_send", send_then_gc)
    name = unique()
    client = team.client("writer", tmp_path / "c")
    with pytest.raises(NotFoundError, match="send it first"):  # the gc won twice
        client.push(saved(tmp_path / "w.pt", 40), name=name, **TINY)
    assert len(sends) == 2 and sends[0] >= 1 and sends[1] == 1  # the first takes others' too
    monkeypatch.setattr(ServerPublisher, "_send", original)
    calls = iter([True, False])

    def gc_once(self: ServerPublisher, *args: Any) -> None:
        original(self, *args)
        if next(calls):
            Registry(home=team.home).gc()

    monkeypatch.setattr(ServerPublisher, "_send", gc_once)
    assert client.push(saved(tmp_path / "w.pt", 40), name=name, **TINY).ref == f"{name}@v1"
