"""Push of a folder (SPEC "Folders"): each file a blob, the file list the version's digest.

The folder is scanned and refused whole (a symlink, a device, an odd path)
before anything is stored. Each file is copied into a store writer and
hashed; a file the model's previous version holds at the same path and size
is first compared with that blob by its BLAKE3 (the hash reads verify it by)
and, when unchanged, not copied again (an unchanged shard costs a read on
every core, not a copy). The weights are then read from those copies,
one shard at a time, and checked against the arch as a single file's are;
the file list is stored as one more blob; and, in one catalog transaction,
every blob is placed or kept and the version recorded. A kill at any point
leaves either no version or a whole one.
"""

from __future__ import annotations

import collections
import contextlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry import audit, folders, manifests, shards
from registry import files as file_io
from registry.digests import Check, Hasher
from registry.errors import (
    ArchitectureError,
    CheckpointError,
    NotFoundError,
    StorageError,
)
from registry.faults import crash_half_way, crash_point
from registry.records import FolderFile, ModelVersion, NewVersion, TensorInfo

if TYPE_CHECKING:
    from registry.architectures import Arch
    from registry.catalogs import Catalog
    from registry.progress_bars import Progress
    from registry.pushing import ForClient, PushOptions, Validated
    from registry.stores import BlobWriting, Store

# The kinds whose arch is a builder the pusher names (`--arch`), as for a single file.
ARCH_KINDS = ("hub_mixin", "sharded", "dcp")


@dataclass(frozen=True)
class Previous:
    """The model's newest version: its files, worth hashing before copying (a shard
    unchanged is not copied again), and its manifest, kept for the shards unchanged."""

    files: dict[tuple[str, int], str]  # (path, size) -> sha256
    tensors: dict[str, TensorInfo]
    unchanged: frozenset[str] = frozenset()  # the paths this push found unchanged


@dataclass(frozen=True)
class Kept:
    """A file whose bytes the store holds already: hashed, not copied."""

    file: FolderFile
    check: Check


def run(
    catalog: Catalog,
    store: Store,
    folder: Path,
    options: PushOptions,
    checked: Validated,
    progress: Progress,
    for_client: ForClient | None = None,
) -> ModelVersion:
    """Push `folder` as the next version; see `Registry.push`."""
    from registry.pushing import signed

    listed = folders.scan(folder)
    kind = folders.kind(folder, listed)
    _refuse_options(folder, kind, options, checked)
    name = options.name or default_name(kind, folder, options)
    if for_client is not None:
        for_client.check_name(name)
    previous = _previous(catalog, name)
    sent = for_client.sent if for_client is not None else {}

    with contextlib.ExitStack() as stack:
        stored: list[FolderFile] = []
        writers: list[BlobWriting] = []
        kept: list[Kept] = []
        local: dict[str, Path] = {}
        total = sum(f.size for f in listed)
        with progress(f"push {folder.name}/", total) as advance:
            step = crash_half_way("push-copy", total, advance)
            for entry in listed:
                source = folder / entry.path
                known = previous.files.get((entry.path, entry.size)) or sent.get(entry.path)
                check = _unchanged(catalog, source, known) if known is not None else None
                if known is not None and check is not None:
                    kept.append(Kept(replace(entry, sha256=known), check))
                    stored.append(kept[-1].file)
                    local[entry.path] = source
                    step(entry.size)
                    continue
                writer = stack.enter_context(store.writer())
                _copy(source, entry, writer, step)
                stored.append(replace(entry, sha256=writer.finish()))
                writers.append(writer)
                local[entry.path] = writer.temp_path
        crash_point("push-hashed")

        previous = replace(previous, unchanged=frozenset(k.file.path for k in kept))
        new = _describe(catalog, kind, folder, local, options, checked, previous, for_client)
        listing = stack.enter_context(store.writer())
        listing.write(folders.file_list(stored))
        new = replace(
            new,
            name=name,
            blob_sha256=listing.finish(),
            tags=checked.tags,
            aliases=checked.aliases,
            parent=checked.parent,
            files=tuple(stored),
        )
        checks = [(w.finish(), w.check) for w in writers] + [(k.file.sha256, k.check) for k in kept]
        blake3 = {digest: check.blake3 for digest, check in checks if check.blake3}
        new = signed(catalog, new, options, for_client, blake3)
        writers.append(listing)
        for writer in writers:
            writer.publish()  # before the transaction: an upload holds no catalog lock
        with catalog.recording() as recording:
            for writer in writers:
                recording.place(writer)
            for found in kept:  # locked now: a gc that took it meanwhile shows here
                recording.keep(found.file.sha256, found.file.size, found.check)
                if not store.exists(found.file.sha256):
                    raise StorageError(
                        f"{found.file.path}: its stored copy was deleted by a gc during this "
                        "push; push again"
                    )
            crash_point("push-blob-placed")
            record = recording.add(new)
            crash_point("push-commit")
    return record


