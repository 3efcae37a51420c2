"""Losing a dependency mid-operation (issue #15): the catalog, the server, the disk.

Every fault is real: PostgreSQL is restarted with `pg_ctlcluster` while a
push's transaction is open, `registry serve` runs as a subprocess and is
SIGKILLed while a client (the installed `registry` command) streams a file
from it, the client SIGKILLs itself at the `remote-fill` point of
`src/registry/faults.py`, and a full disk is RLIMIT_FSIZE in the child.

The S3 server stopped mid-upload and mid-download, then started again with
the same client process retrying, is `tests/test_s3_faults.py`'s.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from conftest import IN_CI, PG_URL, reset_postgres
from helpers import Server
from sqlalchemy import Engine, event
from test_reliability import (
    ARCH,
    ARGS,
    KILL_AT,
    REGISTRY,
    SMALL_DISK,
    blobs_on_disk,
    one_error_line,
    referenced,
    sha256_of,
    temp_files,
    tiny_file,
)

from registry import Registry
from registry.cli import cli
from registry.db import parse_url, safe_url

pytest.importorskip("httpx")
pytest.importorskip("starlette")

# 32 MB of float32: more than loopback's socket buffers, so a server killed mid-way
# has not sent it all, and 8 times the small disk's file size limit.
IN, OUT = 2048, 4096
WEIGHT_BYTES = IN * OUT * 4
LINEAR = {"arch": "torch.nn:Linear", "arch_args": {"in_features": IN, "out_features": OUT}}


# -- PostgreSQL restarted mid-push -----------------------------------------------------------


@pytest.fixture
def restartable_postgres() -> Iterator[tuple[str, list[str]]]:
    """The test catalog's URL and the command that restarts its PostgreSQL cluster.

    The cluster is the local one (`pg_lsclusters`) that listens on the URL's
    port. Restarting it cuts every session of every user, so outside CI (where
    the suite runs alone) it is restarted only when REGISTRY_TEST_RESTART_POSTGRES=1.
    """
    if not PG_URL:
        if IN_CI:
            pytest.fail("REGISTRY_TEST_DATABASE_URL is not set: CI must test PostgreSQL")
        pytest.skip("set REGISTRY_TEST_DATABASE_URL to run the PostgreSQL tests")
    if not IN_CI and os.environ.get("REGISTRY_TEST_RESTART_POSTGRES") != "1":
        pytest.skip(
            "restarting PostgreSQL cuts its other users off; "
            "set REGISTRY_TEST_RESTART_POSTGRES=1 (CI restarts it)"
        )
    url = parse_url(PG_URL)
    if url.host not in ("127.0.0.1", "localhost", "::1"):
        pytest.skip(f"PostgreSQL at {url.host} is not on this machine: it cannot be restarted")
    if os.geteuid() != 0:
        pytest.skip("restarting PostgreSQL needs root")
    if shutil.which("pg_lsclusters") is None:
        pytest.skip("pg_lsclusters is missing: no Debian PostgreSQL cluster to restart")
    listed = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True)
    port = str(url.port or 5432)
    clusters = [line.split() for line in listed.stdout.splitlines()]
    found = [c for c in clusters if len(c) > 3 and c[2] == port and c[3] == "online"]
    if not found:
        pytest.skip(f"no online cluster listens on port {port} (pg_lsclusters)")
    version, name = found[0][:2]
    reset_postgres(PG_URL)
    yield PG_URL, ["pg_ctlcluster", version, name, "restart"]
    # Whatever happened, leave the cluster running.
    subprocess.run(["pg_ctlcluster", version, name, "start"], capture_output=True)


def restart(command: list[str]) -> float:
    """Restart the cluster (fast mode: open sessions are cut); the seconds it took."""
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return time.monotonic() - started


def test_postgres_restarted_mid_push_is_one_line_records_nothing_and_the_retry_succeeds(
    restartable_postgres: tuple[str, list[str]], tmp_path: Path
) -> None:
    """The restart lands inside the push's transaction, after its version row is written.

    A Registry opened before the restart, whose pooled connection the restart
    killed, carries on without being reopened (`pool_pre_ping`).
    """
    url, command = restartable_postgres
    store = tmp_path / "blobs"
    reg = Registry(database_url=url, store=store)  # a long-lived client: pooled connections
    first = reg.push(tiny_file(tmp_path, 1), arch=ARCH, name="tiny", arch_args=ARGS)
    second = tiny_file(tmp_path, 2)
    restarts: list[float] = []

    def restart_before_the_manifest(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if statement.startswith("INSERT INTO tensors") and not restarts:
            restarts.append(restart(command))

    event.listen(Engine, "before_cursor_execute", restart_before_the_manifest)
    try:
        result = CliRunner().invoke(
            cli,
            ["--database-url", url, "--store", str(store), "push", str(second), "--name", "tiny",
             "--arch", ARCH, "--arg", "width=4", "--arg", "num_classes=5", "--tag", "k=v"],
            catch_exceptions=False,  # a traceback fails the test
        )  # fmt: skip
    finally:
        event.remove(Engine, "before_cursor_execute", restart_before_the_manifest)
    assert len(restarts) == 1, "the push never reached its manifest"
    assert (result.exit_code, result.stdout) == (1, ""), result.output
    error = one_error_line(result.stderr)
    assert error.startswith(f"Error: catalog {safe_url(url)}: "), error  # password masked
    assert f":{parse_url(url).password}@" not in error

    # Nothing half-recorded: the same catalog as before, and no row of the cut push.
    assert reg.search() == [first]  # the first call after the restart: no error
    assert reg.models()[0].num_versions == 1
    assert reg.verify() == []
    assert sha256_of(second) in blobs_on_disk(store)  # placed before the commit that was cut
    assert temp_files(store) == []

    # The retry, from the same process and Registry, gets the number the cut push did not.
    again = reg.push(second, arch=ARCH, name="tiny", arch_args=ARGS, tags={"k": "v"})
    assert (again.version, again.sha256, again.tags) == (2, sha256_of(second), {"k": "v"})
    assert [t.name for t in reg.tensors(again.ref)] == [t.name for t in reg.tensors(first.ref)]
    assert reg.gc().blobs == 0 and blobs_on_disk(store) == referenced(reg)
    reg.close()


# -- `registry serve` killed, the client killed, the disk full -------------------------------


@pytest.fixture(scope="module")
def served_home(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A home holding `big` (32 MB) and `small` (a few kB); and each one's sha256."""
    home = tmp_path_factory.mktemp("served")
    reg = Registry(home=home)
    torch.manual_seed(0)
    big = {"weight": torch.randn(OUT, IN), "bias": torch.randn(OUT)}
    digests = {"big": reg.push(big, name="big", **LINEAR).sha256}
    small = {"arch": "torch.nn:Linear", "arch_args": {"in_features": 8, "out_features": 4}}
    digests["small"] = reg.push(torch.nn.Linear(8, 4), name="small", **small).sha256
    reg.close()
    return home, digests


