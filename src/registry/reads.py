"""Verified reads of a version's blobs: pull, write_to, local_file, state_dict, load and diff.

Every read goes through one helper, `weights_file`: the blob's local path
(a remote store fetches it into its cache first) while, on other threads,
its bytes are hashed against the catalog's digest. What the caller built
from the bytes is handed on only when they matched; else IntegrityError.
A remote store's damaged cached copy is evicted and read once more
(`read_blobs`), so the read that found the damage still succeeds.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

from registry import files, folder_pull, folders, manifests, refs, shards
from registry.digests import Check
from registry.errors import (
    CheckpointError,
    IntegrityError,
    InvalidReferenceError,
    NotFoundError,
    StorageError,
)
from registry.faults import crash_half_way

if TYPE_CHECKING:
    import torch
    from torch import nn

    from registry.architectures import Arch
    from registry.catalogs import Catalog
    from registry.progress_bars import Progress
    from registry.records import Diff, ModelVersion, TensorInfo
    from registry.stores import Store

FORMATS = ("original", "safetensors")
T = TypeVar("T")


@dataclass(frozen=True)
class WeightsFile:
    """The local file that holds a version's weights, and how to read it."""

    path: Path
    format: str
    details: dict[str, Any]


class Reads:
    """Reads of the blobs of versions already looked up in `catalog`, from `store`."""

    def __init__(
        self,
        catalog: Catalog,
        store: Store,
        progress: Progress,
        signed: Mapping[str, str] | None = None,
    ) -> None:
        self.catalog, self.store, self.progress = catalog, store, progress
        self._signed = signed

    def trusting(self, blake3: Mapping[str, str]) -> Reads:
        """These reads, verifying each blob against the BLAKE3 a trusted signature gives it
        (by SHA-256), else against its SHA-256: never against the catalog's unsigned digests."""
        return Reads(self.catalog, self.store, self.progress, dict(blake3))

    def verification(self, digest: str) -> Check | None:
        """What a read verifies the blob against: see `trusting`, else the catalog's digests."""
        if self._signed is None:
            return self.catalog.verification(digest)
        found = self._signed.get(digest)
        return Check(blake3=found) if found else None

    def pull(
        self,
        version: ModelVersion,
        destination: str | os.PathLike[str] | None,
        verify: bool,
        format: str,
    ) -> Path:
        """Write the version's file (or its weights as safetensors); see `Registry.pull`."""
        if format not in FORMATS:
            raise InvalidReferenceError(format, "format", f"choose one of {', '.join(FORMATS)}")
        if version.files is not None:
            if format != "original":
                single_file(version, f"pull --format {format}")
            folder = f"{version.name.rsplit('/', 1)[-1]}-v{version.version}"
            target = Path(destination) if destination is not None else Path(folder)
            return folder_pull.write_folder(self, version, target, verify)
        single_file(version, "pull")
        extension = version.extension if format == "original" else ".safetensors"
        if not refs.is_extension(extension):  # the catalog's data must not name a path
            raise InvalidReferenceError(extension, "extension", f"{version.ref} records it")
        filename = f"{version.name.rsplit('/', 1)[-1]}-v{version.version}{extension}"
        target = Path(destination) if destination is not None else Path(filename)
        if target.is_dir() or str(destination).endswith(os.sep):
            target = target / filename
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create folder {target.parent}: {exc.strerror}") from None
        if format == "safetensors":
            from registry import checkpoints

            state = self.state_dict(version, verify)
            with files.atomic_file(target) as out:
                checkpoints.save_safetensors(state, out)
            return target

        def copy() -> None:
            with self.progress(f"pull {version.ref}", version.size) as advance:
                progress = crash_half_way("pull-copy", version.size, advance)
                self.copy_blob(version.sha256, version.ref, target, verify, progress)

        self.read_blobs(copy, version.sha256)
        return target

    def copy_blob(
        self, digest: str, ref: str, target: Path, verify: bool, progress: Callable[[int], None]
    ) -> None:
        """Write a blob to `target`, complete or not at all: streamed from the store where
        this machine lacks it (always verified), else copied from here."""
        blake3 = self.blake3_check(digest, ref)
        with files.atomic_file(target) as out:
            recorded = blake3.digest if blake3 else None
            if self.store.fetch_into(digest, ref, out, progress, recorded):
                return
            source = self.store.open(digest, ref)
            check = blake3 if verify else None
            files.copy_stream_verified(source, out, digest, ref, verify, progress, check)

    def write_to(self, version: ModelVersion, sink: BinaryIO, verify: bool) -> None:
        """Stream the version's file (a folder's as a tar) to `sink`, hashing it; see
        `Registry.write_to`."""
        if version.files is not None:
            folder_pull.write_tar(self, version, sink, verify)
            return
        with self.progress(f"pull {version.ref}", version.size) as advance:
            blake3 = self.blake3_check(version.sha256, version.ref) if verify else None
            source = self.store.open(version.sha256, version.ref)
            try:
                files.copy_stream_verified(
                    source, sink, version.sha256, version.ref, verify, advance, blake3
                )
            except IntegrityError:
                self.store.evict(version.sha256)  # sent already: the next read fetches afresh
                raise

    def local_file(self, version: ModelVersion, verify: bool) -> Path:
        single_file(version, "local_file")
        path = self.store.local_path(version.sha256, version.ref)
        if verify:
            check = self.verification(version.sha256)
            self.store.verify(version.sha256, version.ref, check)
        return path

    def state_dict(self, version: ModelVersion, verify: bool) -> dict[str, torch.Tensor]:
        from registry import checkpoints

        if version.files is not None:
            return self._folder_read(version, verify, shards.state_dict)

        def read() -> dict[str, torch.Tensor]:
            with self.weights_file(version, verify) as weights:
                return checkpoints.load(weights.path, weights.format, weights.details)

        return self.read_blobs(read, weights_digest(version))

    def model(self, version: ModelVersion, arch: Arch, verify: bool) -> nn.Module:
        """The version's model built by `arch` with its weights (not yet in eval mode)."""
        from registry import architectures, checkpoints

        recorded_versions = version.details.get("module_versions")
        if version.files is not None:

            def build_folder(kind: str, local: Mapping[str, Path]) -> nn.Module:
                state = shards.state_dict(kind, local)
                return architectures.instantiate(arch, version.arch_args, state, recorded_versions)

            return self._folder_read(version, verify, build_folder)

        def build() -> nn.Module:
            with self.weights_file(version, verify) as weights:
                state = checkpoints.load(weights.path, weights.format, weights.details)
                return architectures.instantiate(arch, version.arch_args, state, recorded_versions)

        return self.read_blobs(build, weights_digest(version))

    def transformers_model(
        self, version: ModelVersion, verify: bool, trust_arch: bool
    ) -> nn.Module:
        """A transformers folder's model, rebuilt from its recorded config (no network)."""
        from registry import architectures, hf

        hf.require(f"loading {version.ref}")
        trusted = trust_arch or architectures.trusted_by_environment(version.arch)

        def build(kind: str, local: Mapping[str, Path]) -> nn.Module:
            return hf.load(version.arch, local, trusted)

        return self._folder_read(version, verify, build)

    def adapted(
        self, version: ModelVersion, base: nn.Module, verify: bool, merge: bool
    ) -> nn.Module:
        """`base` with a PEFT adapter version applied (or merged in)."""
        from registry import hf

        hf.require(f"loading adapter {version.ref}")

        def apply(kind: str, local: Mapping[str, Path]) -> nn.Module:
            return hf.apply_adapter(base, local, merge)

        return self._folder_read(version, verify, apply)

    def manifest(self, version: ModelVersion) -> list[TensorInfo]:
        """The version's tensor manifest: recorded, else described from its blob once and kept."""
        from registry import checkpoints

        found = self.catalog.tensors(version)
        if found or version.files is not None:  # a folder's is recorded at push
            return found

        def describe() -> list[TensorInfo]:
            with self.weights_file(version, verify=True) as weights:
                state = checkpoints.load(weights.path, weights.format, weights.details)
                return manifests.describe(state)

        found = self.read_blobs(describe, weights_digest(version))
        self.catalog.add_tensors(version, found)
        return found

    def diff(self, older: ModelVersion, newer: ModelVersion) -> Diff:
        """Compare by manifest digests, then read the tensors that differ one pair at a time."""
        from registry import diffing

        served = self.catalog.diff(older, newer)
        if served is not None:
            return served
        left, right = self._compared(older), self._compared(newer)
        if diffing.unread(left, right):
            return diffing.compare(older.ref, newer.ref, left, right, None, None)

        def compare() -> Diff:
            with contextlib.ExitStack() as stack:
                readers = [stack.enter_context(self._tensor_reader(v)) for v in (older, newer)]
                return diffing.compare(older.ref, newer.ref, left, right, *readers)

        return self.read_blobs(compare, weights_digest(older), weights_digest(newer))

    def _compared(self, version: ModelVersion) -> list[TensorInfo]:
        """What a diff compares: the manifest; an adapter's over its base's (as loaded)."""
        own = self.manifest(version)
        base = self._adapter_base(version)
        if base is None:
            return own
        adapter = [replace(t, name=_adapted_name(t.name)) for t in own]
        names = {t.name for t in adapter}
        return [t for t in self._compared(base) if t.name not in names] + adapter

    def _adapter_base(self, version: ModelVersion) -> ModelVersion | None:
        """A PEFT adapter's base version, if it is still there."""
        if version.format != "peft" or version.parent is None:
            return None
        try:
            return self.catalog.get(version.parent)
        except NotFoundError:
            return None

    def read_blobs(self, read: Callable[[], T], *digests: str) -> T:
        """`read()`, and once more if its bytes did not verify but the store can fetch them again.

        A remote store's cached copy can be damaged while the bucket's object is
        not: the copies are evicted and the second read fetches, verifies and
        uses fresh ones. An IntegrityError from the second read, or from a
        local store, is final.
        """
        try:
            return read()
        except IntegrityError:
            evicted = [self.store.evict(digest) for digest in digests]
            if not all(evicted):
                raise
        return read()

    @contextlib.contextmanager
    def weights_file(self, version: ModelVersion, verify: bool) -> Iterator[WeightsFile]:
        """The blob holding a version's weights (a trusted pickle's safe copy), and its format.

        With `verify`, the blob is re-hashed on another thread while the caller
        reads it; the block ends only when the bytes matched. Otherwise the
        IntegrityError is raised in place of whatever the caller raised, since
        that came from bad bytes, and what the caller built is dropped.
        """
        single_file(version, "reading the weights of")
        if version.weights_sha256:
            self.catalog.require_local(
                f"reading {version.ref}'s weights",
                "their safe copy (it was pushed as a trusted pickle), which the server does "
                "not send; pull the original file, or load it where the store is",
            )
            digest, format, details = version.weights_sha256, "safetensors", {}
        else:
            digest, format, details = version.sha256, version.format, version.details
        weights = WeightsFile(self.store.local_path(digest, version.ref), format, details)
        with self._verifying(digest, version.ref, verify):
            yield weights

    @contextlib.contextmanager
    def _verifying(self, digest: str, ref: str, verify: bool) -> Iterator[None]:
        """Hash the blob on another thread for as long as the block runs (with `verify`)."""
        if not verify:
            yield
            return
        check = self.verification(digest)
        with ThreadPoolExecutor(1, "registry-verify") as pool:
            verifying = pool.submit(self.store.verify, digest, ref, check)
            try:
                yield
            finally:
                verifying.result()  # an IntegrityError wins over what corrupt bytes caused

    @contextlib.contextmanager
    def _tensor_reader(self, version: ModelVersion) -> Iterator[Callable[[str], torch.Tensor]]:
        """One tensor at a time from a version's weights; `diff` checks each against its digest."""
        from registry import checkpoints

        if version.files is not None:
            kind = version.format
            base = self._adapter_base(version)
            with contextlib.ExitStack() as stack:
                local = stack.enter_context(
                    self.folder_files(version, self._needed(version), False)
                )
                state = shards.state_dict(kind, local)
                if base is None:
                    yield state.__getitem__
                    return
                own = {_adapted_name(name): tensor for name, tensor in state.items()}
                read_base = stack.enter_context(self._tensor_reader(base))
                yield lambda name: own[name] if name in own else read_base(name)
            return
        with (
            self.weights_file(version, verify=False) as weights,
            checkpoints.tensor_reader(weights.path, weights.format, weights.details) as read,
        ):
            yield read

    def blake3_check(self, digest: str, ref: str) -> files.Blake3Check | None:
        """How a copy of a blob is verified: by its BLAKE3 when recorded, else None (SHA-256)."""
        check = self.verification(digest)
        if check is None or not check.blake3:
            return None
        return files.Blake3Check(check.blake3, lambda: self.store.hash(digest, ref))

    def _folder_read(
        self, version: ModelVersion, verify: bool, read: Callable[[str, Mapping[str, Path]], T]
    ) -> T:
        """`read(kind, files)` over the files a folder version's weights need, verified."""
        kind = version.format
        if kind == "folder":
            raise CheckpointError(
                f"{version.ref} is a folder of files this registry does not know how to rebuild "
                "or read weights from; pull it instead"
            )
        needed = self._needed(version)
        digests = [f.sha256 for f in version.files or () if f.path in needed]

        def attempt() -> T:
            with self.folder_files(version, needed, verify) as local:
                return read(kind, local)

        return self.read_blobs(attempt, *digests)

    def _needed(self, version: ModelVersion) -> list[str]:
        """The paths a folder version's weights are read from (its index says, if sharded)."""
        paths = {f.path: Path() for f in version.files or ()}
        index = shards.index_of(version.format, paths)
        if index is not None:  # verified with the rest when they are read
            found = next(f for f in version.files or () if f.path == index)
            paths[index] = self.store.local_path(found.sha256, folders.file_ref(version, found))
        return shards.needed(version.format, paths)

    @contextlib.contextmanager
    def folder_files(
        self, version: ModelVersion, paths: Iterable[str], verify: bool
    ) -> Iterator[dict[str, Path]]:
        """Local files holding the named files of a folder version (fetched into a remote
        store's cache first), hashed on another thread while the block runs (with `verify`)."""
        wanted = set(paths)
        blobs = [
            (f.path, f.sha256, folders.file_ref(version, f))
            for f in version.files or ()
            if f.path in wanted
        ]
        local = {path: self.store.local_path(digest, ref) for path, digest, ref in blobs}
        if not verify:
            yield local
            return
        checks = [self.verification(digest) for _path, digest, _ref in blobs]

        def verify_each() -> None:  # in turn: each hash uses every core already
            for (_path, digest, ref), check in zip(blobs, checks, strict=True):
                self.store.verify(digest, ref, check)

        with ThreadPoolExecutor(1, "registry-verify") as pool:
            verifying = pool.submit(verify_each)
            try:
                yield local
            finally:
                verifying.result()  # an IntegrityError wins over what corrupt bytes caused


def single_file(version: ModelVersion, operation: str) -> None:
    """Refuse what only a single-file version has (one local file, a format conversion)."""
    if version.files is not None:
        raise CheckpointError(
            f"{operation} {version.ref}: it is a folder version ({len(version.files)} files), "
            "not one file; pull it as a folder"
        )


def _adapted_name(name: str) -> str:
    """An adapter tensor's name in the adapted model: PEFT saves it under `base_model.model.`."""
    return name.removeprefix("base_model.model.")


def weights_digest(version: ModelVersion) -> str:
    """The blob holding a version's weights: a trusted pickle's safe copy, else the file."""
    return version.weights_sha256 or version.sha256