def _refuse_options(folder: Path, kind: str, options: PushOptions, checked: Validated) -> None:
    """Refuse, before anything is read, what a folder of this kind cannot take."""
    for option, given in (
        ("--key", options.key),
        ("--strip-prefix", options.strip_prefix),
        ("--trust-pickle", options.trust_pickle),
    ):
        if given:
            raise CheckpointError(f"{option} is for a checkpoint file; {folder} is a folder")
    if kind in ARCH_KINDS and options.arch is None:
        raise ArchitectureError(
            f"{folder} is a {kind} folder: name the model's builder with --arch"
        )
    if kind in ("peft", "folder") and options.arch is not None:
        what = "the adapter's base is its --parent" if kind == "peft" else "it holds no weights"
        raise ArchitectureError(f"{folder} is a {kind} folder, which takes no --arch: {what}")
    if kind == "peft" and checked.parent is None:
        raise ArchitectureError(
            f"{folder} is a PEFT adapter: name the version of its base model with --parent REF"
        )
    if checked.shape is not None and kind not in ARCH_KINDS:
        raise ArchitectureError(
            f"--check-input needs a folder rebuilt by --arch ({', '.join(ARCH_KINDS)}); "
            f"{folder} is a {kind} folder"
        )
    if options.arch_args and kind in ("transformers", "peft", "folder"):
        raise ArchitectureError(
            f"{folder} is a {kind} folder, which takes no --arg"
            + ("; its config.json holds the model's settings" if kind == "transformers" else "")
        )


def default_name(kind: str, folder: Path, options: PushOptions) -> str:
    """The name a push without --name records: the class's, the arch's, else the folder's."""
    from registry import hf, pushing

    arch = _arch_name(options)
    if kind == "transformers" and arch is None:
        config = folders.config(folder)
        arch = hf.arch_of(config if isinstance(config, dict) else {})
    if arch is None:
        return folders.default_name(folder.resolve().name)
    if arch.startswith(hf.TRANSFORMERS_PREFIX):
        return folders.default_name(arch.removeprefix(hf.TRANSFORMERS_PREFIX))
    return pushing.default_name(arch)


def _arch(options: PushOptions) -> str | Arch | None:
    """The pusher's --arch: a name, or the Arch of a builder handed in."""
    from registry import architectures

    given = options.arch
    return given if given is None or isinstance(given, str) else architectures.of(given)


def _arch_name(options: PushOptions) -> str | None:
    given = _arch(options)
    return given if given is None or isinstance(given, str) else given.name


def _previous(catalog: Catalog, name: str) -> Previous:
    """What the model's newest version holds, if it has one."""
    try:
        latest = catalog.get(name)
    except NotFoundError:
        return Previous({}, {})
    files = {(f.path, f.size): f.sha256 for f in latest.files or ()}
    return Previous(files, {t.name: t for t in catalog.tensors(latest)} if files else {})


