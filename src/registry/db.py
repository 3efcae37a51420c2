"""Engines, sessions and the schema check for the catalog (SQLite or PostgreSQL).

SQLite gets foreign keys, WAL and a busy timeout. Its transactions are
begun by us, not by the driver, so that a writing transaction can say
`BEGIN IMMEDIATE` and take the write lock before it reads anything: two
pushes then queue instead of both reading the same last version number.
PostgreSQL is driven through psycopg 3.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.orm import Session

from registry.config import masked_url
from registry.errors import (
    ConfigurationError,
    DatabaseError,
    SchemaOutOfDateError,
    first_line,
)

# The newest migration; tests/test_migrations.py checks it is Alembic's head.
# Kept here so that opening a catalog never has to load the migration scripts.
SCHEMA_HEAD = "0009"

SQLITE_BUSY_TIMEOUT_MS = 60_000
_MIGRATION_LOCK_KEY = 0x7265_6769  # pg_advisory_xact_lock key: "regi"


def parse_url(url: str) -> URL:
    """Parse a database URL, choosing psycopg 3 for a plain `postgresql://`."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise ConfigurationError(f"cannot parse database URL {masked_url(url)!r}") from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def safe_url(url: str | URL) -> str:
    """The URL as it may be printed: with any password masked."""
    try:
        return (url if isinstance(url, URL) else make_url(url)).render_as_string(hide_password=True)
    except ArgumentError:
        return masked_url(str(url))


def open_engine(url: str) -> Engine:
    """Create an engine for `url`, with SQLite's pragmas and transaction handling."""
    parsed = parse_url(url)
    try:
        if parsed.get_backend_name() == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                _make_parent(Path(parsed.database))
            engine = create_engine(parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
            event.listen(engine, "connect", _sqlite_on_connect)
            event.listen(engine, "begin", _sqlite_on_begin)
        else:
            engine = create_engine(parsed, pool_pre_ping=True)
    except (ArgumentError, NoSuchModuleError) as exc:
        raise ConfigurationError(f"unsupported database URL {safe_url(parsed)!r}: {exc}") from None
    except ImportError as exc:
        raise ConfigurationError(
            f"the driver for {safe_url(parsed)!r} is not installed ({exc}); "
            "use sqlite:/// or postgresql:// (psycopg 3)"
        ) from None
    return engine


def writer(engine: Engine) -> Engine:
    """A view of `engine` whose transactions take the write lock up front on SQLite."""
    return engine.execution_options(registry_write=True)


@contextmanager
def session(engine: Engine, write: bool = False) -> Iterator[Session]:
    """A session in one transaction: committed on success, rolled back on error."""
    try:
        with Session(writer(engine) if write else engine, expire_on_commit=False) as s, s.begin():
            yield s
    except SQLAlchemyError as exc:
        raise database_error(engine, exc) from exc


def database_error(engine: Engine, exc: SQLAlchemyError) -> DatabaseError:
    """Turn a driver error into a one-line DatabaseError that never shows a password."""
    detail = first_line(getattr(exc, "orig", None) or exc)
    return DatabaseError(f"catalog {safe_url(engine.url)}: {detail}")


def current_revision(engine: Engine) -> str | None:
    """The catalog's Alembic revision, or None for an empty database."""
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table("alembic_version"):
                return None
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except SQLAlchemyError as exc:
        raise database_error(engine, exc) from exc


def ensure_schema(engine: Engine) -> None:
    """Create a brand-new catalog; refuse one whose schema is not at head."""
    current = current_revision(engine)
    if current == SCHEMA_HEAD:
        return
    if current is None:
        upgrade(engine)
        return
    raise SchemaOutOfDateError(current, SCHEMA_HEAD, newer=current not in known_revisions())


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Run the migrations up to `revision`, one process at a time."""
    from alembic import command

    current = current_revision(engine)
    if current is not None and current not in known_revisions():
        raise SchemaOutOfDateError(current, SCHEMA_HEAD, newer=True)
    try:
        with writer(engine).connect() as conn, conn.begin():
            # SQLite's BEGIN IMMEDIATE already serialises this; PostgreSQL needs a lock.
            if conn.dialect.name == "postgresql":
                conn.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY}
                )
            config = alembic_config(engine.url)
            config.attributes["connection"] = conn
            command.upgrade(config, revision)
    except SQLAlchemyError as exc:
        raise database_error(engine, exc) from exc


def downgrade(engine: Engine, revision: str) -> None:
    """Run the migrations down to `revision` (used by the migration tests)."""
    from alembic import command

    with writer(engine).connect() as conn, conn.begin():
        config = alembic_config(engine.url)
        config.attributes["connection"] = conn
        command.downgrade(config, revision)


def alembic_config(url: URL | None = None) -> Any:
    """An Alembic Config for the migrations shipped inside the package."""
    from importlib.resources import files

    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(files("registry.migrations")))
    if url is not None:
        config.set_main_option(
            "sqlalchemy.url", url.render_as_string(hide_password=False).replace("%", "%%")
        )
    return config


def known_revisions() -> set[str]:
    """Every revision the shipped migrations define."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config())
    return {rev.revision for rev in script.walk_revisions()}


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # we issue BEGIN ourselves, see _sqlite_on_begin
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    # Switching to WAL needs the write lock, and SQLite does not wait for it
    # (no busy handler here): retry while another process holds it.
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while cursor.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    cursor.close()


def _sqlite_on_begin(conn: Any) -> None:
    immediate = conn.get_execution_options().get("registry_write", False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _make_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot create catalog folder {path.parent}: {exc.strerror}"
        ) from None
