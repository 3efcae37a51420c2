"""The S3 store when its server fails: stopped mid-transfer, refusing credentials, raced.

Every fault is real and reaches boto3 over HTTP; nothing is patched in-process.
A stopped server is moto served by werkzeug in this process: at the chosen
request it stops listening and drops that request's connection mid-transfer,
as a server that goes down does, and `start` brings it back on the same port
with its data, as a restarted server. Credentials are checked by a moto server
in its own process with moto's IAM auth switched on, since that switch is
global to the process that serves.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from test_reliability import run_processes, sha256_of, tiny_file
from test_s3 import ARCH, ARGS, SECRET, aws, bucket, closed_port, objects, team
from torch import nn

from registry import Registry, StorageError
from registry.cli import cli

pytest.importorskip("boto3")
moto_server = pytest.importorskip("moto.server")

__all__ = ["aws", "bucket", "team"]  # test_s3's fixtures, served here by this module's `endpoint`

# 9.4 MB of float32: above boto3's 8 MiB threshold, so a multipart upload of two parts.
BIG_ARCH = "torch.nn:Linear"
BIG_ARGS = {"in_features": 1536, "out_features": 1536}
BIG_CLI_ARGS = ["--arch", BIG_ARCH, "--arg", "in_features=1536", "--arg", "out_features=1536"]
MEGABYTE = 1 << 20


class StoppableServer:
    """moto on loopback that stops in the middle of a chosen request and starts again.

    `fault` names the request to stop at: "upload" (the first part of a
    multipart upload, a megabyte of it received) or "download" (a blob's GET,
    a megabyte of it sent). Stopping closes the listening socket, so retries
    are refused, and drops that request's connection. moto keeps its data in
    this process, so after `start` the server holds what it held.
    """

    def __init__(self) -> None:
        self.app = moto_server.DomainDispatcherApplication(moto_server.create_backend_app)
        self.port = 0
        self.fault: str | None = None
        self._server: Any = None
        self._lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        from werkzeug.serving import make_server

        self.port = self.port or port_outside_the_ephemeral_range()
        listening = _listen(self.port)
        try:  # werkzeug takes its own copy of the socket
            self._server = make_server(
                "127.0.0.1", self.port, self._serve, threaded=True, fd=listening.fileno()
            )
        finally:
            listening.close()
        serve = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )  # a stop waits for the next poll
        serve.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def _serve(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        method, query = environ["REQUEST_METHOD"], environ.get("QUERY_STRING", "")
        if method == "PUT" and "partNumber=" in query and self._due("upload"):
            environ["wsgi.input"].read(MEGABYTE)
            self._go_down(environ)
            start_response("503 Service Unavailable", [])  # never sent: the socket is gone
            return []
        body = self.app(environ, start_response)
        if method == "GET" and "/sha256/" in environ["PATH_INFO"] and self._due("download"):
            data = b"".join(body)

            def first_megabyte() -> Iterator[bytes]:
                yield data[:MEGABYTE]
                self._go_down(environ)

            return first_megabyte()
        return body

    def _due(self, fault: str) -> bool:
        """Whether this request is the one to stop at (only the first of parallel ones)."""
        with self._lock:
            if self.fault != fault:
                return False
            self.fault = None
            return True

    def _go_down(self, environ: dict[str, Any]) -> None:
        self.stop()
        environ["werkzeug.socket"].shutdown(socket.SHUT_RDWR)


def _listen(port: int, patience_s: float = 10.0) -> socket.socket:
    """A socket listening on loopback `port`, tried again while the port is still taken.

    A restart takes the port the clients know. Right after a stop, the old
    server's last connections can still be closing; werkzeug's own bind would
    give up at once (it exits the process), so the socket is made here.
    """
    deadline = time.monotonic() + patience_s
    while True:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen(128)
            return sock
        except OSError as exc:
            sock.close()
            if exc.errno != errno.EADDRINUSE or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def port_outside_the_ephemeral_range() -> int:
    """A free loopback port below the kernel's range for outgoing connections.

    While the server is down, a client retrying a connect to a port in that range
    can be given the port itself as its own end, and TCP then connects the socket
    to itself: it holds the port, and the restart fails with EADDRINUSE.
    """
    ranges = Path("/proc/sys/net/ipv4/ip_local_port_range")
    low = int(ranges.read_text().split()[0]) if ranges.exists() else 32768
    for port in random.Random().sample(range(10_000, low), 200):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise AssertionError(f"no free port between 10000 and {low}")


@pytest.fixture
def server() -> Iterator[StoppableServer]:
    server = StoppableServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def endpoint(server: StoppableServer) -> str:
    """test_s3's fixtures (`aws`, `bucket`, `team`) on this test's own server."""
    return server.endpoint


def big_model() -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(**BIG_ARGS)


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


# -- the server stops mid-transfer ----------------------------------------------------------


def test_a_push_cut_off_mid_upload_records_nothing_and_succeeds_once_the_server_is_back(
    server: StoppableServer, team: Registry, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No version, no visible object; the same push then works, and gc aborts the leftover."""
    import boto3

    from registry.stores import s3 as s3store

    big = big_model()
    server.fault = "upload"
    with pytest.raises(StorageError) as caught:
        team.push(big, arch=BIG_ARCH, name="big", arch_args=BIG_ARGS)
    assert str(caught.value) == (
        f"store s3://{bucket}/team/ at 127.0.0.1:{server.port}: "
        "Could not connect to the endpoint URL"
    )
    assert team.models() == []
    assert files_under(team.settings.cache) == []  # neither a cached blob nor a temp file

    server.start()
    client = boto3.client("s3")
    assert objects(bucket) == {}
    assert len(client.list_multipart_uploads(Bucket=bucket)["Uploads"]) == 1  # never completed
    version = team.push(big, arch=BIG_ARCH, name="big", arch_args=BIG_ARGS)
    assert version.version == 1
    assert objects(bucket) == {f"team/sha256/{version.sha256}": version.size}
    monkeypatch.setattr(s3store, "STALE_UPLOAD", s3store.timedelta(0))
    assert team.gc().temp_files == 1
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert team.verify() == []


