"""Benchmark of issue #6: the registry next to the plain-Python floor of the same work.

    make bench                          # the full run: resnet18 and vgg16, 100,000-version catalog
    .venv/bin/python bench/run.py --quick           # smoke run: resnet18, 2,000-version catalog
    .venv/bin/python bench/run.py --only load       # one figure (name or number), repeatable

Builds its own checkpoints (torchvision, weights=None: nothing downloaded) in
a temp folder under $TMPDIR or /tmp, removed at the end, and writes
docs/benchmarks.md: the targets met and missed, the machine, how it was
measured, and one table per figure. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import catalog
import diff
import figures
import folders
import harness
import memory
import services
import signed
import team
from harness import Result, seconds

from registry import db

ROOT = Path(__file__).resolve().parent.parent
# Sections after this line of the report come from scripts run by hand
# (bench/serve_load.py); a rewrite keeps them.
BY_HAND = "<!-- measured by hand below: bench/run.py keeps this part -->"
DISK_NEEDED_FOR_VGG16 = 3_000_000_000  # the checkpoint, a stocked registry, a push, a copy
# Figure 12's 2 GB folder: every run's copy and registry kept until the comparison ends.
DISK_NEEDED_FOR_FOLDERS = 36_000_000_000
# Figure 13: each pull run's three downloads and a cache copy kept until the comparison ends.
DISK_NEEDED_FOR_TEAM = 20_000_000_000


@dataclass(frozen=True)
class Figure:
    number: str
    name: str
    title: str
    measures: str


FIGURES = [
    Figure(
        "1",
        "push",
        "`registry push` of a checkpoint file",
        "The checkpoint is the tutorial's file, `torch.save(model.state_dict(), path)`. "
        "**Floor**: copy it in one pass (8 MiB chunks), sha256 on the way, fsync the copy: "
        "the least a push can do. A push also checks that the weights fit the arch, renames "
        "the blob into place, fsyncs its folder and writes the catalog. "
        "**Subjects**: `Registry(home=...).push(path, arch=ARCH)` in this process (torch "
        "already imported), and `registry push PATH --arch ARCH` as a subprocess, timed from "
        "spawn to exit, so it includes starting Python and `import torch`. Every run pushes "
        "into a brand-new registry (created and migrated outside the timing), so no run finds "
        "its bytes already stored. **Reference** (no target): a subprocess that imports torch "
        "and torchvision, then does the floor: the least a CLI push that reads weights can cost.",
    ),
    Figure(
        "2",
        "push-memory",
        "`Registry.push(model)` from memory",
        "**Baseline**: the tutorial's save, `torch.save(model.state_dict(), path)`, then fsync "
        "of the file. **Subject**: `Registry(home=...).push(model, arch=ARCH)` with the same "
        "nn.Module, into a brand-new registry each run (pushing an identical state_dict to the "
        "same model again would return the existing version without storing anything).",
    ),
    Figure(
        "3",
        "load",
        "`Registry.load`",
        "**Baseline**: the tutorial's load: `models.ARCH()` (randomly initialised), "
        "`model.load_state_dict(torch.load(path, weights_only=True))`, `model.eval()`. "
        "**Subjects**: `Registry(home=...).load(ref)`, which checks the blob's bytes against "
        "the digests recorded at push, and with "
        "`verify=False`; each from a new `Registry` object, as `registry.load(ref)` does. "
        "**Floors**: sha256 of the file, then build on the meta device, "
        "`torch.load(path, mmap=True, weights_only=True)`, `load_state_dict(state, "
        "assign=True)`, `eval()`; and the same without the sha256. The *vs floor* column is "
        "each load's ratio to its floor. Memory-mapped weights are paged in on first use, from "
        "the warm page cache, and no row times that (no forward pass is run).",
    ),
    Figure(
        "4",
        "pull",
        "`registry pull`",
        "**Floor**: copy the stored blob to a new file in one pass (8 MiB chunks) with sha256 "
        "on the way, no fsync. **Subjects**: `Registry(home=...).pull(ref, path)` in this "
        "process and `registry pull REF -o PATH` as a subprocess (spawn to exit). A pull also "
        "compares the digest, fsyncs the file, renames it into place and fsyncs the folder; "
        "the **reference** row (floor + fsync) shows how much of any gap the fsync is. The "
        "output file is deleted after each run.",
    ),
    Figure(
        "5",
        "cli",
        "`registry ls` and `registry show`, whole process",
        "Wall time of whole processes, spawn to exit, on a registry holding one version: "
        "`registry ls` and `registry show REF`, against `python -c 'import sqlalchemy.orm, "
        "click'`, the two libraries a catalog command cannot do without. **Reference**: "
        "`python -c 'import torch'`, what any command that imports torch pays on top.",
    ),
    Figure(
        "7",
        "show-tensors",
        "`registry show REF --tensors`, whole process",
        "Whole processes, spawn to exit: `registry show REF` (baseline) and `registry show REF "
        "--tensors`, which also prints the version's tensor manifest (name, dtype, shape, "
        "digest of each tensor), read from the catalog.",
    ),
    Figure(
        "8",
        "diff",
        "`registry diff` of a fine-tune that changed only the last layer",
        " ".join((diff.__doc__ or "").split("\n\n", 1)[0].split()[6:])
        + " **Baseline**: plain `torch.load(path, weights_only=True)` of both files, full "
        "loads, what comparing them in plain torch starts with. **Subject**: `reg.diff(v1, "
        "v2)` on a `Registry` whose engine is open: tensors whose manifest digests agree are "
        "settled without reading them; only the last layer's two tensors are read from the "
        "memory-mapped blobs, checked against their digests and measured.",
    ),
    Figure(
        "9",
        "s3",
        "the S3 store, next to boto3",
        " ".join((services.__doc__ or "").split("\n\n", 1)[1].split(". Figure 10")[0].split())
        + ". The cold pull uses the catalog of one of the pushes and a new, empty cache; "
        "a push leaves its blob in its own cache, which the cached load reads.",
    ),
    Figure(
        "10",
        "serve",
        "`registry serve` downloads, next to `python -m http.server`",
        "One stored checkpoint, served by `registry serve --port 0` (which verifies the blob "
        "by its BLAKE3, then sends it) and by `python -m http.server` from the blob's folder, "
        "both subprocesses on loopback; the same `httpx` client streams each download in "
        "1 MiB reads, counts the bytes and drops them.",
    ),
    Figure(
        "11",
        "memory",
        "memory of a load, a pull, a diff and a server download",
        " ".join((memory.__doc__ or "").split("\n\n", 1)[1].split("    .venv")[0].split()),
    ),
    Figure(
        "12",
        "folders",
        "a sharded transformers folder: push, load, memory, a second version",
        " ".join((folders.__doc__ or "").split("\n\n")[1].split())
        + " **12a** (push): the floor copies every file of the folder into a new folder, "
        "SHA-256 on the way, and fsyncs each copy; the first push goes into a brand-new "
        "registry each run. **12d** (second version): into one registry holding v1, each "
        "run pushes the next of the second versions (its parent the run before's), timed "
        "against the first push; the store's growth per push is measured around it, "
        "untimed. **12b** (load): the floor builds `LlamaForCausalLM` on the meta device "
        "from `config.json`, `safetensors.torch.load_file`s each shard and "
        "`load_state_dict(..., assign=True)`s it, then (the baseline) BLAKE3s every file "
        "(memory-mapped, every core); the verified load is judged against that, the "
        "`verify=False` load against the floor without the BLAKE3. The floors read the "
        "folder, the loads the blobs stored from it, both warm in the page cache. "
        "**12c** (memory): below.",
    ),
    Figure(
        "13",
        "team",
        "a team through its server: push, re-push, pull, and the server's memory",
        " ".join((team.__doc__ or "").split("\n\n")[1].split())
        + " **13a** (push): the baseline is a local push, `Registry(home=...).push(FILE, "
        "arch=...)` into a brand-new registry each run, as figure 1's; the first push "
        "through the server is timed from the client: `Registry(remote=URL, token=...)` "
        "made, the file hashed, `POST /api/blobs/missing`, `PUT /api/blobs/SHA256` (the "
        "whole file, streamed), `POST /api/push` (the server reads the weights against the "
        "arch, writes the manifest and the catalog) and its answer. **13b** (pull): the "
        "baseline streams `GET /api/files/REF` with httpx (1 MiB reads, the token in the "
        "header) into a file, no hash, no fsync. **13c** (memory): below.",
    ),
    Figure(
        "6",
        "catalog",
        "a large catalog",
        " ".join((catalog.__doc__ or "").split("\n\n", 1)[1].split())
        + " Each sample is one call on a `Registry` whose engine is already open (a "
        "long-lived process); names and references are drawn at random (seed 6) from 256 "
        "prepared ones. **Baseline** of the lookups: `SELECT 1` in a catalog session, the "
        "round-trip floor, and each lookup's target is a ratio to it (issue #24). The push "
        "and `Registry.models()` are timed in rounds of their own: in the same rotation they "
        "left the next lookup's CPU caches cold and doubled its time. `registry ls` is timed "
        "as a whole process against the import floor of figure 5.",
    ),
]
FIGURES.append(
    Figure(
        "14",
        "signed",
        "signed versions: `push --sign` and a load that insists on a signature",
        " ".join((signed.__doc__ or "").split("\n\n", 1)[1].split())
        + " **14a**: a push into a brand-new registry each run (its own checkpoint, as "
        "figure 1's), without and with `sign=` an ECDSA P-256 key. **14b**: a verified load "
        "of a signed version, without and with `trusted_keys=` its public key; and "
        "`verify_signatures` of that version alone.",
    )
)
FIGURES.sort(key=lambda f: int(f.number))
FIGURES_BY_KEY = {key: f for f in FIGURES for key in (f.number, f.name)}
# Figures measured on every arch (the small case, then vgg16); the others on the last only.
PER_ARCH = ("push", "push-memory", "load", "pull")


@dataclass
class Section:
    """One table of the report: a figure on one case."""

    figure: Figure
    subtitle: str
    results: list[Result]
    notes: list[str] = field(default_factory=list)
    footprints: list[memory.Footprint] = field(default_factory=list)
    growths: list[folders.Growth] = field(default_factory=list)
    footprint_table: Callable[[list[memory.Footprint]], list[str]] = memory.table


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="bench/run.py",
        description="Benchmark of issue #6; writes docs/benchmarks.md.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: resnet18 only, 3 timed rounds (10 for catalog queries), "
        "a 2,000-version catalog",
    )
    parser.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        choices=sorted(FIGURES_BY_KEY),
        help="run only this figure, by number or name: "
        + ", ".join(f"{f.number}={f.name}" for f in FIGURES)
        + " (repeatable)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        metavar="N",
        help="timed rounds for every comparison (default: 7 for vgg16, 5 for resnet18 and "
        "process start-up, 30 for catalog queries; --quick: 3, 3, 10)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=ROOT / "docs" / "benchmarks.md",
        help="where to write the report [default: docs/benchmarks.md]",
    )
    args = parser.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be at least 1")
    selected = [FIGURES_BY_KEY[k] for k in args.only] if args.only else FIGURES
    selected = [f for f in FIGURES if f in selected]
    archs = ["resnet18"] if args.quick else ["resnet18", "vgg16"]
    models, per_model = (20, 100) if args.quick else (1_000, 100)

    def repeats(kind: str, arch: str = "") -> int:
        if args.repeats is not None:
            return args.repeats
        if args.quick:
            return 10 if kind == "query" else 3
        return {"file": 7 if arch == "vgg16" else 5, "process": 5, "query": 30}[kind]

    # A kill (SIGTERM) unwinds like an error, so the temp folder's gigabytes are removed.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(143))
    workdir = Path(tempfile.mkdtemp(prefix="registry-bench-"))
    try:
        needs_files = any(f.name not in ("catalog", "cli") for f in selected)
        free = shutil.disk_usage(workdir).free
        if needs_files and "vgg16" in archs and free < DISK_NEEDED_FOR_VGG16:
            sys.exit(
                f"bench: {workdir} has {free / 1e9:.1f} GB free; the vgg16 runs need "
                f"{DISK_NEEDED_FOR_VGG16 / 1e9:.0f} GB (set TMPDIR to a roomier disk)"
            )
        machine = harness.machine(workdir)
        ws = figures.Workspace(workdir)
        sections: list[Section] = []
        notes: list[str] = []
        for figure in selected:
            if figure.name == "catalog":
                sections += catalog_sections(figure, ws, models, per_model, repeats, machine)
                continue
            if figure.name == "folders":
                print(f"figure {figure.number} ({figure.name})", flush=True)
                free = shutil.disk_usage(workdir).free
                if not args.quick and free < DISK_NEEDED_FOR_FOLDERS:
                    sys.exit(
                        f"bench: {workdir} has {free / 1e9:.1f} GB free; figure 12 needs "
                        f"{DISK_NEEDED_FOR_FOLDERS / 1e9:.0f} GB (set TMPDIR to a roomier disk)"
                    )
                n = args.repeats if args.repeats is not None else 3 if args.quick else 5
                for part in folders.figure(ws, args.quick, n):
                    sections.append(
                        Section(
                            figure,
                            part.subtitle,
                            part.results,
                            part.notes,
                            part.footprints or [],
                            part.growths or [],
                            folders.memory_table,
                        )
                    )
                continue
            if figure.name == "team":
                arch = archs[-1]
                print(f"figure {figure.number} ({figure.name}), {arch}", flush=True)
                free = shutil.disk_usage(workdir).free
                if not args.quick and free < DISK_NEEDED_FOR_TEAM:
                    sys.exit(
                        f"bench: {workdir} has {free / 1e9:.1f} GB free; figure 13 needs "
                        f"{DISK_NEEDED_FOR_TEAM / 1e9:.0f} GB (set TMPDIR to a roomier disk)"
                    )
                n = args.repeats if args.repeats is not None else 3 if args.quick else 5
                for part in team.figure(ws, arch, args.quick, n):
                    sections.append(
                        Section(
                            figure,
                            part.subtitle,
                            part.results,
                            part.notes,
                            part.footprints or [],
                            [],
                            team.memory_table,
                        )
                    )
                continue
            if figure.name == "memory":
                arch = archs[-1]
                print(f"figure {figure.number} ({figure.name}), {arch}", flush=True)
                footprints = memory.footprints(ws, arch)
                sections.append(Section(figure, arch, [], footprints=footprints))
                continue
            measure = {
                "push": figures.push_file,
                "push-memory": figures.push_memory,
                "load": figures.load,
                "pull": figures.pull,
                "cli": figures.cli_startup,
                "show-tensors": figures.show_tensors,
                "diff": diff.diff,
                "s3": services.s3,
                "serve": services.serve,
                "signed": signed.signed,
            }[figure.name]
            startup = figure.name == "cli"
            cases = archs if figure.name in PER_ARCH else archs[:1] if startup else archs[-1:]
            for arch in cases:
                print(f"figure {figure.number} ({figure.name}), {arch}", flush=True)
                size = ws.checkpoint(arch).stat().st_size
                subtitle = f"{arch}, {size / 1e6:.0f} MB checkpoint"
                if startup:
                    subtitle = f"a registry holding one {arch} version"
                # Targets are judged on the case, vgg16 (resnet18 in a quick run).
                judged = startup or arch == archs[-1]
                kind = "process" if figure.name in ("cli", "show-tensors") else "file"
                n = repeats(kind, arch)
                if figure.name == "s3" and args.repeats is None:
                    n = min(n, 5)  # each round moves 2 GB through moto
                sections.append(Section(figure, subtitle, measure(ws, arch, n, judged)))
        machine["load average at end"] = harness.load_average()
        if args.quick:
            notes.append(
                "**Quick run** (`--quick`): resnet18 only, few rounds, a "
                f"{models * per_model:,}-version catalog. A smoke test of the harness: "
                "the issue's targets are about vgg16 and 100,000 versions, and are "
                "evaluated here on the small case only to exercise the report."
            )
        report = render(args, argv, selected, machine, sections, notes)
        if args.only and args.output.exists():  # the figures not run keep their old tables
            report = kept_from(args.output.read_text(), report, {f.number for f in selected})
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(report + by_hand(args.output))
        print(f"wrote {args.output}")
        print_targets(sections)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def catalog_sections(
    figure: Figure,
    ws: figures.Workspace,
    models: int,
    per_model: int,
    repeats: Callable[[str], int],
    machine: dict[str, str],
) -> list[Section]:
    """Figure 6 on SQLite, then on PostgreSQL if it can be reached."""
    size = f"{models * per_model:,} versions over {models:,} models"
    backends = [("SQLite", f"sqlite:///{ws.root / 'catalog.db'}", None)]
    small_sqlite = f"sqlite:///{ws.root / 'catalog-small.db'}"
    url = os.environ.get("REGISTRY_BENCH_DATABASE_URL") or catalog.DEFAULT_POSTGRESQL_URL
    backends.append(("PostgreSQL", url, catalog.reset_postgresql(url)))
    sections = []
    for backend, backend_url, unusable in backends:
        print(f"figure {figure.number} ({figure.name}), {backend}", flush=True)
        if unusable:
            print(f"  {unusable}", flush=True)
            sections.append(Section(figure, f"{backend}, {size}", [], [unusable]))
            continue
        if backend == "PostgreSQL":
            version = catalog.server_version(backend_url)
            machine["PostgreSQL"] = f"{version} at {db.safe_url(backend_url)}"
        small_url = (
            small_sqlite if backend == "SQLite" else catalog.small_postgresql_url(backend_url)
        )
        results, fill_s = catalog.catalog_figure(
            ws,
            backend,
            backend_url,
            small_url,
            models,
            per_model,
            repeats("query"),
            repeats("process"),
        )
        note = f"Catalog filled in {fill_s:.1f} s (not part of any timing)."
        sections.append(Section(figure, f"{backend}, {size}", results, [note]))
    return sections


def render(
    args: argparse.Namespace,
    argv: list[str],
    selected: list[Figure],
    machine: dict[str, str],
    sections: list[Section],
    notes: list[str],
) -> str:
    python = (
        os.path.relpath(sys.executable, ROOT)
        if sys.executable.startswith(str(ROOT))
        else sys.executable
    )
    command = shlex.join([python, "bench/run.py", *argv])
    lines = [
        "# Benchmarks",
        "",
        "How long the registry takes next to the plain-Python floor of the same work "
        "(issues #6 and #14). Written by `bench/run.py`; `make bench` runs it in full. "
        "This file came from:",
        "",
        "```console",
        f"$ {command}",
        "```",
        "",
        *[f"{note}\n" for note in notes],
        "## Targets",
        "",
        "Each a ratio to a reference measured in the same run (the figure's baseline unless "
        "named), or a time, or memory. *Measured* is the ratio of medians, then in brackets "
        "the spread: the first and third quartiles of the ratios of runs made in the same "
        "round (the middle half of the rounds). A target inside that range is "
        "**unresolved**: the noise between rounds is larger than the figure's gap to it.",
        "",
        "| figure | measurement | target | measured (spread) | result |",
        "|---|---|---|---|---|",
    ]
    for section in sections:
        for r in section.results:
            for v in r.verdicts():
                lines.append(
                    f"| {r.figure} | {r.label} | {v.target.text()} | {v.measured()} | "
                    f"{_call(v.call)} |"
                )
        for f in section.footprints:
            if not f.call:  # measured, no target
                continue
            lines.append(
                f"| {section.figure.number} · {section.subtitle.split(',')[0]} | {f.operation} | "
                f"{f.limit_text} | {f.measured()} | {_call(f.call)} |"
            )
        for g in section.growths:
            lines.append(
                f"| {section.figure.number} · {section.subtitle.split(',')[0]} | {g.operation} | "
                f"{g.limit_text} | {g.measured()} | {_call(g.call)} |"
            )
    lines += ["", (Path(__file__).parent / "why.md").read_text().strip()]
    lines += ["", "## Machine", ""]
    lines += [f"- {key}: {value}" for key, value in machine.items()]
    lines += [
        "",
        "## Method",
        "",
        "- Every figure times its baseline and its subjects side by side in the same run. "
        "Each contender runs once untimed first (warming imports, caches and the page cache), "
        "then in each timed round every contender runs once, in an order rotated by one per "
        "round, so that noise from the rest of the machine falls on baseline and subjects "
        "alike. Tables give the median, the fastest and slowest run, and the ratio of medians; "
        "targets are judged with the spread of the per-round ratios (see Targets).",
        "- Runs that write read distinct inputs written beforehand (copies of the checkpoint "
        "with one weight changed each, or distinct stored versions of them), so no run finds "
        "its bytes stored or just written by the run before, and keep their outputs until the "
        "figure ends: on this virtual machine, writing into page-cache memory that a deleted "
        "file just freed and writing into fresh memory differ by up to 2x, and deleting "
        "outputs between runs handed that difference to whichever contender ran next. Every "
        "timed run starts after an untimed `os.sync()`, so none inherits the dirty pages of "
        "the run before.",
        "- Runs that only read (loads, diff, downloads) read files warm in the page cache, the "
        "baseline and the subject distinct files of the same size where they can; the cache "
        "is not dropped (that needs root on the host). Checkpoints are torchvision models "
        "built with `weights=None` and seed 0, saved with "
        "`torch.save(model.state_dict(), path)`: nothing is downloaded.",
        "- Everything is written under one temp folder (same filesystem for registry and "
        "baselines), removed at the end. Setup around each run (a fresh registry, the next "
        "input) is not timed.",
        "- *Whole process* rows time a subprocess from spawn to exit with the venv's "
        "`registry` script; other rows run in this process, where torch is already imported.",
        "- Figures 1 to 4 run on resnet18 (the small case) and vgg16, the others on vgg16; "
        "the targets are judged on vgg16, the issues' case (on resnet18 in a quick run, only "
        "to exercise the report).",
        "",
        "## Results",
    ]
    described: set[str] = set()
    for section in sections:
        figure = section.figure
        lines += ["", f"### {figure.number}. {figure.title} ({section.subtitle})", ""]
        if figure.number not in described:  # once, at the figure's first table
            lines += [figure.measures, ""]
            described.add(figure.number)
        lines += [f"{note}\n" for note in section.notes]
        if section.results:
            lines += table(section.results)
        if section.footprints:
            lines += section.footprint_table(section.footprints)
        if section.growths:
            lines += ["", *folders.growth_table(section.growths)]
    return "\n".join(lines).rstrip() + "\n"


def _call(call: str) -> str:
    return call if call == "pass" else f"**{call}**"


def table(results: list[Result]) -> list[str]:
    """One markdown table per comparison (a baseline and the rows measured against it)."""
    with_floor = any(r.versus for r in results)

    def ratio(r: Result) -> str:
        if r.baseline is not None:
            return f"{r.ratio:.2f}x"
        # A baseline with no subjects is a figure timed on its own: no ratio.
        return "baseline" if any(x.baseline is r for x in results) else ""

    lines: list[str] = []
    for r in results:
        if r.baseline is None:
            header = ["measurement", "median", "fastest … slowest", "runs", "x baseline"]
            header += ["vs floor"] * with_floor + ["target"]
            lines += ["", "| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
        cells = [
            r.label,
            seconds(r.median),
            f"{seconds(min(r.times))} … {seconds(max(r.times))}",
            str(len(r.times)),
            ratio(r),
        ]
        if with_floor:
            cells.append(f"{r.median / r.versus.median:.2f}x" if r.versus else "")
        cells.append(
            "; ".join(f"{v.target.text()}: {v.measured()}: {_call(v.call)}" for v in r.verdicts())
        )
        lines.append("| " + " | ".join(cells) + " |")
    return lines[1:]


def _figure_of(row_or_heading: str) -> str:
    """The figure number a Targets row (`| 12 · push | ...`) or a heading (`### 12. ...`) is of."""
    text = row_or_heading.removeprefix("### ").removeprefix("| ")
    return text.split(".", 1)[0].split(" ", 1)[0].split("|", 1)[0].strip()


def kept_from(old: str, new: str, run: set[str]) -> str:
    """The report of an `--only` run with the old report's rows and tables of every other figure.

    The new report's header, machine and method describe the figures run; a
    note names the command and start of the report the others come from.
    """
    old = old.split(BY_HAND, 1)[0]
    if "## Results" not in old or "| figure | measurement |" not in old:
        return new
    old_rows = [
        line
        for line in old.split("## Targets\n", 1)[1].split("\n\n## ", 1)[0].splitlines()
        if line.startswith("| ") and not line.startswith("| figure ")
    ]
    kept_rows = [r for r in old_rows if _figure_of(r) not in run]
    old_sections = old.split("\n## Results\n", 1)[1].split("\n### ")[1:]
    kept = [f"### {b.rstrip()}\n" for b in old_sections if _figure_of(b) not in run]
    if not kept:
        return new
    command = (
        old.split("```console\n", 1)[1].split("\n```", 1)[0].strip() if "```console" in old else "?"
    )
    started = next(
        (ln.split(": ", 1)[1] for ln in old.splitlines() if ln.startswith("- started: ")), "?"
    )
    others = sorted({_figure_of(b) for b in kept}, key=int)
    own = f"`{command.removeprefix('$ ')}`, started {started}"
    earlier = _sources(old)  # what the old report kept from an earlier one: that run measured it
    by_source: dict[str, list[str]] = {}
    for number in others:
        by_source.setdefault(earlier.get(number, own), []).append(number)
    notes = []
    for source, numbers in by_source.items():
        many = len(numbers) > 1
        notes.append(
            f"Figure{'s' * many} {', '.join(numbers)} ({'their' if many else 'its'} rows and "
            f"tables) {'are' if many else 'is'}{KEPT}{source}, on the machine then described."
        )
    note = "\n\n".join(notes)
    head, rest = new.split("## Targets\n", 1)
    head = head + note + "\n\n"
    table_head, rest = rest.split("|---|---|---|---|---|\n", 1)
    new_rows, after = rest.split("\n\n", 1)
    rows = sorted([*kept_rows, *new_rows.splitlines()], key=lambda r: int(_figure_of(r)))
    before_results, results = after.split("\n## Results\n", 1)
    new_sections = [f"### {b.rstrip()}\n" for b in results.split("\n### ")[1:]]
    blocks = sorted([*kept, *new_sections], key=lambda b: int(_figure_of(b)))
    return (
        f"{head}## Targets\n{table_head}|---|---|---|---|---|\n"
        + "\n".join(rows)
        + "\n\n"
        + before_results
        + "\n## Results\n\n"
        + "\n".join(blocks)
    )


KEPT = " kept from the report before this `--only` run: "


def _sources(report: str) -> dict[str, str]:
    """The run that measured each figure a report kept from an earlier one: number -> source."""
    found = {}
    for line in report.splitlines():
        if line.startswith("Figure") and KEPT in line:
            head, source = line.split(KEPT, 1)
            numbers = head.split(" ", 1)[1].split(" (", 1)[0]
            for number in numbers.split(", "):
                found[number.strip()] = source.rsplit(", on the machine", 1)[0]
    return found


def by_hand(report: Path) -> str:
    """The hand-measured sections of the current report, kept across rewrites."""
    old = report.read_text() if report.exists() else ""
    return "\n" + old[old.index(BY_HAND) :] if BY_HAND in old else ""


def print_targets(sections: list[Section]) -> None:
    for section in sections:
        for r in section.results:
            for v in r.verdicts():
                print(f"{v.call:10}  {r.figure}: {r.label}: {v.measured()} ({v.target.text()})")
        for f in section.footprints:
            if f.call:
                print(
                    f"{f.call:10}  {section.figure.number}: {f.operation}: {f.measured()} "
                    f"({f.limit_text})"
                )
        for g in section.growths:
            print(f"{g.call:10}  {section.figure.number}: {g.operation}: {g.measured()}")


if __name__ == "__main__":
    started = time.perf_counter()
    main(sys.argv[1:])
    print(f"bench: done in {time.perf_counter() - started:.0f} s")
