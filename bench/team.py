"""Figure 13: a team through its server: push, re-push and pull through `registry serve`, and
the server's memory while four clients upload at once.

Every server is `python -m registry --home HOME serve --port 0`, a subprocess on loopback
over a registry home of its own, holding one `write` token
(`Registry(home).create_token`) that its clients send. Before a server is timed it
takes one small push (torchvision's `squeezenet1_1`, 5 MB), so it has imported torch and
torchvision as a team's long-running server has, and its first timed push pays no import.
Before 13a and 13b the page cache is filled (files of zeros, written and synced, removed
at the end; not in a quick run) until less than 1 GiB of memory is free: on this virtual
machine a write into memory not touched since it was freed costs up to twice a write into
memory that held other files' pages, and a figure starting with gigabytes free would cross
from one to the other as its outputs pile up (`Ballast`).

    .venv/bin/python bench/team.py --profile [--runs 3]   # where the time of each goes
    .venv/bin/python bench/team.py --profiled-server TIMINGS HOME   # its server (internal)

`--profile` runs the pushes and pulls of the figure with timers around the functions
they call, on both sides: the client's in this process, the server's in a server started
through `--profiled-server`, which wraps them before it serves. It is the profile behind
figure 13's explanation in docs/benchmarks.md; not part of the test suite.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import inspect
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import floors
from figures import Outputs, Workspace, feed_homes
from folders import Part
from harness import Contender, Target, compare
from memory import MIB, Footprint, reset_peak, status

from registry import Registry

BENCH_DIR = Path(__file__).resolve().parent
SIDE = 11_448  # figure 13c's uploads: a torch.nn.Linear(SIDE, SIDE), float32, 524 MB each
QUICK_SIDE = 2_048  # --quick: 17 MB each
UPLOADERS = 4
RECEIVE_LIMIT = 200 * MIB  # the server's peak RSS while it receives the four uploads
FULL = 1 << 30  # the page cache is "full" once the machine has less free memory than this
DISK_KEPT_FREE = 20_000_000_000  # the ballast leaves this much disk for the figure's outputs
WARM_ARCH = "squeezenet1_1"  # the smallest torchvision model (5 MB): its push imports torchvision


@dataclass
class TeamServer:
    """A `registry serve` subprocess over a home of its own, and a write token for it."""

    home: Path
    process: subprocess.Popen[str]
    url: str
    token: str
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def client(self, home: Path, **kwargs: Any) -> Registry:
        """A client of this server whose own home (its digest cache, its blob cache) is `home`."""
        return Registry(home=home, remote=self.url, token=self.token, **kwargs)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_server(
    ws: Workspace, home: Path, warm: bool = True, command: list[str] | None = None
) -> TeamServer:
    """Create `home`, make its write token, start its server; with `warm`, push a small
    torchvision model through it, so the server has imported torch and torchvision (all of
    it untimed)."""
    _, token = Registry(home=home).create_token("bench", "write")
    log = home.with_name(home.name + ".log")
    command = command or [sys.executable, "-m", "registry", "--home", str(home), "serve"]
    with open(log, "w") as stderr:
        process = subprocess.Popen(
            [*command, "--port", "0"],
            env=ws.env(home), stdout=subprocess.PIPE, stderr=stderr, text=True,
        )  # fmt: skip
    assert process.stdout is not None
    url = process.stdout.readline().strip().rstrip("/")
    if not url.startswith("http://"):
        process.kill()
        raise RuntimeError(f"registry serve did not start: {log.read_text()[-2000:]}")
    server = TeamServer(home, process, url, token, log)
    if warm:
        warm_client = server.client(home.with_name(home.name + "-warm-client"))
        warm_client.push(ws.checkpoint(WARM_ARCH), arch=WARM_ARCH, name="warm")
    return server


def free_memory() -> int:
    """MemFree of /proc/meminfo, in bytes: memory holding neither a process's data nor a file's."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemFree:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no MemFree in /proc/meminfo")


