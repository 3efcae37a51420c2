"""Catalog lookups at the database's round trip (issue #24), on both backends.

`get` by number, latest or alias, and `versions`, read each version with
all else its record needs (size, tags, aliases, parent, check input) in one
SELECT, and give the very records a push gives back.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from helpers import TINY, tiny
from sqlalchemy import event

from registry import ArchitectureError, NotFoundError, Registry


@contextmanager
def selects(reg: Registry) -> Iterator[list[str]]:
    """The SELECT statements sent to the catalog inside the block."""
    sent: list[str] = []

    def seen(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            sent.append(statement)

    event.listen(reg.engine, "before_cursor_execute", seen)
    try:
        yield sent
    finally:
        event.remove(reg.engine, "before_cursor_execute", seen)


def test_each_lookup_is_one_select_and_gives_the_pushed_record(reg: Registry) -> None:
    reg.push(tiny(0), name="tiny", **TINY)
    pushed = reg.push(
        tiny(1),
        name="tiny",
        tags={"run": "2", "dataset": "cifar10"},
        aliases=["staging", "production"],
        parent="tiny@v1",
        check_input=(1, 3, 8, 8),
        **TINY,
    )
    assert list(pushed.tags) == ["dataset", "run"] and pushed.aliases == ("production", "staging")
    assert (pushed.parent, pushed.check_input) == ("tiny@v1", (1, 3, 8, 8))
    for lookup in (
        lambda: reg.get("tiny@v2"),
        lambda: reg.get("tiny"),
        lambda: reg.get("tiny@production"),
        lambda: reg.versions("tiny", limit=50)[0],
    ):
        with selects(reg) as sent:
            found = lookup()
        assert len(sent) == 1, sent
        assert found == pushed
        assert list(found.tags) == list(pushed.tags)  # in the same order, not only equal
    [first] = reg.versions("tiny", tags={"run": "2"}, limit=50)
    assert first == pushed and [v.version for v in reg.versions("tiny")] == [2, 1]
    assert reg.get("tiny@v1").parent is None and reg.get("tiny@v1").check_input is None


def test_a_lookup_that_finds_nothing_says_what_is_missing(reg: Registry) -> None:
    reg.push(tiny(0), name="tiny", **TINY)
    with pytest.raises(NotFoundError, match="model 'ghost' not found"):
        reg.versions("ghost", limit=50)
    with pytest.raises(NotFoundError, match="model 'ghost' not found"):
        reg.get("ghost@production")
    with pytest.raises(NotFoundError, match="tiny@production not found"):
        reg.get("tiny@production")
    assert reg.versions("tiny", tags={"run": "9"}) == []  # the model is there: no error
    assert reg.versions("tiny", arch="other") == []


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_arch_args_that_json_cannot_hold_are_refused_before_anything_is_recorded(
    reg: Registry, value: float
) -> None:
    import torch

    layer_norm = {"arch": "torch.nn:LayerNorm", "arch_args": {"normalized_shape": 2, "eps": value}}
    with pytest.raises(ArchitectureError, match="NaN and infinity cannot be recorded"):
        reg.push(torch.nn.LayerNorm(2), name="ln", **layer_norm)
    assert [m.name for m in reg.models()] == []
