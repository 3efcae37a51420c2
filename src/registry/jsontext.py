"""JSON text of any depth: a lineage nests one object per version, and chains run thousands deep.

The standard library's encoder and decoder recurse, and raise RecursionError
past about a thousand levels. `dumps` and `loads` give the same text and
values as `json.dumps(value)` and `json.loads(text)`; where those give up,
they carry on with an explicit stack. The CLI, the server and the remote
client all write and read lineage through here.
"""

from __future__ import annotations

import json
import re
from json.decoder import JSONDecodeError
from typing import Any

_SPACE = re.compile(r"[ \t\n\r]*")
_CLOSERS = {"[": "]", "{": "}"}
_SCALAR = json.JSONDecoder()  # reads one string, number, true, false or null


def dumps(value: Any) -> str:
    """`json.dumps(value)`, at any depth."""
    try:
        return json.dumps(value)
    except RecursionError:
        return _dumps_deep(value)


def loads(text: str) -> Any:
    """`json.loads(text)`, at any depth: a JSONDecodeError names where the text goes wrong."""
    try:
        return json.loads(text)
    except RecursionError:
        return _loads_deep(text)


class _Raw(str):
    """Text to write as it is: punctuation, keys, closers (a plain str is a JSON string)."""


def _dumps_deep(value: Any) -> str:
    out: list[str] = []
    pending: list[Any] = [value]  # what is left to write, last first
    while pending:
        item = pending.pop()
        if isinstance(item, _Raw):
            out.append(item)
        elif isinstance(item, dict):
            parts: list[Any] = [_Raw("{")]
            for index, (key, member) in enumerate(item.items()):
                if not isinstance(key, str):
                    raise TypeError(f"keys must be str, not {type(key).__name__}")
                parts += [_Raw((", " if index else "") + json.dumps(key) + ": "), member]
            pending.extend(reversed([*parts, _Raw("}")]))
        elif isinstance(item, (list, tuple)):
            parts = [_Raw("[")]
            for index, member in enumerate(item):
                parts += [_Raw(", ")] if index else []
                parts.append(member)
            pending.extend(reversed([*parts, _Raw("]")]))
        else:
            out.append(json.dumps(item))  # a scalar: the standard encoder's own text
    return "".join(out)


def _loads_deep(text: str) -> Any:
    open_containers: list[list[Any] | dict[str, Any]] = []
    keys: list[str] = []  # for each open object, the key whose value is being read
    pos = _skip(text, 0)
    while True:
        char = text[pos : pos + 1]
        if char in _CLOSERS:  # an array or object begins
            container: list[Any] | dict[str, Any] = [] if char == "[" else {}
            pos = _skip(text, pos + 1)
            if text[pos : pos + 1] != _CLOSERS[char]:
                open_containers.append(container)
                if isinstance(container, dict):
                    pos = _key(text, pos, keys)
                continue  # read its first value
            value, pos = container, pos + 1  # empty
        else:
            value, pos = _SCALAR.raw_decode(text, pos)  # never a container: those are above
        while True:  # a value is complete: add it to its container, then a comma or closers
            if not open_containers:
                if _skip(text, pos) != len(text):
                    raise JSONDecodeError("Extra data", text, _skip(text, pos))
                return value
            top = open_containers[-1]
            if isinstance(top, list):
                top.append(value)
            else:
                top[keys.pop()] = value
            pos = _skip(text, pos)
            char = text[pos : pos + 1]
            if char == ",":
                pos = _skip(text, pos + 1)
                if isinstance(top, dict):
                    pos = _key(text, pos, keys)
                break  # read the next value
            if char != ("]" if isinstance(top, list) else "}"):
                raise JSONDecodeError("Expecting ',' delimiter", text, pos)
            value, pos = open_containers.pop(), pos + 1


def _key(text: str, pos: int, keys: list[str]) -> int:
    """Read `"key":` at `pos` onto `keys`; the position of the value after it."""
    if text[pos : pos + 1] != '"':
        raise JSONDecodeError("Expecting property name enclosed in double quotes", text, pos)
    key, pos = _SCALAR.raw_decode(text, pos)  # a string: it begins with a quote
    pos = _skip(text, pos)
    if text[pos : pos + 1] != ":":
        raise JSONDecodeError("Expecting ':' delimiter", text, pos)
    keys.append(key)
    return _skip(text, pos + 1)


def _skip(text: str, pos: int) -> int:
    match = _SPACE.match(text, pos)
    assert match is not None  # the pattern matches the empty string
    return match.end()