class Ballast:
    """Files of zeros, written and synced until the page cache fills the machine's memory.

    On this virtual machine, writing into memory the guest has not touched since it was
    freed is up to twice as slow as writing into memory that held other files' pages (the
    host backs a page again on first touch): a local push of vgg16 took 1.9-2.1 s in free
    memory and 0.8-1.1 s with the page cache full, a push through the server 1.8-2.1 s and
    2.2-2.9 s. A figure that starts with gigabytes free crosses from one to the other as
    its outputs pile up. With the page cache full, every write recycles the clean pages of
    these files, as on a machine that has been up a while. They are removed at the end.
    """

    def __init__(self, folder: Path) -> None:
        folder.mkdir()
        self.folder = folder
        self.written = 0

    def fill(self) -> str:
        """Write until less than FULL is free (or the disk would be short); what was done."""
        block = bytes(8 << 20)
        started = time.perf_counter()
        before = free_memory()
        while free_memory() > FULL and shutil.disk_usage(self.folder).free > DISK_KEPT_FREE:
            with open(self.folder / f"{self.written >> 30:04d}", "wb") as out:
                for _ in range((1 << 30) // len(block)):
                    out.write(block)
            self.written += 1 << 30
        os.sync()  # clean pages, which the kernel takes back without writing anything
        return (
            f"page cache filled: {before / 2**30:.1f} GiB free before, {free_memory() / 2**30:.1f} "
            f"GiB after; {self.written / 2**30:.0f} GiB of ballast in all, "
            f"{time.perf_counter() - started:.0f} s"
        )

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def figure(ws: Workspace, arch: str, quick: bool, repeats: int) -> list[Part]:
    """Figure 13: 13a push and re-push, 13b pull (each with the page cache full, but in a
    quick run), 13c the server's memory."""
    path = ws.checkpoint(arch)
    what = f"{arch}, {path.stat().st_size / 1e6:.0f} MB checkpoint"
    judged = True  # on the last arch of the run: vgg16, or resnet18 in a quick run
    ballast = None if quick else Ballast(ws.root / "team-ballast")

    def fill() -> str:
        if ballast is None:
            return "Quick run: the page cache was not filled first."
        done = ballast.fill()
        print(f"  {done}", flush=True)
        return f"Before this table, {done}."

    try:
        filled = fill()
        push = push_figure(ws, arch, path, repeats, judged, what)
        push.notes.append(filled)
        filled = fill()
        pull = pull_figure(ws, arch, path, repeats, judged, what)
        pull.notes.append(filled)
    finally:
        if ballast is not None:
            ballast.remove()
    return [push, pull, memory_figure(ws, quick, 1 if quick else 3)]


def push_figure(
    ws: Workspace, arch: str, path: Path, repeats: int, judged: bool, what: str
) -> Part:
    """13a: a first push through the server, and a re-push, against a local push."""
    runs = repeats + 1  # the untimed warm-up pushes too
    out = Outputs(ws.root / "team-push")
    remote = f"`Registry(remote=URL).push(FILE, arch={arch!r})`, first push"
    servers: list[tuple[TeamServer, Path]] = []  # (server, client home) of each remote push

    def fresh_server() -> tuple[TeamServer, Path]:
        return start_server(ws, out.new("server")), out.new("client")

    def first_push(run: tuple[TeamServer, Path]) -> None:
        server, client = run
        if not server.client(client).push(path, arch=arch).is_new:
            raise RuntimeError("a first push found its version stored")

    def pushed(run: tuple[TeamServer, Path]) -> None:
        """Keep the server and client of the newest first push for the re-push; stop the rest."""
        servers.append(run)
        while len(servers) > 1:
            servers.pop(0)[0].stop()

    def re_push(run: tuple[TeamServer, Path]) -> None:
        server, client = run
        if server.client(client).push(path, arch=arch).is_new:
            raise RuntimeError("a re-push stored a new version")

    contenders = [
        Contender(
            f"`Registry(home).push(FILE, arch={arch!r})`, local (baseline)",
            lambda run: Registry(home=run[1]).push(run[0], arch=arch),
            setup=feed_homes(ws, [(path, out.new("home")) for _ in range(runs)]),
        ),
        Contender(
            remote,
            first_push,
            setup=fresh_server,
            teardown=pushed,
            targets=(Target(1.3, "ratio"),) if judged else (),
        ),
        Contender(
            "the same push again: same file, same client home",
            re_push,
            setup=lambda: servers[-1],
            targets=(Target(0.05, "ratio", against=remote),) if judged else (),
        ),
        Contender(
            "reference: SHA-256 of the file (the client's hash in a first push)",
            lambda _: floors.sha256_file(path),
        ),
    ]
    try:
        results = compare(f"13 · push · {arch}", contenders, repeats)
    finally:
        for server, _ in servers:
            server.stop()
        out.remove()
    notes = [
        "Each first push goes to a server started for it over a brand-new home, from a "
        "client whose home (its cache of file digests) is new too: the client's SHA-256 of "
        "the file is part of the time, as it is of every first push. The re-push is the "
        "newest first push's file again, from the same client home, to the same server."
    ]
    return Part(f"push, {what}", results, notes)


def pull_figure(
    ws: Workspace, arch: str, path: Path, repeats: int, judged: bool, what: str
) -> Part:
    """13b: `Registry(remote=...).pull` with a cold cache, against httpx into a file."""
    import httpx

    out = Outputs(ws.root / "team-pull")
    server = start_server(ws, out.new("server"))
    try:
        ref = server.client(out.new("client")).push(path, arch=arch).ref
        url = f"{server.url}/api/files/{ref}"
        http = httpx.Client(timeout=120, headers={"Authorization": f"Bearer {server.token}"})

        def download(destination: Path, durable: bool) -> None:
            digest = hashlib.sha256()
            with http.stream("GET", url) as response, open(destination, "wb") as sink:
                response.raise_for_status()
                for chunk in response.iter_raw(1 << 20):
                    sink.write(chunk)
                    if durable:
                        digest.update(chunk)
                if durable:
                    sink.flush()
                    os.fsync(sink.fileno())
            if durable and digest.hexdigest() != path_sha256:
                raise RuntimeError(f"{url}: the bytes are not the file's")

        path_sha256 = floors.sha256_file(path)
        results = compare(
            f"13 · pull · {arch}",
            [
                Contender(
                    f"httpx: `GET /api/files/{ref}` streamed into a file (baseline)",
                    lambda dest: download(dest, durable=False),
                    setup=lambda: out.new("plain.pth"),
                ),
                Contender(
                    f"`Registry(remote=URL).pull({ref!r}, PATH)`, cold cache",
                    lambda run: server.client(run[0]).pull(ref, run[1]),
                    setup=lambda: (out.new("client"), out.new("pulled.pth")),
                    targets=(Target(1.3, "ratio"),) if judged else (),
                ),
                Contender(
                    "reference: the same httpx download + SHA-256 + fsync",
                    lambda dest: download(dest, durable=True),
                    setup=lambda: out.new("durable.pth"),
                ),
            ],
            repeats,
        )
        http.close()
    finally:
        server.stop()
        out.remove()
    notes = [
        "Every pull is from a client home made for it, whose blob cache has never seen the "
        "version. Every download, the baseline's included, asks the same server, which "
        "verifies the blob by its BLAKE3 before it sends a byte."
    ]
    return Part(f"pull, {what}", results, notes)


# -- 13c: memory -----------------------------------------------------------------------------


@dataclass
class Sampler:
    """The largest RssAnon and VmRSS of a process, read from /proc every `every` seconds."""

    pid: int
    every: float = 0.02
    anonymous: int = 0
    resident: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Sampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError):
                now = status(self.pid)
                self.anonymous = max(self.anonymous, now["RssAnon"])
                self.resident = max(self.resident, now["VmRSS"])
            time.sleep(self.every)


