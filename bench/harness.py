"""Timing harness: side-by-side, alternating runs; medians and ratios; the machine's description.

A comparison is a baseline and the subjects measured against it. Each
contender runs once untimed (warming the page cache, imports and caches),
then `repeats` timed rounds follow; each round runs every contender once,
in an order rotated by one per round, so that noise from other processes
falls on the baseline and the subjects alike. Untimed `setup` and `teardown`
around each run prepare fresh state (an empty registry, a deleted output
file) so that no run profits from the one before it.
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
    """A goal from issue #6: at most `limit` times the baseline, or at most `limit` seconds."""

    limit: float
    kind: str  # "ratio" or "seconds"

    def text(self) -> str:
        if self.kind == "ratio":
            return f"≤ {self.limit:g}x"
        return f"≤ {seconds(self.limit)}"

    def met(self, median: float, ratio: float) -> bool:
        return (ratio if self.kind == "ratio" else median) <= self.limit


@dataclass
class Contender:
    """One thing to time: `run(setup())` is timed, `teardown(state)` is not."""

    label: str
    run: Callable[[Any], object]
    setup: Callable[[], Any] = lambda: None
    teardown: Callable[[Any], None] = lambda _state: None
    target: Target | None = None
    # A second contender of the same comparison to state a ratio against (e.g. a floor).
    versus: str | None = None
    # `run` times the part of itself that counts and returns the seconds.
    self_timed: bool = False


@dataclass
class Result:
    """The timings of one contender within its comparison."""

    figure: str
    label: str
    times: list[float]
    baseline: Result | None  # None: this is the baseline
    target: Target | None = None
    versus: Result | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def ratio(self) -> float:
        return self.median / self.baseline.median if self.baseline else 1.0

    @property
    def passed(self) -> bool | None:
        return None if self.target is None else self.target.met(self.median, self.ratio)


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
        result = Result(figure, contender.label, times[contender.label], baseline, contender.target)
        results.append(result)
    by_label = {r.label: r for r in results}
    for contender, result in zip(contenders, results, strict=True):
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
            ["git", "status", "--porcelain", "--untracked-files=no"],
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
