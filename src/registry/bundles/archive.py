"""The bundle archive: versions as one tar file, written verified and read as untrusted input.

    models.tar
      manifest.json              {"format": "registry-bundle", "bundle_version": 1,
                                  "versions": [every recorded field of each version,
                                               its fingerprint, its parent's digest]}
      blobs/sha256/<hex>         each blob once: checkpoints, safe copies of pickles, and
                                 a folder version's files and its file list

The manifest comes first, so a bundle streams: `export -o - | ssh prod registry
import -`. Export checks each blob against its digest while writing it. Import
takes nothing on trust: every field is validated, every member must be a
regular file named as above, and every blob must hash to its name and to the
manifest's size before anything is recorded: a folder version's `files`
must be the list its `sha256` is the digest of (`wire`), and each of its
files, and that list, is a blob of the bundle. Nothing in a bundle is
unpickled or called. Tensor manifests are not carried: the destination
computes them from the verified blobs, so a bundle cannot lie about them.
A version's `ref` in a bundle is its name at the source: it links a parent
to its children inside the bundle, and the destination numbers its own.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import IO, Any, BinaryIO

from registry import folders, refs, wire
from registry.errors import BundleError, IntegrityError, InvalidReferenceError, RegistryError
from registry.records import FolderFile, ModelVersion
from registry.stores import BlobWriting, Store

FORMAT = "registry-bundle"
BUNDLE_VERSION = 1
MANIFEST = "manifest.json"
BLOB_PREFIX = "blobs/sha256/"
MAX_MANIFEST_BYTES = 64 << 20


@dataclass(frozen=True)
class Entry:
    """One version as a bundle describes it, every field checked."""

    name: str
    sizes: dict[str, int]  # of each of its blobs, by digest
    fields: dict[str, Any]  # the catalog columns of the version, less its model and number
    tags: dict[str, str]
    source_ref: str  # its reference at the source, "resnet18@v3"
    parent: tuple[str, str | None] | None = None  # (source reference, blob digest)
    fingerprint: dict[str, Any] | None = None  # the Fingerprint row's columns
    files: tuple[FolderFile, ...] | None = None  # a folder version's; `blob_sha256` its list's

    @property
    def digests(self) -> list[str]:
        """Every blob the version needs: its file (a folder's file list), a safe copy, its files."""
        listed = [self.fields["blob_sha256"], self.fields["weights_sha256"]]
        listed += [f.sha256 for f in self.files or ()]
        return list(dict.fromkeys(d for d in listed if d))


# -- export --------------------------------------------------------------------------------


def write(
    versions: list[ModelVersion],
    extras: Mapping[str, dict[str, Any]],
    store: Store,
    sink: IO[bytes],
    progress: Callable[[int], None] = lambda _n: None,
) -> None:
    """Write a bundle of `versions` to `sink`, checking every blob while it is copied.

    `extras` adds fields by reference: `fingerprint`, `parent_sha256`.
    """
    manifest = {
        "format": FORMAT,
        "bundle_version": BUNDLE_VERSION,
        "versions": [{**_describe(v, store), **extras.get(v.ref, {})} for v in versions],
    }
    data = json.dumps(manifest, indent=1, sort_keys=True).encode()
    with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(_member(MANIFEST, len(data)), _Reader(iter([data])))
        written: set[str] = set()
        for version in versions:
            for digest, ref in _blobs(version):
                if digest in written:
                    continue
                written.add(digest)
                size = store.size(digest)
                with store.open(digest, ref) as blob:
                    checked = _Checked(blob, digest, ref, progress)
                    try:
                        tar.addfile(_member(BLOB_PREFIX + digest, size), checked)
                    except OSError:  # the blob ended early: tarfile's "unexpected end of data"
                        checked.check(size)
                        raise
                    checked.check(size)


def _blobs(version: ModelVersion) -> list[tuple[str, str]]:
    """Each blob of a version, with the reference it is read as: its file (a folder's
    file list), a pickle's safe copy, then each file of a folder."""
    from registry.folders import file_ref

    found = [(version.sha256, version.ref)]
    if version.weights_sha256 is not None:
        found.append((version.weights_sha256, version.ref))
    found += [(f.sha256, file_ref(version, f)) for f in version.files or ()]
    return found


def _describe(version: ModelVersion, store: Store) -> dict[str, Any]:
    data = version.to_json()
    for derived in ("version", "aliases", "check_input"):  # the destination numbers its own
        del data[derived]
    if version.weights_sha256:
        data["weights_size"] = store.size(version.weights_sha256)
    return data


def _member(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.type = size, 0o444, tarfile.REGTYPE
    return info


class _Reader:
    """A file-like reader over byte chunks, for tarfile.addfile."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks, self._pending = chunks, b""

    def read(self, n: int = -1) -> bytes:
        while n < 0 or len(self._pending) < n:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._pending += chunk
        taken, self._pending = (
            (self._pending, b"") if n < 0 else (self._pending[:n], self._pending[n:])
        )
        return taken


class _Checked:
    """A blob read for tarfile and hashed on the way; `check` raises unless it was the blob."""

    def __init__(
        self, blob: BinaryIO, digest: str, ref: str, progress: Callable[[int], None]
    ) -> None:
        self._blob, self._digest, self._ref, self._progress = blob, digest, ref, progress
        self._hasher = hashlib.sha256()
        self._read = 0

    def read(self, n: int = -1) -> bytes:
        data = self._blob.read(n)
        self._hasher.update(data)
        self._read += len(data)
        self._progress(len(data))
        return data

    def check(self, size: int) -> None:
        actual = self._hasher.hexdigest()
        if self._read != size or actual != self._digest:
            raise IntegrityError(self._ref, self._digest, actual)


# -- import --------------------------------------------------------------------------------


def read(
    source: IO[bytes],
    store: Store,
    stack: ExitStack,
    shown_as: str,
    vet: Callable[[list[Entry]], None] = lambda _entries: None,
) -> tuple[list[Entry], dict[str, BlobWriting]]:
    """Validate a bundle and write its blobs as uncommitted writers held open by `stack`.

    Raises BundleError, naming `shown_as`, for anything a registry would not
    have written; the writers are discarded when `stack` closes uncommitted.
    `vet` sees the manifest's entries before any blob is read, and may refuse them.
    """
    with _bundle_errors(shown_as):
        tar = stack.enter_context(tarfile.open(fileobj=source, mode="r|"))  # noqa: SIM115
        members = iter(tar)
        entries = _manifest(tar, members, shown_as)
        vet(entries)
        sizes = _sizes(entries, shown_as)
        needed = {digest for entry in entries for digest in entry.digests}
        writers: dict[str, BlobWriting] = {}
        for member in members:
            digest = _blob_name(member, shown_as)
            if digest not in needed or digest in writers:
                raise BundleError(f"{shown_as}: {member.name!r} is not needed by its manifest")
            if member.size != sizes[digest]:
                raise BundleError(
                    f"{shown_as}: blob {digest} holds {member.size:,} bytes, "
                    f"its manifest says {sizes[digest]:,}"
                )
            writers[digest] = _write_blob(tar, member, digest, store, stack, shown_as)
    missing = sorted(needed - set(writers))
    if missing:
        raise BundleError(f"{shown_as} lacks blob {missing[0]}, which its manifest needs")
    return entries, writers


def manifest_entries(source: IO[bytes], shown_as: str) -> list[Entry]:
    """A bundle's manifest alone, validated as `read` validates it; no blob is read."""
    with _bundle_errors(shown_as), tarfile.open(fileobj=source, mode="r|") as tar:
        return _manifest(tar, iter(tar), shown_as)


@contextmanager
def _bundle_errors(shown_as: str) -> Iterator[None]:
    """A tar file that cannot be read, as one BundleError naming `shown_as`."""
    try:
        yield
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        if isinstance(exc, RegistryError):
            raise
        raise BundleError(f"{shown_as} is not a readable tar file: {exc}") from None


def _manifest(
    tar: tarfile.TarFile, members: Iterator[tarfile.TarInfo], shown_as: str
) -> list[Entry]:
    """The entries of the manifest, which must be the bundle's first member."""
    first = next(members, None)
    if first is None or first.name != MANIFEST or not first.isreg():
        raise BundleError(f"{shown_as} is not a registry bundle: {MANIFEST} does not come first")
    if first.size > MAX_MANIFEST_BYTES:
        raise BundleError(f"{shown_as}: {MANIFEST} is {first.size:,} bytes, too large")
    return _entries(_read_member(tar, first), shown_as)


def _sizes(entries: list[Entry], shown_as: str) -> dict[str, int]:
    """The size of every blob the entries need; refused when two of them disagree."""
    sizes: dict[str, int] = {}
    for entry in entries:
        for digest, size in entry.sizes.items():
            if sizes.setdefault(digest, size) != size:
                raise BundleError(
                    f"{shown_as}: its manifest gives blob {digest} two sizes "
                    f"({sizes[digest]:,} and {size:,} bytes)"
                )
    return sizes


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    extracted = tar.extractfile(member)
    assert extracted is not None  # a regular file
    return extracted.read()


def _blob_name(member: tarfile.TarInfo, shown_as: str) -> str:
    """The digest a blob member is named by; anything else a bundle may not hold."""
    digest = member.name.removeprefix(BLOB_PREFIX)
    plain = member.type in (tarfile.REGTYPE, tarfile.AREGTYPE) and not member.issparse()
    if not plain or not member.name.startswith(BLOB_PREFIX) or not refs.is_sha256(digest):
        kind = "a regular file" if plain else "a link, sparse or special file"
        raise BundleError(
            f"{shown_as} holds {member.name!r} ({kind}), which a registry bundle never does"
        )
    return digest


def _write_blob(
    tar: tarfile.TarFile,
    member: tarfile.TarInfo,
    digest: str,
    store: Store,
    stack: ExitStack,
    shown_as: str,
) -> BlobWriting:
    writer = stack.enter_context(store.writer())
    extracted = tar.extractfile(member)
    assert extracted is not None
    while chunk := extracted.read(8 << 20):
        writer.write(chunk)
    if writer.finish() != digest:
        raise BundleError(f"{shown_as}: blob {digest} does not hash to its name; it is damaged")
    return writer


def _entries(data: bytes, shown_as: str) -> list[Entry]:
    try:
        manifest = json.loads(data, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        raise BundleError(f"{shown_as}: {MANIFEST} is not JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{shown_as} is not a registry bundle")
    if manifest.get("bundle_version") != BUNDLE_VERSION:
        raise BundleError(
            f"{shown_as} is bundle version {manifest.get('bundle_version')!r}; this registry "
            f"reads version {BUNDLE_VERSION}"
        )
    versions = manifest.get("versions")
    if not isinstance(versions, list) or not versions:
        raise BundleError(f"{shown_as}: its manifest lists no versions")
    entries = []
    for i, item in enumerate(versions):
        try:
            entries.append(_entry(item, i))
        except (
            BundleError,
            InvalidReferenceError,
            TypeError,
            ValueError,
            KeyError,
            OverflowError,
        ) as exc:
            raise BundleError(f"{shown_as}: version {i + 1} of its manifest: {exc}") from None
    refs_seen = [e.source_ref for e in entries]
    if len(set(refs_seen)) != len(refs_seen):
        raise BundleError(f"{shown_as}: its manifest lists a version twice")
    return entries


def _entry(item: Any, index: int) -> Entry:
    """One manifest record: a version's JSON, read by `wire` as any other, and its extras."""
    version = wire.version(item, numbered=False)  # the destination numbers its own
    if version.files is None:
        sizes = {version.sha256: version.size}
    else:  # its blob is the file list `wire` checked the digest of; each file is a blob too
        sizes = {version.sha256: len(folders.file_list(version.files))}
        for file in version.files:
            if sizes.setdefault(file.sha256, file.size) != file.size:
                raise ValueError(f"the file {file.path!r} is listed with two sizes for one blob")
    if version.weights_sha256 is not None:
        sizes[version.weights_sha256] = wire.count(item.get("weights_size"), "weights_size")
    parent = None
    if version.parent is not None:
        digest = item.get("parent_sha256")
        parent = (version.parent, None if digest is None else wire.digest(digest, "parent_sha256"))
    fingerprint = item.get("fingerprint")
    return Entry(
        version.name,
        sizes,
        _fields(version),
        version.tags,
        # Bundles before schema 0003 carry no ref: nothing in them links to one.
        version.ref if item.get("ref") is not None else f"entry {index + 1}",
        parent,
        _fingerprint(fingerprint) if fingerprint is not None else None,
        version.files,
    )


def _fields(version: ModelVersion) -> dict[str, Any]:
    """The catalog columns of a version (tables.Version), less its model and number."""
    return {
        "blob_sha256": version.sha256,
        "weights_sha256": version.weights_sha256,
        "format": version.format,
        "arch": version.arch,
        "arch_args": version.arch_args,
        "description": version.description,
        "created_at": version.created_at,  # in UTC, as wire reads every time
        "created_by": version.created_by,
        "num_params": version.num_params,
        "torch_version": version.torch_version,
        "extension": version.extension,
        "details": version.details,
        "signature": version.signature,
    }


def _fingerprint(item: Any) -> dict[str, Any]:
    """A behaviour check's recorded output: shapes, names and numbers only."""
    from registry import behaviour

    wire.typed(item, dict, "fingerprint")
    shape = behaviour.parse_shape(
        [wire.typed(n, int, "fingerprint.input_shape") for n in _list(item, "input_shape")],
        "fingerprint.input_shape",
    )
    environment = wire.typed(item.get("environment"), dict, "fingerprint.environment")
    for key, value in environment.items():
        wire.text(key, "fingerprint.environment key")
        wire.text(value, f"fingerprint.environment[{key!r}]")
    outputs = _list(item, "outputs")
    for output in outputs:
        wire.typed(output, dict, "fingerprint.outputs[]")
        wire.text(output.get("path"), "fingerprint output path")
        wire.text(output.get("dtype"), "fingerprint output dtype")
        numbers = [
            *_list(output, "shape", "fingerprint.outputs[]"),
            *_list(output, "indices", "fingerprint.outputs[]"),
            *_list(output, "values", "fingerprint.outputs[]"),
            output.get("mean"),
            output.get("std"),
        ]
        for number in numbers:
            wire.typed(number, (int, float, type(None)), "a number of fingerprint.outputs")
        if len(output["indices"]) != len(output["values"]):
            raise ValueError("fingerprint outputs do not have as many indices as values")
    return {"input_shape": list(shape), "outputs": outputs, "environment": environment}


def _list(item: dict[str, Any], key: str, within: str = "fingerprint") -> list[Any]:
    found: list[Any] = wire.typed(item.get(key), list, f"{within}.{key}")
    return found


def _refuse_constant(name: str) -> None:
    raise BundleError(f"its manifest holds {name}, which JSON does not allow")