@dataclass
class Round:
    """One round of 13c: the server's memory at each step, in bytes; and the wall times."""

    idle: int
    received_peak: int
    received_anonymous: int
    warm_idle: int
    pushed_peak: int
    pushed_anonymous: int
    upload_s: float
    push_s: float


def uploads(ws: Workspace, side: int) -> list[Path]:
    """UPLOADERS distinct checkpoints of a torch.nn.Linear(side, side) (seeds 1, 2, ...)."""
    import torch

    made = []
    for i in range(UPLOADERS):
        path = ws.root / f"team-linear-{side}-{i}.pt"
        if not path.exists():
            generator = torch.Generator().manual_seed(i + 1)
            state = {
                "weight": torch.randn(side, side, generator=generator),
                "bias": torch.zeros(side),
            }
            torch.save(state, path)
            del state
            floors.sha256_file(path)  # warm in the page cache, as the figure's other inputs
        made.append(path)
    return made


def memory_round(ws: Workspace, files: list[Path], side: int, out: Outputs) -> Round:
    """A server never pushed to, UPLOADERS clients pushing at once: its memory while the
    uploads come in (every client waits at the end of its upload until all are in), then
    while the UPLOADERS pushes run."""
    server = start_server(ws, out.new("server"), warm=False)
    try:
        import httpx

        httpx.get(f"{server.url}/api/models", headers={"Authorization": f"Bearer {server.token}"})
        idle = status(server.pid)["VmRSS"]
        all_in = threading.Barrier(UPLOADERS + 1)

        @contextlib.contextmanager
        def progress(label: str, _total: int) -> Iterator[Callable[[int], None]]:
            yield lambda _n: None
            if label.startswith("upload "):
                all_in.wait(timeout=600)  # the push is asked only once every upload is in

        errors: list[BaseException] = []

        def push(i: int) -> None:
            try:
                server.client(out.new("client"), progress=progress).push(
                    files[i],
                    name=f"linear-{i}",
                    arch="torch.nn:Linear",
                    arch_args={"in_features": side, "out_features": side},
                )
            except BaseException as exc:  # reported below, after every thread has ended
                errors.append(exc)
                all_in.abort()

        threads = [threading.Thread(target=push, args=(i,)) for i in range(UPLOADERS)]
        os.sync()
        reset_peak(server.pid)
        started = time.perf_counter()
        with Sampler(server.pid) as receiving:
            for thread in threads:
                thread.start()
            with contextlib.suppress(threading.BrokenBarrierError):
                while all_in.n_waiting < UPLOADERS and not errors:
                    time.sleep(0.01)
            received_peak = status(server.pid)["VmHWM"]
        uploaded = time.perf_counter()
        warm_idle = status(server.pid)["VmRSS"]
        reset_peak(server.pid)
        with Sampler(server.pid) as pushing:
            with contextlib.suppress(threading.BrokenBarrierError):
                all_in.wait(timeout=60)
            for thread in threads:
                thread.join()
            pushed_peak = status(server.pid)["VmHWM"]
        if errors:
            raise errors[0]
        return Round(
            idle,
            received_peak,
            receiving.anonymous,
            warm_idle,
            pushed_peak,
            pushing.anonymous,
            uploaded - started,
            time.perf_counter() - uploaded,
        )
    finally:
        server.stop()


