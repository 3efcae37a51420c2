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
from typing import TYPE_CHECKING

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

    def fresh_home(self) -> Path:
        """A new, empty registry home whose SQLite catalog is already created."""
        home = self.root / f"home-{next(self._ids)}"
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


def push_file(ws: Workspace, arch: str, repeats: int, targets: bool) -> list[Result]:
    """Figure 1: push a checkpoint file, against copying it with sha256 and fsync."""
    source = ws.checkpoint(arch)
    out = ws.root / "floor-copy.pth"
    push_target = Target(1.15, "ratio") if targets else None
    return compare(
        f"1 · {arch}",
        [
            Contender(
                "copy + sha256 + fsync, plain Python in-process (floor)",
                lambda _: floors.copy_sha256(source, out, fsync=True),
                teardown=lambda _: ws.remove(out),
            ),
            Contender(
                "`Registry(home).push(FILE, arch=...)` in-process",
                lambda home: Registry(home=home).push(source, arch=arch),
                setup=ws.fresh_home,
                teardown=ws.remove,
                target=push_target,
            ),
            Contender(
                f"`registry push FILE --arch {arch}` (whole process)",
                ws.cli("push", str(source), "--arch", arch),
                setup=ws.fresh_home,
                teardown=ws.remove,
                target=push_target,
            ),
            Contender(
                "reference: `python -c 'import torch, torchvision'` then the floor (whole process)",
                ws.python(
                    "import torch, torchvision, floors; "
                    f"floors.copy_sha256({str(source)!r}, {str(out)!r}, fsync=True)"
                ),
                teardown=lambda _: ws.remove(out),
            ),
        ],
        repeats,
    )


def push_memory(ws: Workspace, arch: str, repeats: int, targets: bool) -> list[Result]:
    """Figure 2: push an nn.Module from memory, against torch.save of its state_dict + fsync."""
    model = ws.model(arch)
    out = ws.root / "floor-save.pth"
    return compare(
        f"2 · {arch}",
        [
            Contender(
                "`torch.save(model.state_dict(), path)` + fsync (floor)",
                lambda _: floors.torch_save_fsync(model, out),
                teardown=lambda _: ws.remove(out),
            ),
            Contender(
                "`Registry(home).push(model, arch=...)` in-process",
                lambda home: Registry(home=home).push(model, arch=arch),
                setup=ws.fresh_home,
                teardown=ws.remove,
            ),
        ],
        repeats,
    )


def load(ws: Workspace, arch: str, repeats: int, targets: bool) -> list[Result]:
    """Figure 3: load a version, against the tutorial's load and against the floor."""
    home, ref = ws.stocked(arch)
    path = ws.checkpoint(arch)
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
                target=Target(0.10, "ratio") if targets else None,
                versus="floor: sha256 + meta-device build + mmap torch.load + assign",
            ),
            Contender(
                f"`Registry(home).load({ref!r}, verify=False)`",
                lambda _: Registry(home=home).load(ref, verify=False),
                target=Target(0.03, "ratio") if targets else None,
                versus="floor without sha256: meta-device build + mmap torch.load + assign",
            ),
            Contender(
                "floor: sha256 + meta-device build + mmap torch.load + assign",
                lambda _: floors.mmap_load(arch, path, hash_first=True),
            ),
            Contender(
                "floor without sha256: meta-device build + mmap torch.load + assign",
                lambda _: floors.mmap_load(arch, path, hash_first=False),
            ),
        ],
        repeats,
    )


def pull(ws: Workspace, arch: str, repeats: int, targets: bool) -> list[Result]:
    """Figure 4: pull a version to a file, against copying the blob with sha256."""
    home, ref = ws.stocked(arch)
    reg = Registry(home=home)
    blob = reg.store.path(reg.get(ref).sha256)
    out = ws.root / "pulled.pth"
    pull_target = Target(1.15, "ratio") if targets else None
    return compare(
        f"4 · {arch}",
        [
            Contender(
                "copy + sha256 of the blob, plain Python in-process (floor)",
                lambda _: floors.copy_sha256(blob, out, fsync=False),
                teardown=lambda _: ws.remove(out),
            ),
            Contender(
                f"`Registry(home).pull({ref!r}, PATH)` in-process",
                lambda _: Registry(home=home).pull(ref, out),
                teardown=lambda _: ws.remove(out),
                target=pull_target,
            ),
            Contender(
                f"`registry pull {ref} -o PATH` (whole process)",
                lambda _: ws.cli("pull", ref, "-o", str(out))(home),
                teardown=lambda _: ws.remove(out),
                target=pull_target,
            ),
            Contender(
                "reference: copy + sha256 + fsync in-process",
                lambda _: floors.copy_sha256(blob, out, fsync=True),
                teardown=lambda _: ws.remove(out),
            ),
        ],
        repeats,
    )


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
                target=Target(1.3, "ratio") if targets else None,
            ),
            Contender(
                f"`registry show {ref}` (whole process)", lambda _: ws.cli("show", ref)(home)
            ),
            Contender("reference: `python -c 'import torch'`", ws.python("import torch")),
        ],
        repeats,
    )
