"""Records read from JSON that came from elsewhere: a server's answers, a bundle's index.

That JSON is somebody else's data. A record is rebuilt only when it is what a
registry writes: every field has the type the registry writes (a bool is not
an int), numbers fit the catalog's columns, text the CLI prints on one line
holds no control character, and the names, digests and extensions that end up
naming files follow the rules `refs` gives `push` too. Anything else raises
TypeError or ValueError (InvalidReferenceError is one), which the reader turns
into its own one-line error: the HTTP catalog's StorageError, a BundleError.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, TypeVar, cast

from registry import behaviour, folders, refs
from registry.records import (
    DIFF_STATUSES,
    AuditEntry,
    Diff,
    FolderFile,
    Lineage,
    LineageNode,
    ModelSummary,
    ModelVersion,
    TensorChange,
    TensorInfo,
)

T = TypeVar("T")

FOLDER_FORMATS = folders.KINDS
FORMATS = ("state_dict", "checkpoint", "safetensors", "pickle", *FOLDER_FORMATS)
MAX_PATH = 4096  # a file path in a folder version: the longest a Linux path may be
# The catalog's columns (tables.Version): what a registry can hold.
MAX_ARCH, MAX_CREATED_BY, MAX_TORCH_VERSION = 256, 256, 64
MAX_COUNT = 2**63  # a BigInteger
MAX_VERSION = 10**refs.MAX_VERSION_DIGITS

_ARCH = re.compile(r"[A-Za-z_][\w.]*(:[A-Za-z_][\w.]*)?")  # a model name or module:callable
_NULL = type(None)


def version(data: Any, *, numbered: bool = True) -> ModelVersion:
    """A ModelVersion from its `to_json()`, refused unless it is what a registry writes.

    A field that may be null may also be missing: an older registry wrote none.
    `numbered=False` reads a bundle's entry, which leaves out what the
    destination gives a version of its own: its number, aliases and check
    input. Its number is then the one its `ref` names (1 where a bundle older
    than lineage has no ref), and whatever it holds under those keys is ignored.
    """
    typed(data, dict, "the record")
    name = refs.validate_name(typed(data.get("name"), str, "name"))
    ref = data.get("ref")
    source = _numbered(typed(ref, str, "ref"), "ref") if ref is not None else None
    if source is not None and source.name != name:
        raise ValueError(f"ref {ref[:80]!r} is not a version of {name!r}")
    if numbered:
        number = typed(data.get("version"), int, "version")
        if not 1 <= number < MAX_VERSION:
            raise ValueError(f"version {number} is out of range")
        if source is not None and source.value != number:
            raise ValueError(f"ref {ref!r} is not version {number}")
        aliases = tuple(
            refs.validate_alias(typed(alias, str, "an alias"))
            for alias in typed(data.get("aliases"), list, "aliases")
        )
        check = typed(data.get("check_input"), (list, _NULL), "check_input")
        check_input = None if check is None else _shape(check, "check_input")
    else:
        number = cast(int, source.value) if source is not None else 1
        aliases, check_input = (), None
    weights = data.get("weights_sha256")
    format = typed(data.get("format"), str, "format")
    if format not in FORMATS or (format == "pickle") != (weights is not None):
        raise ValueError(
            f"format {format[:80]!r} {'with' if weights is not None else 'without'} a safe copy "
            "(weights_sha256) is not what a registry records"
        )
    parent = data.get("parent")
    listed = data.get("files")  # missing: a registry older than folder versions
    sha256 = digest(data.get("sha256"), "sha256")
    folder = None if listed is None else _files(listed, sha256)
    if (format in FOLDER_FORMATS) != (folder is not None):
        raise ValueError(f"format {format!r} {'with' if folder else 'without'} files")
    size = count(data.get("size"), "size")
    if folder is not None and size != sum(f.size for f in folder):
        raise ValueError("size is not the sum of the files' sizes")
    arch = data.get("arch")
    return ModelVersion(
        name=name,
        version=number,
        sha256=sha256,
        size=size,
        format=format,
        arch="" if folder is not None and arch == "" else _arch(arch),
        arch_args=typed(data.get("arch_args"), dict, "arch_args"),
        description=typed(data.get("description"), str, "description"),
        created_at=_instant(data.get("created_at"), "created_at"),
        created_by=text(data.get("created_by"), "created_by", MAX_CREATED_BY),
        num_params=count(data.get("num_params"), "num_params"),
        torch_version=text(data.get("torch_version"), "torch_version", MAX_TORCH_VERSION),
        extension=_extension(data.get("extension")),
        weights_sha256=None if weights is None else digest(weights, "weights_sha256"),
        tags=_tags(data.get("tags")),
        aliases=aliases,
        details=_details(data.get("details")),
        parent=None if parent is None else str(_numbered(typed(parent, str, "parent"), "parent")),
        check_input=check_input,
        files=folder,
        signature=_signature(data.get("signature")),
    )


def _signature(value: Any) -> dict[str, Any] | None:
    """A signature document as `signing` writes it (its shape only: readers that trust a
    key check what it says), or null."""
    from registry import signing

    if value is None:
        return None
    found = signing.well_formed(value)
    if found is None:
        raise ValueError("signature is not a signature document a registry writes")
    return found


def _files(value: Any, sha256: str) -> tuple[FolderFile, ...]:
    """A folder version's file list, refused unless it is what `sha256` is the digest of."""
    entries = typed(value, list, "files")
    if not entries or len(entries) > folders.MAX_FILES:
        raise ValueError(f"files lists {len(entries)} files")
    listed = []
    for entry in entries:
        typed(entry, dict, "a file")
        path = text(entry.get("path"), "a file's path", MAX_PATH)
        folders.check_path(path)
        listed.append(
            FolderFile(
                path,
                count(entry.get("size"), "a file's size"),
                digest(entry.get("sha256"), "a file's sha256"),
            )
        )
    paths = [f.path.encode() for f in listed]
    if paths != sorted(set(paths)):
        raise ValueError("files are not sorted by path, each once")
    if folders.digest(listed) != sha256:
        raise ValueError("sha256 is not the digest of the file list")
    return tuple(listed)


