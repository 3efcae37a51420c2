"""Push: a checkpoint file, an nn.Module or a state_dict recorded as the next version.

The arch is built without weights on another thread while the file is
copied into the store's writer and hashed; the weights are read from that
copy (what is checked is exactly what is stored) and must fit the arch;
then the blobs are published (an upload holds no catalog lock) and, in one
catalog transaction, placed and recorded. A kill at any point leaves either
no version or a whole one (docs/reliability.md).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry import audit, behaviour, files, manifests, refs
from registry.errors import (
    ArchitectureError,
    CheckpointError,
    InvalidReferenceError,
    NotFoundError,
    StorageError,
)
from registry.faults import crash_half_way, crash_point
from registry.records import Fingerprint, ModelVersion, NewVersion

if TYPE_CHECKING:
    import torch
    from torch import nn

    from registry.architectures import Arch
    from registry.catalogs import Catalog, Recording
    from registry.checkpoints import Weights
    from registry.digests import Check
    from registry.progress_bars import Progress
    from registry.stores import BlobWriting, Store


@dataclass(frozen=True)
class PushOptions:
    """What a push is told besides its source: `Registry.push` documents each."""

    arch: str | Callable[..., nn.Module] | None = None
    name: str | None = None
    arch_args: Mapping[str, Any] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)
    aliases: Sequence[str] = ()
    description: str = ""
    trust_pickle: bool = False
    key: str | None = None
    strip_prefix: str | None = None
    parent: str | None = None
    check_input: Sequence[int] | str | None = None
    sign: str | os.PathLike[str] | None = None  # the private key file that signs the version


@dataclass(frozen=True)
class ForClient:
    """A push a team server makes for a client. The arch is not the pusher's own code, so
    it is trusted only as a load trusts a recorded one; `check_name` refuses (raises) a
    model the client's token does not reach, before anything is read."""

    check_name: Callable[[str], None]
    sent: Mapping[str, str] = field(default_factory=dict)  # a folder's paths -> sha256 sent
    signature: dict[str, Any] | None = None  # what the client signed: checked, then stored

    def trusts(self, arch: str) -> bool:
        """Whether this server trusts `arch` as its own code (REGISTRY_TRUSTED_ARCHS)."""
        from registry import architectures

        return architectures.trusted_by_environment(arch)


@dataclass(frozen=True)
class Stored:
    """A checkpoint file a team server holds already, as the blob a client sent before."""

    filename: str
    sha256: str
    size: int
    path: Path  # the blob's local copy, verified
    check: Check


@dataclass(frozen=True)
class Validated:
    """What every push checks in its options before it reads a byte."""

    tags: dict[str, str]
    aliases: tuple[str, ...]
    shape: tuple[int, ...] | None
    parent: str | None  # the parent's ref, looked up


def validate(catalog: Catalog, options: PushOptions) -> Validated:
    """Check the names, tags, aliases and check input; look the parent up."""
    tags = refs.validate_tags(options.tags)
    aliases = tuple(refs.validate_alias(a) for a in options.aliases)
    if options.name is not None:
        refs.validate_name(options.name)
    check_input = options.check_input
    shape = behaviour.parse_shape(check_input) if check_input is not None else None
    parent = catalog.get(options.parent).ref if options.parent is not None else None
    if options.sign is not None:
        from registry import signing

        signing.check_signing_key(options.sign)  # a bad key fails before anything is read
    return Validated(tags, aliases, tuple(shape) if shape is not None else None, parent)


def signed(
    catalog: Catalog,
    new: NewVersion,
    options: PushOptions,
    for_client: ForClient | None,
    blake3: Mapping[str, str],
) -> NewVersion:
    """`new` with its signature, when the push was asked to sign it (`blake3`: each blob's
    BLAKE3 by SHA-256, signed with it), or its client signed it: a server stores that only
    if it vouches for exactly what the server records."""
    from registry import signing

    given = for_client.signature if for_client is not None else None
    if options.sign is None and given is None:
        return new
    base = catalog.get(new.parent).sha256 if new.format == "peft" and new.parent else None
    claims = signing.Claims.of_new(new, base)
    if options.sign is not None:
        return replace(new, signature=signing.sign(options.sign, claims, blake3))
    signing.check_own(given, claims, f"{new.name} as pushed")  # its shape too
    return replace(new, signature=given)