def test_cli_push_cut_off_mid_upload_is_one_error_line(
    server: StoppableServer, bucket: str, tmp_path: Path
) -> None:
    path = tmp_path / "big.pt"
    torch.save(big_model().state_dict(), path)
    home = str(tmp_path / "me")
    server.fault = "upload"
    result = CliRunner().invoke(
        cli,
        ["--home", home, "--store", f"s3://{bucket}/team", "push", str(path), *BIG_CLI_ARGS],
        catch_exceptions=False,  # a traceback fails the test
    )
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == (
        f"Error: store s3://{bucket}/team/ at 127.0.0.1:{server.port}: "
        "Could not connect to the endpoint URL\n"
    )
    assert Registry(home=home).models() == []


def test_a_pull_cut_off_mid_download_leaves_no_file_and_succeeds_once_the_server_is_back(
    server: StoppableServer, team: Registry, bucket: str, tmp_path: Path
) -> None:
    """Nothing at the destination, nothing in the cold cache; then the pull is bit-exact."""
    path = tmp_path / "big.pt"
    torch.save(big_model().state_dict(), path)
    version = team.push(path, arch=BIG_ARCH, name="big", arch_args=BIG_ARGS)
    cold = Registry(
        home=tmp_path / "cold", store=team.store.location, database_url=team.settings.database_url
    )  # another machine: its cache has never seen the blob
    out = tmp_path / "out" / "big.pt"
    server.fault = "download"
    with pytest.raises(StorageError) as caught:
        cold.pull(version.ref, out)
    assert str(caught.value) == (
        f"store s3://{bucket}/team/ at 127.0.0.1:{server.port}: "
        f"the connection closed after {MEGABYTE} of {version.size} bytes"
    )
    assert files_under(out.parent) == []
    assert files_under(cold.settings.cache) == []

    server.start()
    assert cold.pull(version.ref, out).read_bytes() == path.read_bytes()
    assert files_under(cold.settings.cache) == [f"sha256/{version.sha256[:2]}/{version.sha256}"]
    cold.close()