def summary(data: Any) -> ModelSummary:
    typed(data, dict, "a model")
    updated = typed(data.get("updated_at"), (str, _NULL), "updated_at")
    latest = typed(data.get("latest_version"), (int, _NULL), "latest_version")
    return ModelSummary(
        name=refs.validate_name(typed(data.get("name"), str, "name")),
        num_versions=count(data.get("num_versions"), "num_versions"),
        latest_version=latest,
        updated_at=None if updated is None else _instant(updated, "updated_at"),
        size=count(data.get("size"), "size"),
        aliases=tuple(
            typed(a, str, "an alias") for a in typed(data.get("aliases"), list, "aliases")
        ),
    )


def tensor(data: Any) -> TensorInfo:
    typed(data, dict, "a tensor")
    shape = tuple(typed(n, int, "shape") for n in typed(data.get("shape"), list, "shape"))
    return TensorInfo(
        typed(data.get("name"), str, "name"), typed(data.get("dtype"), str, "dtype"), shape, None
    )


def lineage(data: Any) -> Lineage:
    """The lineage's tree rebuilt without recursion: chains run thousands deep."""
    typed(data, dict, "a lineage")
    roots = typed(data.get("descendants"), list, "descendants")
    order, pending = [], list(roots)
    while pending:  # parents before their children
        node = typed(pending.pop(), dict, "a descendant")
        order.append(node)
        pending.extend(typed(node.get("children"), list, "children"))
    built: dict[int, LineageNode] = {}
    for node in reversed(order):  # children before their parents
        children = tuple(built.pop(id(child)) for child in node["children"])
        built[id(node)] = LineageNode(
            typed(node.get("ref"), str, "ref"),
            typed(node.get("deleted"), bool, "deleted"),
            children,
        )
    ancestors = typed(data.get("ancestors"), list, "ancestors")
    return Lineage(
        ref=typed(data.get("ref"), str, "ref"),
        # The JSON does not say which ancestors were deleted.
        ancestors=tuple(LineageNode(typed(a, str, "an ancestor")) for a in ancestors),
        descendants=tuple(built[id(root)] for root in roots),
    )


