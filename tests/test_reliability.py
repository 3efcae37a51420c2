"""Reliability (issue #5): concurrency, crash safety, tampering, storage faults, hostile input.

docs/reliability.md maps every guarantee to the test here that proves it.

Concurrent workers are OS processes started by multiprocessing's forkserver:
each is a fresh process forked from a clean server (never from pytest) that
imported torch once, so sixteen workers cost one torch import, not sixteen,
on a two-core machine. Each opens its own engine and store, and a barrier
releases them all at once. Crash tests run the installed `registry` command
and let it SIGKILL itself at the points of `registry.faults`, or kill it
from outside.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import queue
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import torch
from alembic.script import ScriptDirectory
from click.testing import CliRunner
from conftest import IN_CI, PG_URL, TINY_MODELS
from helpers import TINY_ARCH, TINY_CLI, tiny_file
from helpers import TINY_ARGS as TINY_MODEL_ARGS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, MetaData, inspect, select, text

from registry import IntegrityError, InvalidReferenceError, ModelVersion, Registry, db, faults
from registry.cli import cli

ARCH, ARGS, TINY_ARGS = TINY_ARCH, TINY_MODEL_ARGS, TINY_CLI  # as other suites import them
# A TinyNet of 41 MB (a 1024 x 10000 head): five 8 MiB copy chunks, so "half-way" is real.
BIG_ARGS = {"width": 1024, "num_classes": 10_000}
REGISTRY = Path(sys.executable).parent / "registry"
KILL_AT = "REGISTRY_TEST_KILL_AT"
PUSH_POINTS = [point for point in faults.POINTS if point.startswith("push-")]
SECRET = "s3cr3t-pw"
UNREACHABLE = f"postgresql://registry:{SECRET}@127.0.0.1:1/registry"
EMPTY_LS = "NAME  VERSIONS  LATEST  SIZE  UPDATED  ALIASES\n"


# -- helpers ------------------------------------------------------------------------------


def push_tiny(reg: Registry, folder: Path, seed: int, name: str = "tiny", **kwargs: Any):
    return reg.push(tiny_file(folder, seed), arch=ARCH, name=name, arch_args=ARGS, **kwargs)


def push_big(path: Path) -> list[str]:
    """The CLI arguments that push the big TinyNet checkpoint at `path` as model `tiny`."""
    return ["push", str(path), "--name", "tiny", "--arch", ARCH,
            "--arg", "width=1024", "--arg", "num_classes=10000"]  # fmt: skip


def sha256_of(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def blobs_on_disk(store: Path) -> set[str]:
    return {p.name for p in (store / "sha256").glob("??/*")}


def temp_files(store: Path) -> list[Path]:
    return sorted((store / "tmp").glob("*")) if (store / "tmp").is_dir() else []


def referenced(reg: Registry) -> set[str]:
    versions = reg.search()
    return {v.sha256 for v in versions} | {v.weights_sha256 for v in versions if v.weights_sha256}


def one_error_line(stderr: str) -> str:
    """The CLI's failure contract: one `Error: ...` line on stderr, no traceback."""
    one_line = stderr.startswith("Error: ") and stderr.endswith("\n") and stderr.count("\n") == 1
    assert one_line, stderr
    return stderr


def options(reg: Registry) -> list[str]:
    return ["--database-url", reg.settings.database_url, "--store", str(reg.store.root)]


