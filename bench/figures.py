"""Figures 1 to 5 of issue #6: push, push from memory, load, pull, and CLI start-up.

Every figure works in a `Workspace` under the benchmark's temp folder. A
subject that writes to the registry gets a brand-new registry home for each
run (created, catalog migrated, outside the timing): pushing the same bytes
to a registry that already holds them returns the existing version without
storing anything, which would flatter the push.
"""

from __future__ import annotations

import itertools
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import floors
from harness import Contender, Result, Target, compare, run_process

from registry import Registry

if TYPE_CHECKING:
    from torch import nn

BENCH_DIR = Path(__file__).resolve().parent


class Workspace:
    """The temp folder of one benchmark run: checkpoints, registries, and outputs."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._ids = itertools.count()
        self._models: dict[str, nn.Module] = {}
        self._checkpoints: dict[str, Path] = {}
        self._stocked: dict[str, tuple[Path, str]] = {}
        self._variants: dict[str, list[Path]] = {}
        self._stocked_many: dict[str, tuple[Path, list[str]]] = {}
        script = Path(sys.executable).with_name("registry")
        self.registry_command = (
            [str(script)] if script.exists() else [sys.executable, "-m", "registry"]
        )

    def model(self, arch: str) -> nn.Module:
        """A torchvision model with random weights (weights=None, seed 0); nothing downloaded."""
        if arch not in self._models:
            import torch
            from torchvision import models

            torch.manual_seed(0)
            self._models[arch] = getattr(models, arch)(weights=None).eval()
        return self._models[arch]

    def checkpoint(self, arch: str) -> Path:
        """The model saved as the tutorial does: `torch.save(model.state_dict(), path)`."""
        if arch not in self._checkpoints:
            import torch

            path = self.root / f"{arch}.pth"
            torch.save(self.model(arch).state_dict(), path)
            floors.sha256_file(path)  # read it once: warm in the page cache from here on
            self._checkpoints[arch] = path
        return self._checkpoints[arch]

    def variants(self, arch: str, count: int) -> list[Path]:
        """`count` distinct checkpoints of `arch`, written beforehand: one weight differs in each.

        Every run that pushes reads its own file, so none finds its bytes stored or
        freshly written by the run before.
        """
        made = self._variants.setdefault(arch, [])
        if len(made) < count:
            import torch

            state = self.model(arch).state_dict()
            bias = next(t for t in reversed(state.values()) if t.is_floating_point())
            kept = bias.view(-1)[0].item()
            for i in range(len(made), count):
                path = self.root / f"{arch}-variant-{i:02d}.pth"
                bias.view(-1)[0] = kept + 1 + i
                torch.save(state, path)
                made.append(path)
            bias.view(-1)[0] = kept
        return made[:count]

    def fresh_home(self, home: Path | None = None) -> Path:
        """A new, empty registry home whose SQLite catalog is already created."""
        home = home or self.root / f"home-{next(self._ids)}"
        _ = Registry(home=home).engine  # runs the migrations, outside any timing
        return home

    def remove(self, path: Path) -> None:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)

    def stocked(self, arch: str) -> tuple[Path, str]:
        """A registry home holding the checkpoint of `arch`, pushed once; and its reference."""
        if arch not in self._stocked:
            home = self.fresh_home()
            version = Registry(home=home).push(self.checkpoint(arch), arch=arch)
            self._stocked[arch] = (home, version.ref)
        return self._stocked[arch]

    def stocked_versions(self, arch: str, count: int) -> tuple[Path, list[str]]:
        """A registry home holding `count` distinct versions of `arch` (the variants)."""
        home, refs = self._stocked_many.get(arch, (self.root / f"stocked-{arch}", []))
        if len(refs) < count:
            reg = Registry(home=home)
            for path in self.variants(arch, count)[len(refs) :]:
                refs.append(reg.push(path, arch=arch).ref)
            reg.close()
            self._stocked_many[arch] = (home, refs)
        return home, refs[:count]

    def drop_stocked_versions(self, arch: str) -> None:
        home, _refs = self._stocked_many.pop(arch, (None, []))
        if home is not None:
            shutil.rmtree(home, ignore_errors=True)

    def env(self, home: Path, database_url: str | None = None) -> dict[str, str]:
        """The environment of a `registry` subprocess: only the settings given here."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        env["REGISTRY_HOME"] = str(home)
        if database_url is not None:
            env["REGISTRY_DATABASE_URL"] = database_url
        return env

    def cli(self, *args: str, database_url: str | None = None) -> Callable[[Path], None]:
        """A contender body running `registry ARGS...` against the home it is given."""
        command = [*self.registry_command, *args]
        return lambda home: run_process(command, self.env(home, database_url), self.root)

    def python(self, code: str) -> Callable[[object], None]:
        """A contender body running `python -c CODE` (with bench/ importable) in a subprocess."""
        args = [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(BENCH_DIR)!r}); {code}"]
        return lambda _state: run_process(args, self.env(self.root), self.root)