def diff(data: Any) -> Diff:
    typed(data, dict, "a diff")
    changes = []
    for item in typed(data.get("tensors"), list, "tensors"):
        typed(item, dict, "a tensor change")
        status = typed(item.get("status"), str, "status")
        if status not in DIFF_STATUSES:
            raise ValueError(f"not a diff status: {status[:80]!r}")
        number = (int, float, _NULL)
        changes.append(
            TensorChange(
                typed(item.get("name"), str, "name"),
                status,
                typed(item.get("max_abs"), number, "max_abs"),
                typed(item.get("rel_l2"), number, "rel_l2"),
            )
        )
    return Diff(typed(data.get("a"), str, "a"), typed(data.get("b"), str, "b"), tuple(changes))


def each(parse: Callable[[Any], T]) -> Callable[[Any], list[T]]:
    """A parser of a JSON list whose items `parse` reads."""
    return lambda data: [parse(item) for item in typed(data, list, "a list")]


# -- the rules each field is held to -------------------------------------------------------


def typed(value: Any, kind: type | tuple[type, ...], what: str = "a value") -> Any:
    """`value` if it has the JSON type `kind` (a bool is not an int here), else TypeError."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = " or ".join("null" if k is _NULL else k.__name__ for k in kinds)
        missing = "not" if _NULL in kinds else "missing or not"
        raise TypeError(f"{what} is {missing} a {names}")
    return value


def text(value: Any, what: str, longest: int | None = None) -> str:
    """A one-line string: nothing that could forge a line of the CLI's output."""
    if not isinstance(value, str):
        raise TypeError(f"{what} is not a string without control characters")
    if refs.CONTROL.search(value):
        raise ValueError(f"{what} is not a string without control characters")
    if longest is not None and len(value) > longest:
        raise ValueError(f"{what} is longer than {longest} characters")
    return value


def count(value: Any, what: str) -> int:
    """A size or a number of things: an int the catalog's BigInteger holds."""
    number: int = typed(value, int, what)
    if not 0 <= number < MAX_COUNT:
        raise ValueError(f"{what} {number} is out of range")
    return number


def digest(value: Any, what: str) -> str:
    """A SHA-256 as the registry writes it (`refs.is_sha256`)."""
    if not refs.is_sha256(typed(value, str, what)):
        raise ValueError(f"{what} {value[:80]!r} is not 64 lowercase hex digits")
    return cast(str, value)


def _numbered(text: str, what: str) -> refs.Ref:
    """A version's reference as a registry writes it: NAME@vN, nothing else."""
    ref = refs.parse_ref(text)
    if ref.selector != "version" or str(ref) != text:
        raise ValueError(f"{what} {text[:80]!r} is not NAME@vN")
    return ref


def _extension(value: Any) -> str:
    extension: str = typed(value, str, "extension")
    if not refs.is_extension(extension):
        raise ValueError(f"extension {extension[:80]!r} is not a file extension")
    return extension


def _arch(value: Any) -> str:
    arch: str = typed(value, str, "arch")
    if len(arch) > MAX_ARCH or not _ARCH.fullmatch(arch):
        raise ValueError(f"arch {arch[:80]!r} is neither a model name nor module:callable")
    return arch


def _instant(value: Any, what: str) -> datetime:
    """A time with its zone, as the same instant in UTC (the catalog keeps UTC)."""
    written: str = typed(value, str, what)
    try:
        found = datetime.fromisoformat(written)
    except ValueError:
        raise ValueError(f"{what} {written[:80]!r} is not an ISO 8601 time") from None
    if found.tzinfo is None:
        raise ValueError(f"{what} has no time zone")
    try:
        return found.astimezone(timezone.utc)
    except OverflowError:
        raise ValueError(f"{what} {written[:80]!r} is out of range") from None


def _shape(value: list[Any], what: str) -> tuple[int, ...]:
    return behaviour.parse_shape([typed(n, int, what) for n in value], what)


