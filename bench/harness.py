"""Timing harness: side-by-side, alternating runs; medians and ratios; the machine's description.

A comparison is a baseline and the subjects measured against it. Each
contender runs once untimed (warming the page cache, imports and caches),
then `repeats` timed rounds follow; each round runs every contender once,
in an order rotated by one per round, so that noise from other processes
falls on the baseline and the subjects alike. Untimed `setup` and `teardown`
around each run prepare its state (a fresh registry, the next of the inputs
written beforehand) so that no run profits from the one before it, and
`os.sync()` runs before every timed run.

Runs that write keep their outputs until the comparison ends (`Outputs`):
on a virtual machine, writing into page-cache memory just freed by a
deleted file and writing into fresh memory differ by up to 2x, and deleting
between runs hands that difference to whichever contender runs next.
"""

from __future__ import annotations

import gc
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Target:
    """A goal: at most `limit` times a reference, or at most `limit` seconds.

    The reference of a ratio is the comparison's baseline, or the contender
    labelled `against`.
    """

    limit: float
    kind: str  # "ratio" or "seconds"
    against: str | None = None

    def text(self) -> str:
        if self.kind == "ratio":
            return f"≤ {self.limit:g}x" + (f" {self.against}" if self.against else "")
        return f"≤ {seconds(self.limit)}"


@dataclass(frozen=True)
class Verdict:
    """A target judged on one result: the median, its spread over the rounds, and the call.

    `spread` is the interquartile range of the per-round values (ratios of
    runs made in the same round, or seconds): the middle half of the rounds,
    so that one run disturbed by the rest of the machine does not decide. A
    target inside it is "unresolved": the noise between rounds is larger than
    the figure's gap to the target.
    """

    target: Target
    median: float  # a ratio, or seconds
    spread: tuple[float, float]

    @property
    def call(self) -> str:
        low, high = self.spread
        if high <= self.target.limit:
            return "pass"
        if low > self.target.limit:
            return "FAIL"
        # The median alone would say pass or fail; the rounds disagree among themselves.
        return "unresolved"

    def measured(self) -> str:
        low, high = self.spread
        if self.target.kind == "ratio":
            return f"{self.median:.2f}x ({low:.2f} … {high:.2f})"
        return f"{seconds(self.median)} ({seconds(low)} … {seconds(high)})"


@dataclass
class Contender:
    """One thing to time: `run(setup())` is timed, `teardown(state)` is not."""

    label: str
    run: Callable[[Any], object]
    setup: Callable[[], Any] = lambda: None
    teardown: Callable[[Any], None] = lambda _state: None
    targets: tuple[Target, ...] = ()
    # A second contender of the same comparison to state a ratio against (e.g. a floor).
    versus: str | None = None
    # `run` times the part of itself that counts and returns the seconds.
    self_timed: bool = False


@dataclass
class Result:
    """The timings of one contender within its comparison, run i of each made in round i."""

    figure: str
    label: str
    times: list[float]
    baseline: Result | None  # None: this is the baseline
    targets: tuple[Target, ...] = ()
    versus: Result | None = None
    peers: dict[str, Result] = field(default_factory=dict)  # the comparison, by label

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def ratio(self) -> float:
        return self.median / self.baseline.median if self.baseline else 1.0

    def verdicts(self) -> list[Verdict]:
        return [self.verdict(target) for target in self.targets]

    def verdict(self, target: Target) -> Verdict:
        if target.kind == "seconds":
            return Verdict(target, self.median, _quartiles(self.times))
        reference = self.peers[target.against] if target.against else self.baseline
        assert reference is not None, f"{self.label}: a ratio target needs a reference"
        per_round = [a / b for a, b in zip(self.times, reference.times, strict=True)]
        return Verdict(target, self.median / reference.median, _quartiles(per_round))


def _quartiles(values: list[float]) -> tuple[float, float]:
    """The first and third quartiles: the range of the middle half of `values`."""
    if len(values) < 2:
        return values[0], values[0]
    first, _, third = statistics.quantiles(values, n=4, method="inclusive")
    return first, third


