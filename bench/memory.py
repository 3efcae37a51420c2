"""Figure 11: the memory a load, a pull, a diff and a server download of a checkpoint add.

Each operation runs in a process of its own, measured from /proc/PID/status:
its resident memory when idle (imports done, catalog open, the version looked
up once), then its peak (VmHWM, reset with /proc/PID/clear_refs just before
the operation) and, for a load, its anonymous memory afterwards: memory-mapped
weights are file pages of the page cache, a copy would be anonymous.

    .venv/bin/python bench/memory.py OP HOME REF [REF2 | DEST]    # one child
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import diff
from figures import BENCH_DIR, Workspace

from registry import Registry

MIB = 1 << 20
ALLOWANCE = 64 * MIB  # issue 14: pull, download and diff add at most this over idle


@dataclass(frozen=True)
class Footprint:
    operation: str
    idle: int
    peak: int
    limit: int | None  # None: measured, no target
    limit_text: str
    anonymous_added: int | None = None
    absolute: bool = False  # the target bounds the peak itself, not what the operation added
    anonymous_peak: int | None = None

    @property
    def added(self) -> int:
        return self.peak - self.idle

    @property
    def judged(self) -> int:
        """The memory the target bounds: the peak, the anonymous memory added, or all added."""
        if self.absolute:
            return self.peak
        return self.anonymous_added if self.anonymous_added is not None else self.added

    def measured(self) -> str:
        return f"{self.judged / MIB:{'' if self.absolute else '+'}.0f} MiB"

    @property
    def call(self) -> str:
        """pass or FAIL; empty for a row with no target."""
        if self.limit is None:
            return ""
        return "pass" if self.judged <= self.limit else "FAIL"


def status(pid: int | str = "self") -> dict[str, int]:
    """The memory fields of /proc/PID/status, in bytes."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if value.strip().endswith("kB"):
            fields[key] = int(value.split()[0]) * 1024
    return fields


def reset_peak(pid: int | str = "self") -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # 5: reset the peak RSS (VmHWM)


def child(operation: str, home: str, ref: str, extra: str) -> dict[str, int]:
    """Run one operation in this process; its idle and peak memory, as JSON-ready numbers."""
    reg = Registry(home=home)
    reg.get(ref)  # the catalog open and the version looked up, as any second call finds them
    if operation in ("load", "diff"):
        import torch  # noqa: F401  (part of idle: the operation's data is what is measured)
        import torchvision  # noqa: F401
    idle = status()["VmRSS"]
    anon_idle = status()["RssAnon"]
    reset_peak()
    result: dict[str, int] = {}
    if operation == "load":
        model = reg.load(ref)
        result["tensors"] = sum(t.nbytes for t in model.state_dict().values())
    elif operation == "pull":
        reg.pull(ref, extra)
    elif operation == "diff":
        reg.diff(ref, extra)
    else:
        raise SystemExit(f"unknown operation {operation!r}")
    now = status()
    return {**result, "idle": idle, "peak": now["VmHWM"], "anon_added": now["RssAnon"] - anon_idle}


def in_child(ws: Workspace, operation: str, home: Path, ref: str, extra: str) -> dict[str, int]:
    done = subprocess.run(
        [sys.executable, str(BENCH_DIR / "memory.py"), operation, str(home), ref, extra],
        env=ws.env(home), capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"memory.py {operation} exited {done.returncode}: {done.stderr[-2000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def server_download(ws: Workspace, home: Path, ref: str) -> tuple[int, int]:
    """`registry serve`'s idle RSS (after one API call) and its peak while sending `ref`."""
    import httpx
    from services import served

    command = [*ws.registry_command, "serve", "--port", "0"]
    with (
        served(command, ws.env(home), "http://") as line,
        httpx.Client(timeout=120) as client,
    ):
        url = line.strip().rstrip("/")
        client.get(f"{url}/api/models").raise_for_status()
        pid = server_pid(url)
        idle = status(pid)["VmRSS"]
        reset_peak(pid)
        with client.stream("GET", f"{url}/api/files/{ref}") as response:
            response.raise_for_status()
            for _ in response.iter_raw(1 << 20):
                pass
        return idle, status(pid)["VmHWM"]


def server_pid(url: str) -> int:
    """The pid of the process listening on the URL's port (the venv's `registry` script)."""
    port = int(url.rsplit(":", 1)[1])
    listening = Path("/proc/net/tcp").read_text().splitlines()[1:]
    inodes = {
        fields[9]
        for fields in (line.split() for line in listening)
        if int(fields[1].split(":")[1], 16) == port and fields[3] == "0A"
    }
    for fd in Path("/proc").glob("[0-9]*/fd/*"):
        try:
            target = fd.readlink().as_posix()
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            return int(fd.parts[2])
    raise RuntimeError(f"no process listens on port {port}")


def footprints(ws: Workspace, arch: str) -> list[Footprint]:
    """Figure 11 for `arch`: the four operations, each in its own process."""
    home, ref = ws.stocked(arch)
    diff_pair = diff.pair(ws, arch)
    load = in_child(ws, "load", home, ref, "")
    pull = in_child(ws, "pull", home, ref, str(ws.root / f"memory-{arch}.pth"))
    (ws.root / f"memory-{arch}.pth").unlink(missing_ok=True)
    changed = in_child(ws, "diff", diff_pair.home, diff_pair.v1, diff_pair.v2)
    v1, v2 = diff_pair.v1, diff_pair.v2
    idle, peak = server_download(ws, home, ref)
    allowance = f"≤ +{ALLOWANCE // MIB} MiB"
    return [
        Footprint(
            f"`Registry.load({ref!r})`, verified",
            load["idle"],
            load["peak"],
            ALLOWANCE,
            f"anonymous memory {allowance}: no copy of the {load['tensors'] / MIB:.0f} MiB of "
            "tensors (memory-mapped)",
            anonymous_added=load["anon_added"],
        ),
        Footprint(
            f"`Registry.pull({ref!r}, PATH)`", pull["idle"], pull["peak"], ALLOWANCE, allowance
        ),
        Footprint(
            f"`Registry.diff({v1!r}, {v2!r})`",
            changed["idle"],
            changed["peak"],
            ALLOWANCE,
            allowance,
        ),
        Footprint(f"`registry serve`: `GET /api/files/{ref}`", idle, peak, ALLOWANCE, allowance),
    ]


def table(rows: list[Footprint]) -> list[str]:
    lines = [
        "| operation | idle RSS | peak RSS | added | anonymous added | target |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        anon = f"{r.anonymous_added / MIB:+.0f} MiB" if r.anonymous_added is not None else ""
        lines.append(
            f"| {r.operation} | {r.idle / MIB:.0f} MiB | {r.peak / MIB:.0f} MiB | "
            f"{r.added / MIB:+.0f} MiB | {anon} | {r.limit_text}: "
            f"{'pass' if r.call == 'pass' else '**FAIL**'} |"
        )
    return lines


if __name__ == "__main__":
    operation, home, ref, extra = [*sys.argv[1:], ""][:4]
    print(json.dumps(child(operation, home, ref, extra)))
