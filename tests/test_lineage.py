"""Lineage: parents across models, trees with branches, deleted versions, long chains."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import TINY, TINY_CLI, Server
from sqlalchemy import event, insert, select, update

from registry import InvalidReferenceError, NotFoundError, Registry, jsontext
from registry.tables import Lineage as LineageRow
from registry.tables import Model, Version


def push_child(reg: Registry, model, name: str, parent: str | None, seed: int) -> str:
    """Push `model` with its head re-drawn from `seed`, so every push is new bytes."""
    import torch

    torch.manual_seed(seed)
    torch.nn.init.normal_(model.head.weight)
    return reg.push(model, name=name, parent=parent, **TINY).ref


@pytest.fixture
def tree(reg: Registry, tiny_model) -> dict[str, str]:
    """base@v1 ─┬─ ft@v1 ── ft@v2 ── ft@v3
    └─ other@v1 ── other@v2"""
    refs = {"base": push_child(reg, tiny_model, "base", None, 1)}
    refs["ft1"] = push_child(reg, tiny_model, "ft", refs["base"], 2)
    refs["ft2"] = push_child(reg, tiny_model, "ft", refs["ft1"], 3)
    refs["ft3"] = push_child(reg, tiny_model, "ft", refs["ft2"], 4)
    refs["other1"] = push_child(reg, tiny_model, "other", refs["base"], 5)
    refs["other2"] = push_child(reg, tiny_model, "other", refs["other1"], 6)
    return refs


def test_parent_is_recorded_across_models_and_shown(reg: Registry, tree: dict[str, str]) -> None:
    assert reg.get("ft@v1").parent == "base@v1"
    assert reg.get("base@v1").parent is None
    assert reg.get("other@v2").to_json()["parent"] == "other@v1"
    assert [v.parent for v in reg.versions("ft")] == ["ft@v2", "ft@v1", "base@v1"]


def test_lineage_gives_ancestors_nearest_first_and_descendants_as_a_tree(
    reg: Registry, tree: dict[str, str]
) -> None:
    assert reg.lineage("ft@v3").to_json() == {
        "ref": "ft@v3",
        "ancestors": ["ft@v2", "ft@v1", "base@v1"],
        "descendants": [],
    }
    root = reg.lineage("base@v1").to_json()
    assert root["ancestors"] == []

    def shape(nodes: list[dict]) -> list:
        return [(n["ref"], shape(n["children"])) for n in nodes]

    assert shape(root["descendants"]) == [
        ("ft@v1", [("ft@v2", [("ft@v3", [])])]),
        ("other@v1", [("other@v2", [])]),
    ]


def test_a_deleted_middle_version_keeps_its_place_and_its_children_keep_their_parent(
    reg: Registry, tree: dict[str, str], run
) -> None:
    reg.delete("ft@v2")
    assert reg.get("ft@v3").parent == "ft@v2"
    found = reg.lineage("ft@v3")
    assert [(a.ref, a.deleted) for a in found.ancestors] == [
        ("ft@v2", True),
        ("ft@v1", False),
        ("base@v1", False),
    ]
    chain = reg.lineage("ft@v1").descendants
    assert [(n.ref, n.deleted) for _, n in chain[0].walk()] == [("ft@v2", True), ("ft@v3", False)]


def test_cli_lineage_prints_an_indented_tree_and_json(run, cli_reg: Registry, tiny_model) -> None:
    base = push_child(cli_reg, tiny_model, "base", None, 1)
    child = push_child(cli_reg, tiny_model, "ft", base, 2)
    push_child(cli_reg, tiny_model, "ft", child, 3)
    push_child(cli_reg, tiny_model, "other", base, 4)
    cli_reg.delete("ft@v1")
    code, out, _ = run("lineage", "base")
    assert code == 0
    assert out == "base@v1  <-\n  ft@v1 (deleted)\n    ft@v2\n  other@v1\n"
    code, out, _ = run("lineage", "ft@v2")
    assert out == "base@v1\n  ft@v1 (deleted)\n    ft@v2  <-\n"
    code, out, _ = run("lineage", "ft@v2", "--json")
    assert json.loads(out) == {"ref": "ft@v2", "ancestors": ["ft@v1", "base@v1"], "descendants": []}
    code, out, _ = run("show", "ft@v2")
    assert "parent:         ft@v1 (deleted)" in out


def test_a_parent_that_does_not_exist_is_one_line_and_nothing_is_stored(
    run, cli_reg: Registry, tiny_model, tmp_path
) -> None:
    import torch

    path = tmp_path / "tiny.pt"
    torch.save(tiny_model.state_dict(), path)
    code, out, err = run("push", str(path), *TINY_CLI, "--parent", "nope@v1")
    assert (code, out) == (1, "")
    assert err == "Error: model 'nope' not found; see `registry ls` for the models there are\n"
    assert cli_reg.models() == []


def test_a_push_of_known_bytes_gains_a_parent_but_never_a_loop(reg: Registry, tiny_model) -> None:
    import torch

    original = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    first = reg.push(original, name="a", **TINY)
    torch.nn.init.zeros_(tiny_model.head.bias)
    second = reg.push(tiny_model, name="a", parent=first.ref, **TINY)
    again = reg.push(tiny_model, name="a", parent="a@v1", **TINY)
    assert (again.ref, again.is_new, again.parent) == (second.ref, False, "a@v1")
    with pytest.raises(InvalidReferenceError, match="cannot be its own ancestor"):
        reg.push(original, name="a", parent="a@v2", **TINY)  # a@v1 under its own child
    assert reg.get("a@v1").parent is None
    other = reg.push(tiny_model, name="b", **TINY)
    assert other.parent is None
    assert reg.push(tiny_model, name="b", parent="a@v2", **TINY).parent == "a@v2"


def push_chain(reg: Registry, tiny_model, length: int) -> str:
    """long@v1 .. long@v{length}, each the child of the one before; long@v1's ref.

    One push, then rows written in bulk: 10,000 pushes would take minutes.
    """
    first = reg.push(tiny_model, name="long", **TINY)
    with reg.engine.begin() as conn:
        template = dict(conn.execute(select(Version.__table__)).mappings().one())
        del template["id"]
        model_id = template["model_id"]
        conn.execute(insert(Version), [{**template, "version": n} for n in range(2, length + 1)])
        links = [
            {
                "model_id": model_id,
                "version": n,
                "parent_model_id": model_id,
                "parent_version": n - 1,
            }
            for n in range(2, length + 1)
        ]
        conn.execute(insert(LineageRow), links)
        conn.execute(update(Model).values(last_version=length))
    return first.ref


def depth_of(descendants: list) -> int:
    """How many levels a JSON lineage's single chain of descendants runs."""
    depth = 0
    while descendants:
        [node], depth = descendants, depth + 1
        descendants = node["children"]
    return depth


