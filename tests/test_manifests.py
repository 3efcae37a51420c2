"""Tensor manifests: recorded at push, read from the catalog alone, filled in for old versions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import SMALL_ARCH
from helpers import TINY
from sqlalchemy import text

from registry import IntegrityError, Registry, SchemaOutOfDateError, db
from registry.manifests import tensor_digest


def test_push_records_every_tensor_in_state_dict_order(reg: Registry, tiny_model) -> None:
    version = reg.push(tiny_model, **TINY)
    state = tiny_model.state_dict()
    manifest = reg.tensors(version.ref)
    assert [t.name for t in manifest] == list(state)
    for info in manifest:
        tensor = state[info.name]
        assert info.dtype == str(tensor.dtype).removeprefix("torch.")
        assert info.shape == tuple(tensor.shape)
        assert info.digest == tensor_digest(tensor)


def test_tensor_digest_follows_the_bytes_not_the_object() -> None:
    a = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    assert tensor_digest(a) == tensor_digest(a.clone())
    assert tensor_digest(a.t()) == tensor_digest(a.t().contiguous())  # C order
    assert tensor_digest(a) != tensor_digest(a.to(torch.float64))
    nudged = a.clone()
    nudged[2, 3] += 1e-6
    assert tensor_digest(a) != tensor_digest(nudged)
    # bfloat16, which numpy lacks, by its bytes: 1.5 is 0x3FC0, as an int16 of that value is
    bf16 = tensor_digest(torch.tensor(1.5, dtype=torch.bfloat16))
    assert bf16 == tensor_digest(torch.tensor(0x3FC0, dtype=torch.int16))
    assert bf16 != tensor_digest(torch.tensor(1.75, dtype=torch.bfloat16))


def test_show_tensors_lists_them_and_json_adds_the_list(run, small_file: Path) -> None:
    code, out, _ = run("push", str(small_file), "--arch", SMALL_ARCH, "--arg", "num_classes=10")
    assert code == 0
    code, out, _ = run("show", SMALL_ARCH, "--tensors", "--json")
    assert code == 0
    listed = json.loads(out)["tensors"]
    state = torch.load(small_file, weights_only=True)
    assert listed == [
        {"name": k, "dtype": str(v.dtype).removeprefix("torch."), "shape": list(v.shape)}
        for k, v in state.items()
    ]
    code, out, _ = run("show", SMALL_ARCH, "--tensors")
    assert code == 0
    assert "fc.weight" in out and "float32  10x1024" in out
    assert f"tensors: {len(state)}" in out


def test_show_tensors_never_reads_the_blob(reg: Registry, tiny_model, tmp_path: Path) -> None:
    version = reg.push(tiny_model, **TINY)
    reg.store.path(version.sha256).unlink()  # type: ignore[attr-defined]
    assert len(reg.tensors(version.ref)) == len(tiny_model.state_dict())


def test_a_catalog_of_the_previous_schema_gets_manifests_on_first_need(
    database_url: str, tmp_path: Path, tiny_model
) -> None:
    """A catalog at 0002 is upgraded without reading blobs; manifests come lazily, then stay."""
    reg = Registry(database_url=database_url, store=tmp_path / "blobs")
    version = reg.push(tiny_model, **TINY)
    expected = reg.tensors(version.ref)
    reg.close()
    engine = db.open_engine(database_url)
    db.downgrade(engine, "0002")  # what the previous release left: no manifests, no lineage
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM versions")).scalar() == 1
    engine.dispose()

    old = Registry(database_url=database_url, store=tmp_path / "blobs")
    with pytest.raises(SchemaOutOfDateError):
        old.get(version.ref)
    assert old.upgrade() == db.SCHEMA_HEAD
    assert old.get(version.ref).parent is None
    assert old.tensors(version.ref) == expected  # filled in from the blob
    reg_path = old.store.path(version.sha256)  # type: ignore[attr-defined]
    reg_path.unlink()
    assert old.tensors(version.ref) == expected  # now from the catalog alone
    old.close()


def test_manifests_recorded_with_sha256_still_diff_and_verify(reg: Registry, tiny_model) -> None:
    """Manifests from before BLAKE3 hold bare SHA-256 digests: tensors are still checked by them."""
    import hashlib

    v1 = reg.push(tiny_model, name="legacy", **TINY)
    with torch.no_grad():
        tiny_model.head.weight.add_(1.0)
    v2 = reg.push(tiny_model, name="legacy", **TINY)
    assert all(t.digest and t.digest.startswith("blake3:") for t in reg.tensors(v1.ref))
    state = reg.state_dict(v1.ref)
    of_v1 = text(
        "UPDATE tensors SET digest = :d WHERE position = :p AND version_id = "
        "(SELECT v.id FROM versions v JOIN models m ON m.id = v.model_id "
        "WHERE m.name = 'legacy' AND v.version = 1)"
    )
    with db.session(reg.engine, write=True) as s:  # what a catalog of the previous release holds
        for position, tensor in enumerate(state.values()):
            data = tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
            s.execute(of_v1, {"d": hashlib.sha256(data).hexdigest(), "p": position})
    diff = reg.diff(v1.ref, v2.ref)  # no digest pair agrees: every tensor read and measured
    assert diff.summary["changed"] == 1 and diff.summary["identical"] == len(state) - 1
    with db.session(reg.engine, write=True) as s:  # a legacy digest that lies
        s.execute(of_v1, {"d": "0" * 64, "p": 0})
    with pytest.raises(IntegrityError, match=f"expected sha256:{'0' * 64} but .* sha256:[0-9a-f]"):
        reg.diff(v1.ref, v2.ref)
