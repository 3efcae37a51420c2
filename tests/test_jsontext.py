"""JSON of any depth: the same text and values as the standard library, where it gives up too."""

from __future__ import annotations

import json
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from registry import jsontext
from registry.jsontext import _dumps_deep, _loads_deep

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
values = st.recursive(
    scalars, lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner), max_leaves=30
)


@given(values)
def test_the_deep_encoder_writes_what_json_dumps_writes(value: object) -> None:
    assert _dumps_deep(value) == json.dumps(value)


@given(values, st.sampled_from(["", " ", "\n\t "]))
def test_the_deep_decoder_reads_what_json_loads_reads(value: object, space: str) -> None:
    text = json.dumps(value, indent=2 if space else None)
    assert _loads_deep(space + text + space) == json.loads(text) == value


@given(st.text(alphabet=string.printable + '[]{}:,"', max_size=40))
def test_the_deep_decoder_refuses_what_json_loads_refuses(text: str) -> None:
    try:
        expected = json.loads(text)
    except json.JSONDecodeError:
        with pytest.raises(json.JSONDecodeError):
            _loads_deep(text)
    else:
        assert _loads_deep(text) == expected or expected != expected  # NaN is never equal


def test_a_lineage_100000_levels_deep_is_written_and_read_back() -> None:
    depth = 100_000
    chain: dict[str, object] = {"ref": f"m@v{depth}", "deleted": False, "children": []}
    for n in range(depth - 1, 0, -1):
        chain = {"ref": f"m@v{n}", "deleted": False, "children": [chain]}
    with pytest.raises(RecursionError):
        json.dumps(chain)
    text = jsontext.dumps(chain)
    assert text.startswith('{"ref": "m@v1", "deleted": false, "children": [{"ref": "m@v2"')
    with pytest.raises(RecursionError):
        json.loads(text)
    node, levels = jsontext.loads(text), 1
    while node["children"]:
        [node], levels = node["children"], levels + 1
    assert (levels, node["ref"]) == (depth, f"m@v{depth}")