def test_a_10000_version_chain_is_walked_in_one_query(reg: Registry, tiny_model, run) -> None:
    """Lineage is a recursive query: its cost is the chain's length, not a round trip per link."""
    length = 10_000
    first = reg.get(push_chain(reg, tiny_model, length))
    statements: list[str] = []
    event.listen(reg.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    tip = reg.lineage(f"long@v{length}")
    from_tip = len(statements)
    root = reg.lineage(first.ref)
    from_root = len(statements) - from_tip
    assert from_tip <= 4 and from_root <= 4, statements
    assert len(tip.ancestors) == length - 1 and tip.ancestors[-1].ref == first.ref
    assert max(depth for depth, _ in root.descendants[0].walk()) == length - 2

    code, out, _ = run("lineage", first.ref, "--json")
    assert code == 0
    assert depth_of(jsontext.loads(out)["descendants"]) == length - 1
    code, out, _ = run("lineage", first.ref)
    lines = out.splitlines()
    assert len(lines) == length and lines[-1] == f"{'  ' * 32}[{length - 1}] long@v{length}"


def test_a_10000_version_chain_reads_through_the_server(tmp_path: Path, tiny_model) -> None:
    """The server's lineage route and the remote client both nest 10,000 deep.

    The standard library's JSON encoder and decoder stop near 1,000 levels.
    """
    pytest.importorskip("starlette")
    httpx = pytest.importorskip("httpx")
    length = 10_000
    served = Registry(home=tmp_path / "served")
    root = push_chain(served, tiny_model, length)
    served.close()
    server = Server(tmp_path / "served")
    try:
        answer = httpx.get(f"{server.url}/api/refs/{root}/lineage", timeout=60)
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"] == "application/json"
        with pytest.raises(RecursionError):
            json.loads(answer.text)
        assert depth_of(jsontext.loads(answer.text)["descendants"]) == length - 1

        client = Registry(home=tmp_path / "client", remote=server.url)
        tip = client.lineage(f"long@v{length}")
        assert [a.ref for a in tip.ancestors[:2]] == [f"long@v{length - 1}", f"long@v{length - 2}"]
        assert len(tip.ancestors) == length - 1 and tip.ancestors[-1].ref == root
        [chain] = client.lineage(root).descendants
        assert max(depth for depth, _ in chain.walk()) == length - 2
        client.close()
    finally:
        server.stop()


def test_lineage_of_a_missing_version_is_not_found(reg: Registry) -> None:
    with pytest.raises(NotFoundError):
        reg.lineage("nothing@v1")