class Outputs:
    """The files and homes a comparison's runs write: all kept until it ends, then removed."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True)
        self.folder = folder
        self._ids = itertools.count()

    def new(self, name: str) -> Path:
        return self.folder / f"{next(self._ids):03d}-{name}"

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def feed(items: list[Any]) -> Callable[[], Any]:
    """A setup handing out the next of `items` on each call: one per run, warm-up included."""
    iterator = iter(items)
    return lambda: next(iterator)


def feed_homes(ws: Workspace, runs: list[tuple[Path, Path]]) -> Callable[[], tuple[Path, Path]]:
    """A setup handing out (input, registry home) pairs, each home created and migrated untimed."""
    pairs = iter(runs)

    def setup() -> tuple[Path, Path]:
        path, home = next(pairs)
        return path, ws.fresh_home(home)

    return setup


def push_file(ws: Workspace, arch: str, repeats: int, targets: bool) -> list[Result]:
    """Figure 1: push a checkpoint file, against copying it with sha256 and fsync.

    Every run reads its own checkpoint (distinct bytes, written beforehand) and
    writes into its own output, kept until the figure ends.
    """
    runs = repeats + 1  # the untimed warm-up reads an input too
    inputs = ws.variants(arch, 2 * runs)
    out = Outputs(ws.root / f"push-{arch}")
    floor_runs = [(path, out.new("copy.pth")) for path in inputs[:runs]]
    push_runs = [(path, out.new("home")) for path in inputs[runs:]]
    contenders = [
        Contender(
            "copy + sha256 + fsync, plain Python in-process (floor)",
            lambda run: floors.copy_sha256(run[0], run[1], fsync=True),
            setup=feed(floor_runs),
        ),
        Contender(
            "`Registry(home).push(FILE, arch=...)` in-process",
            lambda run: Registry(home=run[1]).push(run[0], arch=arch),
            setup=feed_homes(ws, push_runs),
            targets=(Target(1.0, "ratio"),) if targets else (),
        ),
    ]
    if not targets:  # the whole process, on the small case only: torch's import dominates it
        cli_runs = [(path, out.new("home")) for path in ws.variants(arch, 4 * runs)[2 * runs :]]
        contenders += [
            Contender(
                f"`registry push FILE --arch {arch}` (whole process)",
                lambda run: ws.cli("push", str(run[0]), "--arch", arch)(run[1]),
                setup=feed_homes(ws, cli_runs[:runs]),
            ),
            Contender(
                "reference: `python -c 'import torch, torchvision'` then the floor (whole process)",
                lambda run: ws.python(
                    "import torch, torchvision, floors; "
                    f"floors.copy_sha256({str(run[0])!r}, {str(run[1])!r}, fsync=True)"
                )(None),
                setup=feed(cli_runs[runs:]),
            ),
        ]
    try:
        return compare(f"1 · {arch}", contenders, repeats)
    finally:
        out.remove()


def push_memory(ws: Workspace, arch: str, repeats: int, targets: bool) -> list[Result]:
    """Figure 2: push an nn.Module from memory, against torch.save of its state_dict + fsync."""
    model = ws.model(arch)
    out = Outputs(ws.root / f"push-memory-{arch}")
    try:
        return compare(
            f"2 · {arch}",
            [
                Contender(
                    "`torch.save(model.state_dict(), path)` + fsync (floor)",
                    lambda path: floors.torch_save_fsync(model, path),
                    setup=lambda: out.new("saved.pth"),
                ),
                Contender(
                    "`Registry(home).push(model, arch=...)` in-process",
                    lambda home: Registry(home=home).push(model, arch=arch),
                    setup=lambda: ws.fresh_home(out.new("home")),
                ),
            ],
            repeats,
        )
    finally:
        out.remove()


def load(ws: Workspace, arch: str, repeats: int, targets: bool) -> list[Result]:
    """Figure 3: load a version, against the tutorial's load and against the floors.

    Nothing is written; the baseline reads the checkpoint file, the loads read
    the blob stored from it: distinct files, both warm in the page cache.
    """
    from registry.digests import blake3_of

    home, ref = ws.stocked(arch)
    path = ws.checkpoint(arch)
    reg = Registry(home=home)
    blob = reg.store.path(reg.get(ref).sha256)
    reg.close()
    unverified_and_hash = "`verify=False` load, then BLAKE3 of the blob"

    def load_then_hash(_: object) -> None:
        Registry(home=home).load(ref, verify=False)
        blake3_of(blob)

    return compare(
        f"3 · {arch}",
        [
            Contender(
                "tutorial: build, `load_state_dict(torch.load(path))`, `eval()` (baseline)",
                lambda _: floors.tutorial_load(arch, path),
            ),
            Contender(
                f"`Registry(home).load({ref!r})`, verified",
                lambda _: Registry(home=home).load(ref),
                targets=(
                    (Target(0.07, "ratio"), Target(1.3, "ratio", against=unverified_and_hash))
                    if targets
                    else ()
                ),
                versus=unverified_and_hash,
            ),
            Contender(
                f"`Registry(home).load({ref!r}, verify=False)`",
                lambda _: Registry(home=home).load(ref, verify=False),
                targets=(Target(0.03, "ratio"),) if targets else (),
                versus="floor: meta-device build + mmap torch.load + assign",
            ),
            Contender(unverified_and_hash, load_then_hash),
            Contender(
                "floor: meta-device build + mmap torch.load + assign",
                lambda _: floors.mmap_load(arch, path, hash_first=False),
            ),
        ],
        repeats,
    )


def pull(ws: Workspace, arch: str, repeats: int, targets: bool) -> list[Result]:
    """Figure 4: pull a version to a file, against copying the blob with sha256.

    The registry holds distinct versions (the variants): the floor copies one
    set of blobs, the pulls fetch another, each into its own kept output.
    """
    runs = repeats + 1
    home, refs = ws.stocked_versions(arch, 2 * runs)
    reg = Registry(home=home)
    blobs = [reg.store.path(reg.get(ref).sha256) for ref in refs[:runs]]
    reg.close()
    out = Outputs(ws.root / f"pull-{arch}")
    contenders = [
        Contender(
            "copy + sha256 of the blob, plain Python in-process (floor)",
            lambda run: floors.copy_sha256(run[0], run[1], fsync=False),
            setup=feed([(blob, out.new("copy.pth")) for blob in blobs]),
        ),
        Contender(
            "`Registry(home).pull(REF, PATH)` in-process",
            lambda run: Registry(home=home).pull(run[0], run[1]),
            setup=feed([(ref, out.new("pulled.pth")) for ref in refs[runs:]]),
            targets=(Target(1.15, "ratio"),) if targets else (),
        ),
        Contender(
            "reference: copy + sha256 + fsync in-process",
            lambda run: floors.copy_sha256(run[0], run[1], fsync=True),
            setup=feed([(blob, out.new("copy.pth")) for blob in blobs]),
        ),
    ]
    if not targets:  # the whole process, on the small case only
        contenders.append(
            Contender(
                "`registry pull REF -o PATH` (whole process)",
                lambda run: ws.cli("pull", run[0], "-o", str(run[1]))(home),
                setup=feed([(ref, out.new("pulled.pth")) for ref in refs[runs:]]),
            )
        )
    try:
        return compare(f"4 · {arch}", contenders, repeats)
    finally:
        out.remove()
        ws.drop_stocked_versions(arch)  # gigabytes no later figure reads


def import_floor(ws: Workspace) -> Contender:
    """The least a catalog command can cost: a Python that imports its two libraries."""
    return Contender(
        "`python -c 'import sqlalchemy.orm, click'` (floor)",
        ws.python("import sqlalchemy.orm, click"),
    )


def cli_startup(ws: Workspace, arch: str, repeats: int, targets: bool) -> list[Result]:
    """Figure 5: `registry ls` and `registry show`, whole process, against the import floor."""
    home, ref = ws.stocked(arch)
    return compare(
        "5",
        [
            import_floor(ws),
            Contender(
                "`registry ls` (whole process)",
                lambda _: ws.cli("ls")(home),
                targets=(Target(1.3, "ratio"),) if targets else (),
            ),
            Contender(
                f"`registry show {ref}` (whole process)", lambda _: ws.cli("show", ref)(home)
            ),
            Contender("reference: `python -c 'import torch'`", ws.python("import torch")),
        ],
        repeats,
    )


def show_tensors(ws: Workspace, arch: str, repeats: int, targets: bool) -> list[Result]:
    """Figure 7: `registry show REF --tensors` against `registry show REF`, whole processes."""
    home, ref = ws.stocked(arch)
    return compare(
        f"7 · {arch}",
        [
            Contender(
                f"`registry show {ref}` (whole process)", lambda _: ws.cli("show", ref)(home)
            ),
            Contender(
                f"`registry show {ref} --tensors` (whole process)",
                lambda _: ws.cli("show", ref, "--tensors")(home),
                targets=(Target(1.3, "ratio"),) if targets else (),
            ),
        ],
        repeats,
    )