def invoke(database_url: str, store: Path, *args: str) -> tuple[int, str, str]:
    """Run the CLI in-process; an exception that escapes it fails the test."""
    base = ["--database-url", database_url, "--store", str(store)]
    result = CliRunner().invoke(cli, [*base, *args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def run_registry(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the installed `registry` command, as a user would."""
    return subprocess.run(
        [str(REGISTRY), *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=180,
    )


def sqlite_url(folder: Path) -> str:
    return f"sqlite:///{folder / 'catalog.db'}"


@pytest.fixture
def local(tmp_path: Path) -> Iterator[Registry]:
    """A registry on SQLite, for faults of the blob store, where the catalog does not matter."""
    reg = Registry(database_url=sqlite_url(tmp_path), store=tmp_path / "blobs")
    yield reg
    reg.close()


@pytest.fixture
def big_file(tmp_path: Path) -> Path:
    return tiny_file(tmp_path, 7, BIG_ARGS)


# -- processes ------------------------------------------------------------------------------


def mp_context() -> Any:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(
        ["test_reliability", "tiny_models", "registry.api", "registry.checkpoints",
         "registry.architectures", "alembic.command", "sqlalchemy.dialects.sqlite",
         "sqlalchemy.dialects.postgresql.psycopg"]
    )  # fmt: skip
    return context


def _job(index: int, function: Callable[..., Any], args: tuple, barrier: Any, results: Any) -> None:
    try:
        barrier.wait(timeout=120)  # every worker starts its work at the same moment
        results.put((index, function(*args), None))
    except BaseException:
        results.put((index, None, traceback.format_exc()))


def run_processes(jobs: list[tuple[Callable[..., Any], tuple]], timeout: float = 240) -> list:
    """Run each (function, args) in its own process, all released at once; return the results.

    An exception in any process fails the test with that process's traceback.
    """
    context = mp_context()
    barrier, results = context.Barrier(len(jobs)), context.Queue()
    processes = [
        context.Process(target=_job, args=(i, function, args, barrier, results))
        for i, (function, args) in enumerate(jobs)
    ]
    for process in processes:
        process.start()
    outcome: dict[int, tuple[Any, str | None]] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(outcome) < len(jobs):
            try:
                index, value, error = results.get(timeout=1)
                outcome[index] = (value, error)
            except queue.Empty:
                died = {i: p.exitcode for i, p in enumerate(processes) if p.exitcode}
                assert not died.keys() - outcome.keys(), f"processes died: {died}"
                assert time.monotonic() < deadline, f"{len(outcome)}/{len(jobs)} finished"
    finally:
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
    errors = [f"process {i}:\n{error}" for i, (_, error) in sorted(outcome.items()) if error]
    assert not errors, "\n".join(errors)
    return [outcome[i][0] for i in range(len(jobs))]


# -- concurrency: pushes ------------------------------------------------------------------

PUSH_WORKERS, PUSHES_EACH = 16, 5


def _push_files(database_url: str, store: str, files: list[str]) -> list[tuple[int, str]]:
    reg = Registry(database_url=database_url, store=store)
    pushed = [reg.push(f, arch=ARCH, name="race", arch_args=ARGS) for f in files]
    return [(v.version, v.sha256) for v in pushed]


@pytest.mark.slow
def test_sixteen_processes_push_eighty_versions_without_gap_or_duplicate(
    reg: Registry, database_url: str, tmp_path: Path
) -> None:
    reg.models()  # create the catalog: a concurrent first use is its own test below
    files = [
        [tiny_file(tmp_path, 1000 * worker + i) for i in range(PUSHES_EACH)]
        for worker in range(PUSH_WORKERS)
    ]
    store = str(reg.store.root)
    results = run_processes(
        [(_push_files, (database_url, store, list(map(str, f)))) for f in files]
    )
    numbers = sorted(number for pushed in results for number, _ in pushed)
    assert numbers == list(range(1, PUSH_WORKERS * PUSHES_EACH + 1))
    for worker_files, pushed in zip(files, results, strict=True):
        for path, (number, digest) in zip(worker_files, pushed, strict=True):
            assert digest == sha256_of(path)  # each process got its own bytes' version back
            pulled = reg.pull(f"race@v{number}", tmp_path / "pulled" / f"v{number}.pth")
            assert pulled.read_bytes() == path.read_bytes()
    assert reg.verify() == []


SAME_PUSHERS = 6


def _push_same(database_url: str, store: str, path: str) -> tuple[int, bool]:
    version = Registry(database_url=database_url, store=store).push(
        path, arch=ARCH, name="same", arch_args=ARGS, tags={"by": str(os.getpid())}
    )
    return version.version, version.is_new


def test_concurrent_identical_pushes_make_one_version(
    reg: Registry, database_url: str, tmp_path: Path
) -> None:
    reg.models()
    path = tiny_file(tmp_path, 1)
    job = (_push_same, (database_url, str(reg.store.root), str(path)))
    results = run_processes([job] * SAME_PUSHERS)
    assert sorted(results) == [(1, False)] * (SAME_PUSHERS - 1) + [(1, True)]
    [version] = reg.versions("same")
    assert version.sha256 == sha256_of(path)
    assert blobs_on_disk(reg.store.root) == {version.sha256}
    assert temp_files(reg.store.root) == []


# -- concurrency: aliases and tags ----------------------------------------------------------

EDITORS, EDITS_EACH, SHARED_VERSIONS = 4, 25, 5


def _edit(database_url: str, store: str, worker: int, done: Any) -> list[tuple[int, str]]:
    """Move the alias `production` and rewrite tags; return what was written, in order."""
    reg = Registry(database_url=database_url, store=store)
    rng = random.Random(worker)
    written = []
    try:
        for i in range(EDITS_EACH):
            target = rng.randint(1, SHARED_VERSIONS)
            assert reg.set_alias(f"shared@v{target}", "production").version == target
            owner = f"w{worker}-{i}"
            reg.set_tags("shared@v1", {"owner": owner, f"by-w{worker}": str(i)})
            written.append((target, owner))
    finally:
        with done.get_lock():
            done.value += 1
    return written


def _watch(database_url: str, store: str, done: Any) -> int:
    """While the editors run, check that every read is whole: one alias target, a written tag."""
    reg = Registry(database_url=database_url, store=store)
    reads, seen_alias = 0, False
    while done.value < EDITORS or reads == 0:
        holders = [v.version for v in reg.search(name="shared") if "production" in v.aliases]
        assert len(holders) == 1 if seen_alias else len(holders) <= 1, holders
        seen_alias = seen_alias or bool(holders)
        owner = reg.get("shared@v1").tags.get("owner")
        assert owner is None or re.fullmatch(rf"w[0-{EDITORS - 1}]-\d+", owner), owner
        reads += 1
    return reads


def test_concurrent_alias_moves_and_tag_edits_last_writer_wins(
    reg: Registry, database_url: str, tmp_path: Path
) -> None:
    for seed in range(SHARED_VERSIONS):
        push_tiny(reg, tmp_path, seed, name="shared")
    done, store = mp_context().Value("i", 0), str(reg.store.root)
    editors = [(_edit, (database_url, store, w, done)) for w in range(EDITORS)]
    *written, reads = run_processes([*editors, (_watch, (database_url, store, done))])
    assert reads > 0
    # The last committed write is some editor's last one; each editor's own key holds its last.
    target = reg.get("shared@production").version
    assert target in {w[-1][0] for w in written}
    assert [v.version for v in reg.versions("shared") if "production" in v.aliases] == [target]
    with db.session(reg.engine) as s:
        rows = s.execute(text("SELECT count(*) FROM aliases WHERE name = 'production'")).scalar()
    assert rows == 1
    tags = reg.get("shared@v1").tags
    assert tags.pop("owner") in {w[-1][1] for w in written}
    assert tags == {f"by-w{w}": str(EDITS_EACH - 1) for w in range(EDITORS)}


# -- concurrency: gc against pushes ---------------------------------------------------------

CHURNERS, CHURN_FILES, CHURN_ROUNDS = 3, 2, 3


def _gc_loop(database_url: str, store: str, done: Any) -> tuple[int, int]:
    reg = Registry(database_url=database_url, store=store)
    rounds = reclaimed = 0
    while done.value < CHURNERS or rounds == 0:
        reclaimed += reg.gc().blobs
        rounds += 1
    return rounds, reclaimed


def _churn(database_url: str, store: str, files: list[str], done: Any) -> list[tuple[int, str]]:
    """Push bytes gc wants to delete, pull them back at once, delete, and push them again."""
    reg = Registry(database_url=database_url, store=store)
    try:
        for _ in range(CHURN_ROUNDS):
            for path in files:
                version = reg.push(path, arch=ARCH, name="churn", arch_args=ARGS)
                pulled = reg.pull(version.ref, f"{path}.{version.version}.out")  # verified
                assert sha256_of(pulled) == version.sha256
                reg.delete(version.ref)  # unreferenced again: gc may take it right now
        kept = [reg.push(path, arch=ARCH, name="churn", arch_args=ARGS) for path in files]
    finally:
        with done.get_lock():
            done.value += 1
    return [(v.version, v.sha256) for v in kept]


def test_gc_in_a_loop_never_takes_a_blob_a_push_needs(
    reg: Registry, database_url: str, tmp_path: Path
) -> None:
    files = [[tiny_file(tmp_path, 10 * w + i) for i in range(CHURN_FILES)] for w in range(CHURNERS)]
    for path in [path for worker_files in files for path in worker_files]:
        # a deleted version: its blob waits for gc, and a churner pushes its bytes again
        reg.delete(reg.push(path, arch=ARCH, name="churn", arch_args=ARGS).ref)
    assert len(blobs_on_disk(reg.store.root)) == CHURNERS * CHURN_FILES
    done, store = mp_context().Value("i", 0), str(reg.store.root)
    churners = [(_churn, (database_url, store, list(map(str, f)), done)) for f in files]
    (rounds, _), *kept = run_processes([(_gc_loop, (database_url, store, done)), *churners])
    assert rounds >= 1
    assert reg.verify() == []
    for worker_files, versions in zip(files, kept, strict=True):
        for path, (number, digest) in zip(worker_files, versions, strict=True):
            assert digest == sha256_of(path)
            pulled = reg.pull(f"churn@v{number}", tmp_path / "pulled.pth")
            assert pulled.read_bytes() == path.read_bytes()
    assert reg.get("churn").version == CHURNERS * CHURN_FILES * (CHURN_ROUNDS + 2)  # no reuse
    reg.gc()
    assert blobs_on_disk(reg.store.root) == referenced(reg)
    assert temp_files(reg.store.root) == []


# -- concurrency: first use of a brand-new catalog -------------------------------------------

FIRST_USERS = 8


def _first_use(database_url: str, store: str, path: str | None) -> int:
    """List the models, or push `path`: either is a first use that creates the catalog."""
    reg = Registry(database_url=database_url, store=store)
    if path is None:
        return len(reg.models())
    return reg.push(path, arch=ARCH, name="first", arch_args=ARGS).version


def catalog_state(database_url: str) -> tuple[list, list[str]]:
    """The catalog's alembic_version rows and its tables."""
    engine = db.open_engine(database_url)
    try:
        with engine.connect() as conn:
            revisions = conn.execute(text("SELECT version_num FROM alembic_version")).all()
            return revisions, sorted(inspect(conn).get_table_names())
    finally:
        engine.dispose()


TABLES = [
    "alembic_version",
    "aliases",
    "audit_log",
    "blobs",
    "deliveries",
    "fingerprints",
    "hooks",
    "lineage",
    "models",
    "tags",
    "tensors",
    "tokens",
    "version_files",
    "versions",
]


def test_concurrent_first_use_runs_the_migrations_once(database_url: str, tmp_path: Path) -> None:
    store, half = str(tmp_path / "blobs"), FIRST_USERS // 2
    files = [str(tiny_file(tmp_path, seed)) for seed in range(half)]
    jobs = [(_first_use, (database_url, store, path)) for path in [None] * half + files]
    results = run_processes(jobs)
    assert set(results[:half]) <= {0, 1}  # the models they saw: none yet, or "first"
    assert sorted(results[half:]) == list(range(1, half + 1))
    assert catalog_state(database_url) == ([(db.SCHEMA_HEAD,)], TABLES)


def test_first_use_waits_for_a_writer_of_a_new_sqlite_catalog(tmp_path: Path) -> None:
    """The first-use race made deterministic: a writer holds a brand-new catalog for 3 s.

    A registry should wait for it, as it waits for any writer (busy_timeout).
    """
    path = tmp_path / "catalog.db"
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("CREATE TABLE elsewhere (x)")
    commit = threading.Timer(3.0, writer.execute, ["COMMIT"])
    commit.start()
    try:
        result = run_registry("--database-url", f"sqlite:///{path}", "ls")
    finally:
        commit.join()
        writer.close()
    assert (result.returncode, result.stdout, result.stderr) == (0, EMPTY_LS, "")


UPGRADERS = 4


def _upgrade(database_url: str) -> str:
    return Registry(database_url=database_url).upgrade()


def test_concurrent_upgrades_of_a_catalog_behind_head(database_url: str, tmp_path: Path) -> None:
    engine = db.open_engine(database_url)
    db.upgrade(engine, "0001")
    engine.dispose()
    assert run_processes([(_upgrade, (database_url,))] * UPGRADERS) == [db.SCHEMA_HEAD] * UPGRADERS
    assert catalog_state(database_url) == ([(db.SCHEMA_HEAD,)], TABLES)


# -- crash safety -----------------------------------------------------------------------------


@pytest.mark.parametrize("point", PUSH_POINTS)
def test_push_killed_at_each_point_leaves_nothing_gc_cannot_clean(
    point: str, reg: Registry, database_url: str, tmp_path: Path, big_file: Path
) -> None:
    store = reg.store.root
    push_tiny(reg, tmp_path, 1)
    reg.delete(push_tiny(reg, tmp_path, 2).ref)  # the counter is at 2, v2's blob waits for gc
    before = blobs_on_disk(store)
    killed = run_registry(*options(reg), *push_big(big_file), env={KILL_AT: point})
    assert (killed.returncode, killed.stdout) == (-signal.SIGKILL, ""), killed.stderr
    # What the kill left is what gc must clean: a temp file, or a blob no version references.
    left, placed = temp_files(store), blobs_on_disk(store) - before
    if point in ("push-copy", "push-hashed"):
        assert (len(left), placed) == (1, set())
    else:
        assert (left, placed) == ([], {sha256_of(big_file)})
    if point == "push-copy":
        assert 0 < left[0].stat().st_size < big_file.stat().st_size  # killed half-way
    assert [v.version for v in reg.versions("tiny")] == [1]
    assert invoke(database_url, store, "verify") == (0, "all blobs verified\n", "")
    code, out, err = invoke(database_url, store, "gc", "--json")
    assert (code, err) == (0, "")
    assert (json.loads(out)["temp_files"], json.loads(out)["blobs"]) == (len(left), len(placed) + 1)
    assert temp_files(store) == [] and blobs_on_disk(store) == referenced(reg)
    again = reg.push(big_file, arch=ARCH, name="tiny", arch_args=BIG_ARGS)
    assert (again.version, again.is_new) == (3, True)  # v2 stays retired; the kill took none
    assert again.sha256 == sha256_of(big_file)
    assert sha256_of(reg.pull("tiny@v3", tmp_path / "back.pth")) == again.sha256
    assert reg.verify() == []


def test_rerun_after_a_push_killed_with_its_blob_placed_adopts_the_blob(
    local: Registry, tmp_path: Path, big_file: Path
) -> None:
    """The re-run comes before any gc: it finds the orphan blob complete and refers to it."""
    local.models()
    killed = run_registry(*options(local), *push_big(big_file), env={KILL_AT: "push-blob-placed"})
    assert killed.returncode == -signal.SIGKILL
    orphan = sha256_of(big_file)
    assert blobs_on_disk(local.store.root) == {orphan}
    again = local.push(big_file, arch=ARCH, name="tiny", arch_args=BIG_ARGS)
    assert (again.version, again.sha256) == (1, orphan)
    assert local.verify() == []
    assert local.gc().blobs == 0
    assert blobs_on_disk(local.store.root) == {orphan} and temp_files(local.store.root) == []


RANDOM_KILLS = 10
MEDIUM_ARGS = {"width": 1024, "num_classes": 2000}  # 8 MB


def _push_seeded(database_url: str, store: str, seed: int) -> None:
    import tiny_models

    torch.manual_seed(seed)
    Registry(database_url=database_url, store=store).push(
        tiny_models.TinyNet(**MEDIUM_ARGS), arch=ARCH, name="crash", arch_args=MEDIUM_ARGS
    )


def test_push_killed_at_random_instants_never_leaves_a_dangling_version(
    reg: Registry, database_url: str
) -> None:
    """SIGKILL pushes at random instants, between the named points too."""
    reg.models()
    context, store, rng = mp_context(), str(reg.store.root), random.Random(5)
    for seed in (0, 100):  # the second one, timed, finds the forkserver running
        started = time.monotonic()
        push = context.Process(target=_push_seeded, args=(database_url, store, seed))
        push.start()
        push.join()
        assert push.exitcode == 0
    whole = time.monotonic() - started
    killed = 0
    for seed in range(1, RANDOM_KILLS + 1):
        push = context.Process(target=_push_seeded, args=(database_url, store, seed))
        push.start()
        time.sleep(rng.uniform(0, whole))
        push.kill()
        push.join()
        killed += push.exitcode == -signal.SIGKILL
        assert reg.verify() == [], f"after the kill of push {seed}"
    assert killed >= RANDOM_KILLS // 3
    numbers = [v.version for v in reg.versions("crash")]
    assert numbers == list(range(len(numbers), 0, -1))  # only committed pushes took a number
    reg.gc()
    assert temp_files(reg.store.root) == [] and blobs_on_disk(reg.store.root) == referenced(reg)
    _push_seeded(database_url, store, 99)
    assert reg.get("crash").version == len(numbers) + 1


def wait_for_temp_file(push: subprocess.Popen, store: Path, size: int) -> None:
    """Wait until the push `push` has written more than `size` bytes into a temp file."""
    deadline = time.monotonic() + 120
    while not any(p.stat().st_size > size for p in temp_files(store)):
        assert push.poll() is None, push.communicate()
        assert time.monotonic() < deadline, "the push never started copying"
        time.sleep(0.002)


@pytest.mark.slow
def test_push_of_vgg11_killed_from_outside_mid_copy(local: Registry, tmp_path: Path) -> None:
    from torchvision.models import vgg11

    torch.manual_seed(0)
    checkpoint = tmp_path / "vgg11.pth"
    torch.save(vgg11(weights=None).state_dict(), checkpoint)  # 531 MB
    push_tiny(local, tmp_path, 1, name="big")
    command = [str(REGISTRY), *options(local), "push", str(checkpoint), "--arch", "vgg11",
               "--name", "big"]  # fmt: skip
    push = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for_temp_file(push, local.store.root, 64 << 20)
    finally:
        push.kill()
        push.communicate()
    assert push.returncode == -signal.SIGKILL
    [left] = temp_files(local.store.root)
    assert 64 << 20 < left.stat().st_size < checkpoint.stat().st_size
    assert [v.version for v in local.versions("big")] == [1]
    url, store = local.settings.database_url, local.store.root
    assert invoke(url, store, "verify") == (0, "all blobs verified\n", "")
    code, out, _ = invoke(url, store, "gc", "--json")
    assert (code, json.loads(out)["temp_files"]) == (0, 1)
    assert temp_files(store) == [] and blobs_on_disk(store) == referenced(local)
    assert push_tiny(local, tmp_path, 2, name="big").version == 2
    assert local.verify() == []


def test_interrupted_push_removes_its_temp_file(local: Registry, big_file: Path) -> None:
    """Ctrl-C mid-push: click's `Aborted!`, exit 1, and the writer cleans up after itself."""
    local.models()
    command = [str(REGISTRY), *options(local), *push_big(big_file)]
    push = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_temp_file(push, local.store.root, 8 << 20)
        push.send_signal(signal.SIGINT)
        out, err = push.communicate(timeout=60)
    finally:
        push.kill()
    assert (push.returncode, out, err.strip()) == (1, "", "Aborted!")
    assert temp_files(local.store.root) == [] and blobs_on_disk(local.store.root) == set()
    assert local.models() == []


def test_pull_killed_mid_copy_leaves_no_file_and_a_rerun_cleans_up(
    local: Registry, tmp_path: Path, big_file: Path
) -> None:
    version = local.push(big_file, arch=ARCH, name="tiny", arch_args=BIG_ARGS)
    destination = tmp_path / "out" / "weights.pth"
    destination.parent.mkdir()
    pull = ["pull", "tiny@v1", "-o", str(destination)]
    killed = run_registry(*options(local), *pull, env={KILL_AT: "pull-copy"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not destination.exists()
    [left] = destination.parent.glob(".weights.pth.*.part")  # the killed pull's half file
    assert 0 < left.stat().st_size < version.size
    url, store = local.settings.database_url, local.store.root
    assert invoke(url, store, *pull) == (0, f"{destination}\n", "")
    assert sha256_of(destination) == version.sha256
    assert [p.name for p in destination.parent.iterdir()] == ["weights.pth"]


# -- tampering --------------------------------------------------------------------------------


def tamper(path: Path, how: str, other: Path) -> None:
    path.chmod(0o644)
    data = path.read_bytes()
    middle = len(data) // 2
    if how == "deleted":
        path.unlink()
    elif how == "flipped":
        path.write_bytes(data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1 :])
    elif how == "truncated":
        path.write_bytes(data[:middle])
    else:
        path.write_bytes(other.read_bytes())  # another valid checkpoint of the same arch


@pytest.mark.parametrize("how", ["flipped", "truncated", "deleted", "replaced"])
def test_tampered_blob_is_never_pulled_or_loaded(
    reg: Registry, database_url: str, tmp_path: Path, how: str
) -> None:
    version = push_tiny(reg, tmp_path, 1)
    blob = reg.store.path(version.sha256)
    tamper(blob, how, tiny_file(tmp_path, 2))
    actual = None if how == "deleted" else sha256_of(blob)
    assert actual != version.sha256
    out = tmp_path / "out"
    out.mkdir()
    for action in (
        lambda: reg.pull(version.ref, out / "w.pth"),
        lambda: reg.load(version.ref),
        lambda: reg.state_dict(version.ref),
    ):
        with pytest.raises(IntegrityError) as caught:
            action()
        error = caught.value
        assert (error.ref, error.expected, error.actual) == (version.ref, version.sha256, actual)
    code, stdout, stderr = invoke(database_url, reg.store.root, "pull", version.ref, "-o", str(out))
    assert (code, stdout) == (1, "")
    found = "the blob is missing" if actual is None else f"its bytes hash to sha256:{actual}"
    assert one_error_line(stderr) == (
        f"Error: {version.ref} failed verification: expected sha256:{version.sha256} but "
        f"{found}; the store is corrupt (run `registry verify`)\n"
    )
    assert list(out.iterdir()) == []  # no file, no temp file
    [problem] = reg.verify()
    assert (problem.ref, problem.expected, problem.actual) == (version.ref, version.sha256, actual)
    status = {"flipped": "corrupt", "truncated": "truncated", "deleted": "missing"}
    assert problem.status == status.get(how, "corrupt")


# -- storage faults: a full disk ------------------------------------------------------------

FILE_SIZE_LIMIT = 4 << 20
# RLIMIT_FSIZE makes write() fail with EFBIG past the limit, as a full disk fails with ENOSPC.
SMALL_DISK = (
    "import os, resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
    f"resource.setrlimit(resource.RLIMIT_FSIZE, ({FILE_SIZE_LIMIT}, {FILE_SIZE_LIMIT})); "
    "os.execv(sys.argv[1], sys.argv[1:])"
)


def run_on_small_disk(reg: Registry, *args: str) -> subprocess.CompletedProcess:
    """Run `registry` on `reg` in a child that cannot write a file past FILE_SIZE_LIMIT."""
    command = [sys.executable, "-c", SMALL_DISK, str(REGISTRY), *options(reg), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_disk_full_during_push_is_one_line_and_leaves_nothing(
    local: Registry, big_file: Path
) -> None:
    local.models()  # the catalog exists: only the blob write hits the limit
    result = run_on_small_disk(local, *push_big(big_file))
    assert (result.returncode, result.stdout) == (1, ""), result.stderr
    assert "File too large" in one_error_line(result.stderr)
    assert local.models() == []
    assert temp_files(local.store.root) == [] and blobs_on_disk(local.store.root) == set()


def test_disk_full_during_pull_is_one_line_and_leaves_nothing(
    local: Registry, tmp_path: Path, big_file: Path
) -> None:
    local.push(big_file, arch=ARCH, name="tiny", arch_args=BIG_ARGS)
    out = tmp_path / "out"
    result = run_on_small_disk(local, "pull", "tiny@v1", "-o", f"{out}/")
    assert not out.exists() or list(out.iterdir()) == []
    assert (result.returncode, result.stdout) == (1, ""), result.stderr
    assert "File too large" in one_error_line(result.stderr)


# -- storage faults: permissions --------------------------------------------------------------

Runner = Callable[..., subprocess.CompletedProcess]


@pytest.fixture
def unprivileged() -> Iterator[tuple[Path, Runner]]:
    """A world-readable folder and a way to run `registry` there without root's write rights.

    Root ignores file modes, so the child runs as `nobody` when `nobody` can
    run this venv, else as root without CAP_DAC_OVERRIDE (setpriv): either way
    a folder of mode 0o555 stops its writes.
    """
    folder = Path(tempfile.mkdtemp(dir="/tmp", prefix="registry-ro-"))
    folder.chmod(0o755)
    (folder / "tiny_models.py").write_text(TINY_MODELS)
    env = {**os.environ, "PYTHONPATH": str(folder), "HOME": str(folder)}
    prefix: list[str] = []
    user: str | None = None
    if os.geteuid() == 0:
        try:
            probe = [sys.executable, "-c", "import registry.cli"]
            usable = subprocess.run(probe, user="nobody", capture_output=True).returncode == 0
        except OSError:
            usable = False
        if usable:
            user = "nobody"
        elif shutil.which("setpriv"):
            prefix = ["setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search"]
        else:
            pytest.skip(f"nobody cannot run {sys.executable} and setpriv is missing")

    def run(*args: str) -> subprocess.CompletedProcess:
        command = [*prefix, str(REGISTRY), *args]
        return subprocess.run(
            command, cwd=folder, env=env, user=user, capture_output=True, text=True, timeout=120
        )

    yield folder, run
    for path in folder.rglob("*"):
        if path.is_dir():
            path.chmod(0o755)
    shutil.rmtree(folder)


def writable(path: Path) -> Path:
    path.mkdir(exist_ok=True)
    path.chmod(0o777)
    return path


def read_only(path: Path) -> Path:
    path.mkdir(exist_ok=True)
    path.chmod(0o555)
    return path


def world_catalog(folder: Path) -> tuple[Registry, ModelVersion]:
    """A catalog and store in `folder` holding tiny@v1 and a deleted v2, open to the child."""
    reg = Registry(database_url=sqlite_url(writable(folder / "home")), store=folder / "store")
    version = push_tiny(reg, folder, 1)
    reg.delete(push_tiny(reg, folder, 2).ref)
    reg.close()
    for path in folder.rglob("*"):
        path.chmod(0o777 if path.is_dir() else 0o666)
    return reg, version


def test_read_only_store_is_one_line_naming_the_path(unprivileged) -> None:
    folder, run = unprivileged
    store = read_only(folder / "store")
    checkpoint = tiny_file(folder, 1)
    checkpoint.chmod(0o644)
    url = sqlite_url(writable(folder / "home"))
    result = run("--database-url", url, "--store", str(store), "push", str(checkpoint), *TINY_ARGS)
    assert (result.returncode, result.stdout) == (1, "")
    assert f"{store}/tmp: Permission denied" in one_error_line(result.stderr)
    assert list(store.iterdir()) == []


def test_read_only_home_is_one_line_naming_the_path(unprivileged) -> None:
    folder, run = unprivileged
    home = read_only(folder / "home")
    result = run("--home", str(home), "ls")
    assert (result.returncode, result.stdout) == (1, "")
    assert str(home) in one_error_line(result.stderr)
    assert list(home.iterdir()) == []


def test_unwritable_pull_destination_is_one_line_naming_the_path(unprivileged) -> None:
    folder, run = unprivileged
    reg, _ = world_catalog(folder)
    target = read_only(folder / "target")
    result = run(*options(reg), "pull", "tiny@v1", "-o", str(target / "w.pth"))
    assert (result.returncode, result.stdout) == (1, "")
    assert str(target) in one_error_line(result.stderr)
    assert list(target.iterdir()) == []


def test_gc_on_a_read_only_store_is_one_line_and_keeps_the_catalog(unprivileged) -> None:
    folder, run = unprivileged
    reg, _ = world_catalog(folder)
    before = blobs_on_disk(reg.store.root)
    folders = [p for p in (reg.store.root / "sha256").rglob("*") if p.is_dir()]
    for path in folders:
        path.chmod(0o555)
    result = run(*options(reg), "gc")
    assert (result.returncode, result.stdout) == (1, "")
    assert str(reg.store.root / "sha256") in one_error_line(result.stderr)
    assert blobs_on_disk(reg.store.root) == before
    for path in folders:
        path.chmod(0o777)
    assert reg.gc().blobs == 1  # the failed gc rolled back: the blob's row is still there


def test_unreadable_blob_is_one_line_naming_the_path(unprivileged) -> None:
    folder, run = unprivileged
    reg, version = world_catalog(folder)
    blob = reg.store.path(version.sha256)
    blob.chmod(0o000)
    for command in (["pull", "tiny@v1", "-o", str(folder / "out.pth")], ["verify"]):
        result = run(*options(reg), *command)
        assert (result.returncode, result.stdout) == (1, "")
        assert str(blob) in one_error_line(result.stderr)
    assert not (folder / "out.pth").exists()


# -- hostile environments: the catalog --------------------------------------------------------


@pytest.fixture
def postgres_url() -> str:
    if not PG_URL:
        if IN_CI:
            pytest.fail("REGISTRY_TEST_DATABASE_URL is not set: CI must test PostgreSQL")
        pytest.skip("set REGISTRY_TEST_DATABASE_URL to run the PostgreSQL tests")
    return PG_URL


@pytest.mark.parametrize(
    "command", [["ls"], ["show", "tiny@v1"], ["db", "current"], ["db", "upgrade"], ["gc"]]
)
def test_unreachable_database_is_one_line_without_the_password(
    tmp_path: Path, command: list[str]
) -> None:
    code, out, err = invoke(UNREACHABLE, tmp_path / "blobs", *command)
    assert (code, out) == (1, "")
    assert one_error_line(err).startswith("Error: catalog postgresql+psycopg://registry:***@")
    assert SECRET not in err


def test_unreachable_database_through_the_installed_command() -> None:
    result = run_registry("--database-url", UNREACHABLE, "ls")
    assert (result.returncode, result.stdout) == (1, "")
    assert SECRET not in one_error_line(result.stderr)


def test_push_to_an_unreachable_catalog_leaves_no_temp_file(tmp_path: Path) -> None:
    store = tmp_path / "blobs"
    code, out, err = invoke(UNREACHABLE, store, "push", str(tiny_file(tmp_path, 1)), *TINY_ARGS)
    assert (code, out) == (1, "")
    assert SECRET not in one_error_line(err)
    assert temp_files(store) == [] and blobs_on_disk(store) == set()


def test_wrong_password_is_one_line_without_the_password(postgres_url: str, tmp_path: Path) -> None:
    url = db.parse_url(postgres_url).set(password=SECRET).render_as_string(hide_password=False)
    result = run_registry("--database-url", url, "ls")
    assert (result.returncode, result.stdout) == (1, "")
    assert "password authentication failed" in one_error_line(result.stderr)
    assert SECRET not in result.stderr
    code, out, err = invoke(url, tmp_path / "blobs", "db", "upgrade")
    assert (code, out) == (1, "")
    assert SECRET not in one_error_line(err)


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://u:{SECRET}@localhost:port/d",
        f"postgresql://u:{SECRET}@[::1/d",
        f"mysql://u:{SECRET}@localhost/d",
        f"postgresql+asyncpg://u:{SECRET}@localhost/d",
        f"postgresql://u:{SECRET}@127.0.0.1:99999/d",
        f"oracle+nodriver://u:{SECRET}@localhost/d",
        "not a url",
        "sqlite:////dev/null/catalog.db",
    ],
    ids=["port-word", "bad-ipv6", "mysql", "asyncpg", "port-range", "no-dialect", "garbage",
         "under-a-file"],
)  # fmt: skip
def test_broken_database_urls_are_one_line_without_the_password(tmp_path: Path, url: str) -> None:
    code, out, err = invoke(url, tmp_path / "blobs", "ls")
    assert (code, out) == (1, "")
    assert SECRET not in one_error_line(err)


@pytest.mark.parametrize(
    "command",
    [
        ["ls"],
        ["show", "tiny"],
        ["gc"],
        ["db", "upgrade"],
    ],
)
def test_catalog_from_a_newer_schema_is_refused_in_one_line(
    reg: Registry, database_url: str, tmp_path: Path, command: list[str]
) -> None:
    push_tiny(reg, tmp_path, 1)
    with db.session(reg.engine, write=True) as s:
        s.execute(text("UPDATE alembic_version SET version_num = 'ffff99990000'"))
    reg.engine.dispose()
    code, out, err = invoke(database_url, reg.store.root, *command)
    assert (code, out) == (1, "")
    assert "ffff99990000" in one_error_line(err)
    assert "newer than this registry" in err


# -- hostile input: property tests of the CLI's parsing ---------------------------------------

# Arbitrary text, and text shaped like names and references, which gets further in.
TEXT = st.one_of(
    st.text(max_size=200),
    st.from_regex(r"[a-z0-9./@:_=-]{0,140}", fullmatch=True),
    st.from_regex(
        r"[a-z][a-z0-9]{0,5}@(v?[0-9]{0,12}|sha256:[0-9a-f]{0,70}|[a-zA-Z0-9]{0,8})", fullmatch=True
    ),
)
PROPERTY = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture
def cli_run(database_url: str, tmp_path: Path) -> Callable[..., None]:
    """The CLI on a catalog holding tiny@v1; every run must exit 0, 1 or 2, 1 with one line."""
    store = tmp_path / "blobs"
    push_tiny(Registry(database_url=database_url, store=store), tmp_path, 1)

    def run(*args: str) -> None:
        code, out, err = invoke(database_url, store, *args)
        assert code in (0, 1, 2), (code, out, err)
        if code == 1:
            one_error_line(err)

    return run


def push_args(tmp_path: Path) -> list[str]:
    return ["push", str(tiny_file(tmp_path, 1)), *TINY_ARGS]


@PROPERTY
@given(ref=TEXT)
def test_show_parses_any_reference(cli_run, ref: str) -> None:
    cli_run("show", ref)


@PROPERTY
@given(name=TEXT)
def test_ls_parses_any_name(cli_run, name: str) -> None:
    cli_run("ls", name)


@PROPERTY
@given(arg=TEXT)
def test_push_parses_any_arg(cli_run, tmp_path: Path, arg: str) -> None:
    cli_run(*push_args(tmp_path), "--arg", arg)


@PROPERTY
@given(tag=TEXT)
def test_push_parses_any_tag(cli_run, tmp_path: Path, tag: str) -> None:
    cli_run(*push_args(tmp_path), "--tag", tag)


@PROPERTY
@given(name=TEXT)
def test_push_parses_any_name(cli_run, tmp_path: Path, name: str) -> None:
    cli_run(*push_args(tmp_path), "--name", name)


@PROPERTY
@given(alias=TEXT)
def test_push_and_alias_parse_any_alias(cli_run, tmp_path: Path, alias: str) -> None:
    cli_run(*push_args(tmp_path), "--alias", alias)
    cli_run("alias", "tiny@v1", alias)


# -- hostile input: path-like names ---------------------------------------------------------

PATH_LIKE = ["../x", "/abs", "a//b", "a/b/c", "a/../b", "..", "x\x00y", "a" * 129, "a/" + "b" * 127]


@pytest.mark.parametrize("name", PATH_LIKE, ids=lambda name: ascii(name)[:24])
def test_path_like_names_are_refused_before_anything_is_written(
    reg: Registry, database_url: str, tmp_path: Path, name: str
) -> None:
    checkpoint = tiny_file(tmp_path, 1)
    with pytest.raises(InvalidReferenceError):
        reg.push(checkpoint, arch=ARCH, name=name, arch_args=ARGS)
    store = reg.store.root
    code, out, err = invoke(
        database_url, store, "push", str(checkpoint), "--name", name, *TINY_ARGS
    )
    assert (code, out) == (1, "")
    assert one_error_line(err).startswith("Error: invalid model name")
    assert blobs_on_disk(store) == set() and temp_files(store) == []
    assert reg.models() == []
    assert invoke(database_url, store, "ls") == (0, EMPTY_LS, "")


# -- migrations keep data ---------------------------------------------------------------------


def rows(engine: Engine, shape: dict[str, list[str]]) -> dict[str, list[str]]:
    """Every row of the tables and columns in `shape`, as sorted text."""
    meta = MetaData()
    meta.reflect(engine, only=list(shape))
    found = {}
    with engine.connect() as conn:
        for table, columns in shape.items():
            query = select(*(meta.tables[table].c[c] for c in columns))
            found[table] = sorted(
                json.dumps(
                    [utc(v).isoformat() if isinstance(v, datetime) else v for v in row],
                    sort_keys=True,
                )
                for row in conn.execute(query)
            )
    return found


def utc(value: Any) -> Any:
    """A datetime made aware in UTC (SQLite hands back naive UTC); anything else unchanged."""
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value


def copy_rows(source: Engine, target: Engine, shape: dict[str, list[str]]) -> None:
    """Copy every row, cut to the columns in `shape`, parents before children."""
    source_meta, target_meta = MetaData(), MetaData()
    source_meta.reflect(source)
    target_meta.reflect(target)
    with source.connect() as read, target.begin() as write:
        for table in ("models", "blobs", "versions", "tags", "aliases"):
            columns = shape[table]
            query = select(*(source_meta.tables[table].c[c] for c in columns))
            values = [dict(zip(columns, map(utc, row), strict=True)) for row in read.execute(query)]
            write.execute(target_meta.tables[table].insert(), values)
        if target.dialect.name == "postgresql":  # ids were given: move the sequences past them
            for table in ("models", "versions"):
                write.execute(
                    text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                         f"(SELECT max(id) FROM {table}))")
                )  # fmt: skip


def test_migrations_keep_every_row_and_every_pull(database_url: str, tmp_path: Path) -> None:
    """A catalog filled at the first revision survives every later one: rows, pulls, loads.

    The API writes at head, so it pushes into a scratch catalog, and the rows
    are copied, cut to the first revision's columns, into the catalog under
    test at that revision: what an old registry left behind. A new revision
    is covered as the test stands.
    """
    script = ScriptDirectory.from_config(db.alembic_config())
    revisions = [r.revision for r in reversed(list(script.walk_revisions()))]
    store = tmp_path / "blobs"
    scratch = Registry(database_url=sqlite_url(tmp_path / "scratch"), store=store)
    push_tiny(scratch, tmp_path, 1, description="first")
    push_tiny(scratch, tmp_path, 2, tags={"dataset": "a", "stage": "prod"}, aliases=["production"])
    scratch.delete(push_tiny(scratch, tmp_path, 3).ref)
    shared = tiny_file(tmp_path, 1)  # the same bytes as tiny@v1: one blob, two versions
    scratch.push(shared, arch="tiny_models:tiny", name="team/other", arch_args=ARGS,
                 aliases=["staging"])  # fmt: skip
    push_tiny(scratch, tmp_path, 4, name="team/other", tags={"k": "v"})
    import tiny_models

    pickled = tmp_path / "whole-model.pt"  # a trusted pickle: a second blob, weights_sha256
    torch.save(tiny_models.TinyNet(**ARGS), pickled)
    scratch.push(pickled, arch=ARCH, name="pickled", arch_args=ARGS, trust_pickle=True)
    expected = {v.ref: v for v in scratch.search()}

    engine = db.open_engine(database_url)
    db.upgrade(engine, revisions[0])
    with engine.connect() as conn:
        inspector = inspect(conn)
        tables = [t for t in inspector.get_table_names() if t != "alembic_version"]
        shape = {t: [c["name"] for c in inspector.get_columns(t)] for t in tables}
    copy_rows(scratch.engine, engine, shape)
    scratch.engine.dispose()
    before = rows(engine, shape)
    counts = {t: len(before[t]) for t in ("models", "blobs", "versions", "tags", "aliases")}
    assert counts == {"models": 3, "blobs": 6, "versions": 5, "tags": 3, "aliases": 2}
    for revision in revisions[1:]:
        db.upgrade(engine, revision)
        assert rows(engine, shape) == before, f"revision {revision} changed rows"
    assert db.current_revision(engine) == db.SCHEMA_HEAD
    engine.dispose()

    reg = Registry(database_url=database_url, store=store)
    assert {v.ref: v for v in reg.search()} == expected
    assert reg.verify() == []
    for ref, version in expected.items():
        pulled = reg.pull(ref, tmp_path / "pulled" / ref.replace("/", "_"))
        assert sha256_of(pulled) == version.sha256
        assert reg.load(ref, trust_arch=True).training is False  # team/other: a function
    assert push_tiny(reg, tmp_path, 9).version == 4  # v3 was deleted before the upgrade
