"""Migrations: one head, in step with the models, reversible, and checked on open."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from helpers import LINEAR_ARGS, linear_file
from sqlalchemy import inspect, text

from registry import Registry, SchemaOutOfDateError, db
from registry.tables import Base


def script() -> ScriptDirectory:
    return ScriptDirectory.from_config(db.alembic_config())


def test_single_head_matching_the_code() -> None:
    heads = script().get_heads()
    assert heads == [db.SCHEMA_HEAD]


def test_alembic_from_the_checkout_finds_the_same_migrations() -> None:
    """`alembic` run in the repository root reads the package's own migrations."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).parent.parent
    result = subprocess.run(
        [sys.executable, "-m", "alembic", "heads"], capture_output=True, text=True, cwd=root
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{db.SCHEMA_HEAD} (head)\n"
    assert Path(str(db.alembic_config().get_main_option("script_location"))).samefile(
        root / "src" / "registry" / "migrations"
    )  # an editable install reads the checkout's folder


def test_upgrade_head_matches_the_models(database_url: str) -> None:
    engine = db.open_engine(database_url)
    db.upgrade(engine)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == []


def test_stairway_every_revision_up_down_up(database_url: str) -> None:
    engine = db.open_engine(database_url)
    revisions = list(reversed(list(script().walk_revisions())))
    for revision in revisions:
        db.upgrade(engine, revision.revision)
        db.downgrade(engine, revision.down_revision or "base")
        db.upgrade(engine, revision.revision)
        assert db.current_revision(engine) == revision.revision
    db.downgrade(engine, "base")
    with engine.connect() as conn:
        assert set(inspect(conn).get_table_names()) <= {"alembic_version"}
    engine.dispose()


def test_new_catalog_is_created_on_first_use(database_url: str) -> None:
    reg = Registry(database_url=database_url)
    assert reg.schema_revision() is None
    assert reg.models() == []
    assert reg.schema_revision() == db.SCHEMA_HEAD


def test_catalog_behind_head_is_refused_until_upgraded(database_url: str) -> None:
    engine = db.open_engine(database_url)
    db.upgrade(engine, "0001")
    engine.dispose()
    reg = Registry(database_url=database_url)
    with pytest.raises(
        SchemaOutOfDateError,
        match=rf"at schema revision 0001, behind {db.SCHEMA_HEAD}; run `registry db upgrade`$",
    ):
        reg.models()
    assert reg.upgrade() == db.SCHEMA_HEAD
    assert Registry(database_url=database_url).models() == []


def test_catalog_from_a_newer_registry_is_refused(database_url: str) -> None:
    Registry(database_url=database_url).models()
    engine = db.open_engine(database_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'f00dcafe'"))
    engine.dispose()
    with pytest.raises(SchemaOutOfDateError, match="revision f00dcafe, newer than this registry"):
        Registry(database_url=database_url).models()


def test_version_sizes_are_filled_in_from_blobs_and_folder_files(
    database_url: str, tmp_path: Path
) -> None:
    """0009 moves a version's size onto its row: a catalog made before it lists the same sizes."""
    reg = Registry(home=tmp_path / "home", database_url=database_url)
    single = reg.push(linear_file(tmp_path, seed=1), arch="torch.nn:Linear", arch_args=LINEAR_ARGS)
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "config.json").write_text('{"hidden_size": 4}')
    (folder / "README.md").write_text("a folder of files, no weights\n")
    shards = reg.push(folder)
    files_total = sum(p.stat().st_size for p in folder.iterdir())
    assert (single.size, shards.size) == (linear_file(tmp_path, seed=1).stat().st_size, files_total)
    reg.engine.dispose()

    engine = db.open_engine(database_url)
    db.downgrade(engine, "0008")
    db.upgrade(engine)
    with engine.connect() as conn:
        rows = "SELECT m.name, v.size FROM versions v JOIN models m ON m.id = v.model_id"
        stored = dict(conn.execute(text(rows)).all())
    engine.dispose()
    assert stored == {single.name: single.size, shards.name: files_total}
    reg = Registry(home=tmp_path / "home", database_url=database_url)
    assert [reg.get(v.ref).size for v in (single, shards)] == [single.size, files_total]
    assert {m.name: m.size for m in reg.models()} == {
        single.name: single.size,
        shards.name: files_total,
    }