def _unchanged(catalog: Catalog, source: Path, known: str) -> Check | None:
    """The check of blob `known` when `source` holds its bytes, else None.

    Told by the BLAKE3 reads verify the blob against (as collision-resistant
    as its SHA-256, and hashed on every core); a blob recorded before BLAKE3
    is compared by its SHA-256.
    """
    from registry import digests

    check = catalog.verification(known)
    if check is not None and check.blake3:
        return check if digests.blake3_of(source) == check.blake3 else None
    hasher = Hasher()
    with open(source, "rb") as stream:
        while chunk := stream.read(file_io.CHUNK_SIZE):
            hasher.update(chunk)
    return hasher.check if hasher.hexdigest() == known else None


def _copy(source: Path, entry: FolderFile, writer: BlobWriting, step: Any) -> None:
    try:
        stream = open(source, "rb")  # noqa: SIM115 -- copy_stream closes it
    except OSError as exc:
        raise CheckpointError(f"cannot read {source}: {exc.strerror}") from None
    file_io.copy_stream(stream, writer, step)
    if writer.size != entry.size:
        raise CheckpointError(f"{source} changed while it was pushed; push again")


def _describe(
    catalog: Catalog,
    kind: str,
    folder: Path,
    local: Mapping[str, Path],
    options: PushOptions,
    checked: Validated,
    previous: Previous,
    for_client: ForClient | None,
) -> NewVersion:
    """What the folder's weights are, checked against its arch (read from the copies)."""
    if kind == "folder":
        return _version(kind, "", {}, 0, {"num_files": len(local)}, options)
    if kind == "peft":
        return _adapter(local, options, catalog, checked, previous)
    if kind == "transformers":
        return _transformers(local, options, previous, for_client)
    return _built(kind, folder, local, options, checked, previous, for_client)


def _adapter(
    local: Mapping[str, Path],
    options: PushOptions,
    catalog: Catalog,
    checked: Validated,
    previous: Previous,
) -> NewVersion:
    from registry import hf

    hf.require("a PEFT adapter folder")
    config = hf.adapter_config(local)
    tensors, shapes, dtypes = _read_weights("peft", local, previous)
    assert checked.parent is not None
    _fits_base(shapes, checked.parent, catalog)
    details = {"peft_type": config.get("peft_type"), **_summary(tensors, dtypes)}
    count = sum(math.prod(shape) for shape, _ in shapes.values())
    version = _version("peft", f"peft:{config.get('peft_type')}", {}, count, details, options)
    return replace(version, tensors=tuple(tensors))


def _fits_base(
    shapes: Mapping[str, tuple[tuple[int, ...], str]], parent: str, catalog: Catalog
) -> None:
    """Refuse an adapter whose LoRA layers wrap modules its base does not have, or have in
    other shapes, by the base's recorded manifest (when it has one)."""
    base = {t.name: t.shape for t in catalog.tensors(catalog.get(parent))}
    if not base:
        return
    missing, mis_shaped = [], []
    for name, (shape, _dtype) in shapes.items():
        module, lora, part = name.removeprefix("base_model.model.").partition(".lora_")
        if not lora or not part.startswith(("A.", "B.")):
            continue
        weight = base.get(f"{module}.weight")
        if weight is None:
            missing.append(module)
        elif len(weight) == 2 and len(shape) == 2:  # a Linear: A is (r, in), B is (out, r)
            expected = weight[1] if part.startswith("A.") else weight[0]
            found = shape[1] if part.startswith("A.") else shape[0]
            if found != expected:
                mis_shaped.append(f"{name} {list(shape)} for {module} {list(weight)}")
    if missing:
        raise CheckpointError(
            f"the adapter wraps {len(set(missing))} module(s) its base {parent} does not have "
            f"({', '.join(sorted(set(missing))[:3])})"
        )
    if mis_shaped:
        raise CheckpointError(f"the adapter does not fit its base {parent}: {mis_shaped[0]}")


