"""Figure 12 (issue 22): a sharded transformers folder pushed, loaded, pulled and pushed again.

The folder is a `LlamaForCausalLM` with random bfloat16 weights (seed 0) and a
tiny vocabulary, scaled up to about 2 GB (hidden 2048, MLP 5632, 20 layers;
`--quick`: 3 layers, about 320 MB) and written by `save_pretrained` in shards
of at most 500 MB (`--quick`: 100 MB): nothing is downloaded. Second versions
are copies of it (unchanged files hard-linked) in which one tensor of the
middle shard differs, so that shard alone changes, keeping its size.

    .venv/bin/python bench/folders.py OP HOME ARG [DEST]    # one child of the memory table
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import floors
from figures import BENCH_DIR, Outputs, Workspace, feed_homes
from harness import Contender, Result, Target, compare

from registry import Registry

MIB = 1 << 20
ALLOWANCE = 64 * MIB  # issue 22: memory above idle is at most one shard and this
NAME = "llama"


@dataclass(frozen=True)
class Case:
    """The folder of the figure and what the figure needs to know about it."""

    folder: Path
    files: list[str]  # every file, relative to the folder
    shards: list[str]  # the weight files
    changed: str  # the shard the second versions change
    size: int  # bytes, every file

    @property
    def largest_shard(self) -> int:
        return max((self.folder / s).stat().st_size for s in self.shards)


@dataclass(frozen=True)
class Growth:
    """How much a store grew in bytes, per run, against a limit."""

    operation: str
    added: list[int]
    limit: int
    limit_text: str

    @property
    def median(self) -> float:
        return statistics.median(self.added)

    @property
    def call(self) -> str:
        return "pass" if max(self.added) <= self.limit else "FAIL"

    def measured(self) -> str:
        low, high = min(self.added), max(self.added)
        spread = f" ({low / 1e6:,.1f} … {high / 1e6:,.1f} MB)" if low != high else ""
        return f"{self.median / 1e6:+,.1f} MB{spread}"


@dataclass
class Part:
    """One table of the figure."""

    subtitle: str
    results: list[Result]
    notes: list[str]
    footprints: list = None  # type: ignore[assignment]  # memory.Footprint
    growths: list[Growth] = None  # type: ignore[assignment]


def build(root: Path, quick: bool) -> Case:
    """The sharded save_pretrained folder, written once (not timed)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    folder = root / "llama-folder"
    config = LlamaConfig(
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=3 if quick else 20,
        num_attention_heads=16,
        num_key_value_heads=16,
        vocab_size=1024,
        tie_word_embeddings=False,
    )
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model = model.to(torch.bfloat16).to_empty(device="cpu")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.02, generator=generator)
    model.save_pretrained(folder, max_shard_size="100MB" if quick else "500MB")
    del model
    files = sorted(p.name for p in folder.iterdir())
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    for name in files:  # read once: warm in the page cache from here on
        floors.sha256_file(folder / name)
    size = sum((folder / n).stat().st_size for n in files)
    return Case(folder, files, shards, shards[len(shards) // 2], size)


def second_versions(case: Case, root: Path, count: int) -> list[Path]:
    """`count` copies of the folder in which only `case.changed` differs, each in its own way."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(case.folder / case.changed), framework="pt") as handle:
        state = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
        metadata = handle.metadata()
    first = sorted(state)[0]
    kept = state[first].view(-1)[0].item()
    made = []
    for i in range(count):
        folder = root / f"llama-folder-v2-{i:02d}"
        folder.mkdir()
        for name in case.files:
            if name != case.changed:
                os.link(case.folder / name, folder / name)
        state[first].view(-1)[0] = kept + 1 + i
        save_file(state, str(folder / case.changed), metadata=metadata)
        if (folder / case.changed).stat().st_size != (case.folder / case.changed).stat().st_size:
            raise RuntimeError("the changed shard's size differs from the original's")
        floors.sha256_file(folder / case.changed)  # warm, like the original
        made.append(folder)
    return made


def store_bytes(home: Path) -> int:
    """The bytes of every blob a registry home's store holds (its temp files aside)."""
    root = Registry(home=home).store.root / "sha256"
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def copy_folder(case: Case, destination: Path) -> None:
    """The floor of a folder push: copy every file, SHA-256 on the way, fsync each copy."""
    destination.mkdir()
    for name in case.files:
        floors.copy_sha256(case.folder / name, destination / name, fsync=True)


def floor_load(folder: Path, blake3: bool) -> object:
    """The least a sound load can do: meta-device build, `load_file` each shard, assign.

    With `blake3`, every file of the folder is then hashed (BLAKE3 on every
    core, memory-mapped): what checking the bytes against recorded digests costs.
    """
    import torch
    from safetensors.torch import load_file
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig.from_pretrained(folder)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    for shard in sorted(set(index["weight_map"].values())):
        model.load_state_dict(load_file(folder / shard), strict=False, assign=True)
    if blake3:
        import blake3 as b3

        for path in sorted(folder.iterdir()):
            hasher = b3.blake3(max_threads=b3.blake3.AUTO)
            hasher.update_mmap(path)
            hasher.hexdigest()
    return model.eval()


def figure(ws: Workspace, quick: bool, repeats: int) -> list[Part]:
    """Figure 12: the push, the second version, the loads and the memory table."""
    print("  building the folder", flush=True)
    case = build(ws.root, quick)
    shard_mb = case.largest_shard / 1e6
    what = f"{case.size / 1e9:.2f} GB in {len(case.shards)} shards of ≤ {shard_mb:.0f} MB"
    parts = [push_figure(ws, case, repeats, what)]
    home, ref = parts[0].stocked  # type: ignore[attr-defined]
    os.sync()  # the pushes' gigabytes written back, not competing with the loads for the disk
    for blob in (home / "blobs").rglob("*"):  # the loads' blobs warm, as the folder is
        if blob.is_file():
            floors.sha256_file(blob)
    parts.append(load_figure(ws, case, home, ref, repeats, what))
    parts.append(memory_figure(ws, case, what))
    shutil.rmtree(home, ignore_errors=True)
    return parts


def push_figure(ws: Workspace, case: Case, repeats: int, what: str) -> Part:
    """12a and 12d: push against copy + SHA-256 + fsync; a one-shard change against the push."""
    runs = repeats + 1  # the untimed warm-up writes too
    out = Outputs(ws.root / "folders-push")
    variants = second_versions(case, ws.root, runs)
    home = ws.fresh_home(ws.root / "folders-home")
    ref = Registry(home=home).push(case.folder, name=NAME).ref  # v1, which v2 pushes follow
    growth: list[int] = []
    first = "`Registry(home).push(FOLDER)`, first version, new registry"
    second = "`Registry(home).push(FOLDER2)`, one shard changed, after v1"

    def before_second() -> tuple[Path, int]:
        return variants.pop(0), store_bytes(home)

    def after_second(state: tuple[Path, int]) -> None:
        growth.append(store_bytes(home) - state[1])

    contenders = [
        Contender(
            "copy every file + SHA-256 + fsync, plain Python (floor)",
            lambda dest: copy_folder(case, dest),
            setup=lambda: out.new("copy"),
        ),
        Contender(
            first,
            lambda run: Registry(home=run[1]).push(run[0], name=NAME),
            setup=feed_homes(ws, [(case.folder, out.new("home")) for _ in range(runs)]),
            targets=(Target(1.0, "ratio"),),
        ),
        Contender(
            second,
            lambda state: Registry(home=home).push(state[0], name=NAME),
            setup=before_second,
            teardown=after_second,
            targets=(Target(0.4, "ratio", against=first),),
        ),
    ]
    try:
        results = compare("12 · push", contenders, repeats)
    finally:
        out.remove()
        for folder in ws.root.glob("llama-folder-v2-*"):
            shutil.rmtree(folder, ignore_errors=True)
    changed_size = (case.folder / case.changed).stat().st_size
    limit = changed_size + MIB
    part = Part(
        f"push, {what}",
        results,
        [
            f"The second versions change one tensor of `{case.changed}` "
            f"({changed_size / 1e6:.0f} MB); the store's growth is the bytes under its "
            "`sha256/` folder after each such push less before it."
        ],
        growths=[
            Growth(
                "store growth per push of a second version (one shard changed)",
                growth[1:],  # the warm-up's push aside, like its time
                limit,
                f"≤ one shard ({changed_size / 1e6:.0f} MB) + 1 MiB of file list",
            )
        ],
    )
    part.stocked = (home, ref)  # type: ignore[attr-defined]
    return part


def load_figure(ws: Workspace, case: Case, home: Path, ref: str, repeats: int, what: str) -> Part:
    """12b: verified and unverified loads against the plain safetensors load (and BLAKE3)."""
    floor_plain = "floor: meta build + `load_file` each shard + `load_state_dict(assign=True)`"
    contenders = [
        Contender(
            "floor: meta build + `load_file` each shard + assign, then BLAKE3 of every file",
            lambda _: floor_load(case.folder, blake3=True),
        ),
        Contender(
            f"`Registry(home).load({ref!r})`, verified",
            lambda _: Registry(home=home).load(ref),
            targets=(Target(1.3, "ratio"),),
        ),
        Contender(floor_plain, lambda _: floor_load(case.folder, blake3=False)),
        Contender(
            f"`Registry(home).load({ref!r}, verify=False)`",
            lambda _: Registry(home=home).load(ref, verify=False),
            targets=(Target(1.1, "ratio", against=floor_plain),),
        ),
    ]
    results = compare("12 · load", contenders, repeats)
    return Part(f"load, {what}", results, [])


def in_child(ws: Workspace, home: Path, *args: str) -> dict[str, int]:
    done = subprocess.run(
        [sys.executable, str(BENCH_DIR / "folders.py"), *args],
        env=ws.env(home), capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"folders.py {args[0]} exited {done.returncode}: {done.stderr[-2000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def memory_figure(ws: Workspace, case: Case, what: str) -> Part:
    """12c: the peak RSS of a push, a pull, a load and a server download, each in a process."""
    import memory

    home = ws.fresh_home(ws.root / "folders-memory-home")
    push = in_child(ws, home, "push", str(home), str(case.folder))
    ref = f"{NAME}@v1"
    pulled = ws.root / "folders-memory-pull"
    pull = in_child(ws, home, "pull", str(home), ref, str(pulled))
    shutil.rmtree(pulled, ignore_errors=True)
    load = in_child(ws, home, "load", str(home), ref)
    idle, peak = memory.server_download(ws, home, ref)
    shutil.rmtree(home, ignore_errors=True)
    shard = case.largest_shard
    limit = shard + ALLOWANCE
    text = f"≤ one shard ({shard / MIB:.0f} MiB) + {ALLOWANCE // MIB} MiB"
    serve_row = f"`registry serve`: `GET /api/files/{ref}` (a tar)"
    rows = [
        memory.Footprint(
            f"`Registry.push(FOLDER)` ({ref})", push["idle"], push["peak"], limit, text
        ),
        memory.Footprint(
            f"`Registry.pull({ref!r}, FOLDER)`", pull["idle"], pull["peak"], limit, text
        ),
        memory.Footprint(
            f"`Registry.load({ref!r})`, verified", load["idle"], load["peak"], limit, text
        ),
        memory.Footprint(serve_row, idle, peak, limit, text),
    ]
    note = (
        "Each operation runs in a process of its own (the server: `registry serve --port 0`, "
        "downloaded by httpx in 1 MiB reads), measured from /proc/PID/status: its resident "
        "memory when idle (registry, torch and transformers imported, catalog open), then "
        "its peak (VmHWM, reset just before the operation), judged against the folder's "
        f"largest shard. The loaded model holds {load['tensors'] / MIB:.0f} MiB of tensors "
        "(memory-mapped: file pages, counted in RSS only once touched); its process held "
        f"{load['anon_added'] / MIB:+.0f} MiB more anonymous memory once loaded than idle."
    )
    return Part(f"memory, {what}", [], [note], footprints=rows)


def memory_table(rows: list) -> list[str]:
    """12c's table: each operation's idle and peak RSS, and the memory its target judges."""
    lines = [
        "| operation | idle RSS | peak RSS | added | target |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.operation} | {r.idle / MIB:.0f} MiB | {r.peak / MIB:.0f} MiB | "
            f"{r.added / MIB:+.0f} MiB | {r.limit_text}: "
            f"{'pass' if r.call == 'pass' else '**FAIL**'} |"
        )
    return lines


def growth_table(rows: list[Growth]) -> list[str]:
    lines = ["| measurement | store growth per push (median) | target |", "|---|---|---|"]
    for g in rows:
        call = "pass" if g.call == "pass" else "**FAIL**"
        lines.append(f"| {g.operation} | {g.measured()} | {g.limit_text}: {call} |")
    return lines


def child(operation: str, home: str, arg: str, dest: str) -> dict[str, int]:
    """One operation of the memory table in this process: its idle and peak RSS."""
    import memory
    import torch  # noqa: F401  (part of idle: the operation's data is what is measured)
    import transformers  # noqa: F401
    from transformers import LlamaForCausalLM  # noqa: F401

    reg = Registry(home=home)
    _ = reg.engine
    if operation != "push":
        reg.get(arg)
    idle = memory.status()["VmRSS"]
    anon_idle = memory.status()["RssAnon"]
    memory.reset_peak()
    result: dict[str, int] = {}
    if operation == "push":
        reg.push(arg, name=NAME)
    elif operation == "pull":
        reg.pull(arg, dest)
    elif operation == "load":
        model = reg.load(arg)
        result["tensors"] = sum(t.nbytes for t in model.state_dict().values())
    else:
        raise SystemExit(f"unknown operation {operation!r}")
    now = memory.status()
    return {**result, "idle": idle, "peak": now["VmHWM"], "anon_added": now["RssAnon"] - anon_idle}


if __name__ == "__main__":
    operation, home, arg, dest = [*sys.argv[1:], ""][:4]
    print(json.dumps(child(operation, home, arg, dest)))