def run(
    catalog: Catalog,
    store: Store,
    source: str | os.PathLike[str] | nn.Module | Mapping[str, torch.Tensor],
    options: PushOptions,
    progress: Progress,
    for_client: ForClient | None = None,
) -> ModelVersion:
    """Push `source` as the next version; see `Registry.push`."""
    from registry import architectures

    catalog.require_local("push")
    checked = validate(catalog, options)
    path = Path(source) if isinstance(source, (str, os.PathLike)) else None
    if path is not None and path.is_dir():
        from registry import folder_push

        return folder_push.run(catalog, store, path, options, checked, progress, for_client)
    if options.arch is None:
        raise ArchitectureError(
            "name the model's builder with --arch (arch=): a torchvision model name or "
            "package.module:callable"
        )
    arch = options.arch
    trusted = for_client is None
    if isinstance(arch, str) and trusted:
        architectures.warn_if_main(arch)
    builder = arch if isinstance(arch, str) else architectures.of(arch)
    arch_args = finite_json(dict(options.arch_args))
    tags, aliases, shape, parent = checked.tags, checked.aliases, checked.shape, checked.parent
    name = options.name
    if name is None:
        name = default_name(builder if isinstance(builder, str) else builder.name)
    if for_client is not None:
        for_client.check_name(name)
    if path is not None:
        preflight(path)
    if isinstance(source, Stored):
        found = _identical(catalog, name, source, options, for_client)
        if found is not None:
            return found

    with contextlib.ExitStack() as stack:
        # Importing torch takes seconds: build the arch on another thread while
        # this one copies the file.
        pool = stack.enter_context(ThreadPoolExecutor(1, "registry-build"))
        building = pool.submit(build, builder, arch_args, trusted)
        original: BlobWriting | None = None
        if isinstance(source, Stored):  # sent before, verified: read where it is
            resolved, model = building.result()
            weights = read_weights(
                Path(source.filename), source.path, resolved, model, options.trust_pickle,
                options.key, options.strip_prefix,
            )  # fmt: skip
            extension = refs.extension_of(Path(source.filename).suffix, IN_MEMORY_EXTENSION)
            blob_sha256 = source.sha256
        else:
            original = stack.enter_context(store.writer())
            if path is not None:
                copy_file(path, original, progress)
                resolved, model = building.result()
                weights = read_weights(
                    path, original.temp_path, resolved, model, options.trust_pickle,
                    options.key, options.strip_prefix,
                )  # fmt: skip
                extension = refs.extension_of(path.suffix, IN_MEMORY_EXTENSION)
            else:
                resolved, model = building.result()
                weights = write_object(source, original, resolved, model)
                extension = IN_MEMORY_EXTENSION
            blob_sha256 = original.finish()
        new = replace(
            new_version(resolved, model, arch_args, weights, options.description),
            name=name,
            blob_sha256=blob_sha256,
            extension=extension,
            tags=tags,
            aliases=aliases,
            tensors=tuple(manifests.describe(weights.state_dict)),
            parent=parent,
        )
        if shape is not None:
            new = replace(new, fingerprint=fingerprint(resolved, new, weights, shape))
        writers = [original] if original is not None else []
        if weights.format == "pickle":  # so that loads never unpickle it again
            from registry import checkpoints

            safe_copy = stack.enter_context(store.writer())
            checkpoints.save_safetensors(weights.state_dict, safe_copy)
            new = replace(new, weights_sha256=safe_copy.finish())
            writers.append(safe_copy)
        blake3 = {w.finish(): w.check.blake3 for w in writers if w.check.blake3}
        if isinstance(source, Stored) and source.check.blake3:
            blake3[source.sha256] = source.check.blake3
        new = signed(catalog, new, options, for_client, blake3)
        for writer in writers:
            writer.publish()  # before the transaction: an upload holds no catalog lock
        with catalog.recording() as recording:
            for writer in writers:
                recording.place(writer)  # in place before any version refers to it
            if isinstance(source, Stored):
                _keep(recording, store, source)
            crash_point("push-blob-placed")
            record = recording.add(new)
            crash_point("push-commit")
    return record


def finite_json(arch_args: dict[str, Any]) -> dict[str, Any]:
    """`arch_args` if JSON holds them: no NaN or infinity, which neither catalog can list."""
    import json

    try:
        json.dumps(arch_args, allow_nan=False)
    except ValueError:
        raise ArchitectureError(
            "arch_args must be JSON numbers, strings, lists and objects: NaN and infinity "
            "cannot be recorded"
        ) from None
    return arch_args


def _keep(recording: Recording, store: Store, stored: Stored) -> None:
    """Lock the row of a blob sent before; a gc that took it meanwhile shows here."""
    recording.keep(stored.sha256, stored.size, stored.check)
    if not store.exists(stored.sha256):
        raise StorageError(
            f"{stored.filename}: its stored copy was deleted by a gc during this push; push again"
        )


def _identical(
    catalog: Catalog,
    name: str,
    stored: Stored,
    options: PushOptions,
    for_client: ForClient | None,
) -> ModelVersion | None:
    """The version a re-push of bytes a server holds would find, with the new tags and
    aliases added, without reading the bytes again; None: push it."""
    arch = options.arch
    if not isinstance(arch, str) or options.check_input is not None:
        return None
    try:
        found = catalog.get(f"{name}@sha256:{stored.sha256}")
    except (NotFoundError, InvalidReferenceError):
        return None
    picked = {"key": options.key, "stripped_prefix": options.strip_prefix}
    if (
        found.arch != arch
        or found.arch_args != dict(options.arch_args)
        or found.files is not None
        or any(given is not None and found.details.get(k) != given for k, given in picked.items())
        or (options.parent is not None and found.parent != catalog.get(options.parent).ref)
    ):
        return None
    again = NewVersion(
        **{f.name: getattr(found, f.name) for f in fields(NewVersion) if hasattr(found, f.name)}
    )
    again = replace(
        again,
        blob_sha256=found.sha256,
        tags=refs.validate_tags(options.tags),
        aliases=tuple(refs.validate_alias(a) for a in options.aliases),
        parent=None,
        files=None,
        signature=None,  # kept unless the client signed it again
    )
    again = signed(catalog, again, options, for_client, {})
    with catalog.recording() as recording:
        recording.keep(stored.sha256, stored.size, stored.check)
        return recording.add(again)


