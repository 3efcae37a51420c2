"""Bundles: versions moved between registries as one tar file, read as untrusted input.

    models.tar
      manifest.json              {"format": "registry-bundle", "bundle_version": 1,
                                  "versions": [every recorded field of each version,
                                               its fingerprint, its parent's digest]}
      blobs/sha256/<hex>         each blob once: checkpoints, and safe copies of pickles

The manifest comes first, so a bundle streams: `export -o - | ssh prod registry
import -`. Export checks each blob against its digest while writing it. Import
takes nothing on trust: every field is validated, every member must be a
regular file named as above, and every blob must hash to its name and to the
manifest's size before anything is recorded. Nothing in a bundle is
unpickled or called. Tensor manifests are not carried: the destination
computes them from the verified blobs, so a bundle cannot lie about them.
A version's `ref` in a bundle is its name at the source: it links a parent
to its children inside the bundle, and the destination numbers its own.
"""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import IO, Any, BinaryIO

from registry import refs
from registry.errors import BundleError, IntegrityError, InvalidReferenceError, RegistryError
from registry.records import ModelVersion
from registry.stores import BlobWriting, Store

FORMAT = "registry-bundle"
BUNDLE_VERSION = 1
MANIFEST = "manifest.json"
BLOB_PREFIX = "blobs/sha256/"
MAX_MANIFEST_BYTES = 64 << 20

_FORMATS = ("state_dict", "checkpoint", "safetensors", "pickle")
_ARCH = re.compile(r"[A-Za-z_][\w.]*(:[A-Za-z_][\w.]*)?")


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

    @property
    def digests(self) -> list[str]:
        return [d for d in (self.fields["blob_sha256"], self.fields["weights_sha256"]) if d]


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
            for digest in (version.sha256, version.weights_sha256):
                if digest is None or digest in written:
                    continue
                written.add(digest)
                size = store.size(digest)
                with store.open(digest, version.ref) as blob:
                    checked = _Checked(blob, digest, version.ref, progress)
                    try:
                        tar.addfile(_member(BLOB_PREFIX + digest, size), checked)
                    except OSError:  # the blob ended early: tarfile's "unexpected end of data"
                        checked.check(size)
                        raise
                    checked.check(size)


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
    source: IO[bytes], store: Store, stack: ExitStack, shown_as: str
) -> tuple[list[Entry], dict[str, BlobWriting]]:
    """Validate a bundle and write its blobs as uncommitted writers held open by `stack`.

    Raises BundleError, naming `shown_as`, for anything a registry would not
    have written; the writers are discarded when `stack` closes uncommitted.
    """
    try:
        tar = stack.enter_context(tarfile.open(fileobj=source, mode="r|"))  # noqa: SIM115
        members = iter(tar)
        first = next(members, None)
        if first is None or first.name != MANIFEST or not first.isreg():
            raise BundleError(
                f"{shown_as} is not a registry bundle: {MANIFEST} does not come first"
            )
        if first.size > MAX_MANIFEST_BYTES:
            raise BundleError(f"{shown_as}: {MANIFEST} is {first.size:,} bytes, too large")
        entries = _entries(_read_member(tar, first), shown_as)
        sizes = {digest: size for entry in entries for digest, size in entry.sizes.items()}
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
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        if isinstance(exc, RegistryError):
            raise
        raise BundleError(f"{shown_as} is not a readable tar file: {exc}") from None
    missing = sorted(needed - set(writers))
    if missing:
        raise BundleError(f"{shown_as} lacks blob {missing[0]}, which its manifest needs")
    return entries, writers


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
    """Check one manifest record field by field; it is somebody else's data."""
    if not isinstance(item, Mapping):
        raise BundleError("not an object")
    name = refs.validate_name(_typed(item, "name", str))
    tags = _typed(item, "tags", dict)
    for key, value in tags.items():
        refs.validate_tag_key(key)
        _text(value, f"tag {key!r}")
    sha256, weights = _typed(item, "sha256", str), item.get("weights_sha256")
    if not refs.is_sha256(sha256) or not (weights is None or refs.is_sha256(weights)):
        raise BundleError("a digest is not 64 lowercase hex digits")
    format = _typed(item, "format", str)
    if format not in _FORMATS or (format == "pickle") != (weights is not None):
        raise BundleError(
            f"format {format!r} {'with' if weights else 'without'} a safe copy "
            "(weights_sha256) is not what a registry records"
        )
    extension = _typed(item, "extension", str)
    if not refs.is_extension(extension):
        raise BundleError(f"extension {extension!r} is not a file extension")
    arch = _typed(item, "arch", str)
    if len(arch) > 256 or not _ARCH.fullmatch(arch):
        raise BundleError(f"arch {arch[:80]!r} is neither a model name nor module:callable")
    sizes = {sha256: _count(item, "size")}
    if weights is not None:
        sizes[weights] = _count(item, "weights_size")
    num_params = _count(item, "num_params")
    created_at = datetime.fromisoformat(_typed(item, "created_at", str))
    if created_at.tzinfo is None:
        raise BundleError("created_at has no time zone")
    created_at = created_at.astimezone(timezone.utc)  # the catalog keeps UTC
    details = _typed(item, "details", dict)
    _check_details(details)
    source_ref = item.get("ref", f"entry {index + 1}")  # bundles before schema 0003 lack it
    if "ref" in item and refs.parse_ref(_typed(item, "ref", str)).selector != "version":
        raise BundleError(f"ref {source_ref[:80]!r} is not NAME@vN")
    fields = {
        "blob_sha256": sha256,
        "weights_sha256": weights,
        "format": format,
        "arch": arch,
        "arch_args": _typed(item, "arch_args", dict),
        "description": _typed(item, "description", str),
        "created_at": created_at,
        "created_by": _text(_typed(item, "created_by", str), "created_by")[:256],
        "num_params": num_params,
        "torch_version": _text(_typed(item, "torch_version", str), "torch_version")[:64],
        "extension": extension,
        "details": details,
    }
    fingerprint = item.get("fingerprint")
    return Entry(
        name,
        sizes,
        fields,
        tags,
        source_ref,
        _parent(item),
        _fingerprint(fingerprint) if fingerprint is not None else None,
    )


