"""Where a listing's time goes: `Registry.versions(NAME, limit=50)` step by step.

    .venv/bin/python bench/listing.py [--postgresql URL] [--models 1000] [--calls 400]

Fills a catalog as figure 6 does (`catalog.fill`: 100 versions a model), then
times each step of a listing against a `SELECT 1` in a session (the figure's
floor): the statement executed, its 50 rows fetched (SQLite runs the
correlated subqueries as rows are fetched), the frozen records built; and
the same SQL through the driver alone. It prints the median of each. It is
the profile behind figure 6's explanation in docs/benchmarks.md; not part of
the test suite.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from collections import defaultdict
from typing import Any

import catalog
from sqlalchemy import text

from registry import Registry, db
from registry.catalogs import queries

PER_MODEL = 100


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench/listing.py")
    parser.add_argument("--postgresql", metavar="URL", help="profile this database instead")
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--calls", type=int, default=400)
    args = parser.parse_args()
    scratch = tempfile.mkdtemp(prefix="registry-listing-")
    url = args.postgresql or f"sqlite:///{scratch}/catalog.db"
    if args.postgresql and (problem := catalog.reset_postgresql(url)):
        raise SystemExit(problem)
    print(f"filling {args.models * PER_MODEL:,} versions ...", flush=True)
    catalog.fill(url, args.models, PER_MODEL)
    reg = Registry(home=scratch, database_url=url)
    engine = reg.engine
    rng = random.Random(6)
    names = [catalog.model_name(rng.randrange(args.models)) for _ in range(256)]
    statement = queries._search(engine.dialect.name, True, False, 0, True)
    steps: dict[str, list[float]] = defaultdict(list)
    for call in range(args.calls):
        name = names[call % len(names)]
        values = {"name": name, "arch": None, "limit": 50}
        with db.session(engine) as s:
            t0 = time.perf_counter()
            found = s.execute(statement, values)
            t1 = time.perf_counter()
            rows = found.mappings().all()
            t2 = time.perf_counter()
            [queries._record(row["name"], row, row) for row in rows]
            t3 = time.perf_counter()
        closed = time.perf_counter()
        with db.session(engine) as s:
            s.execute(text("SELECT 1"))
        t4 = time.perf_counter()
        reg.versions(name, limit=50)
        t5 = time.perf_counter()
        steps["SELECT 1 in a session (floor)"].append(t4 - closed)
        steps["whole listing"].append(t5 - t4)
        steps["execute"].append(t1 - t0)
        steps["fetch 50 rows"].append(t2 - t1)
        steps["build 50 records"].append(t3 - t2)
    driver_only(engine, statement, names, args.calls, steps)
    base = statistics.median(steps["SELECT 1 in a session (floor)"])
    for step, times in steps.items():
        median = statistics.median(times)
        print(f"  {step:<40} {median * 1e6:8.0f} µs  {median / base:5.2f}x the floor")


def driver_only(
    engine: Any, statement: Any, names: list[str], calls: int, steps: dict[str, list[float]]
) -> None:
    """The listing's SQL through the DBAPI cursor alone: no SQLAlchemy, no records."""
    compiled = statement.compile(dialect=engine.dialect)
    sql = str(compiled)
    with engine.connect() as conn:
        cursor = conn.connection.driver_connection.cursor()
        for call in range(calls):
            values = {**compiled.params, "name": names[call % len(names)], "limit": 50}
            if compiled.positiontup is not None:  # SQLite's qmark style
                parameters: Any = [values[key] for key in compiled.positiontup]
            else:
                parameters = values
            started = time.perf_counter()
            cursor.execute(sql, parameters)
            cursor.fetchall()
            steps["the SQL through the driver alone"].append(time.perf_counter() - started)


if __name__ == "__main__":
    main()