def copy_file(path: Path, writer: BlobWriting, progress: Progress) -> None:
    """Copy a checkpoint file into the writer, hashing it."""
    try:
        source = open(path, "rb")  # noqa: SIM115 -- copy_stream closes it
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror}") from None
    size = os.fstat(source.fileno()).st_size
    with progress(f"push {path.name}", size) as advance:
        files.copy_stream(source, writer, crash_half_way("push-copy", size, advance))
    writer.finish()
    crash_point("push-hashed")


# What an in-memory nn.Module or state_dict is stored as.
IN_MEMORY_EXTENSION = ".pt"


def preflight(path: Path) -> None:
    """Refuse a missing or non-checkpoint file before anything slow starts."""
    from registry import checkpoints

    if not path.exists():
        raise NotFoundError(f"file {str(path)!r}")
    checkpoints.sniff(path)


def build(
    arch: str | Arch, arch_args: Mapping[str, Any], trusted: bool = True
) -> tuple[Arch, nn.Module]:
    """Resolve the pusher's own arch (or, not `trusted`, one a client named: trusted only as
    a load trusts a recorded arch) and build it without weights."""
    from registry import architectures

    resolved = architectures.resolve(arch, trust=trusted) if isinstance(arch, str) else arch
    return resolved, resolved.build(arch_args)


def read_weights(
    path: Path,
    copy: Path,
    arch: Arch,
    model: nn.Module,
    trust_pickle: bool,
    key: str | None,
    strip_prefix: str | None,
) -> Weights:
    """Find the weights in a copied checkpoint that fit the model.

    The copy is read, not the original: what is checked is exactly what is stored.
    """
    from registry import architectures, checkpoints

    candidates = checkpoints.read(copy, trust_pickle, key, strip_prefix, shown_as=path)
    weights = architectures.fit(arch.name, model, candidates, path)
    pickled_class = weights.details.get("class")
    built_class = f"{type(model).__module__}:{type(model).__qualname__}"
    if pickled_class and pickled_class != built_class:
        raise ArchitectureError(
            f"{path} holds a pickled {pickled_class}, but arch {arch.name!r} builds a {built_class}"
        )
    return weights


def write_object(source: Any, writer: BlobWriting, arch: Arch, model: nn.Module) -> Weights:
    """Save an nn.Module's or a state_dict's weights into the writer, after checking they fit."""
    from registry import architectures, checkpoints

    found = checkpoints.from_object(source)
    weights = architectures.fit(arch.name, model, [found], f"the {type(source).__name__}")
    checkpoints.save(weights.state_dict, writer)  # a wrapper's prefix is not stored at all
    return replace(weights, details=found.details)


def new_version(
    arch: Arch,
    model: nn.Module,
    arch_args: dict[str, Any],
    weights: Weights,
    description: str,
) -> NewVersion:
    """The version a push records, less its name, blobs, tags and the rest `run` adds."""
    import torch

    from registry import architectures

    details = weights.describe()
    if arch.torchvision:
        import torchvision

        details["torchvision_version"] = torchvision.__version__
    added = {k: v for k, v in arch.neutral_arguments().items() if k not in arch_args}
    if added:  # what the builder was called with besides arch_args
        details["builder_defaults"] = added
    details["module_versions"] = architectures.versions_to_record(model, weights.module_versions)
    return NewVersion(
        name="",
        format=weights.format,
        arch=arch.name,
        arch_args=arch_args,
        description=description,
        created_at=datetime.now(timezone.utc),
        created_by=audit.actor(),
        num_params=architectures.count_params(model),
        torch_version=torch.__version__,
        details=details,
    )


def fingerprint(
    arch: Arch, version: NewVersion, weights: Weights, shape: Sequence[int]
) -> Fingerprint:
    """Run the model as a load will rebuild it on the seeded check input; record its output."""
    from registry import architectures

    model = architectures.instantiate(
        arch, version.arch_args, weights.state_dict, version.details["module_versions"]
    )
    return Fingerprint(
        input_shape=tuple(shape),
        outputs=behaviour.run(model, shape),
        environment=behaviour.environment(arch),
    )


def default_name(arch: str) -> str:
    """The name used when --name is not given: `vgg16`, or `tinynet` for `mymodels:TinyNet`."""
    candidate = arch.rsplit(":", 1)[-1].rsplit(".", 1)[-1].lower()
    try:
        return refs.validate_name(candidate)
    except InvalidReferenceError:
        raise InvalidReferenceError(
            candidate, "model name", f"derived from arch {arch!r}; pass --name"
        ) from None