def _parent(item: Mapping[str, Any]) -> tuple[str, str | None] | None:
    parent, digest = item.get("parent"), item.get("parent_sha256")
    if parent is None:
        return None
    if not isinstance(parent, str) or refs.parse_ref(parent).selector != "version":
        raise BundleError(f"parent {str(parent)[:80]!r} is not NAME@vN")
    if digest is not None and not refs.is_sha256(digest):
        raise BundleError("parent_sha256 is not 64 lowercase hex digits")
    return parent, digest


def _fingerprint(item: Any) -> dict[str, Any]:
    """A behaviour check's recorded output: shapes, names and numbers only."""
    from registry import behaviour

    if not isinstance(item, Mapping):
        raise BundleError("fingerprint is not an object")
    shape = list(behaviour.parse_shape(_typed(item, "input_shape", list)))
    environment = _typed(item, "environment", dict)
    for key, value in environment.items():
        _text(key, "fingerprint.environment key")
        _text(value, f"fingerprint.environment[{key!r}]")
    outputs = _typed(item, "outputs", list)
    for output in outputs:
        if not isinstance(output, Mapping):
            raise BundleError("fingerprint.outputs holds something else than objects")
        _text(_typed(output, "path", str), "fingerprint output path")
        _text(_typed(output, "dtype", str), "fingerprint output dtype")
        numbers = [
            *_typed(output, "shape", list),
            *_typed(output, "indices", list),
            *_typed(output, "values", list),
            output.get("mean"),
            output.get("std"),
        ]
        if not all(n is None or isinstance(n, (int, float)) for n in numbers):
            raise BundleError("fingerprint outputs hold something else than numbers")
        if len(output["indices"]) != len(output["values"]):
            raise BundleError("fingerprint outputs do not have as many indices as values")
    return {"input_shape": shape, "outputs": outputs, "environment": environment}


def _count(item: Mapping[str, Any], key: str) -> int:
    value: int = _typed(item, key, int)
    if not 0 <= value < 2**63:
        raise BundleError(f"{key} {value} is out of range")
    return value


def _text(value: Any, what: str) -> str:
    """A one-line string: nothing that could forge a line of the CLI's output."""
    if not isinstance(value, str) or any(c < " " or c == "\x7f" for c in value):
        raise BundleError(f"{what} is not a string without control characters")
    return value


def _refuse_constant(name: str) -> None:
    raise BundleError(f"its manifest holds {name}, which JSON does not allow")


def _typed(item: Mapping[str, Any], key: str, kind: type) -> Any:
    value = item.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BundleError(f"{key} is missing or not a {kind.__name__}")
    return value


def _check_details(details: dict[str, Any]) -> None:
    """The details loading reads must have the types loading expects."""
    for key in ("key", "stripped_prefix"):
        if key in details and not isinstance(details[key], str):
            raise BundleError(f"details.{key} is not a string")
    if details.get("serialization", "zip") not in ("zip", "legacy"):
        raise BundleError("details.serialization is neither zip nor legacy")
    versions = details.get("module_versions", {})
    if not isinstance(versions, dict) or not all(
        isinstance(k, str) and isinstance(v, int) for k, v in versions.items()
    ):
        raise BundleError("details.module_versions is not a map of names to numbers")
