"""Schema upgrades with data (issue #15): a catalog of the previous release through `db upgrade`.

The previous release's schema head is 0002. Its catalog is built as that
release left it: Alembic takes an empty database to 0002 only, then the rows
of a registry's pushes (models, versions, aliases, tags, a trusted pickle
with its safe copy, a deleted version, a blob shared by two models) are
written cut to 0002's columns, with each blob's chunk digests as 0002
recorded them, over a store of real blobs. (The API always writes at head,
so it pushes into a scratch catalog whose rows are copied.) Then the
`registry db upgrade` command runs, and what 0003-0005 added must be filled
in or fillable on first use: the `ls` summaries, tensor manifests, lineage
(a new version may name an old one as parent) and BLAKE3 digests (recorded
by `registry verify`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from click.testing import CliRunner
from sqlalchemy import MetaData, inspect, select, update
from test_reliability import ARCH, ARGS, copy_rows, push_tiny, rows, sha256_of, sqlite_url
from test_reliability import tiny_file as tiny_checkpoint

from registry import Registry, db
from registry.cli import cli
from registry.digests import CHUNK_SIZE, _hash_range, blake3_of

PREVIOUS_HEAD = "0002"


def chunk_digests(path: Path) -> list[str]:
    """What release 0002 recorded for a blob: the SHA-256 of each CHUNK_SIZE piece."""
    with open(path, "rb") as blob:
        fd = blob.fileno()
        pieces = max(1, math.ceil(path.stat().st_size / CHUNK_SIZE))
        return [_hash_range(fd, n * CHUNK_SIZE) for n in range(pieces)]


def test_a_catalog_of_the_previous_release_upgrades_with_every_row_and_new_column(
    database_url: str, tmp_path: Path
) -> None:
    store = tmp_path / "blobs"
    scratch = Registry(database_url=sqlite_url(tmp_path / "scratch"), store=store)
    push_tiny(scratch, tmp_path, 1, description="first")
    push_tiny(scratch, tmp_path, 2, tags={"dataset": "a", "stage": "prod"}, aliases=["production"])
    scratch.delete(push_tiny(scratch, tmp_path, 3).ref)
    shared = tiny_checkpoint(tmp_path, 1)  # the bytes of tiny@v1: one blob, two models
    scratch.push(shared, arch=ARCH, name="team/other", arch_args=ARGS, aliases=["staging"])
    push_tiny(scratch, tmp_path, 4, name="team/other", tags={"k": "v"})
    import tiny_models

    pickled = tmp_path / "whole-model.pt"  # a trusted pickle: its safe copy is a second blob
    torch.save(tiny_models.TinyNet(**ARGS), pickled)
    scratch.push(pickled, arch=ARCH, name="pickled", arch_args=ARGS, trust_pickle=True)
    expected = {v.ref: v for v in scratch.search()}
    expected_models = scratch.models()
    expected_tensors = {ref: scratch.tensors(ref) for ref in expected}

    # The previous release's catalog: schema 0002, its rows, its chunk digests.
    engine = db.open_engine(database_url)
    db.upgrade(engine, PREVIOUS_HEAD)
    with engine.connect() as conn:
        inspector = inspect(conn)
        tables = [t for t in inspector.get_table_names() if t != "alembic_version"]
        shape = {t: [c["name"] for c in inspector.get_columns(t)] for t in tables}
    assert sorted(tables) == ["aliases", "blobs", "models", "tags", "versions"]
    assert "blake3" not in shape["blobs"] and "num_versions" not in shape["models"]
    copy_rows(scratch.engine, engine, shape)
    scratch.engine.dispose()
    blobs = MetaData()
    blobs.reflect(engine, only=["blobs"])
    table = blobs.tables["blobs"]
    with engine.begin() as conn:
        for (digest,) in conn.execute(select(table.c.sha256)).all():
            path = store / "sha256" / digest[:2] / digest
            conn.execute(
                update(table)
                .where(table.c.sha256 == digest)
                .values(chunk_size=CHUNK_SIZE, chunk_digests=chunk_digests(path))
            )
    before = rows(engine, shape)
    counts = {t: len(before[t]) for t in ("models", "blobs", "versions", "tags", "aliases")}
    assert counts == {"models": 3, "blobs": 6, "versions": 5, "tags": 3, "aliases": 2}
    engine.dispose()

    # `registry db upgrade`, as an operator runs it.
    base = ["--database-url", database_url, "--store", str(store)]
    refused = CliRunner().invoke(cli, [*base, "ls"])
    assert refused.exit_code == 1 and "run `registry db upgrade`" in refused.stderr
    upgraded = CliRunner().invoke(cli, [*base, "db", "upgrade"], catch_exceptions=False)
    assert upgraded.exit_code == 0, upgraded.output
    engine = db.open_engine(database_url)
    assert db.current_revision(engine) == db.SCHEMA_HEAD
    assert rows(engine, shape) == before  # every row of 0002's columns, unchanged

    # Filled by the upgrade: what `ls` shows.
    reg = Registry(database_url=database_url, store=store)
    assert {v.ref: v for v in reg.search()} == expected
    assert reg.models() == expected_models

    # Lazily filled: tensor manifests, on first use, then kept.
    tensor_rows = MetaData()
    tensor_rows.reflect(engine, only=["tensors", "lineage", "blobs"])
    with engine.connect() as conn:
        assert conn.execute(select(tensor_rows.tables["tensors"])).all() == []
    blake3 = tensor_rows.tables["blobs"]
    with engine.connect() as conn:  # no BLAKE3 yet: reads verify against the chunk digests
        assert {b for (_, b) in conn.execute(select(blake3.c.sha256, blake3.c.blake3))} == {None}
    shown = CliRunner().invoke(cli, [*base, "show", "tiny@v1", "--tensors", "--json"])
    assert shown.exit_code == 0, shown.output
    manifest = [(t.name, t.dtype, t.shape) for t in expected_tensors["tiny@v1"]]
    listed = json.loads(shown.stdout)["tensors"]
    assert [(t["name"], t["dtype"], tuple(t["shape"])) for t in listed] == manifest
    for ref, tensors in expected_tensors.items():
        filled = reg.tensors(ref)  # digests too
        if ref == "pickled@v1":  # read from its safe copy (never unpickled): sorted by name
            filled, tensors = sorted(filled, key=str), sorted(tensors, key=str)
        assert filled == tensors, ref
    with engine.connect() as conn:
        kept = conn.execute(select(tensor_rows.tables["tensors"].c.version_id)).all()
    assert len({row[0] for row in kept}) == len(expected)
    same = reg.diff("tiny@v1", "team/other@v1").tensors  # the same bytes
    assert same and {c.status for c in same} == {"identical"}

    # Lineage: old versions have no parent, and may be one.
    assert reg.lineage("tiny@v2").ancestors == ()
    child = push_tiny(reg, tmp_path, 9, parent="tiny@v2")
    assert child.version == 4  # v3 was deleted before the upgrade: never reused
    assert [n.ref for n in reg.lineage(child.ref).ancestors] == ["tiny@v2"]

    # BLAKE3: recorded by `registry verify` once it checked each blob's SHA-256; until
    # then reads verify against 0002's chunk digests.
    used = {v.sha256 for v in expected.values()}
    used |= {v.weights_sha256 for v in expected.values() if v.weights_sha256}
    assert len(used) == 5
    for ref, version in expected.items():
        pulled = reg.pull(ref, tmp_path / "pulled" / ref.replace("/", "_"))
        assert sha256_of(pulled) == version.sha256
        assert reg.load(ref).training is False
    verified = CliRunner().invoke(cli, [*base, "verify"], catch_exceptions=False)
    assert verified.exit_code == 0, verified.output
    with engine.connect() as conn:
        recorded = dict(conn.execute(select(blake3.c.sha256, blake3.c.blake3)).all())
    for digest in used:
        assert recorded[digest] == blake3_of(store / "sha256" / digest[:2] / digest), digest
    assert reg.verify() == []
    engine.dispose()
    reg.close()
