"""Secrets (issue #15): a database password, AWS keys and a server token are never shown.

Every command of `registry --help` runs, succeeding and failing (a wrong
password, an unreachable catalog, a missing or unreachable bucket, a wrong
token), with REGISTRY_DEBUG unset and set to 1, against a catalog whose URL
holds a password (PostgreSQL, on a role made for the test; SQLite when
REGISTRY_TEST_DATABASE_URL is unset) and a real S3 server (moto over HTTP on
loopback) reached with distinctive keys; `registry serve` runs as a
subprocess with a token. No secret may appear in any stdout, stderr, log
line, HTTP response or exception message; with REGISTRY_DEBUG=1 a traceback
may name types, never the secrets. A token that `token create` prints, and
a webhook's HMAC secret, follow the same rule: the token is shown that once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import PG_URL, reset_postgres
from helpers import LINEAR, Server, linear_file, moto_endpoint

from registry import Registry
from registry.cli import cli
from registry.config import Settings

httpx = pytest.importorskip("httpx")
moto_server = pytest.importorskip("moto.server")
pytest.importorskip("boto3")

REGISTRY = Path(sys.executable).parent / "registry"
PASSWORD = "Pg-h2-Secr3t-9QXw"
WRONG_PASSWORD = "Pg-h2-Wr0ng-7ZKv"
KEY_ID = "AKIAH2SECRETID4242"
SECRET_KEY = "h2-aws-S3cr3t-Zz91kq"
TOKEN = "h2-serve-T0ken-Q7mm"
WRONG_TOKEN = "h2-wrong-T0ken-P3xx"
URL_SECRET = "h2-url-S3cr3t-Lb2"
HOOK_SECRET = "h2-hook-S3cr3t-Vn8"
SECRETS = [
    PASSWORD, WRONG_PASSWORD, KEY_ID, SECRET_KEY, TOKEN, WRONG_TOKEN, URL_SECRET, HOOK_SECRET
]  # fmt: skip
ROLE = "h2_secret_role"
BUCKET = "h2-secret-models"


def leaked(text: str, made: list[str] = []) -> list[str]:  # noqa: B006 (never mutated)
    return [secret for secret in SECRETS + made if secret in text]


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with moto_endpoint() as url:
        yield url


@pytest.fixture
def aws(endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    import boto3

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    client = boto3.client("s3")
    if BUCKET not in [b["Name"] for b in client.list_buckets()["Buckets"]]:
        client.create_bucket(Bucket=BUCKET)
    return endpoint


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(URL with the password, the same URL with a wrong one)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'catalog.db'}"
        yield url, url
        return
    if not PG_URL:
        pytest.skip("set REGISTRY_TEST_DATABASE_URL to check the PostgreSQL password")
    from sqlalchemy import create_engine, make_url, text

    admin = create_engine(PG_URL)
    reset_postgres(PG_URL)
    with admin.begin() as conn:
        exists = conn.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": ROLE})
        verb = "ALTER" if exists.first() else "CREATE"
        conn.execute(text(f"{verb} ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'"))
        conn.execute(text(f"GRANT ALL ON SCHEMA public TO {ROLE}"))
    base = make_url(PG_URL).set(username=ROLE)
    url = base.set(password=PASSWORD).render_as_string(hide_password=False)
    wrong = base.set(password=WRONG_PASSWORD).render_as_string(hide_password=False)
    try:
        yield url, wrong
    finally:
        reset_postgres(PG_URL)
        with admin.begin() as conn:
            conn.execute(text(f"DROP ROLE IF EXISTS {ROLE}"))
        admin.dispose()


class Transcript:
    """Every output of every command run, and which commands ran."""

    def __init__(self, debug: bool) -> None:
        self.debug = debug
        self.outputs: list[tuple[list[str], str]] = []
        self.made: list[str] = []  # tokens `token create` printed: shown that once, never again
        self.shown_once: set[int] = set()
        self.commands: set[str] = set()
        self.failures = 0

    def run(self, *args: str, env: dict[str, str] | None = None, ok: bool | None = None) -> str:
        env = {"REGISTRY_DEBUG": "1" if self.debug else "", **(env or {})}
        result = CliRunner().invoke(cli, list(args), env=env)
        text = result.stdout + result.stderr
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            text += "".join(traceback.format_exception(result.exception))  # what DEBUG prints
            text += repr(result.exception.args)
        self.outputs.append((list(args), text))
        self.commands.add(command_of(args))
        failed = result.exit_code != 0
        self.failures += failed
        if ok is not None:
            assert failed != ok, (args, result.exit_code, text[-2000:])
        return text

    def add(self, what: list[str], text: str) -> None:
        self.outputs.append((what, text))

    def make_token(self, *args: str) -> str:
        """Run `token create`, whose one output may show the token it made."""
        made = json.loads(self.run(*args, "--json", ok=True))["token"]
        self.made.append(made)
        self.shown_once.add(len(self.outputs) - 1)
        return made

    def check(self) -> None:
        found = [
            (what, leaked(text, [] if i in self.shown_once else self.made))
            for i, (what, text) in enumerate(self.outputs)
        ]
        assert [pair for pair in found if pair[1]] == []


def command_of(args: tuple[str, ...] | list[str]) -> str:
    """`push`, `db upgrade`: the command an argument list runs, skipping global options."""
    words, rest = [], list(args)
    while rest:
        word = rest.pop(0)
        if word in ("--home", "--database-url", "--store", "--cache", "--remote"):
            rest.pop(0)
        elif not word.startswith("-"):
            words.append(word)
            if word not in GROUPS:
                break
    return " ".join(words)


GROUPS = {name for name, command in cli.commands.items() if hasattr(command, "commands")}


def every_command() -> set[str]:
    import click

    names = set()
    for name, command in cli.commands.items():
        if isinstance(command, click.Group):
            names |= {f"{name} {sub}" for sub in command.commands}
        else:
            names.add(name)
    return names


@pytest.mark.long  # 15-25 s a run: 21 commands in-process, 20 failing invocations, a server
@pytest.mark.parametrize("debug", [False, True], ids=["debug-unset", "debug-1"])
def test_no_secret_in_any_output_of_any_command(
    catalog: tuple[str, str], aws: str, tmp_path: Path, debug: bool
) -> None:
    url, wrong_url = catalog
    os.chdir(tmp_path)
    t = Transcript(debug)
    store = f"s3://{BUCKET}/{tmp_path.name}"
    base = ["--home", str(tmp_path / "home"), "--database-url", url, "--store", store]
    w1, w2 = linear_file(tmp_path, 0), linear_file(tmp_path, 1)
    # what succeeds
    t.run(*base, "db", "upgrade", ok=True)
    t.run(*base, "db", "current", ok=True)
    t.run(*base, "push", str(w1), "--name", "lin", *LINEAR, "--check-input", "1,4", ok=True)
    t.run(*base, "push", str(w2), "--name", "lin", *LINEAR, "--parent", "lin@v1", ok=True)
    t.run("keys", "generate", "keys", ok=True)
    t.run(*base, "push", str(w1), "--name", "signed", *LINEAR, "--sign", "keys/private.pem",
          ok=True)  # fmt: skip
    trusting = ["--trusted-key", "keys/public.pem"]
    t.run(*base, "verify", "signed@v1", "--signature", *trusting, ok=True)
    t.run(*base, "pull", "signed@v1", "-o", "signed.pth", "--with-signature", *trusting, ok=True)
    t.run(*base, "load", "lin@v1", *trusting, ok=False)  # unsigned
    t.run(*base, "ls", ok=True)
    t.run(*base, "ls", "lin", "--json", ok=True)
    t.run(*base, "show", "lin@v2", ok=True)
    t.run(*base, "lineage", "lin@v2", ok=True)
    t.run(*base, "diff", "lin@v2", ok=True)
    t.run(*base, "check", "lin@v1", ok=True)
    t.run(*base, "load", "lin@v1", "--input-shape", "1,4", ok=True)
    t.run(*base, "pull", "lin@v1", "-o", "pulled.pth", ok=True)
    t.run(*base, "alias", "lin@v1", "prod", ok=True)
    t.run(*base, "alias", "--delete", "lin", "prod", ok=True)
    t.run(*base, "tag", "lin@v1", "k=v", ok=True)
    t.run(*base, "describe", "lin@v1", "A *linear* model.", ok=True)
    t.run(*base, "log", ok=True)
    t.run(*base, "log", "lin", "--json", ok=True)
    writer = t.make_token(*base, "token", "create", "ci-bot", "--scope", "write", "--models", "lin")
    t.make_token(*base, "token", "create", "gone", "--expires", "1d")
    t.run(*base, "token", "ls", ok=True)
    t.run(*base, "token", "revoke", "gone", ok=True)
    hook = t.run(*base, "hook", "add", "http://127.0.0.1:1/hook", "--secret-env", "H2_HOOK_SECRET",
                 "--json", env={"H2_HOOK_SECRET": HOOK_SECRET}, ok=True)  # fmt: skip
    t.run(*base, "hook", "ls", ok=True)
    t.run(*base, "hook", "rm", str(json.loads(hook)["id"]), ok=True)
    t.run(*base, "verify", ok=True)
    t.run(*base, "export", "--all", "-o", "b.tar", ok=True)
    t.run(*base, "import", "b.tar", ok=True)
    t.run(*base, "cache", "prune", "--dry-run", ok=True)
    t.run(*base, "rm", "lin@v2", ok=True)
    t.run(*base, "gc", ok=True)
    t.run("--help", ok=True)
    # what fails: wrong password, unreachable catalog, bucket missing or unreachable
    t.run("--database-url", wrong_url, "--store", store, "ls", ok=url == wrong_url)
    t.run("--database-url", wrong_url, "--store", store, "db", "upgrade", ok=url == wrong_url)
    unreachable = f"postgresql://h2user:{PASSWORD}@127.0.0.1:1/registry"
    for command in (
        ["ls"],
        ["show", "lin@v1"],
        ["db", "current"],
        ["gc"],
        ["push", str(w1), *LINEAR],
    ):
        t.run("--database-url", unreachable, "--store", store, *command, ok=False)  # fmt: skip
    t.run(*base[:4], "--store", "s3://no-such-h2-bucket/x", "push", str(w1), *LINEAR, ok=False)
    cold = ["--cache", str(tmp_path / "cold")]
    down = {"AWS_ENDPOINT_URL": "http://127.0.0.1:1", "AWS_MAX_ATTEMPTS": "1"}
    t.run(*base, *cold, "pull", "lin@v1", "-o", "x.pth", env=down, ok=False)
    t.run(*base, *cold, "verify", env=down, ok=False)
    t.run(*base, *cold, "export", "--all", "-o", "c.tar", env=down, ok=False)
    t.run(*base[:4], "--store", f"s3://me:{URL_SECRET}@{BUCKET}/x", "gc", ok=False)
    t.run(*base, "show", "lin@v9", ok=False)
    t.run(*base, "import", "pulled.pth", ok=False)
    # the server: its output, its log and its answers, and clients with right and wrong tokens
    server = Server(
        tmp_path / "home", "--token", TOKEN, options=["--database-url", url, "--store", store],
        env={"REGISTRY_DEBUG": "1" if debug else ""},
    )  # fmt: skip
    t.commands.add("serve")
    try:
        login = httpx.get(f"{server.url}/?token={TOKEN}", timeout=30)
        assert login.status_code == 303 and login.headers["set-cookie"].startswith("registry_")
        bearer, wrong = (
            {"Authorization": f"Bearer {TOKEN}"},
            {"Authorization": f"Bearer {WRONG_TOKEN}"},
        )
        answers = [
            httpx.get(f"{server.url}/api/models", headers=bearer),
            httpx.get(f"{server.url}/api/files/lin@v1", headers=bearer),
            httpx.get(f"{server.url}/api/models", headers=wrong),
            httpx.get(f"{server.url}/?token={WRONG_TOKEN}"),
            httpx.get(f"{server.url}/refs/lin@v1?token={TOKEN}", cookies={"registry_token": TOKEN}),
            httpx.get(f"{server.url}/api/refs/lin@v9", headers=bearer),
        ]
        assert [a.status_code for a in answers] == [200, 200, 401, 303, 200, 404]
        for answer in answers:
            t.add(["GET", str(answer.url).replace(TOKEN, "T").replace(WRONG_TOKEN, "W")],
                  answer.text + str(answer.headers))  # fmt: skip
        remote = ["--home", str(tmp_path / "client"), "--remote", server.url]
        good, bad = {"REGISTRY_TOKEN": TOKEN}, {"REGISTRY_TOKEN": WRONG_TOKEN}
        t.run(*remote, "ls", env=good, ok=True)
        t.run(*remote, "show", "lin@v1", env=good, ok=True)
        t.run(*remote, "pull", "lin@v1", "-o", "remote.pth", env=good, ok=True)
        t.run(*remote, "push", str(w1), *LINEAR, env=good, ok=False)  # a read token
        write = {"REGISTRY_TOKEN": writer}
        t.run(*remote, "push", str(w2), "--name", "lin", *LINEAR, env=write, ok=True)
        t.run(*remote, "push", str(w2), "--name", "lin", *LINEAR, "--sign", "keys/private.pem",
              env=write, ok=True)  # fmt: skip
        t.run(*remote, "describe", "lin@v1", "Through the server.", env=write, ok=True)
        t.run(*remote, "log", "lin", env=write, ok=True)
        t.run(*remote, "rm", "lin@v1", env=write, ok=False)  # write is not admin
        t.run(*remote, "ls", env=bad, ok=False)
        t.run(*remote, "pull", "lin@v1", "-o", "r2.pth", env=bad, ok=False)
        t.run(*remote, "ls", env={}, ok=False)
        with_token = server.url.replace("http://", f"http://u:{TOKEN}@")
        t.run("--home", str(tmp_path / "client"), "--remote", with_token, "ls", ok=False)
        t.run("--home", str(tmp_path / "client"), "--remote", f"{server.url}?token={TOKEN}", "ls",
              ok=False)  # fmt: skip
    finally:
        log = server.stop()
    t.add(["serve"], log)
    assert "GET /api/models 401" in log and "GET / 303" in log  # the access log is on
    dead = ["--home", str(tmp_path / "client"), "--remote", server.url]
    t.run(*dead, "ls", env={"REGISTRY_TOKEN": TOKEN}, ok=False)  # the server is gone
    t.run(*base, "token", "revoke", "ci-bot", ok=True)
    t.run(*base, "serve", "--host", "0.0.0.0", ok=False)  # no token, none in the catalog: refused
    assert t.commands >= every_command(), every_command() - t.commands
    assert t.failures >= 15
    t.check()


def test_settings_and_registry_reprs_mask_the_password(tmp_path: Path) -> None:
    url = f"postgresql://me:{PASSWORD}@127.0.0.1:1/registry"
    settings = Settings.resolve(home=tmp_path, database_url=url)
    reg = Registry(home=tmp_path, database_url=url)
    remote = Registry(home=tmp_path, remote="http://127.0.0.1:1", token=TOKEN)
    shown = [repr(settings), str(settings), repr(reg), repr(remote), repr(remote.settings)]
    assert [leaked(text) for text in shown] == [[]] * len(shown), shown
    assert "me:***@127.0.0.1:1" in repr(settings)


def test_a_real_traceback_under_debug_names_types_not_secrets(
    catalog: tuple[str, str], tmp_path: Path
) -> None:
    """The installed command, REGISTRY_DEBUG=1, a wrong password: a traceback, no password."""
    url, wrong = catalog
    if url == wrong:
        pytest.skip("SQLite URLs hold no password")
    result = subprocess.run(
        [str(REGISTRY), "--database-url", wrong, "--home", str(tmp_path), "ls"],
        env={**os.environ, "REGISTRY_DEBUG": "1"}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1 and "Traceback" in result.stderr
    assert "DatabaseError" in result.stderr
    assert leaked(result.stdout + result.stderr) == [], result.stderr