def memory_figure(ws: Workspace, quick: bool, rounds: int) -> Part:
    """13c: the server's peak RSS while it receives UPLOADERS uploads at once, then pushes them."""
    side = QUICK_SIDE if quick else SIDE
    print("  writing the uploads", flush=True)
    files = uploads(ws, side)
    size = files[0].stat().st_size
    measured: list[Round] = []
    for i in range(rounds):
        out = Outputs(ws.root / f"team-memory-{i}")
        try:
            measured.append(memory_round(ws, files, side, out))
        finally:
            out.remove()  # a round's 2 GB stored and its clients' homes
        r = measured[-1]
        print(
            f"  round {i + 1}: idle {r.idle / MIB:.0f} MiB, receiving "
            f"{r.received_peak / MIB:.0f} MiB, pushing {r.pushed_peak / MIB:.0f} MiB "
            f"(anonymous {r.pushed_anonymous / MIB:.0f} MiB)",
            flush=True,
        )
    for path in files:
        path.unlink()

    def median(name: str) -> int:
        return int(statistics.median(getattr(r, name) for r in measured))

    gigabytes = UPLOADERS * size / 1e9
    upload_s = statistics.median(r.upload_s for r in measured)
    push_s = statistics.median(r.push_s for r in measured)
    receiving = (
        f"receiving {UPLOADERS} uploads at once (`PUT /api/blobs/SHA256`, "
        f"{size / 1e6:.0f} MB each), a server never pushed to"
    )
    rows = [
        Footprint(
            receiving,
            median("idle"),
            median("received_peak"),
            RECEIVE_LIMIT,
            f"peak ≤ {RECEIVE_LIMIT // MIB} MiB",
            absolute=True,
            anonymous_peak=median("received_anonymous"),
        ),
        Footprint(
            f"then the {UPLOADERS} pushes (`POST /api/push`), the first importing torch",
            median("warm_idle"),
            median("pushed_peak"),
            None,
            "",
            anonymous_peak=median("pushed_anonymous"),
        ),
    ]
    notes = [
        f"{UPLOADERS} threads of this process each push a distinct checkpoint of a "
        f"`torch.nn.Linear({side}, {side})` (random float32 weights, {size / 1e6:.0f} MB) "
        "with `Registry(remote=URL).push`, from client homes of their own, to one server "
        "started over a brand-new home and never pushed to (it has answered one "
        "`GET /api/models`: that is its idle RSS). Each client waits at the end of its "
        f"upload until all {UPLOADERS} are in, so the first row is the server receiving and "
        "nothing else; then the pushes go on at once. Peak RSS is the server's VmHWM "
        "(reset through /proc/PID/clear_refs before each step); its anonymous memory is "
        "sampled from /proc/PID/status every 20 ms. "
        + (f"Medians of {len(measured)} rounds, each" if len(measured) > 1 else "One round")
        + f" with a new server: the {gigabytes:.1f} GB arrived in {upload_s:.1f} s (the "
        f"clients' SHA-256 included) and the {UPLOADERS} pushes took {push_s:.1f} s more.",
    ]
    return Part(f"memory, {UPLOADERS} clients at once", [], notes, footprints=rows)


