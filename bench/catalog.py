"""Figure 6 of issue #6: a large catalog (100,000 versions over 1,000 models).

The catalog is filled with bulk INSERTs (SQLAlchemy core executemany) into
the tables the migrations create, not with 100,000 pushes. Every model gets
the same number of versions, each version its own blob row, two tags
(`dataset`, `run`) and every model a `production` alias on its
next-to-newest version. PostgreSQL is then `VACUUM ANALYZE`d, as autovacuum
would do after such a load, so that the planner has statistics; SQLite is
left as the registry leaves it (it never runs ANALYZE).

"Push, catalog part" is a real `Registry.push` of a tiny model (an
nn.Linear(8, 4) with fresh random weights, so every push is a new version)
to one of the catalog's models, timed only inside the write transaction
that push opens (`registry.db.session(engine, write=True)`: claiming the
blob row, numbering and inserting the version, commit), less the time spent
inside it placing the blob file (`BlobWriter.commit`: rename, folder fsync).
That transaction is the only part of a push the catalog's size can change.
Timing it inside a real push, rather than calling the catalog functions
with a fake digest, keeps the figure true to whatever push does as the code
changes, and avoids subtracting two noisy multi-second numbers.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from figures import Workspace, import_floor
from harness import Contender, Result, Target, compare
from sqlalchemy import create_engine, text

from registry import Registry, db
from registry.stores.folder import BlobWriter
from registry.tables import Base

if TYPE_CHECKING:
    from torch import nn

DEFAULT_POSTGRESQL_URL = "postgresql+psycopg://postgres:postgres@127.0.0.1:5432/registry_bench"
BATCH = 10_000
SMALL_MODELS = 10  # the catalog `registry ls` over the big one is compared with
EPOCH = datetime(2026, 1, 1, tzinfo=timezone.utc)
VERSION_FIELDS: dict[str, Any] = {
    "weights_sha256": None,
    "format": "state_dict",
    "extension": ".pth",
    "arch": "resnet18",
    "arch_args": {"num_classes": 10},
    "description": "",
    "created_by": "bench@localhost",
    "num_params": 11_181_642,
    "torch_version": "2.14.1",
    "details": {"serialization": "zip", "num_tensors": 122, "dtypes": {"float32": 122}},
}


def model_name(i: int) -> str:
    return f"model-{i:04d}"


def reset_postgresql(url: str) -> str | None:
    """Drop and recreate schema `public` of the bench database; None, or why it is unusable."""
    engine = create_engine(db.parse_url(url), connect_args={"connect_timeout": 5})
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
    except Exception as exc:
        detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        return f"PostgreSQL at {db.safe_url(url)} is unusable ({detail}); its column is skipped"
    finally:
        engine.dispose()
    return None


def small_postgresql_url(url: str) -> str:
    """A second database beside the bench's, for the 10-model catalog: created if missing, reset."""
    parsed = db.parse_url(url)
    small = parsed.set(database=f"{parsed.database}_small")
    engine = create_engine(parsed)
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            exists = conn.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": small.database}
            ).scalar()
            if not exists:
                conn.execute(text(f'CREATE DATABASE "{small.database}"'))
    finally:
        engine.dispose()
    small_url = small.render_as_string(hide_password=False)
    if problem := reset_postgresql(small_url):
        raise RuntimeError(problem)
    return small_url


def server_version(url: str) -> str:
    engine = db.open_engine(url)
    try:
        with engine.connect() as conn:
            return str(conn.execute(text("SHOW server_version")).scalar())
    finally:
        engine.dispose()


def fill(url: str, models: int, per_model: int) -> float:
    """Create the schema and bulk-insert the catalog; return the seconds it took."""
    started = time.perf_counter()
    engine = db.open_engine(url)
    db.upgrade(engine)
    tables = Base.metadata.tables
    with engine.begin() as conn:
        conn.execute(
            tables["models"].insert(),
            [
                {
                    "id": m + 1,
                    "name": model_name(m),
                    "last_version": per_model,
                    "created_at": EPOCH,
                    # what pushes keep on the model row (schema 0005), for the versions below
                    "num_versions": per_model,
                    "latest_version": per_model,
                    "updated_at": EPOCH + timedelta(seconds=(m + 1) * per_model - 1),
                    "size": sum(44_800_000 + k for k in range(m * per_model, (m + 1) * per_model)),
                }
                for m in range(models)
            ],
        )
        for start in range(0, models * per_model, BATCH):
            ids = range(start, min(start + BATCH, models * per_model))
            digests = [hashlib.sha256(b"blob-%d" % k).hexdigest() for k in ids]
            times = [EPOCH + timedelta(seconds=k) for k in ids]
            conn.execute(
                tables["blobs"].insert(),
                [
                    {"sha256": d, "size": 44_800_000 + k, "created_at": t}
                    for k, d, t in zip(ids, digests, times, strict=True)
                ],
            )
            conn.execute(
                tables["versions"].insert(),
                [
                    {
                        **VERSION_FIELDS,
                        "id": k + 1,
                        "model_id": k // per_model + 1,
                        "version": k % per_model + 1,
                        "blob_sha256": d,
                        "size": 44_800_000 + k,  # its blob's, as a push keeps it (schema 0009)
                        "created_at": t,
                    }
                    for k, d, t in zip(ids, digests, times, strict=True)
                ],
            )
            conn.execute(
                tables["tags"].insert(),
                [
                    {"version_id": k + 1, "key": key, "value": value}
                    for k in ids
                    for key, value in (("dataset", ("cifar10", "imagenet")[k % 2]), ("run", str(k)))
                ],
            )
        conn.execute(
            tables["aliases"].insert(),
            [
                {
                    "model_id": m + 1,
                    "name": "production",
                    "version_id": m * per_model + per_model - 1,
                }
                for m in range(models)
            ],
        )
        if conn.dialect.name == "postgresql":  # explicit ids left the sequences behind
            for table in ("models", "versions"):
                conn.execute(
                    text(
                        f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                        f"(SELECT max(id) FROM {table}))"
                    )
                )
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE"))
    engine.dispose()
    return time.perf_counter() - started