def _tags(value: Any) -> dict[str, str]:
    tags: dict[str, str] = typed(value, dict, "tags")
    for key, tag in tags.items():
        refs.validate_tag_key(key)
        text(tag, f"tag {key!r}")
    return tags


def _details(value: Any) -> dict[str, Any]:
    """The details loading reads must have the types loading expects."""
    details: dict[str, Any] = typed(value, dict, "details")
    for key in ("key", "stripped_prefix"):
        if key in details and not isinstance(details[key], str):
            raise TypeError(f"details.{key} is not a string")
    if details.get("serialization", "zip") not in ("zip", "legacy"):
        raise ValueError("details.serialization is neither zip nor legacy")
    versions = details.get("module_versions", {})
    if not isinstance(versions, dict) or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
        for k, v in versions.items()
    ):
        raise TypeError("details.module_versions is not a map of names to numbers")
    return details


# -- what a client asks a team server to write -----------------------------------------------

MAX_ARGS_TEXT = 64 << 10  # characters of a push's arguments, tags and description together
MAX_FILES = 100_000  # files of one folder push


def audit_entry(data: Any) -> AuditEntry:
    typed(data, dict, "the entry")
    return AuditEntry(
        at=_instant(data.get("at"), "at"),
        actor=text(data.get("actor"), "actor", MAX_CREATED_BY),
        action=text(data.get("action"), "action", 32),
        ref=text(data.get("ref"), "ref", 256),
        details=typed(data.get("details"), dict, "details"),
    )


def push_request(data: Any) -> tuple[dict[str, Any], FolderFile | None, tuple[FolderFile, ...]]:
    """A push a client asks of a server: its options (PushOptions' fields), and the file
    (`path` its name) or the folder's files, each a blob the server holds by its SHA-256."""
    typed(data, dict, "the push")
    options: dict[str, Any] = {}
    for key in ("arch", "name", "parent", "key", "strip_prefix"):
        value = typed(data.get(key), (str, _NULL), key)
        if value is not None:
            options[key] = text(value, key, MAX_ARCH)
    if "arch" in options:
        options["arch"] = _arch(options["arch"])
    options["arch_args"] = typed(data.get("arch_args", {}), dict, "arch_args")
    options["tags"] = _tags(data.get("tags", {}))
    options["aliases"] = tuple(
        text(a, "an alias", 128) for a in typed(data.get("aliases", []), list, "aliases")
    )
    options["description"] = typed(data.get("description", ""), str, "description")
    options["trust_pickle"] = typed(data.get("trust_pickle", False), bool, "trust_pickle")
    shape = typed(data.get("check_input"), (list, _NULL), "check_input")
    options["check_input"] = None if shape is None else _shape(shape, "check_input")
    # A signature the client made: checked against what the push records, then stored.
    options["signature"] = _signature(data.get("signature"))
    if len(repr((options["arch_args"], options["tags"], options["description"]))) > MAX_ARGS_TEXT:
        raise ValueError(f"the push's arguments, tags and description exceed {MAX_ARGS_TEXT}")
    single = data.get("file")
    listed = data.get("files")
    if (single is None) == (listed is None):
        raise ValueError("a push names one `file` or a folder's `files`")
    if single is not None:
        return options, _upload(single, name_only=True), ()
    entries = typed(listed, list, "files")
    if not 0 < len(entries) <= MAX_FILES:
        raise ValueError(f"a folder push names 1 to {MAX_FILES} files")
    files = tuple(_upload(entry, name_only=False) for entry in entries)
    if len({f.path for f in files}) != len(files):
        raise ValueError("a folder push names a path twice")
    return options, None, files


def _upload(data: Any, name_only: bool) -> FolderFile:
    typed(data, dict, "a file")
    path = text(data.get("path"), "path", MAX_PATH)
    if name_only and (not path or "/" in path or path in (".", "..")):
        raise ValueError(f"file name {path[:80]!r} is not a plain file name")
    if not name_only:
        path = folders.check_path(path)
    return FolderFile(path, count(data.get("size"), "size"), digest(data.get("sha256"), "sha256"))