def memory_table(rows: list[Footprint]) -> list[str]:
    """13c's table: the server's idle and peak RSS, its peak anonymous memory, the target."""
    lines = [
        "| server, while | idle RSS | peak RSS | added | peak anonymous (sampled) | target |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        anonymous = f"{r.anonymous_peak / MIB:.0f} MiB" if r.anonymous_peak is not None else ""
        target = f"{r.limit_text}: {'pass' if r.call == 'pass' else '**FAIL**'}" if r.call else ""
        lines.append(
            f"| {r.operation} | {r.idle / MIB:.0f} MiB | {r.peak / MIB:.0f} MiB | "
            f"{r.added / MIB:+.0f} MiB | {anonymous} | {target} |"
        )
    return lines


# -- the profile -----------------------------------------------------------------------------

# (module, owner, attribute, label): what the profile times, in the client and in the server.
CLIENT_PHASES = [
    ("registry.uploads", "ServerPublisher", "_digest", "client: SHA-256 of the file"),
    ("registry.uploads", "ServerPublisher", "_send", "client: missing? + PUT (the upload)"),
    ("registry.remote", "Client", "send", "client: every API request (PUT, push, ...)"),
    ("registry.stores.cache", "CachedStore", "_fetch", "client: download into the cache"),
    ("registry.stores.folder", "BlobWriter", "finish", "client: fsync of a cache file"),
    ("registry.stores.folder", "BlobWriter", "commit", "client: rename into the cache, fsync"),
    ("registry.reads", "Reads", "blake3_check", "client: ask the BLAKE3 (catalog)"),
    ("registry.files", "", "copy_verified", "client: copy cache → PATH, BLAKE3, fsync"),
]
SERVER_PHASES = [
    ("registry.server.writing", "WriteApi", "put_blob", "server: PUT, whole request"),
    ("registry.stores.folder", "BlobWriter", "write", "server: write a chunk (hash + disk)"),
    ("registry.digests", "Hasher", "update", "server: SHA-256 + BLAKE3 of a chunk"),
    ("registry.stores.folder", "DurableFile", "write", "server: disk write of a chunk"),
    ("registry.stores.folder", "BlobWriter", "finish", "server: final fsync"),
    ("registry.server.writing", "WriteApi", "_place", "server: place the blob (catalog)"),
    ("registry.server.writing", "WriteApi", "push", "server: POST /api/push, whole request"),
    ("registry.server.writing", "WriteApi", "_stored", "server: the sent blob looked up"),
    ("registry.pushing", "", "build", "server: build the arch"),
    ("registry.pushing", "", "read_weights", "server: read the weights, fit the arch"),
    ("registry.manifests", "", "describe", "server: tensor manifest (BLAKE3 per tensor)"),
    ("registry.pushing", "", "_identical", "server: re-push lookup"),
    ("registry.server.reading", "ReadApi", "file", "server: GET /api/files (verify, answer)"),
    ("registry.stores.folder", "BlobStore", "verify", "server: verify the blob"),
]


@contextlib.contextmanager
def timers(
    phases: list[tuple[str, str, str, str]], record: Callable[[str, float], None]
) -> Iterator[None]:
    """Wrap each phase's function with a timer that reports its seconds to `record`."""
    import importlib

    saved = []
    for module_name, owner_name, attribute, label in phases:
        module = importlib.import_module(module_name)
        owner = getattr(module, owner_name) if owner_name else module
        function = getattr(owner, attribute)
        saved.append((owner, attribute, function))
        setattr(owner, attribute, _timed(function, label, record))
    try:
        yield
    finally:
        for owner, attribute, function in reversed(saved):
            setattr(owner, attribute, function)


def _timed(function: Any, label: str, record: Callable[[str, float], None]) -> Any:
    if inspect.iscoroutinefunction(function):

        @functools.wraps(function)
        async def timed_async(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await function(*args, **kwargs)
            finally:
                record(label, time.perf_counter() - started)

        return timed_async

    @functools.wraps(function)
    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            record(label, time.perf_counter() - started)

    return timed


def profiled_server(timings: Path, home: Path) -> None:
    """Serve `home` with SERVER_PHASES timed; each timing appended to `timings` as JSON."""
    lock = threading.Lock()
    sink = open(timings, "a")  # noqa: SIM115 -- open while the server runs

    def record(label: str, seconds: float) -> None:
        with lock:
            sink.write(json.dumps([label, seconds]) + "\n")
            sink.flush()

    from registry.cli import main as registry_main

    with timers(SERVER_PHASES, record):
        sys.argv = ["registry", "--home", str(home), "serve", *sys.argv[4:]]
        registry_main()


Phases = dict[str, dict[str, list[float]]]  # kind of run -> phase -> seconds of each run


def profile(runs: int, arch: str) -> None:
    """Time each phase of remote pushes and pulls of `arch` inside real runs; print medians."""
    work = Path(tempfile.mkdtemp(prefix="registry-team-profile-"))
    try:
        ws = Workspace(work)
        path = ws.checkpoint(arch)
        out = Outputs(work / "runs")
        per_run: Phases = defaultdict(lambda: defaultdict(list))
        for i in range(runs + 1):  # the first round warms up, and is dropped
            profile_round(ws, out, path, arch, per_run)
            if i == 0:
                per_run.clear()
        for kind, phases in per_run.items():
            print(f"{kind} (median of {runs}):")
            for label, values in sorted(phases.items(), key=lambda kv: -statistics.median(kv[1])):
                print(f"  {label:<52} {statistics.median(values):8.3f} s  x{len(values)}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def profile_round(ws: Workspace, out: Outputs, path: Path, arch: str, per_run: Phases) -> None:
    """A local push, a remote push, a re-push and a remote pull, each phase timed."""
    timings = out.new("timings.jsonl")
    timings.touch()
    home = out.new("server")
    command = [
        sys.executable, str(BENCH_DIR / "team.py"), "--profiled-server", str(timings), str(home),
    ]  # fmt: skip
    spent: dict[str, float] = defaultdict(float)

    def record(label: str, seconds: float) -> None:
        spent[label] += seconds

    def server_spent() -> dict[str, float]:
        found: dict[str, float] = defaultdict(float)
        for line in timings.read_text().splitlines():
            label, seconds = json.loads(line)
            found[label] += seconds
        timings.write_text("")
        return found

    def measured(kind: str, run: Callable[[], object]) -> None:
        server_spent()
        spent.clear()
        os.sync()
        started = time.perf_counter()
        with timers(CLIENT_PHASES, record):
            run()
        per_run[kind]["whole, as the client sees it"].append(time.perf_counter() - started)
        time.sleep(0.2)  # the server's last timings written
        for label, seconds in [*spent.items(), *server_spent().items()]:
            per_run[kind][label].append(seconds)

    server = start_server(ws, home, command=command)
    client = out.new("client")
    local = ws.fresh_home(out.new("local"))
    try:
        measured("local push", lambda: Registry(home=local).push(path, arch=arch))
        measured("remote push", lambda: server.client(client).push(path, arch=arch))
        measured("re-push", lambda: server.client(client).push(path, arch=arch))
        dest = out.new("pulled.pth")
        measured("remote pull", lambda: server.client(out.new("client")).pull(f"{arch}@v1", dest))
    finally:
        server.stop()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--profiled-server":
        profiled_server(Path(sys.argv[2]), Path(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(prog="bench/team.py")
    parser.add_argument("--profile", action="store_true", required=True)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--arch", default="vgg16")
    args = parser.parse_args()
    profile(args.runs, args.arch)


if __name__ == "__main__":
    main()
