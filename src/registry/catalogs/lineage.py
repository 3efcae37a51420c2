"""Lineage queries: which version each was derived from, walked in recursive SQL.

A link is two (model, number) pairs in the `lineage` table, and numbers are
never reused, so a link outlives the deletion of either end: a walk passes
through a deleted version and marks it. Each walk is one recursive query
that follows an index per step (the primary key upward, the parent index
downward), so a chain of 10,000 versions costs one round trip, not 10,000.
"""

from __future__ import annotations

from sqlalchemy import Integer, and_, cast, literal, select
from sqlalchemy.orm import Session

from registry.records import Lineage as LineageRecord
from registry.records import LineageNode
from registry.tables import Lineage, Model, Version

# A walk stops this deep: links only point at versions that existed first, so it
# never loops, but a hand-edited catalog could.
MAX_DEPTH = 1_000_000


def of(s: Session, model: Model, row: Version) -> LineageRecord:
    """The lineage of one version: its ancestors back to the root, its descendants as a tree."""
    return LineageRecord(
        ref=f"{model.name}@v{row.version}",
        ancestors=tuple(ancestors(s, model.id, row.version)),
        descendants=tuple(descendants(s, model.id, row.version)),
    )


def ancestors(s: Session, model_id: int, number: int) -> list[LineageNode]:
    """Parent, grandparent, ... up to the root, nearest first."""
    up = (
        select(
            Lineage.parent_model_id.label("model_id"),
            Lineage.parent_version.label("version"),
            cast(literal(1), Integer).label("depth"),
        )
        .where(Lineage.model_id == model_id, Lineage.version == number)
        .cte("up", recursive=True)
    )
    step = (
        select(Lineage.parent_model_id, Lineage.parent_version, cast(up.c.depth + 1, Integer))
        .join(up, and_(Lineage.model_id == up.c.model_id, Lineage.version == up.c.version))
        .where(up.c.depth < MAX_DEPTH)
    )
    up = up.union_all(step)
    query = (
        select(Model.name, up.c.version, Version.id)
        .join(Model, Model.id == up.c.model_id)
        .outerjoin(
            Version, and_(Version.model_id == up.c.model_id, Version.version == up.c.version)
        )
        .order_by(up.c.depth)
    )
    return [
        LineageNode(f"{name}@v{version}", deleted=version_id is None)
        for name, version, version_id in s.execute(query)
    ]


def descendants(s: Session, model_id: int, number: int) -> list[LineageNode]:
    """Children of a version, each with its own children, by model name and number."""
    down = (
        select(
            Lineage.model_id,
            Lineage.version,
            Lineage.parent_model_id,
            Lineage.parent_version,
            cast(literal(1), Integer).label("depth"),
        )
        .where(Lineage.parent_model_id == model_id, Lineage.parent_version == number)
        .cte("down", recursive=True)
    )
    step = (
        select(
            Lineage.model_id,
            Lineage.version,
            Lineage.parent_model_id,
            Lineage.parent_version,
            cast(down.c.depth + 1, Integer),
        )
        .join(
            down,
            and_(
                Lineage.parent_model_id == down.c.model_id, Lineage.parent_version == down.c.version
            ),
        )
        .where(down.c.depth < MAX_DEPTH)
    )
    down = down.union_all(step)
    query = (
        select(
            down.c.model_id,
            down.c.version,
            down.c.parent_model_id,
            down.c.parent_version,
            down.c.depth,
            Model.name,
            Version.id,
        )
        .join(Model, Model.id == down.c.model_id)
        .outerjoin(
            Version, and_(Version.model_id == down.c.model_id, Version.version == down.c.version)
        )
        .order_by(Model.name, down.c.version)
    )
    children: dict[tuple[int, int], list[tuple[int, int]]] = {}
    found: list[tuple[int, tuple[int, int], str, bool]] = []
    for child, child_number, parent, parent_number, depth, name, version_id in s.execute(query):
        key = (child, child_number)
        children.setdefault((parent, parent_number), []).append(key)
        found.append((depth, key, f"{name}@v{child_number}", version_id is None))
    # Deepest first, so each node's children are built before it (a long chain would
    # overflow Python's stack if built recursively).
    built: dict[tuple[int, int], LineageNode] = {}
    for _, key, ref, deleted in sorted(found, key=lambda item: -item[0]):
        built[key] = LineageNode(ref, deleted, tuple(built[c] for c in children.get(key, ())))
    return [built[key] for key in children.get((model_id, number), ())]