@pytest.fixture
def server(served_home: tuple[Path, dict[str, str]]) -> Iterator[Server]:
    running = Server(served_home[0])
    yield running
    running.stop()


def client(url: str, *args: str, home: str = "client") -> list[str]:
    """The installed command, reading through the server at `url` from its own home."""
    return [str(REGISTRY), "--home", home, "--remote", url, *args]


def client_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    return {**env, **extra}


def files_under(folder: Path) -> list[str]:
    if not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def cached(digest: str) -> str:
    return f"sha256/{digest[:2]}/{digest}"


def sha256_of_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def wait_for_bytes(folder: Path, at_least: int, process: subprocess.Popen, timeout: float) -> None:
    """Wait until a temp file in `folder` holds `at_least` bytes (the download is under way)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sizes = [p.stat().st_size for p in folder.glob("*.part")] if folder.is_dir() else []
        if any(size >= at_least for size in sizes):
            return
        assert process.poll() is None, "the client finished before the fault"
        time.sleep(0.001)
    raise AssertionError(f"no temp file of {at_least} bytes in {folder} within {timeout} s")


def test_server_killed_mid_pull_is_one_line_leaves_nothing_and_the_retry_is_bit_exact(
    served_home: tuple[Path, dict[str, str]],
) -> None:
    """SIGKILL of `registry serve` once 1 MiB of 32 MB reached the pull's temp file."""
    home, digests = served_home
    server = Server(home)
    pull = subprocess.Popen(
        client(server.url, "pull", "big", "-o", "out/"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=client_env(),
    )  # fmt: skip
    try:
        wait_for_bytes(Path("out"), 1 << 20, pull, timeout=60)
        pull.send_signal(signal.SIGSTOP)  # the server dies with the file half sent
        server.kill()
        pull.send_signal(signal.SIGCONT)
        out, err = pull.communicate(timeout=120)
    finally:
        if pull.poll() is None:
            pull.kill()
    assert (pull.returncode, out) == (1, ""), err
    assert one_error_line(err).startswith(
        f"Error: cannot reach registry server {server.url}: connection refused (big@v1 stopped "
        "after "
    )
    assert files_under(Path("out")) == []  # neither big-v1.pt nor its temp file
    assert files_under(Path("client/cache")) == []  # nothing a later read could trust

    again = Server(home)  # restarted: the same command succeeds, bit-exact
    try:
        done = subprocess.run(
            client(again.url, "pull", "big", "-o", "out/"),
            capture_output=True, text=True, env=client_env(), timeout=120,
        )  # fmt: skip
    finally:
        again.stop()
    assert (done.returncode, done.stderr) == (0, "")
    assert sha256_of(Path("out/big-v1.pt")) == digests["big"]
    assert files_under(Path("client/cache")) == [cached(digests["big"])]


def test_client_killed_mid_fill_leaves_a_temp_file_the_next_load_reclaims(
    server: Server, served_home: tuple[Path, dict[str, str]]
) -> None:
    """SIGKILL at `remote-fill` (half the blob in the cache's temp file); then the same load."""
    digests = served_home[1]
    killed = subprocess.run(
        client(server.url, "load", "big"),
        capture_output=True, text=True, env=client_env(**{KILL_AT: "remote-fill"}), timeout=120,
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    left = files_under(Path("client/cache"))
    assert len(left) == 1 and left[0].startswith("tmp/") and left[0].endswith(".part"), left
    size = Path("client/cache", left[0]).stat().st_size
    assert WEIGHT_BYTES // 2 <= size < WEIGHT_BYTES  # really half-way

    done = subprocess.run(
        client(server.url, "load", "big"), capture_output=True, text=True, env=client_env(),
        timeout=120,
    )  # fmt: skip
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    assert files_under(Path("client/cache")) == [cached(digests["big"])]  # temp file reclaimed
    assert sha256_of(Path("client/cache", cached(digests["big"]))) == digests["big"]


def test_full_disk_while_pulling_through_a_server_is_one_line_and_keeps_the_cache(
    server: Server, served_home: tuple[Path, dict[str, str]]
) -> None:
    """RLIMIT_FSIZE of 4 MiB in the client: the 32 MB pull fails, the cache stays valid."""
    digests = served_home[1]
    assert subprocess.run(client(server.url, "load", "small"), env=client_env(),
                          capture_output=True).returncode == 0  # fmt: skip
    small = Path("client/cache", cached(digests["small"])).read_bytes()
    full = subprocess.run(
        [sys.executable, "-c", SMALL_DISK, *client(server.url, "pull", "big", "-o", "out/")],
        capture_output=True, text=True, env=client_env(), timeout=120,
    )  # fmt: skip
    assert (full.returncode, full.stdout) == (1, ""), full.stderr
    assert one_error_line(full.stderr) == (
        f"Error: cannot write {Path('out/big-v1.pt').absolute()}: File too large\n"
    )
    assert files_under(Path("out")) == []  # no big-v1.pt, no temp file
    assert files_under(Path("client/cache")) == [cached(digests["small"])]
    assert sha256_of_bytes(small) == digests["small"]

    # With room again, the same pull fills the cache beside the entry that was there.
    done = subprocess.run(
        client(server.url, "pull", "big", "-o", "out/"),
        capture_output=True, text=True, env=client_env(), timeout=120,
    )  # fmt: skip
    assert (done.returncode, done.stderr) == (0, "")
    assert sha256_of(Path("out/big-v1.pt")) == digests["big"]
    assert files_under(Path("client/cache")) == sorted(cached(d) for d in digests.values())