def compare(figure: str, contenders: Sequence[Contender], repeats: int) -> list[Result]:
    """Time every contender `repeats` times, alternating; the first one is the baseline."""
    for contender in contenders:  # warm-up, untimed
        _run_once(contender)
    # Collected once here, never before each run: a full collection of this process's
    # heap (torch loaded) leaves the CPU caches cold and slowed a 1.5 ms query to 4 ms.
    gc.collect()
    times: dict[str, list[float]] = {c.label: [] for c in contenders}
    for round_ in range(repeats):
        shift = round_ % len(contenders)
        for contender in [*contenders[shift:], *contenders[:shift]]:
            times[contender.label].append(_run_once(contender))
    baseline = Result(figure, contenders[0].label, times[contenders[0].label], None)
    results = [baseline]
    for contender in contenders[1:]:
        result = Result(
            figure, contender.label, times[contender.label], baseline, contender.targets
        )
        results.append(result)
    by_label = {r.label: r for r in results}
    for contender, result in zip(contenders, results, strict=True):
        result.peers = by_label
        if contender.versus is not None:
            result.versus = by_label[contender.versus]
    for result in results:
        ratio = f"{result.ratio:6.2f}x" if len(results) > 1 else ""
        print(f"  {result.label:<60} {seconds(result.median):>10}  {ratio}")
    return results


def _run_once(contender: Contender) -> float:
    state = contender.setup()
    # Start every run with no dirty pages left by the one before: otherwise
    # whichever run crosses the kernel's dirty limit is throttled for all.
    os.sync()
    try:
        started = time.perf_counter()
        measured = contender.run(state)
        elapsed = time.perf_counter() - started
        return float(measured) if contender.self_timed else elapsed
    finally:
        contender.teardown(state)


def run_process(args: Sequence[str], env: dict[str, str], cwd: Path) -> None:
    """Run a command to completion, output captured; a failure stops the benchmark."""
    done = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(args)} exited {done.returncode}:\n{done.stderr.strip()[-2000:]}"
        )


def seconds(value: float) -> str:
    """A duration with a unit fit to its size: 2.15 s, 12.3 ms, 850 µs."""
    if value >= 1:
        return f"{value:.2f} s"
    if value >= 0.01:
        return f"{value * 1e3:.0f} ms"
    if value >= 0.001:
        return f"{value * 1e3:.1f} ms"
    return f"{value * 1e6:.0f} µs"


def machine(workdir: Path) -> dict[str, str]:
    """What the numbers were measured on: hardware, software, disk and load."""
    import sqlalchemy
    import torch
    import torchvision

    cpu = _first_field("/proc/cpuinfo", "model name") or platform.processor() or "unknown"
    mem_kb = _first_field("/proc/meminfo", "MemTotal")
    ram = f"{int(mem_kb.split()[0]) / 2**20:.1f} GiB" if mem_kb else "unknown"
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "CPU": cpu,
        "cores": f"{os.cpu_count()} ({usable} usable by this process)",
        "RAM": ram,
        "OS": f"{platform.system()} {platform.release()} ({platform.machine()})",
        "Python": sys.version.split()[0],
        "torch / torchvision": f"{torch.__version__} / {torchvision.__version__}",
        "SQLAlchemy": sqlalchemy.__version__,
        "temp folder": f"{workdir.parent} ({_filesystem(workdir)}), "
        f"{shutil.disk_usage(workdir).free / 1e9:.1f} GB free at start",
        "load average at start": load_average(),
        "started": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "code": git_revision(),
    }


def load_average() -> str:
    """The 1, 5 and 15 minute load averages: how busy the machine was, for reading the noise."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def git_revision() -> str:
    """The commit measured, and whether the working tree differed from it."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            # the report itself, rewritten by every run, does not count
            [
                "git",
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                ".",
                ":!docs/benchmarks.md",
            ],
            cwd=root,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return f"{head}{' with uncommitted changes' if dirty else ''}" if head else "unknown"


def _first_field(path: str, name: str) -> str | None:
    try:
        for line in Path(path).read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == name:
                return value.strip()
    except OSError:
        pass
    return None


def _filesystem(path: Path) -> str:
    """The type of the filesystem holding `path`, from /proc/mounts (longest mount point)."""
    best, kind = "", "unknown filesystem"
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return kind
    resolved = str(path.resolve())
    for line in mounts:
        parts = line.split()
        if len(parts) < 3:
            continue
        mount = parts[1]
        inside = resolved == mount or resolved.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) > len(best):
            best, kind = mount, f"{parts[2]} on {parts[0]}"
    return kind
