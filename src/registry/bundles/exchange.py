"""Export and import: versions moved between a registry and a bundle (see `bundles.archive`).

Export adds what the version records do not hold: each behaviour
fingerprint, and each parent's blob digest, so the destination can find a
parent it already has. Import records nothing until every blob of the
bundle is verified; then, in one transaction, each version becomes the next
of its model, with its parent linked when both ends are present (in the
bundle, or already at the destination with the same name and bytes), its
fingerprint, and a tensor manifest computed from the verified blob (a
folder version's from its verified files, one shard at a time).
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO, cast

from registry import faults, files, refs, signing
from registry.bundles import archive
from registry.catalogs import Catalog, Recording
from registry.errors import BundleError, CheckpointError, NotFoundError
from registry.records import Fingerprint, ModelVersion, NewVersion, TensorInfo
from registry.signing import TrustedKey
from registry.stores import BlobWriting, Store


def export(
    catalog: Catalog,
    store: Store,
    versions: list[ModelVersion],
    destination: str | os.PathLike[str] | BinaryIO,
    progress: Callable[[int], None],
) -> None:
    """Write `versions` to a bundle at a path (atomically) or to a binary stream."""
    extras = _extras(catalog, versions)
    if isinstance(destination, (str, os.PathLike)):
        with files.atomic_file(Path(destination)) as out:
            archive.write(versions, extras, store, out, progress)
    else:
        archive.write(versions, extras, store, destination, progress)


def _extras(catalog: Catalog, versions: list[ModelVersion]) -> dict[str, dict[str, Any]]:
    extras: dict[str, dict[str, Any]] = {v.ref: {} for v in versions}
    for version in versions:
        found = catalog.fingerprint(version)
        if found is not None:
            extras[version.ref]["fingerprint"] = {
                "input_shape": list(found.input_shape),
                "outputs": found.outputs,
                "environment": found.environment,
            }
        if version.parent is not None:
            with contextlib.suppress(NotFoundError):  # a deleted parent has no digest
                extras[version.ref]["parent_sha256"] = catalog.get(version.parent).sha256
    return extras


def import_(
    catalog: Catalog,
    store: Store,
    source: str | os.PathLike[str] | BinaryIO,
    check_name: Callable[[str], None] | None = None,
    trusted: Sequence[TrustedKey] = (),
) -> list[ModelVersion]:
    """Record a bundle's versions; see `Registry.import_bundle`. `check_name` refuses
    (raises) a model the importer may not write, before anything is recorded; with
    `trusted` keys, a version none of them signed is refused before a blob is read."""
    with contextlib.ExitStack() as stack:
        if isinstance(source, (str, os.PathLike)):
            shown_as = str(source)
            try:
                stream: BinaryIO = stack.enter_context(open(source, "rb"))
            except FileNotFoundError:
                raise NotFoundError(f"file {shown_as!r}") from None
            except OSError as exc:
                raise BundleError(f"cannot read {shown_as}: {exc.strerror}") from None
        else:
            shown_as, stream = "the bundle", source
        vet = functools.partial(check_signatures, trusted=trusted)
        entries, writers = archive.read(_crashing(stream), store, stack, shown_as, vet)
        if check_name is not None:
            for name in dict.fromkeys(e.name for e in entries):
                check_name(name)
        manifests = {e.source_ref: _manifest(e, writers) for e in entries}
        for writer in writers.values():
            writer.publish()
        imported: dict[str, ModelVersion] = {}
        with catalog.recording("import") as recording:
            for writer in writers.values():
                recording.place(writer)  # in place before any version refers to it
            for entry in _parents_first(entries):
                found = entry.fingerprint
                imported[entry.source_ref] = recording.add(
                    NewVersion(
                        name=entry.name,
                        **entry.fields,
                        tags=entry.tags,
                        files=entry.files,
                        tensors=tuple(manifests[entry.source_ref]),
                        parent=_parent(recording, entry, imported),
                        fingerprint=Fingerprint(
                            tuple(found["input_shape"]), found["outputs"], found["environment"]
                        )
                        if found
                        else None,
                    )
                )
            faults.crash_point("import-commit")  # blobs placed, the versions not yet committed
    return [imported[e.source_ref] for e in entries]


def check_signatures(entries: Sequence[archive.Entry], trusted: Sequence[TrustedKey]) -> None:
    """With trusted keys, refuse the bundle unless one of them signed each of its versions
    exactly as the bundle describes it."""
    if not trusted:
        return
    for entry in entries:
        new = NewVersion(name=entry.name, **entry.fields, files=entry.files)  # as import records it
        base = entry.parent[1] if entry.parent is not None else None
        claims = signing.Claims.of_new(new, base)
        signing.check(new.signature, claims, trusted, f"{entry.source_ref} in the bundle")


def _crashing(stream: BinaryIO) -> BinaryIO:
    """`stream`, or under the crash tests a reader that reaches `import-blob` half-way.

    Half-way through a bundle file is half-way through its blob when one
    large blob makes up the bundle, as in the crash test.
    """
    if os.environ.get("REGISTRY_TEST_KILL_AT") != "import-blob":
        return stream
    try:
        total = os.fstat(stream.fileno()).st_size
    except (OSError, ValueError):  # not a file: standard input, a stream in memory
        return stream
    step = faults.crash_half_way("import-blob", total, lambda _n: None)
    return cast(BinaryIO, _CountingReader(stream, step))  # tarfile's stream mode only reads


class _CountingReader:
    """A binary reader that reports how many bytes each read returned."""

    def __init__(self, stream: BinaryIO, step: Callable[[int], None]) -> None:
        self._stream, self._step = stream, step

    def read(self, n: int = -1) -> bytes:
        data = self._stream.read(n)
        self._step(len(data))
        return data


def _manifest(entry: archive.Entry, writers: dict[str, BlobWriting]) -> list[TensorInfo]:
    """The tensor manifest of a version, computed from its verified, not yet placed, blob."""
    from registry import checkpoints, manifests

    fields = entry.fields
    if entry.files is not None:
        return _folder_manifest(entry, writers)
    if fields["weights_sha256"]:
        format, details, digest = "safetensors", {}, fields["weights_sha256"]
    else:
        format, details, digest = fields["format"], fields["details"], fields["blob_sha256"]
    state = checkpoints.load(writers[digest].temp_path, format, details)
    return manifests.describe(state)


def _folder_manifest(entry: archive.Entry, writers: dict[str, BlobWriting]) -> list[TensorInfo]:
    """A folder version's manifest, from its verified files one shard at a time, as at push.

    A folder of no kind this registry reads weights from (`folder`) has none.
    """
    from registry import manifests

    kind = entry.fields["format"]
    if kind == "folder":
        return []
    local = {f.path: writers[f.sha256].temp_path for f in entry.files or ()}
    try:
        return manifests.describe_folder(kind, local)
    except CheckpointError as exc:
        raise BundleError(f"{entry.source_ref} in the bundle: {exc}") from None


def _parents_first(entries: Sequence[archive.Entry]) -> list[archive.Entry]:
    """The entries in bundle order, except that a parent in the bundle precedes its children."""
    by_ref = {e.source_ref: e for e in entries}
    ordered: list[archive.Entry] = []
    placed: set[str] = set()
    for entry in entries:
        chain = []
        while entry.source_ref not in placed:
            chain.append(entry)
            placed.add(entry.source_ref)
            parent = entry.parent[0] if entry.parent else None
            if parent not in by_ref:
                break
            entry = by_ref[parent]
        ordered += reversed(chain)
    return ordered


def _parent(
    recording: Recording, entry: archive.Entry, imported: dict[str, ModelVersion]
) -> str | None:
    """The destination's version for an entry's parent: imported with it, or already here."""
    if entry.parent is None:
        return None
    source_ref, digest = entry.parent
    found = imported.get(source_ref)
    if found is not None:
        return found.ref
    if digest is None:
        return None
    return recording.find(refs.parse_ref(source_ref).name, digest)
