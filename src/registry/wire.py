"""Records read from JSON that came from elsewhere: a server's answers, a bundle's index.

That JSON is somebody else's data. A record is rebuilt only when every field
has the type the registry writes (a bool is not an int), and the names,
digests and extensions that end up naming files follow the rules `refs`
gives `push` too. Anything else raises KeyError, TypeError or ValueError,
which the reader turns into its own one-line error.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from registry import refs
from registry.records import (
    DIFF_STATUSES,
    Diff,
    Lineage,
    LineageNode,
    ModelSummary,
    ModelVersion,
    TensorChange,
    TensorInfo,
)

T = TypeVar("T")


_VERSION_TYPES: dict[str, type | tuple[type, ...]] = {
    "name": str,
    "version": int,
    "sha256": str,
    "size": int,
    "format": str,
    "arch": str,
    "arch_args": dict,
    "description": str,
    "created_at": str,
    "created_by": str,
    "num_params": int,
    "torch_version": str,
    "extension": str,
    "weights_sha256": (str, type(None)),
    "tags": dict,
    "aliases": list,
    "details": dict,
    "parent": (str, type(None)),
    "check_input": (list, type(None)),
}


def version(data: dict[str, Any]) -> ModelVersion:
    """A ModelVersion from its `to_json()`, refused unless it is what a registry writes."""
    values = {
        # A field that may be null may also be missing: a server of an older registry.
        key: typed(data.get(key) if isinstance(kind, tuple) else data[key], kind)
        for key, kind in _VERSION_TYPES.items()
    }
    refs.validate_name(values["name"])
    if values["version"] < 1 or not refs.is_extension(values["extension"]):
        raise ValueError("not a version")
    for digest in (values["sha256"], values["weights_sha256"]):
        if digest is not None and not refs.is_sha256(digest):
            raise ValueError(f"not a sha256: {digest!r}")
    values["created_at"] = datetime.fromisoformat(values["created_at"])
    values["aliases"] = tuple(typed(a, str) for a in values["aliases"])
    check = values["check_input"]
    values["check_input"] = tuple(typed(n, int) for n in check) if check else None
    return ModelVersion(**values)


def summary(data: dict[str, Any]) -> ModelSummary:
    updated = typed(data["updated_at"], (str, type(None)))
    return ModelSummary(
        name=refs.validate_name(typed(data["name"], str)),
        num_versions=typed(data["num_versions"], int),
        latest_version=typed(data["latest_version"], (int, type(None))),
        updated_at=datetime.fromisoformat(updated) if updated else None,
        size=typed(data["size"], int),
        aliases=tuple(typed(a, str) for a in typed(data["aliases"], list)),
    )


def tensor(data: dict[str, Any]) -> TensorInfo:
    shape = tuple(typed(n, int) for n in typed(data["shape"], list))
    return TensorInfo(typed(data["name"], str), typed(data["dtype"], str), shape, None)


def lineage(data: dict[str, Any]) -> Lineage:
    """The lineage's tree rebuilt without recursion: chains run thousands deep."""
    roots = typed(data["descendants"], list)
    order, pending = [], list(roots)
    while pending:  # parents before their children
        node = typed(pending.pop(), dict)
        order.append(node)
        pending.extend(typed(node["children"], list))
    built: dict[int, LineageNode] = {}
    for node in reversed(order):  # children before their parents
        children = tuple(built.pop(id(child)) for child in node["children"])
        built[id(node)] = LineageNode(
            typed(node["ref"], str), typed(node["deleted"], bool), children
        )
    return Lineage(
        ref=typed(data["ref"], str),
        # The JSON does not say which ancestors were deleted.
        ancestors=tuple(LineageNode(typed(a, str)) for a in typed(data["ancestors"], list)),
        descendants=tuple(built[id(root)] for root in roots),
    )


def diff(data: dict[str, Any]) -> Diff:
    changes = []
    for item in typed(data["tensors"], list):
        status = typed(item["status"], str)
        if status not in DIFF_STATUSES:
            raise ValueError(f"not a diff status: {status!r}")
        number = (int, float, type(None))
        changes.append(
            TensorChange(
                typed(item["name"], str),
                status,
                typed(item["max_abs"], number),
                typed(item["rel_l2"], number),
            )
        )
    return Diff(typed(data["a"], str), typed(data["b"], str), tuple(changes))


def each(parse: Callable[[Any], T]) -> Callable[[Any], list[T]]:
    """A parser of a JSON list whose items `parse` reads."""
    return lambda data: [parse(item) for item in typed(data, list)]


def typed(value: Any, kind: type | tuple[type, ...]) -> Any:
    """`value` if it has the JSON type `kind` (a bool is not an int here), else TypeError."""
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise TypeError(f"unexpected {value!r}")
    if not isinstance(value, kind):
        raise TypeError(f"unexpected {type(value).__name__}")
    return value