# -- credentials ----------------------------------------------------------------------------

GUARDED = "guarded-models"
UNKNOWN_KEY = "AKIAIOSFODNN7EXAMPLE"
# AWS asks s3:ListBucket for a HEAD of the bucket and s3:GetObject for a HEAD of an object;
# moto asks s3:HeadBucket, and (5.2.6 here) the operation's own name, s3:HeadObject.
POLICIES = {
    "reader": ["s3:GetObject", "s3:ListBucket", "s3:HeadBucket", "s3:HeadObject"],
    "writer": ["s3:*"],
}
DENIED = (
    "access denied ({code}): check the credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
    "AWS_PROFILE) and that they may use this bucket"
)


@pytest.fixture(scope="module")
def guarded() -> Iterator[tuple[str, dict[str, tuple[str, str]]]]:
    """A moto server that checks every request's signature and permissions.

    Its endpoint, and the (key id, secret) of a user who may only read the bucket
    and of one who may write. moto checks requests once its request count reaches
    settings.INITIAL_NO_AUTH_ACTION_COUNT (from the environment at import,
    unlimited by default); POST /moto-api/reset-auth sets it, once the bucket and
    the users exist.
    """
    import boto3

    port = closed_port()
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_for_port(port)
        admin = {"endpoint_url": endpoint, "region_name": "us-east-1",
                 "aws_access_key_id": "admin", "aws_secret_access_key": "admin"}  # fmt: skip
        boto3.client("s3", **admin).create_bucket(Bucket=GUARDED)
        iam, keys = boto3.client("iam", **admin), {}
        for user, actions in POLICIES.items():
            iam.create_user(UserName=user)
            statement = {"Effect": "Allow", "Action": actions, "Resource": "*"}
            policy = {"Version": "2012-10-17", "Statement": [statement]}
            iam.put_user_policy(UserName=user, PolicyName="s3", PolicyDocument=json.dumps(policy))
            key = iam.create_access_key(UserName=user)["AccessKey"]
            keys[user] = (key["AccessKeyId"], key["SecretAccessKey"])
        checked = urllib.request.Request(
            f"{endpoint}/moto-api/reset-auth", data=b"0", headers={"Content-Type": "text/plain"}
        )
        urllib.request.urlopen(checked).close()
        yield endpoint, keys
    finally:
        process.kill()
        process.wait()


def wait_for_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline, f"no server on port {port}"
            time.sleep(0.05)