def _transformers(
    local: Mapping[str, Path],
    options: PushOptions,
    previous: Previous,
    for_client: ForClient | None,
) -> NewVersion:
    from registry import architectures, hf

    hf.require("a transformers folder")
    named = _arch_name(options)

    def trusted(arch: str) -> bool:  # the pusher's own arch; a client's, as its server says
        return for_client is None or for_client.trusts(arch)

    config = hf.config_data(local, trusted=named is not None and trusted(named))
    arch = named or hf.arch_of(config)
    model = hf.build(hf.model_class(arch, trusted=trusted(arch)), config)
    tensors, shapes, dtypes = _read_weights("transformers", local, previous)
    hf.fit(model, shapes, arch)
    import transformers

    details = {
        **_summary(tensors, dtypes),
        "transformers_version": transformers.__version__,
        "model_type": config.get("model_type"),
    }
    count = architectures.count_params(model)
    return replace(_version("transformers", arch, {}, count, details, options), tensors=tensors)


def _built(
    kind: str,
    folder: Path,
    local: Mapping[str, Path],
    options: PushOptions,
    checked: Validated,
    previous: Previous,
    for_client: ForClient | None,
) -> NewVersion:
    """A folder rebuilt by the pusher's --arch: hub_mixin (arguments from config.json),
    sharded or DCP."""
    import torch

    from registry import architectures, pushing
    from registry.checkpoints import Weights

    arch_args = dict(options.arch_args)
    if kind == "hub_mixin":
        config = folders.config(folder)
        if not isinstance(config, dict):
            raise CheckpointError(f"{folder}/config.json is not a JSON object of arguments")
        arch_args = {**config, **arch_args}
    builder = _arch(options)
    assert builder is not None  # refused before the copy otherwise
    resolved, model = pushing.build(builder, arch_args, trusted=for_client is None)
    tensors, shapes, dtypes = _read_weights(kind, local, previous)
    placeholders = {
        name: torch.empty(shape, dtype=getattr(torch, dtype), device="meta")
        for name, (shape, dtype) in shapes.items()
    }
    error = architectures.mismatch(resolved.name, model, placeholders)
    if error is not None:
        raise error
    weights = Weights(placeholders, kind, {})
    new = pushing.new_version(resolved, model, arch_args, weights, options.description)
    new = replace(new, details={**new.details, **_summary(tensors, dtypes)}, tensors=tensors)
    if checked.shape is not None:
        state = shards.state_dict(kind, local)
        full = Weights(state, kind, {})
        new = replace(new, fingerprint=pushing.fingerprint(resolved, new, full, checked.shape))
    return new


def _read_weights(
    kind: str, local: Mapping[str, Path], previous: Previous
) -> tuple[tuple[TensorInfo, ...], dict[str, tuple[tuple[int, ...], str]], dict[str, int]]:
    """The manifest of a folder's weights, with each tensor's shape and dtype and the
    dtype counts; a shard the previous version holds unchanged keeps its recorded digests,
    so only the shards that changed are read in full."""
    tensors = manifests.describe_folder(kind, local, previous.unchanged, previous.tensors)
    shapes = {t.name: (t.shape, t.dtype) for t in tensors}
    dtypes = dict(collections.Counter(t.dtype for t in tensors))
    return tuple(tensors), shapes, dtypes


def _summary(tensors: tuple[TensorInfo, ...], dtypes: dict[str, int]) -> dict[str, Any]:
    return {"num_tensors": len(tensors), "dtypes": dtypes}


def _version(
    kind: str,
    arch: str,
    arch_args: dict[str, Any],
    num_params: int,
    details: dict[str, Any],
    options: PushOptions,
) -> NewVersion:
    import torch

    return NewVersion(
        name="",
        format=kind,
        arch=arch,
        arch_args=arch_args,
        description=options.description,
        created_at=datetime.now(timezone.utc),
        created_by=audit.actor(),
        num_params=num_params,
        torch_version=torch.__version__,
        details=details,
    )