def tiny_model() -> nn.Module:
    """The arch of the versions pushed into the big catalog: small, so that a push is quick."""
    from torch import nn

    return nn.Linear(8, 4)


TINY_ARCH = f"{__name__}:tiny_model"


@dataclass
class Clock:
    seconds: float = 0.0
    sessions: int = 0


@contextlib.contextmanager
def write_transactions() -> Iterator[Clock]:
    """Time the write sessions the registry opens, less the blob placement done inside them."""
    clock = Clock()
    session, commit = db.session, BlobWriter.commit

    @contextlib.contextmanager
    def timed_session(engine: Any, write: bool = False) -> Iterator[Any]:
        started = time.perf_counter()
        with session(engine, write=write) as s:
            yield s
        if write:
            clock.seconds += time.perf_counter() - started
            clock.sessions += 1

    def timed_commit(writer: BlobWriter) -> str:
        started = time.perf_counter()
        try:
            return commit(writer)
        finally:
            clock.seconds -= time.perf_counter() - started

    db.session, BlobWriter.commit = timed_session, timed_commit  # type: ignore[method-assign]
    try:
        yield clock
    finally:
        db.session, BlobWriter.commit = session, commit  # type: ignore[method-assign]


def push_catalog_part(reg: Registry, name: str) -> float:
    """Push a tiny model as the next version of `name`; return its catalog transaction's time."""
    state = tiny_model().state_dict()
    with write_transactions() as clock:
        reg.push(state, arch=TINY_ARCH, name=name)
    if clock.sessions != 1:
        raise RuntimeError(
            f"Registry.push opened {clock.sessions} write sessions, not 1: "
            "bench/catalog.py's push figure needs updating"
        )
    return clock.seconds


def catalog_figure(
    ws: Workspace,
    backend: str,
    url: str,
    small_url: str,
    models: int,
    per_model: int,
    repeats: int,
    process_repeats: int,
) -> tuple[list[Result], float]:
    """Fill the catalog at `url` and time the operations on it; also return the fill time."""
    print(f"  filling {models * per_model:,} versions over {models:,} models ...", flush=True)
    fill_s = fill(url, models, per_model)
    print(f"  filled in {fill_s:.1f} s", flush=True)
    fill(small_url, SMALL_MODELS, per_model)
    home = ws.root / f"catalog-{backend.lower()}"
    reg = Registry(home=home, database_url=url)
    engine = reg.engine
    rng = random.Random(6)

    def cycling(make: Callable[[], str]) -> Iterator[str]:
        return itertools.cycle([make() for _ in range(256)])

    def some_model() -> str:
        return model_name(rng.randrange(models))

    numbered = cycling(lambda: f"{some_model()}@v{rng.randrange(1, per_model + 1)}")
    latest = cycling(some_model)
    aliased = cycling(lambda: f"{some_model()}@production")
    listed = cycling(some_model)
    pushed = cycling(some_model)

    def select_one(_: object) -> None:
        with db.session(engine) as s:
            s.execute(text("SELECT 1"))

    # Issue #24: a lookup costs at most 3 round trips' worth, measured against the floor
    # (the baseline, so a plain ratio) in the same rounds.
    round_trips = (Target(3.0, "ratio"),)
    figure = f"6 · {backend}"
    results = compare(
        figure,
        [
            Contender("`SELECT 1` in a catalog session (round-trip floor)", select_one),
            Contender(
                "`Registry.get('NAME@vN')`",
                lambda _: reg.get(next(numbered)),
                targets=round_trips,
            ),
            Contender(
                "`Registry.get('NAME')` (latest)",
                lambda _: reg.get(next(latest)),
                targets=round_trips,
            ),
            Contender(
                "`Registry.get('NAME@production')` (alias)",
                lambda _: reg.get(next(aliased)),
                targets=round_trips,
            ),
            Contender(
                "`Registry.versions(NAME, limit=50)`",
                lambda _: reg.versions(next(listed), limit=50),
                targets=round_trips,
            ),
        ],
        repeats,
    )
    # Timed apart from the queries: a push runs torch code and `models()` scans the whole
    # catalog, and either one, in the same rotation, left the next query's caches cold.
    results += compare(
        figure,
        [
            Contender(
                "push, catalog part: the write transaction of `Registry.push` (tiny model)",
                lambda _: push_catalog_part(reg, next(pushed)),
                self_timed=True,
            )
        ],
        repeats,
    )
    results += compare(
        figure,
        [Contender(f"`Registry.models()` ({models:,} models)", lambda _: reg.models())],
        repeats,
    )
    small = (
        f"`registry ls` ({SMALL_MODELS} models, {SMALL_MODELS * per_model:,} versions, "
        "whole process)"
    )
    results += compare(
        figure,
        [
            import_floor(ws),
            Contender(small, lambda _: ws.cli("ls", database_url=small_url)(home)),
            Contender(
                f"`registry ls` ({models:,} models, {models * per_model:,} versions, "
                "whole process)",
                lambda _: ws.cli("ls", database_url=url)(home),
                targets=(Target(1.5, "ratio", against=small),),
            ),
        ],
        process_repeats,
    )
    engine.dispose()
    return results, fill_s