def use(endpoint: str, key_id: str, secret: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point the standard AWS environment at `endpoint` with these credentials."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    return tiny_file(tmp_path, seed=0)


def store_error(endpoint: str, reason: str) -> str:
    """The one line that a failure of the guarded bucket reads."""
    return f"store s3://{GUARDED}/team/ at {endpoint.removeprefix('http://')}: {reason}"


def cli_push(path: Path, database_url: str) -> Any:
    return CliRunner().invoke(
        cli,
        ["--database-url", database_url, "--store", f"s3://{GUARDED}/team", "push", str(path),
         "--arch", ARCH, "--arg", "width=4", "--arg", "num_classes=5"],
        catch_exceptions=False,  # a traceback fails the test
    )  # fmt: skip


@pytest.mark.parametrize("wrong", ["unknown key id", "wrong secret"])
def test_wrong_credentials_are_one_error_line_without_the_secret_and_record_nothing(
    guarded: tuple[str, dict[str, tuple[str, str]]],
    wrong: str,
    checkpoint: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An unknown key id or a known one with a wrong secret: refused before any upload."""
    endpoint, keys = guarded
    key_id = UNKNOWN_KEY if wrong == "unknown key id" else keys["writer"][0]
    use(endpoint, key_id, SECRET, monkeypatch)
    catalog = f"sqlite:///{tmp_path / 'catalog.db'}"
    result = cli_push(checkpoint, catalog)
    assert (result.exit_code, result.stdout) == (1, "")
    denied = DENIED.format(code="403")  # a HEAD's error has no body, so no S3 error code
    assert result.stderr == f"Error: {store_error(endpoint, denied)}\n"
    reg = Registry(database_url=catalog, store=f"s3://{GUARDED}/team")
    assert reg.models() == []
    assert SECRET not in result.output and SECRET not in repr(reg)
    reg.close()


def test_credentials_that_may_only_read_cannot_push_but_can_pull(
    guarded: tuple[str, dict[str, tuple[str, str]]],
    checkpoint: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The upload's AccessDenied is one line too (boto3 wraps it in S3UploadFailedError)."""
    endpoint, keys = guarded
    catalog = f"sqlite:///{tmp_path / 'catalog.db'}"
    use(endpoint, *keys["reader"], monkeypatch)
    result = cli_push(checkpoint, catalog)
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == f"Error: {store_error(endpoint, DENIED.format(code='AccessDenied'))}\n"
    assert keys["reader"][1] not in result.output

    use(endpoint, *keys["writer"], monkeypatch)  # the server takes right credentials
    assert cli_push(checkpoint, catalog).exit_code == 0
    use(endpoint, *keys["reader"], monkeypatch)
    reader = Registry(home=tmp_path / "reader", database_url=catalog, store=f"s3://{GUARDED}/team")
    [version] = reader.search()
    assert reader.pull(version.ref, tmp_path / "back.pt").read_bytes() == checkpoint.read_bytes()
    reader.close()


def test_missing_credentials_are_one_line_saying_what_to_set(
    guarded: tuple[str, dict[str, tuple[str, str]]],
    tiny_model: nn.Module,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    endpoint, _ = guarded
    use(endpoint, "", "", monkeypatch)  # then no credentials anywhere botocore looks:
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance to ask, no wait
    reg = Registry(home=tmp_path / "me", store=f"s3://{GUARDED}/team")
    with pytest.raises(StorageError) as caught:
        reg.push(tiny_model, arch=ARCH, name="tiny", arch_args=ARGS)
    assert str(caught.value) == store_error(
        endpoint,
        "Unable to locate credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
        "or AWS_PROFILE",
    )
    assert reg.models() == []
    reg.close()


# -- concurrency ----------------------------------------------------------------------------

MACHINES = 8


def _push_from_a_machine(
    environment: dict[str, str], database_url: str, store: str, home: str, path: str
) -> tuple[int, str]:
    # A forkserver started by an earlier test has an older environment: set this one's.
    os.environ.update(environment)
    reg = Registry(home=home, database_url=database_url, store=store)
    try:
        version = reg.push(path, arch=ARCH, name="shared", arch_args=ARGS)
    finally:
        reg.close()
    return version.version, version.sha256


def test_eight_machines_pushing_to_one_model_get_versions_one_to_eight(
    team: Registry, bucket: str, database_url: str, tmp_path: Path
) -> None:
    """Eight processes, each with its own cache, race through one catalog and one bucket."""
    import boto3

    team.models()  # the catalog exists: a concurrent first use is test_reliability's
    paths = [tiny_file(tmp_path, seed) for seed in range(MACHINES)]
    environment = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    jobs = [
        (_push_from_a_machine, (environment, database_url, team.store.location,
                                str(tmp_path / f"machine-{i}"), str(path)))
        for i, path in enumerate(paths)
    ]  # fmt: skip
    results = run_processes(jobs, timeout=120)
    assert sorted(number for number, _ in results) == list(range(1, MACHINES + 1))
    assert [digest for _, digest in results] == [sha256_of(p) for p in paths]
    recorded = {v.sha256 for v in team.versions("shared")}
    client = boto3.client("s3")
    stored = {
        key.rpartition("/")[2]: hashlib.sha256(
            client.get_object(Bucket=bucket, Key=key)["Body"].read()
        ).hexdigest()
        for key in objects(bucket)
    }
    assert len(recorded) == MACHINES
    assert stored == {digest: digest for digest in recorded}  # complete, and what was recorded
    assert team.verify() == []
